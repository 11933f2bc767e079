"""Response shapes of the JSON API, for the OpenAPI schema (``responses=`` of the routes).

The routes send stored bytes (cached results) or build JSON themselves, so these models document
rather than serialise; ``tests/test_fuzz.py`` checks (schemathesis) that every response of every
operation matches the shape declared here. ``extra="allow"``: a client must ignore keys it does not
know, so adding a key is not a breaking change.

What the API sends from a record is described once, by the record's model in
``precompute/declarations/records.py``: the model detail is the :class:`ModelRecord` (with the summary and
profiles the server adds), a layer's ``row`` an :class:`InventoryRow`, a job the public fields of
:class:`JobState` (with the links and log the server adds).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from precompute.declarations.records import InventoryRow, JobState, ModelRecord, Plateau, Snapshot


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Open):
    """Every error: a message that names the bad value and what exists."""

    detail: str = Field(..., description="what went wrong, naming the bad value and what is accepted")
    known: Optional[list[Any]] = Field(None, description="the names that exist (unknown or malformed name)")
    range: Optional[list[int]] = Field(None, description="the accepted range (out-of-range number)")
    errors: Optional[list[dict[str, Any]]] = Field(None, description="per-parameter problems (422)")
    limit: Optional[int] = Field(None, description="the upload size limit in bytes (413)")
    job: Optional[str] = Field(None, description="the job recomputing a corrupt entry (503)")
    job_url: Optional[str] = None
    endpoints: Optional[list[str]] = Field(None, description="the documented endpoints (unknown endpoint)")


class LayerCounts(_Open):
    conv: int
    linear: int
    batchnorm: int


class TrainingSummary(_Open):
    """A trained variant's run, from its run record (server/views.py ``_training_summary``)."""

    experiment: Optional[str] = None
    variant: Optional[str] = None
    epochs: Optional[int] = None
    seed: int
    plateau: Optional[Plateau] = None
    snapshot: Optional[Snapshot] = None
    at_plateau: bool = Field(..., description="the run reached its accuracy plateau, or is untrained (epochs 0)")


class ModelSummary(_Open):
    name: str
    arch: Optional[str] = None
    dataset: Optional[str] = None
    family: Optional[str] = None
    source: Optional[Any] = None
    source_detail: Optional[Any] = None
    accuracy: Optional[Any] = None
    description: Optional[str] = None
    origin: Optional[str] = None
    license: Optional[str] = None
    input_size: Optional[list[int]] = None
    status: Optional[str] = None
    created: Optional[str] = None
    layers: LayerCounts
    params: int
    weights_sha256: Optional[str] = None
    errors: int = Field(..., description="number of analyses that failed for this model")
    symmetry_profile: list[float]
    mean_symmetry: Optional[float] = None
    training: Optional[TrainingSummary] = Field(None, description="trained variants only (family variant)")


class ModelList(_Open):
    models: list[ModelSummary]
    count: int


class Profiles(_Open):
    symmetry: list[dict[str, Any]]
    banding: list[dict[str, Any]]
    gamma: list[dict[str, Any]]
    sparsity: list[dict[str, Any]]


class ModelDetail(ModelRecord):
    """The model record (without the failures' tracebacks), with what the server adds."""

    summary: ModelSummary
    profiles: Profiles
    human_names: dict[str, str] = Field(default_factory=dict, description="layer -> its name in words")


class LayerContext(_Open):
    model: str
    layer: str
    row: InventoryRow
    analyses: list[str]
    scalars: dict[str, Any]
    bn: Optional[str] = None
    bn_analyses: list[str]
    follows: Optional[str] = None
    feeds_from: Optional[str] = None
    consumers: list[str]
    svd_consumers: list[str]
    prev: Optional[str] = None
    next: Optional[str] = None
    neurons: Optional[int] = None
    family: Optional[str] = None


class Neuron(_Open):
    model: str
    layer: str
    neuron: int
    neurons: Optional[int] = None
    row: InventoryRow
    analyses: list[str]
    nmf: Optional[dict[str, Any]] = None
    kernels: Optional[dict[str, Any]] = None
    batchnorm: Optional[dict[str, Any]] = None
    svd: Optional[dict[str, Any]] = None
    svd_as_feeder: list[dict[str, Any]]


class CachedResult(_Open):
    meta: dict[str, Any] = Field(..., description="model, layer, analysis, version, parameters, shapes, time")
    data: Any = Field(..., description="the analysis result, as in docs/FORMATS.md")


class Clusters(_Open):
    pairs: list[list[str]]
    k: int
    proportions: list[list[float]]
    centroids: list[Any]
    counts: list[int]
    labels: list[list[int]]
    sizes: list[int]


class FindingsThresholds(_Open):
    banding_noise_floor: Optional[float] = Field(..., description="largest |banding index| of any layer of any "
                                                 "untrained model in the cache (None: no untrained model)")
    banding_rule: str
    gamma: float = Field(..., description="|gamma| below this: a switched-off BatchNorm channel")
    gamma_loose: float
    symmetry_rule: str
    colour_rule: str


class _FindingRow(_Open):
    model: str
    family: str
    untrained: bool
    twin: Optional[str] = Field(..., description="the model's random twin in the cache, if any")
    url: str = Field(..., description="the view that shows the row")


class BandingFinding(_FindingRow):
    layer: str
    human: Optional[str] = None
    value: float = Field(..., description="banding index (+1: horizontal stripes)")
    depth: float = Field(..., description="position among the model's convs, 0..1")
    nmf_error: Optional[float] = None
    twin_value: Optional[float] = None
    banded: bool = Field(..., description="trained, and |index| above the noise floor")


class SymmetryDrop(_FindingRow):
    layer: str
    human: Optional[str] = None
    S: float = Field(..., description="the strided layer's symmetry score")
    baseline: float = Field(..., description="mean S of the model's unstrided convs after the first")
    drop: float
    uneven: bool = Field(..., description="the layer pads unevenly")
    kernel: Optional[list[int]] = None
    twin_drop: Optional[float] = None
    beyond_twin: bool


class GammaFinding(_FindingRow):
    share: float = Field(..., description="share of BatchNorm channels with |gamma| < thresholds.gamma")
    count: int
    channels: int
    share_loose: Optional[float] = None
    twin_share: Optional[float] = None


class ColourFinding(_FindingRow):
    layer: str
    feeder: Optional[str] = None
    filters: int
    corr_svd: list[Optional[float]]
    corr_pca: list[Optional[float]]
    best: float
    best_basis: str = Field(..., description="svd or pca")
    best_component: int
    human: Optional[str] = None
    feeder_human: Optional[str] = None
    twin_best: Optional[float] = None
    beyond_twin: bool


class TwinFinding(_Open):
    model: str
    family: str
    twin: str
    banding_last: Optional[float] = None
    twin_banding_last: Optional[float] = None
    symmetry: Optional[float] = None
    twin_symmetry: Optional[float] = None
    gamma_share: Optional[float] = None
    twin_gamma_share: Optional[float] = None
    colour_best: Optional[float] = None
    twin_colour_best: Optional[float] = None
    url: str
    twin_url: str


class FindingsCounts(_Open):
    models: int
    untrained: int
    banded: int


class Findings(_Open):
    """What the zoo shows, ranked (``server/findings.py``: ``compute_findings``)."""

    thresholds: FindingsThresholds
    banding: list[BandingFinding]
    symmetry_drops: list[SymmetryDrop]
    gamma: list[GammaFinding]
    colour_axis: list[ColourFinding]
    twins: list[TwinFinding]
    counts: FindingsCounts


class Architectures(_Open):
    architectures: list[str]
    input_sizes: dict[str, list[int]]


class ArchitectureMatch(_Open):
    name: str = Field(..., description="what the upload's arch field takes: resnet20, timm:resnet50, ...")
    task: Optional[str] = Field(None, description="classification, segmentation or detection (library models)")
    params: Optional[int] = Field(None, description="parameter count (library models)")
    input_size: Optional[list[int]] = Field(None, description="native (C, H, W); null: any size")


class ArchitectureSearch(_Open):
    query: str
    matches: list[ArchitectureMatch]
    more: bool = Field(..., description="more names match than were returned")
    libraries: dict[str, str] = Field(..., description="library -> version the catalogue lists")


#: the fields of a job's state (JobState) that a client sees (server/jobs.py public_job): not its args (they
#: may hold server paths), worker or history (shown as ``log``)
JOB_PUBLIC_FIELDS = ("id", "kind", "state", "progress", "message", "error", "attempts", "created", "started",
                     "finished", "result")


# made from JobState's own fields (annotation and description), so that the two never disagree
_JobState = create_model("JobStateFields", __base__=_Open,
                         **{k: (JobState.model_fields[k].annotation, JobState.model_fields[k]) for k in JOB_PUBLIC_FIELDS})


class Job(_JobState):
    """A job as a client sees it: its state's public fields, and what server/jobs.py public_job adds."""

    created_at: Optional[str] = Field(None, description="created, as UTC date and time")
    model: Optional[str] = None
    arch: Optional[str] = None
    filename: Optional[str] = None
    size: Optional[int] = None
    dataset: Optional[str] = None
    analyses: Optional[list[str]] = None
    log: list[str]
    url: str
    page: str
    model_url: Optional[str] = None


class EmbeddedWorkerState(_Open):
    state: str = Field(..., description="running, restarting or stopped")
    restarts: int = Field(..., description="how often the supervisor restarted it")
    last_exit: Optional[str] = Field(None, description="how it last stopped, e.g. 'killed by SIGKILL'")


class Workers(_Open):
    alive: int = Field(..., description="workers that renewed their presence in the last seconds (any machine)")
    embedded: Optional[EmbeddedWorkerState] = Field(None, description="convscope serve's own worker, if it runs one")
    ok: bool = Field(..., description="queued jobs will run")
    message: str


class JobList(_Open):
    jobs: list[Job]
    workers: Workers


class JobAccepted(_Open):
    id: str
    job: Job
    url: str
    page: str
