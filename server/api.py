"""The JSON API: thin routes that speak HTTP over :mod:`server.data` and :mod:`server.jobs`.

Cached results are sent as stored bytes with their ETag (``If-None-Match`` -> 304) and, when the
client accepts it, a gzip kept in memory beside them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Optional

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse, Response

from precompute.names import InvalidName, check_model_name

from .data import Blob, BadRequest, Conflict, ExplorerError, Explorer
from .jobs import EXTENSIONS, JobStore

router = APIRouter(prefix="/api")

JSON = "application/json"


class TooLarge(ExplorerError):
    status = 413


def explorer(request: Request) -> Explorer:
    return request.app.state.explorer


def jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def _etag_matches(header: Optional[str], etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return etag in tags or f"W/{etag}" in tags


def send(request: Request, blob: Blob, cache_control: str = "no-cache") -> Response:
    """The blob as a response: 304 when the client has it, the stored gzip when it accepts gzip."""
    headers = {"ETag": blob.etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if _etag_matches(request.headers.get("if-none-match"), blob.etag):
        return Response(status_code=304, headers=headers)
    if blob.gz is not None and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(blob.gz, media_type=JSON, headers=headers)
    return Response(blob.body, media_type=JSON, headers=headers)


# ---- fast path ----------------------------------------------------------------------------------
#: The cached-result GETs, as (pattern on the decoded path, the Explorer method that computes the body).
#: The FastAPI routes below document and serve them; :class:`FastPath` serves the same functions
#: without FastAPI's per-request machinery (routing, dependencies, telemetry checks, middleware: about
#: 1 ms a request on a small machine), falling through to the app for anything it does not answer
#: with 200/304, so errors have one place and one shape.
FAST_ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)/neurons/([^/]+)$"), "neuron_blob"),
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)/([^/]+)$"), "result_blob"),
    (re.compile(r"^/api/models/([^/]+)/layers/([^/]+)$"), "layer_context_blob"),
    (re.compile(r"^/api/models/([^/]+)$"), "model_blob"),
    (re.compile(r"^/api/models$"), "models_blob"),
]


class FastPath:
    """Answers the cached-result GETs of :data:`FAST_ROUTES` straight from the Explorer's in-memory
    blobs (ETag/304 and stored gzip, as :func:`send`). ``ConvscopeApp`` asks it first."""

    def __init__(self, explorer_of: Callable[[], Explorer]):
        self.explorer_of = explorer_of

    async def serve(self, scope, sendmsg) -> bool:
        """True when the request was answered; False to let the app handle it (errors, other routes)."""
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/api/models"):
            return False
        path = scope["path"]
        for pattern, method in FAST_ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            try:
                blob = getattr(self.explorer_of(), method)(*m.groups())
            except ExplorerError:
                return False  # the routes answer errors, in one place and one shape
            inm = gz = None
            for k, v in scope["headers"]:
                if k == b"if-none-match":
                    inm = v.decode("latin-1")
                elif k == b"accept-encoding":
                    gz = b"gzip" in v
            headers = [(b"etag", blob.etag.encode()), (b"cache-control", b"no-cache"),
                       (b"vary", b"Accept-Encoding")]
            if _etag_matches(inm, blob.etag):
                await sendmsg({"type": "http.response.start", "status": 304, "headers": headers})
                await sendmsg({"type": "http.response.body", "body": b""})
                return True
            body = blob.body
            if gz and blob.gz is not None:
                body = blob.gz
                headers.append((b"content-encoding", b"gzip"))
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await sendmsg({"type": "http.response.start", "status": 200, "headers": headers})
            await sendmsg({"type": "http.response.body", "body": body})
            return True
        return False


MODEL_DOC = "model name, as listed by GET /api/models"
LAYER_DOC = "layer (module path, e.g. layer1.0.conv1), as in the model's inventory"

ERRORS = {404: {"description": "Unknown name or out-of-range neuron; the body names what exists"},
          422: {"description": "Malformed name or parameter; the body says what is accepted"}}


# ---- models, layers, neurons --------------------------------------------------------------------
@router.get("/models", tags=["models"], summary="List the precomputed models with their metadata")
async def list_models(request: Request):
    return send(request, explorer(request).models_blob())


@router.get("/models/{model}", tags=["models"], responses=ERRORS,
            summary="A model: metadata, inventory, per-layer scalar metrics and depth profiles")
async def get_model(request: Request, model: str = PathParam(..., description=MODEL_DOC)):
    return send(request, explorer(request).model_blob(model))


@router.get("/models/{model}/layers/{layer}", tags=["layers"], responses=ERRORS,
            summary="A layer: its inventory row, the analyses with a result, the BN that follows it, neighbours")
async def get_layer(request: Request, model: str = PathParam(..., description=MODEL_DOC),
                    layer: str = PathParam(..., description=LAYER_DOC)):
    return send(request, explorer(request).layer_context_blob(model, layer))


@router.get("/models/{model}/layers/{layer}/neurons/{neuron}", tags=["layers"], responses=ERRORS,
            summary="One neuron: NMF image, error, sorted position and neighbours, raw kernels, gamma/beta, SVD coordinates")
async def get_neuron(request: Request, model: str = PathParam(..., description=MODEL_DOC),
                     layer: str = PathParam(..., description=LAYER_DOC),
                     neuron: str = PathParam(..., description="neuron index, 0..N-1 (N: the layer's output channels)")):
    return send(request, explorer(request).neuron_blob(model, layer, neuron))


@router.get("/models/{model}/layers/{layer}/{analysis}", tags=["layers"], responses=ERRORS,
            summary="A cached per-layer result ({meta, data}; data as in docs/FORMATS.md)")
async def get_result(request: Request, model: str = PathParam(..., description=MODEL_DOC),
                     layer: str = PathParam(..., description=LAYER_DOC),
                     analysis: str = PathParam(..., description="symmetry, nmf, kernels, svd, histogram, batchnorm or "
                                                                 "fc-spatial (the model's `analyses` say which layers have one)")):
    return send(request, explorer(request).result_blob(model, layer, analysis))


@router.get("/clusters", tags=["compare"], responses=ERRORS,
            summary="k-means clusters of NMF reduced forms over several (model, layer) pairs; share per cluster")
def get_clusters(request: Request,
                 pairs: str = Query("", description="comma-separated model:layer pairs"),
                 k: str = Query("8", description="number of clusters, 2..19")):
    return send(request, explorer(request).clusters_blob(pairs, k))


# ---- uploads and jobs ---------------------------------------------------------------------------
@router.get("/architectures", tags=["uploads"], summary="Architectures a checkpoint can be loaded into")
def get_architectures(request: Request):
    return JSONResponse(jobs(request).architectures())


@router.get("/jobs", tags=["uploads"], summary="Recent upload jobs")
def list_jobs(request: Request):
    return JSONResponse({"jobs": [_public(j) for j in jobs(request).list(50)]})


@router.get("/jobs/{job_id}", tags=["uploads"], responses=ERRORS,
            summary="An upload job: queued / running (progress) / done / failed (error)")
def get_job(request: Request, job_id: str = PathParam(..., description="the id returned by POST /api/uploads")):
    return JSONResponse(_public(jobs(request).get(job_id)), headers={"Cache-Control": "no-store"})


def _public(job: dict) -> dict:
    out = {k: v for k, v in job.items() if k != "upload"}
    if job.get("state") == "done":
        out["model_url"] = f"/models/{job['model']}"
    return out


@router.post("/uploads", tags=["uploads"], status_code=202,
             responses={413: {"description": "Larger than max_upload_bytes"}, 409: {"description": "Name taken"}, **ERRORS},
             summary="Upload a checkpoint (multipart: file, arch, name[, dataset]); returns a job id",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file", "arch", "name"], "properties": {
                     "file": {"type": "string", "format": "binary",
                              "description": "checkpoint: " + ", ".join(EXTENSIONS)},
                     "arch": {"type": "string"}, "name": {"type": "string"},
                     "dataset": {"type": "string"}}}}}}})
async def post_upload(request: Request):
    store, ex = jobs(request), explorer(request)
    limit = int(request.app.state.settings.max_upload_bytes)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 64 * 1024:
        raise TooLarge(f"upload of {int(length)} bytes is larger than the limit of {limit} bytes "
                       f"(CONVSCOPE_MAX_UPLOAD_BYTES)", limit=limit)
    job_id = store.new_id()
    form = await receive_multipart(request, limit, store.incoming, job_id)
    try:
        fields, upload = form["fields"], form["file"]
        if upload is None:
            raise BadRequest("no file part: send multipart/form-data with fields file, arch and name")
        filename = store.check_filename(upload["filename"])
        if upload["size"] == 0:
            raise BadRequest(f"the uploaded file {filename!r} is empty")
        name = fields.get("name", "").strip()
        try:
            check_model_name(name)
        except InvalidName as e:
            raise BadRequest(str(e)) from None
        if name in ex.model_names():
            raise Conflict(f"a model named {name!r} exists already; choose another name", known=ex.model_names())
        arch = store.check_arch(fields.get("arch", "").strip())
        dataset = fields.get("dataset", "").strip() or "unknown"
        if not all(c.isalnum() or c in "-_." for c in dataset) or len(dataset) > 40:
            raise BadRequest(f"invalid dataset {dataset!r}: letters, digits, '-', '_' or '.'")
        final = store.upload_path(job_id, filename)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload["path"], final)
    except BaseException:
        if form["file"] is not None:
            Path(form["file"]["path"]).unlink(missing_ok=True)
        raise
    job = store.create(job_id, model=name, arch=arch, filename=Path(filename).name, size=upload["size"],
                       dataset=dataset, upload=final)
    return JSONResponse({"id": job_id, "job": _public(job), "url": f"/api/jobs/{job_id}",
                         "page": f"/jobs/{job_id}"}, status_code=202)


async def receive_multipart(request: Request, limit: int, folder: Path, job_id: str) -> dict:
    """Stream a multipart/form-data body: the file part goes straight to ``folder/.partial-<job>``,
    other fields (at most 4 KB each) are kept; more than ``limit`` bytes raises 413 while streaming."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest("send multipart/form-data with fields file (the checkpoint), arch and name; "
                         f"got content-type {request.headers.get('content-type', '')!r}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {"headers": {}, "field": b"", "hname": b"", "hval": b"", "name": None, "file": None, "fh": None}
    fields: dict[str, str] = {}
    result = {"fields": fields, "file": None}

    def on_part_begin():
        state.update(headers={}, field=b"", name=None)

    def on_header_field(data, start, end):
        state["hname"] += data[start:end]

    def on_header_value(data, start, end):
        state["hval"] += data[start:end]

    def on_header_end():
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode(errors="replace")
        filename = disp.get(b"filename")
        if filename is not None and state["name"] == "file":
            if result["file"] is not None:
                raise BadRequest("send one file per upload")
            path = folder / f".partial-{job_id}"
            state["fh"] = open(path, "wb")
            result["file"] = {"filename": Path(filename.decode(errors="replace").replace("\\", "/")).name,
                              "path": str(path), "size": 0}

    def on_part_data(data, start, end):
        if state["fh"] is not None:
            state["fh"].write(data[start:end])
            result["file"]["size"] += end - start
        else:
            state["field"] += data[start:end]
            if len(state["field"]) > 4096:
                raise BadRequest(f"form field {state['name']!r} is longer than 4 KB")

    def on_part_end():
        if state["fh"] is not None:
            state["fh"].close()
            state["fh"] = None
        elif state["name"]:
            fields[state["name"]] = state["field"].decode(errors="replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + 64 * 1024:
                raise TooLarge(f"upload is larger than the limit of {limit} bytes (CONVSCOPE_MAX_UPLOAD_BYTES); "
                               f"stopped after {total} bytes", limit=limit)
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if result["file"] is not None and result["file"]["size"] > limit:
            raise TooLarge(f"the checkpoint has {result['file']['size']} bytes, more than the limit of {limit} bytes",
                           limit=limit)
    except BaseException as e:
        if state["fh"] is not None:
            state["fh"].close()
        if result["file"] is not None:
            Path(result["file"]["path"]).unlink(missing_ok=True)
        if isinstance(e, ExplorerError):
            raise
        if isinstance(e, Exception) and type(e).__module__.startswith("python_multipart"):
            raise BadRequest(f"malformed multipart body: {e}") from None
        raise
    if state["fh"] is not None:
        state["fh"].close()
    return result
