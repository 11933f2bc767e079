"""The app factory. ``uvicorn server.app:create_app --factory`` (what ``convscope serve`` runs).

No module-level app and no side effects at import: everything is built in :func:`create_app`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from precompute.jobs import EmbeddedWorker
from precompute.settings import Settings, get_settings

from . import api, jobs, pages
from .blobs import Blob
from .errors import ExplorerError
from .explorer import Explorer
from .responses import HTML, JSON, error_headers, error_json, error_status, send

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "frontend" / "static"

DESCRIPTION = """A microscope for the **weights** of convolutional networks, over the precomputed cache.

Errors are JSON: `{"detail": message, "known": [...]}` (404 for an unknown name, 422 for a malformed
one or a bad parameter; the message names the bad value and what exists). Cached results carry an
`ETag` (the payload's sha256): send `If-None-Match` to get `304`. Bodies are gzipped when asked for.
A cached entry that does not verify is never served: it is discarded, a precompute job restores it,
and the request answers `503` with the job's id (`Retry-After`).

Jobs (uploads, precompute) go through the job queue and are run by `convscope worker` processes
(`convscope serve` starts one); `GET /api/jobs/{job_id}` reports their state and progress.
"""


def plotly_path() -> Path:
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed; pip install plotly")
    return Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


class _Vendor:
    """plotly.min.js from the plotly package, read and gzipped once, served with an ETag."""

    def __init__(self):
        self._blob: Optional[Blob] = None
        self._lock = threading.Lock()

    def blob(self) -> Blob:
        with self._lock:
            if self._blob is None:
                body = plotly_path().read_bytes()
                self._blob = Blob(body=body, etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
                                  gz=gzip.compress(body, compresslevel=6, mtime=0))
            return self._blob


class ConvscopeApp(FastAPI):
    """FastAPI with a fast path in front: cached results (``api.FAST_ROUTES``) and rendered pages
    (``pages.FAST_PAGES``) are answered from memory before FastAPI's own per-request work; everything else
    (and every error, and what is not in memory yet) goes through FastAPI."""

    fast: Optional["api.FastPath"] = None

    async def __call__(self, scope, receive, send) -> None:
        if self.fast is not None and await self.fast.serve(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api") or request.url.path == "/openapi.json"


def create_app(settings: Optional[Settings] = None, embedded: Optional[EmbeddedWorker] = None) -> FastAPI:
    """The app over ``settings``' cache; ``embedded``: the supervised worker ``convscope serve`` runs
    beside it, whose state ``/healthz`` and the jobs API report."""
    settings = settings or get_settings()
    app = ConvscopeApp(title="convscope", version="0.1.0", description=DESCRIPTION,
                  docs_url=None, redoc_url=None,  # their default pages load from a CDN; /api/docs is local
                  redirect_slashes=False,  # "/x/..%2f/" is a 404, not a redirect to another path
                  openapi_tags=[{"name": "models"}, {"name": "layers"}, {"name": "compare"}, {"name": "uploads"},
                                {"name": "jobs"}])
    app.state.settings = settings
    app.state.embedded = embedded
    app.state.explorer = Explorer(settings)
    app.state.pages = pages.PageCache()
    app.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=6)
    app.fast = api.FastPath(lambda: app.state, [(p, f, JSON) for p, f in api.FAST_ROUTES]
                            + [(p, f, HTML) for p, f in pages.FAST_PAGES])

    @app.exception_handler(ExplorerError)
    async def explorer_error(request: Request, exc: ExplorerError):
        if _wants_json(request):
            return error_json(exc)
        page = pages.error_page(request, error_status(exc), exc.message, exc.extra.get("known"))
        page.headers.update(error_headers(exc) or {})
        return page

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("path", "query", "body"))
            parts.append(f"{where or 'request'}: {err.get('msg')} (got {err.get('input')!r})")
        message = "invalid request: " + "; ".join(parts)
        if _wants_json(request):
            return JSONResponse({"detail": message, "errors": [
                {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
                for e in exc.errors()]}, status_code=422)
        return pages.error_page(request, 422, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no such page: {request.url.path}"
            if _wants_json(request):
                return JSONResponse({"detail": f"no such endpoint: {request.url.path}; see /openapi.json "
                                               f"or /api/docs for the endpoints", "endpoints": _endpoints(app)},
                                    status_code=404)
            return pages.error_page(request, 404, message)
        if _wants_json(request):
            return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
        return pages.error_page(request, exc.status_code, str(exc.detail))

    vendor = _Vendor()

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js(request: Request):
        return send(request, vendor.blob(), cache_control="public, max-age=86400", media_type="text/javascript")

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        """200 while the server answers and its embedded worker (if it has one) runs; 503 while that worker
        is down (it is being restarted). ``workers`` says how many workers are alive either way."""
        workers = jobs.worker_status(settings, embedded)
        ok = workers["ok"] if embedded is not None else True
        return JSONResponse({"ok": ok, "models": len(app.state.explorer.model_names()), "workers": workers},
                            status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})

    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _endpoints(app: FastAPI) -> list[str]:
    """``METHOD /path`` of every documented API endpoint (from the OpenAPI schema)."""
    return [f"{m.upper()} {path}" for path, ops in app.openapi().get("paths", {}).items() for m in ops]
