"""The JSON API: thin routes that speak HTTP over :mod:`server.explorer`, :mod:`server.jobs` and the job
queue (:mod:`precompute.jobs`). Response shapes are declared for the OpenAPI schema (:mod:`server.schemas`).

Cached results are sent as stored bytes with their ETag (``If-None-Match`` -> 304) and, when the
client accepts it, a gzip kept in memory beside them, by the one sending path (:func:`server.responses.send`)
that the pages, the static files and the fast path in front of FastAPI use too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Literal, Optional
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse

from precompute.declarations.analyses import layer_analyses
from precompute.declarations.library import SEARCH_MAX, SEARCH_PATTERN
from precompute.declarations.limits import CLUSTER_K_DEFAULT, CLUSTER_K_PATTERN, JOB_KINDS, MAX_CLUSTER_PAIRS
from precompute.names import (ANALYSIS_PATTERN, LAYER_PATTERN, MODEL_PATTERN, InvalidName, check_analysis_name,
                              check_model_name)

from precompute.jobs import submit

from . import experiments as experiment_pages
from . import jobs as uploads
from . import schemas
from .blobs import Blob
from .clusters import K_MAX, K_MIN
from .errors import BadRequest, CacheProblem, Conflict, ExplorerError, NotFound, TooLarge
from .explorer import Explorer
from .jobs import EXTENSIONS
from .responses import JSON, error_json, send
from .views import NEURON_PATTERN

router = APIRouter(prefix="/api")



def explorer(request: Request) -> Explorer:
    return request.app.state.explorer


# ---- fast path ----------------------------------------------------------------------------------
#: The cached-result GETs, as (pattern on the decoded path, function(app state, query, *groups) -> Blob, or
#: None to leave the request to the app). The FastAPI routes below document and serve the same functions;
#: :class:`FastPath` serves them without FastAPI's per-request machinery (routing, dependencies, telemetry
#: checks, middleware: about 1 ms a request on a small machine). An ExplorerError is answered as the app's
#: handler answers it (its body, status and headers); anything else it does not answer (a page's error,
#: another route, FastAPI's own validation) falls through to the app. It runs on the event loop, so what
#: costs more than a file read (findings, a k-means, a page to render) it only serves from memory
#: (``cached_only``): the route computes it in the thread pool, once per cache state.
FAST_ROUTES: list[tuple[re.Pattern, Callable[..., Optional[Blob]]]] = [
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)/neurons/([^/]+)$"),
     lambda st, q, m, l, n: st.explorer.neuron_blob(m, l, n)),
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)/([^/]+)$"),
     lambda st, q, m, l, a: st.explorer.result_blob(m, l, a)),
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)$"), lambda st, q, m, l: st.explorer.layer_context_blob(m, l)),
    (re.compile(r"^/api/models/([^/]+)$"), lambda st, q, m: st.explorer.model_blob(m)),
    (re.compile(r"^/api/models$"), lambda st, q: st.explorer.models_blob()),
    (re.compile(r"^/api/findings$"), lambda st, q: st.explorer.findings_blob(cached_only=True)),
    # without pairs FastAPI answers its own 422 (a required parameter)
    (re.compile(r"^/api/clusters$"),
     lambda st, q: st.explorer.clusters_blob(q["pairs"], q.get("k", str(CLUSTER_K_DEFAULT)), cached_only=True)
     if "pairs" in q else None),
]


def query_params(scope) -> dict[str, str]:
    """The query string as Starlette's ``request.query_params.get`` reads it (the last value of a name)."""
    qs = scope.get("query_string", b"")
    return dict(parse_qsl(qs.decode("latin-1"), keep_blank_values=True)) if qs else {}


class FastPath:
    """Answers the GETs of ``routes`` (:data:`FAST_ROUTES` and the cached pages, ``pages.FAST_PAGES``, each
    with its media type) straight from in-memory blobs, sent as the routes send them
    (:func:`server.responses.send`: ETag/304 and stored gzip). ``ConvscopeApp`` asks it first;
    ``state_of()`` is the app's state (``explorer``, ``pages``)."""

    def __init__(self, state_of: Callable[[], Any], routes: list[tuple[re.Pattern, Callable, str]]):
        self.state_of = state_of
        self.routes = routes

    async def serve(self, scope, receive, sendmsg) -> bool:
        """True when the request was answered; False to let the app handle it (errors, other routes)."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return False
        path = scope["path"]
        for pattern, fn, media_type in self.routes:
            m = pattern.match(path)
            if m is None:
                continue
            try:
                blob = fn(self.state_of(), query_params(scope), *m.groups())
            except ExplorerError as e:
                if media_type != JSON:
                    return False  # a page's error is a page for people: the app renders it (pages.error_page)
                # the app's JSON answer to an ExplorerError (app.py: explorer_error), sent uncompressed; here
                # rather than by falling through, which would compute the error again (and a Recomputing must
                # not be: this very call discarded the entry and queued its job)
                await error_json(e)(scope, receive, sendmsg)
                return True
            if blob is None:
                return False
            await send(Request(scope), blob, media_type=media_type)(scope, receive, sendmsg)
            return True
        return False


MODEL_DOC = "model name, as listed by GET /api/models"
LAYER_DOC = "layer (module path, e.g. layer1.0.conv1), as in the model's inventory"
# The parameters are validated by the handlers (the messages name what exists); the OpenAPI schema
# declares the same rules as patterns, so a client (and the fuzz tests) know what is well-formed:
# a well-formed but unknown name gets 404, a malformed one 422.
MODEL_P = dict(description=MODEL_DOC, json_schema_extra={"pattern": MODEL_PATTERN, "maxLength": 80})
LAYER_P = dict(description=LAYER_DOC, json_schema_extra={"pattern": LAYER_PATTERN, "maxLength": 200})
NEURON_P = dict(description="neuron index, 0..N-1 (N: the layer's output channels)",
                json_schema_extra={"pattern": NEURON_PATTERN})
ANALYSIS_P = dict(description=", ".join(layer_analyses()[:-1]) + f" or {layer_analyses()[-1]} (the model's "
                              "`analyses` say which layers have one)",
                  json_schema_extra={"pattern": ANALYSIS_PATTERN, "maxLength": 40})
PAIR_RE = f"{MODEL_PATTERN[11:-1]}:{LAYER_PATTERN[11:-1]}"
PAIRS_PATTERN = rf"^(?!.*\.\.){PAIR_RE}(,{PAIR_RE}){{0,{MAX_CLUSTER_PAIRS - 1}}}$"

ERRORS = {404: {"model": schemas.ErrorBody, "description": "Unknown name or out-of-range neuron; the body names what exists"},
          422: {"model": schemas.ErrorBody, "description": "Malformed name or parameter; the body says what is accepted"}}
#: cached results: a corrupt (discarded) or missing entry answers 503 while a job recomputes it
CACHED = {**ERRORS, 503: {"model": schemas.ErrorBody, "description": "A cached entry did not verify (or is "
                          "missing): it is being recomputed; the body names the job. Retry later"}}


def ok(model, description: str = "OK (with an ETag; If-None-Match answers 304)") -> dict:
    return {200: {"model": model, "description": description}}


# ---- models, layers, neurons --------------------------------------------------------------------
@router.get("/models", tags=["models"], responses={**ok(schemas.ModelList), 503: CACHED[503]},
            summary="List the precomputed models with their metadata")
async def list_models(request: Request):
    return send(request, explorer(request).models_blob())


@router.get("/models/{model}", tags=["models"], responses={**ok(schemas.ModelDetail), **CACHED},
            summary="A model: metadata, inventory, per-layer scalar metrics and depth profiles")
async def get_model(request: Request, model: str = PathParam(..., **MODEL_P)):
    return send(request, explorer(request).model_blob(model))


@router.get("/models/{model}/layers/{layer}", tags=["layers"], responses={**ok(schemas.LayerContext), **CACHED},
            summary="A layer: its inventory row, the analyses with a result, the BN that follows it, neighbours")
async def get_layer(request: Request, model: str = PathParam(..., **MODEL_P),
                    layer: str = PathParam(..., **LAYER_P)):
    return send(request, explorer(request).layer_context_blob(model, layer))


@router.get("/models/{model}/layers/{layer}/neurons/{neuron}", tags=["layers"],
            responses={**ok(schemas.Neuron), **CACHED},
            summary="One neuron: NMF image, error, sorted position and neighbours, raw kernels, gamma/beta, SVD coordinates")
async def get_neuron(request: Request, model: str = PathParam(..., **MODEL_P),
                     layer: str = PathParam(..., **LAYER_P),
                     neuron: str = PathParam(..., **NEURON_P)):
    return send(request, explorer(request).neuron_blob(model, layer, neuron))


@router.get("/models/{model}/layers/{layer}/{analysis}", tags=["layers"],
            responses={**ok(schemas.CachedResult), **CACHED},
            summary="A cached per-layer result ({meta, data}; data as in docs/FORMATS.md)")
async def get_result(request: Request, model: str = PathParam(..., **MODEL_P),
                     layer: str = PathParam(..., **LAYER_P),
                     analysis: str = PathParam(..., **ANALYSIS_P)):
    return send(request, explorer(request).result_blob(model, layer, analysis))


@router.get("/clusters", tags=["compare"], responses={**ok(schemas.Clusters), **CACHED},
            summary="k-means clusters of NMF reduced forms over several (model, layer) pairs; share per cluster")
def get_clusters(request: Request,
                 pairs: str = Query(..., description=f"comma-separated model:layer pairs (1..{MAX_CLUSTER_PAIRS}, each "
                                                     "a layer with an NMF result, all of one kernel size)",
                                    json_schema_extra={"pattern": PAIRS_PATTERN}),
                 k: str = Query(str(CLUSTER_K_DEFAULT), description=f"number of clusters, {K_MIN}..{K_MAX}",
                                json_schema_extra={"pattern": CLUSTER_K_PATTERN})):
    return send(request, explorer(request).clusters_blob(pairs, k))


# no parameters and no error of its own: a model whose record or SVD entry does not verify is left out of
# the rankings (and queued for recomputation) rather than failing them, so only the 200 is declared
@router.get("/findings", tags=["compare"], responses=ok(schemas.Findings),
            summary="What the zoo shows, ranked: banding layers, strided symmetry drops, switched-off gammas, "
                    "the colour axis of the first layer's SVD, trained models against their random twins")
def get_findings(request: Request):
    return send(request, explorer(request).findings_blob())


# ---- experiments (server/experiments.py) ----------------------------------------------------------
@router.get("/experiments", tags=["experiments"],
            summary="Experiments with precomputed variants (and the declared ones not trained yet)")
def list_experiments(request: Request):
    return send(request, Blob.of(experiment_pages.list_experiments(explorer(request))))


@router.get("/experiments/{experiment}", tags=["experiments"], responses=ERRORS,
            summary="An experiment: its variants with test accuracy and headline numbers, shared NMF layers")
def get_experiment(request: Request, experiment: str = PathParam(..., description="experiment name, as listed "
                                                                                    "by GET /api/experiments")):
    return send(request, Blob.of(experiment_pages.experiment_detail(explorer(request), experiment)))


# ---- uploads and jobs ---------------------------------------------------------------------------
JOB_DOC = "a job id as returned when the job was submitted (<kind>-<model>-<16 hex digits>)"
JOB_ID_PATTERN = "^(?:" + "|".join(JOB_KINDS) + ")-" + MODEL_PATTERN[1:-1] + "-[0-9a-f]{16}$"
NO_STORE = {"Cache-Control": "no-store"}


@router.get("/architectures", tags=["uploads"], responses=ok(schemas.Architectures, "OK"),
            summary="Architectures a checkpoint can be uploaded for (with their native input size)")
def get_architectures():
    return JSONResponse(uploads.architectures())


@router.get("/architectures/search", tags=["uploads"], responses={**ok(schemas.ArchitectureSearch, "OK"),
                                                                   422: ERRORS[422]},
            summary="Architectures whose names contain every word of q: the declared ones and the "
                    "torchvision/timm models (torchvision:NAME, timm:NAME), with parameter counts")
def search_architectures(q: str = Query(..., min_length=1, max_length=100, pattern=SEARCH_PATTERN,
                                        description="words, e.g. 'resnet 50'"),
                         limit: int = Query(20, ge=1, le=SEARCH_MAX)):
    return JSONResponse(uploads.search_architectures(q, limit))


@router.get("/jobs", tags=["jobs"], responses={**ok(schemas.JobList, "OK (not cached)"), 422: ERRORS[422]},
            summary="Recent jobs (precompute, upload, train), newest first, with state and progress")
def list_jobs(request: Request,
              kind: Optional[Literal[JOB_KINDS]] = Query(None, description="only jobs of this kind"),
              limit: int = Query(50, ge=1, le=500, description="at most this many")):
    settings = request.app.state.settings
    jobs = uploads.recent_jobs(settings, limit, kind)
    return JSONResponse({"jobs": [uploads.public_job(j) for j in jobs],
                         "workers": uploads.worker_status(settings, request.app.state.embedded)}, headers=NO_STORE)


@router.get("/jobs/{job_id}", tags=["jobs"], responses={**ok(schemas.Job, "OK (not cached: poll it)"), **ERRORS},
            operation_id="get_job", summary="A job: queued / running (progress, message) / done / failed (error)")
def get_job(request: Request, job_id: str = PathParam(..., description=JOB_DOC,
                                                      json_schema_extra={"pattern": JOB_ID_PATTERN})):
    return JSONResponse(uploads.public_job(uploads.get_job(request.app.state.settings, job_id)), headers=NO_STORE)


#: a 202's job, as an OpenAPI link: clients (and schemathesis' stateful tests) follow it to GET /api/jobs/{id}
JOB_LINK = {"GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"},
                       "description": "poll the job this request queued"}}


def _accepted(job: dict) -> JSONResponse:
    return JSONResponse({"id": job["id"], "job": uploads.public_job(job), "url": f"/api/jobs/{job['id']}",
                         "page": f"/jobs/{job['id']}"}, status_code=202, headers=NO_STORE)


def _submit(kind: str, args: dict, settings, again: bool = False) -> dict:
    try:
        return submit(kind, args, settings, again=again)
    except Exception as e:  # the queue is down (Redis unreachable, a full disk): the server's problem
        raise CacheProblem(f"could not queue the {kind} job: {type(e).__name__}: {str(e)[:200]}") from None


@router.post("/models/{model}/precompute", tags=["jobs"], status_code=202,
             responses={202: {"model": schemas.JobAccepted, "description": "Queued (or already queued / running)",
                              "links": JOB_LINK}, **CACHED},
             summary="Queue a precompute job for a model: computes what is missing (force: everything again)")
def post_precompute(request: Request, model: str = PathParam(..., **MODEL_P),
                    analyses: str = Query("", description="comma-separated analyses (default: all)",
                                          json_schema_extra={"pattern": f"^$|^{ANALYSIS_PATTERN[1:-1]}"
                                                                        f"(,{ANALYSIS_PATTERN[1:-1]})*$"}),
                    force: bool = Query(False, description="recompute cached results too")):
    ex = explorer(request)
    try:
        check_model_name(model)
    except InvalidName as e:
        raise BadRequest(f"{e}", known=ex.model_names()) from None
    if model not in ex.model_names():
        raise NotFound(f"unknown model {model!r}; a precompute job can be asked for a model in the cache "
                       f"(`convscope submit NAME` queues any zoo model)", known=ex.model_names())
    args: dict = {"model": model, "force": bool(force)}
    if analyses:
        known = sorted({a for m in ex.model_names() for a in _record_analyses(ex, m)})
        chosen = []
        for a in analyses.split(","):
            try:
                check_analysis_name(a)
            except InvalidName as e:
                raise BadRequest(str(e), known=known) from None
            if a not in known:
                raise NotFound(f"unknown analysis {a!r}; known: {', '.join(known)}", known=known)
            if a not in chosen:
                chosen.append(a)
        args["analyses"] = chosen
    return _accepted(_submit("precompute", args, request.app.state.settings, again=True))


def _record_analyses(ex: Explorer, model: str) -> list[str]:
    try:
        return list(ex.record(model)["analyses"])
    except ExplorerError:
        return []


@router.post("/uploads", tags=["uploads"], status_code=202,
             responses={202: {"model": schemas.JobAccepted, "description": "Stored and queued; poll the job",
                              "links": JOB_LINK},
                        413: {"model": schemas.ErrorBody, "description": "Larger than max_upload_bytes (checked while streaming)"},
                        409: {"model": schemas.ErrorBody, "description": "Name taken"},
                        503: {"model": schemas.ErrorBody, "description": "The job queue is unavailable"}, **ERRORS},
             summary="Upload a checkpoint (multipart: file, arch, name[, dataset]; at most 16 parts); returns an upload job",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file", "name"], "properties": {
                     "file": {"type": "string", "format": "binary",
                              "description": "checkpoint: " + ", ".join(EXTENSIONS) + " (safetensors, or a "
                                             "torch state dict loaded with weights_only=True). Its file name "
                                             "must be one plain component (no folders, no Windows path) "
                                             "matching x-filename-pattern and ending in one of x-extensions",
                              "x-extensions": list(EXTENSIONS), "x-filename-pattern": uploads.FILENAME.pattern},
                     "arch": {"type": "string", "pattern": uploads.ARCH_NAME.pattern + "|^$", "description":
                              "a declared architecture (GET /api/architectures), torchvision:NAME / timm:NAME "
                              "(GET /api/architectures/search), 'auto' (found from the state dict's keys and "
                              "shapes), 'onnx' / 'keras' (or empty) for a .onnx / .h5 / .keras file, or 'none' "
                              "for weights alone"},
                     "name": {"type": "string", "pattern": MODEL_PATTERN, "maxLength": 80},
                     "dataset": {"type": "string", "pattern": uploads.DATASET.pattern}}}}}}})
async def post_upload(request: Request):
    settings, ex = request.app.state.settings, explorer(request)
    limit = int(settings.max_upload_bytes)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + uploads.SLACK:
        raise TooLarge(f"upload of {int(length)} bytes is larger than the limit of {limit} bytes "
                       f"(CONVSCOPE_MAX_UPLOAD_BYTES)", limit=limit)
    token = uploads.new_token()
    form = await uploads.receive_multipart(request, limit, uploads.incoming_dir(settings), token)
    final: Optional[Path] = None
    try:
        fields, upload = form["fields"], form["file"]
        if upload is None:
            raise BadRequest("no file part: send multipart/form-data with fields file, arch and name")
        filename = uploads.check_filename(upload["filename"])
        # an empty file is queued like any other: its job fails at once, saying so (one path for every bad file)
        name = fields.get("name", "")
        try:
            check_model_name(name)
        except InvalidName as e:
            raise BadRequest(str(e)) from None
        if name in ex.model_names():
            raise Conflict(f"a model named {name!r} exists already; choose another name", known=ex.model_names())
        busy = [j["id"] for j in uploads.recent_jobs(settings, 200, "upload")
                if j.get("state") in ("queued", "running") and (j.get("args") or {}).get("name") == name]
        if busy:
            raise Conflict(f"an upload named {name!r} is in progress (job {busy[0]}); choose another name",
                           job=busy[0])
        arch = uploads.check_arch(fields.get("arch", ""), filename)
        dataset = uploads.check_dataset(fields.get("dataset", ""))
        final = uploads.place_upload(settings, token, upload)
        args = {"path": str(final.relative_to(settings.uploads)), "arch": arch, "name": name, "dataset": dataset,
                "filename": filename, "size": upload["size"]}
        job = _submit("upload", args, settings)
    except BaseException:
        if form["file"] is not None:
            Path(form["file"]["path"]).unlink(missing_ok=True)
        if final is not None:
            shutil.rmtree(final.parent, ignore_errors=True)
        raise
    return _accepted(job)
