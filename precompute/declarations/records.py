"""The records convscope writes and reads back, typed: a trained variant's run record
(:class:`TrainingRun`), an inventory row (:class:`InventoryRow`), a model record of the cache
(:class:`ModelRecord`) and a job's state (:class:`JobState`).

One description each: the producers (``precompute/experiments/training.py``, ``precompute/inventory.py``
and ``precompute/graphs/``, ``precompute/pipeline.py``, ``precompute/jobs.py``) validate what they write
into these models, the readers (``precompute/experiments/records.py``, the server) parse with them, the
OpenAPI schemas of ``server/schemas.py`` are these models, and the tests take their expected keys from them.

Every model is *strict* (a value of the wrong type is refused with an error that names its field, and
nothing is coerced: an accuracy written as 91 stays 91, so what the API sends from a record is what the
record holds) and *open* (``extra="allow"``: a key this version does not know, written by a newer one, is
kept, not refused). Keys that older writers did not write have defaults, so every record written before
these models existed still reads (``tests/test_records.py`` checks the committed reference runs and caches).

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..names import check_model_name
from .limits import JOB_KINDS

#: a JSON number as written: an int stays an int, a float a float (``float`` alone would turn 1 into 1.0)
Number = Union[int, float]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    def public(self) -> dict:
        """The record as JSON-able data, with exactly the keys it was made with (defaults not added)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def as_written(cls, data: Any):
        """``data`` validated as the JSON it is written as (a producer's tuple is an array there, as a
        reader will see it). pydantic's ValidationError, naming the field, when it does not fit."""
        return cls.model_validate_json(json.dumps(data, allow_nan=False))


# ---- a trained variant's run record (``<model>.json`` beside its checkpoint) ---------------------------
#: the ``format`` of a run record
RECORD_FORMAT = "convscope-variant/1"


class TrainableRule(_Record):
    rule: str = Field(..., description="which parameters were trained: a key of the experiments' TRAINABLE")
    description: str = ""


class InputTransform(_Record):
    name: str = Field(..., description="a key of the experiments' INPUT_TRANSFORMS")
    description: str = ""


class HistoryPoint(_Record):
    """One point of the run's history (precompute/experiments/history.py): at epochs 0, 1/8, 1/4, 1/2, 1, 2, ..."""

    epoch: Number = Field(..., description="epochs of training done (fractions inside the first epoch)")
    step: Optional[int] = None
    lr: Optional[Number] = None
    train_loss: Optional[Number] = None
    train_accuracy: Optional[Number] = None
    test_accuracy: Optional[Number] = None
    images_per_s: Optional[Number] = None
    seconds: Optional[Number] = None
    dead_relu: Optional[Number] = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="weight metric -> {layer or threshold: value}")


class Plateau(_Record):
    """Did the run reach its accuracy plateau: the test accuracy of the last ``epochs`` epochs spans at most
    ``threshold`` points (``reached`` None: fewer epochs than that)."""

    reached: Optional[bool] = None
    span: Optional[Number] = None
    epochs: int
    threshold: Number


class Resume(_Record):
    from_epoch: int
    at: Optional[str] = None


class Snapshot(_Record):
    """A weight snapshot taken during a run (``convscope train --snapshots``): the model ``<of>.e<epoch>``."""

    of: str
    epoch: int
    epochs: Optional[int] = None


class TrainingRun(_Record):
    """A trained variant's run record: what ``convscope train`` writes beside the checkpoint, and what the
    zoo gives the variant's :class:`~precompute.declarations.specs.ModelSpec` as its ``extra`` (then with
    ``reference`` and ``replaces_reference``, which say which folder the run came from)."""

    format: Literal["convscope-variant/1"]
    model: str
    experiment: Optional[str] = None
    variant: Optional[str] = None
    description: str = ""
    arch: str
    arch_kwargs: dict[str, Any]
    dataset: str
    input_size: list[int]
    mean: list[Number] = Field(default_factory=list)
    std: list[Number] = Field(default_factory=list)
    num_classes: Optional[int] = None
    input_transform: Union[InputTransform, str, None] = None
    trainable: Union[TrainableRule, str, None] = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    epochs: Optional[int] = None
    seed: int = 0
    limit: Optional[int] = None
    precision: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    params: Optional[int] = None
    trainable_params: Optional[int] = None
    history: list[HistoryPoint] = Field(default_factory=list)
    final_test_accuracy: Optional[Number] = None
    plateau: Optional[Plateau] = None
    #: measurement name -> its result (precompute/experiments/measurements.py: gamma_clamp, dead_relu)
    measurements: dict[str, dict[str, Any]] = Field(default_factory=dict)
    command: Optional[str] = None
    argv: list[str] = Field(default_factory=list)
    code_version: Optional[str] = None
    torch_version: Optional[str] = None
    device: Optional[str] = None
    deterministic: Optional[bool] = None
    resumed: list[Resume] = Field(default_factory=list)
    images_per_s: Optional[Number] = None
    train_seconds: Optional[Number] = None
    seconds: Optional[Number] = None
    created: Optional[str] = None
    snapshot: Optional[Snapshot] = None
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    checkpoint_bytes: Optional[int] = None
    #: set by the zoo, not written: a committed reference run, and a local run that replaces one
    reference: bool = False
    replaces_reference: bool = False

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        return check_model_name(v)  # InvalidName is a ValueError: it becomes the field's validation error

    @classmethod
    def written_keys(cls) -> tuple[str, ...]:
        """The keys every record that ``convscope train`` writes has (the others: only a snapshot's, or the
        zoo's)."""
        return tuple(k for k in cls.model_fields if k not in ("snapshot", "reference", "replaces_reference"))

    def trainable_rule(self) -> Optional[str]:
        return self.trainable.rule if isinstance(self.trainable, TrainableRule) else self.trainable

    def transform_name(self) -> Optional[str]:
        return self.input_transform.name if isinstance(self.input_transform, InputTransform) else self.input_transform

    def at_plateau(self) -> bool:
        return self.plateau is not None and self.plateau.reached is True


def training_run(spec: Mapping) -> Optional[TrainingRun]:
    """The run record that a model's public spec (``ModelSpec.public()``, the model record's ``spec``)
    carries in ``extra``: a :class:`TrainingRun` for a trained variant (family ``variant``), None for every
    other model. pydantic's ValidationError, naming the field, for a variant whose record does not fit."""
    if not isinstance(spec, Mapping) or spec.get("family") != "variant" or not spec.get("extra"):
        return None
    return TrainingRun.model_validate(spec["extra"])


# ---- the cache's model record (precompute/pipeline.py) ---------------------------------------------------
class UnevenDetail(_Record):
    """Padding rows a conv really consumes at each side (inventory's ``consumed_padding``)."""

    top: int
    bottom: int
    left: int
    right: int


class InventoryRow(_Record):
    """One conv, linear or BatchNorm layer (docs/FORMATS.md, "Inventory row"), in execution order. Made by
    one forward pass (``precompute/inventory.py``) or read from a graph file (``precompute/graphs/``); a
    value the source cannot tell (sizes of a bare-weights file, its strides and padding) is null."""

    name: str
    index: int = Field(..., description="position in execution order")
    class_: str = Field(..., alias="class", description="the layer's class (Conv2d, Linear, BatchNorm2d, ...)")
    weight_shape: Optional[list[int]] = None
    params: int
    input_size: Optional[list[int]] = Field(None, description="(H, W) of the layer's input")
    output_size: Optional[list[int]] = None
    feeds_from: Optional[str] = Field(None, description="the conv whose output this layer reads")
    follows: Optional[str] = Field(None, description="the conv a BatchNorm normalises")
    uneven_padding: Optional[bool] = False
    uneven_detail: Optional[UnevenDetail] = None
    flatten_from: Optional[list[int]] = Field(None, description="(C, H, W) a linear layer's input was flattened from")
    type: Literal["conv", "linear", "batchnorm"]
    in_channels: int
    out_channels: int
    # conv only
    kernel: Optional[list[int]] = None
    stride: Optional[list[int]] = None
    padding: Optional[list[int]] = None
    pads: Optional[list[int]] = Field(None, description="(top, left, bottom, right) as declared")
    dilation: Optional[list[int]] = None
    groups: Optional[int] = None
    padding_mode: Optional[str] = None
    depthwise: Optional[bool] = None

    model_config = ConfigDict(populate_by_name=True)


class AnalysisRun(_Record):
    """What the model record says of one analysis: its version and parameters (the cache key) and the layers
    it applies to."""

    version: int
    params: dict[str, Any]
    layers: list[str]


ModelStatus = Literal["done", "partial"]


class ModelRecord(_Record):
    """A precomputed model (``<cache>/models/<name>.json``): its spec, inventory, the analyses run and the
    scalars of the depth profiles. Written last by the pipeline, so that a record means complete entries."""

    name: str
    spec: dict[str, Any] = Field(..., description="ModelSpec.public(): arch, dataset, family, source, extra, ...")
    weights_sha256: str
    file_sha256: Optional[str] = None
    inventory: list[InventoryRow]
    analyses: dict[str, AnalysisRun] = Field(default_factory=dict)
    #: layer -> scalar key (precompute/declarations/analyses.py) -> value
    scalars: dict[str, dict[str, Optional[Number]]] = Field(default_factory=dict)
    #: analysis -> "Type: message" of its failure (and "<analysis>:traceback")
    errors: dict[str, str] = Field(default_factory=dict)
    device: Optional[str] = None
    created: Optional[str] = None
    #: what a bare-weights file cannot give (analysis or flag -> how to give the architecture)
    skipped: dict[str, str] = Field(default_factory=dict)
    #: what a graph file holds that convscope does not analyse
    notes: list[str] = Field(default_factory=list)
    seconds: Optional[Number] = None
    status: Optional[ModelStatus] = None


# ---- a job's state (precompute/jobs.py, ``<cache>/jobs/<id>.json``) -----------------------------------------
JobKind = Literal[JOB_KINDS]  # type: ignore[valid-type]
JobStateName = Literal["queued", "running", "done", "failed"]


class JobEvent(_Record):
    t: Number
    event: str


class JobState(_Record):
    """One job as the queue keeps it: what it computes (``args``), where it stands and its history."""

    id: str
    kind: JobKind = Field(..., description=", ".join(JOB_KINDS))
    args: dict[str, Any]
    state: JobStateName = Field(..., description="queued, running, done or failed")
    progress: Number = Field(..., description="0..1")
    message: Optional[str] = None
    error: Optional[str] = Field(None, description="why it failed (failed jobs)")
    attempts: int = 0
    created: Optional[Number] = None
    started: Optional[Number] = None
    finished: Optional[Number] = None
    heartbeat: Optional[Number] = None
    worker: Optional[str] = None
    result: Optional[dict[str, Any]] = None
    history: list[JobEvent] = Field(default_factory=list)
