"""The pages: Jinja2 templates over the same functions as the API. Each page embeds a small ``boot``
JSON (names, URLs) and its script fetches the data from the API, so every view is a URL:
model, layer and neuron in the path, view parameters in the query string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import unquote

import gzip
import hashlib
import importlib.util
import re
import threading

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from precompute.declarations import limits

from . import views
from .blobs import LRU, Blob
from .errors import ExplorerError, NotFound, nearest
from .explorer import Explorer
from .responses import HTML, send
from .experiments import experiment_detail, list_experiments
from .jobs import get_job, public_job, recent_jobs, worker_status
from .runs import run_of

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "frontend" / "static"
templates = Jinja2Templates(directory=str(ROOT / "frontend" / "templates"))
router = APIRouter(include_in_schema=False)

#: where a figure's phenomenon comes from: (citation, URL). Links out to read, never loaded by a page.
REFS = {
    "banding": ("Petrov, Voss, Schubert, Cammarata, Goh, Olah: Weight Banding. Distill, 2021",
                "https://distill.pub/2020/circuits/weight-banding/"),
    "branch": ("Voss, Goh, Cammarata, Petrov, Schubert, Olah: Branch Specialization. Distill, 2021",
               "https://distill.pub/2020/circuits/branch-specialization/"),
    "symmetry": ("Alsallakh, Wroge, Miglani, Kokhlikyan: On Symmetries in Convolutional Weights. arXiv:2503.19215, 2025",
                 "https://arxiv.org/abs/2503.19215"),
    "pad": ("Alsallakh, Kokhlikyan, Miglani, Yuan, Reblitz-Richardson: Mind the Pad: CNNs Can Develop Blind Spots. "
            "ICLR 2021", "https://arxiv.org/abs/2010.02178"),
    "bnonly": ("Frankle, Schwab, Morcos: Training BatchNorm and Only BatchNorm. ICLR 2021",
               "https://arxiv.org/abs/2003.00152"),
    "weights": ("Understanding weight distribution in neural network. Cross Validated (Stack Exchange), 2016",
                "https://stats.stackexchange.com/q/198762"),
}
templates.env.globals["REFS"] = REFS
#: the limits the pages' JavaScript and templates use (a <script id="limits"> in base.html), from their one home
templates.env.globals["limits"] = limits.public()


# ---- static files under versioned URLs ---------------------------------------------------------------
#: a versioned URL names the file's content, so it is cached for a year and never revalidated
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".json": "application/json"}


def _plotly_file() -> Optional[Path]:
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


class Assets:
    """The files of ``frontend/static`` (and ``vendor/plotly.min.js`` from the plotly package) under
    ``/assets/<content hash>/<path>``: :meth:`url` gives a page the versioned URL of a file; the route
    serves it with a year-long ``immutable`` Cache-Control when the hash is the file's current one (a
    stale hash still gets today's file, revalidated). Bodies and their gzip are kept per file stamp."""

    def __init__(self):
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple, str, bytes, bytes]] = {}

    def path(self, rel: str) -> Optional[Path]:
        if rel == "vendor/plotly.min.js":
            return _plotly_file()
        try:
            p = (STATIC / rel).resolve()
            return p if STATIC.resolve() in p.parents and p.is_file() else None
        except (ValueError, OSError):  # a NUL byte (/assets/x/%00), a name too long: no such file, a 404
            return None

    def entry(self, rel: str) -> Optional[tuple[str, bytes, bytes]]:
        p = self.path(rel)
        if p is None:
            return None
        st = p.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._files.get(rel)
            if hit and hit[0] == stamp:
                return hit[1:]
        body = p.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:12]
        gz = gzip.compress(body, compresslevel=6, mtime=0)
        with self._lock:
            self._files[rel] = (stamp, digest, body, gz)
        return digest, body, gz

    def url(self, rel: str) -> str:
        e = self.entry(rel)
        return f"/assets/{e[0]}/{rel}" if e else f"/static/{rel}"


assets = Assets()
templates.env.globals["asset"] = assets.url

FAMILIES = ["real", "random", "variant", "user"]


def explorer(request: Request) -> Explorer:
    return request.app.state.explorer


def _defaults(name: str, ctx: dict) -> dict:
    ctx.setdefault("crumbs", [])
    ctx.setdefault("boot", {})
    ctx.setdefault("title", "convscope")
    ctx.setdefault("page", name.removesuffix(".html"))
    return ctx


def render(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
    return templates.TemplateResponse(request, name, _defaults(name, ctx), status_code=status)


def people_error(ex: Explorer, path: str, status: int, message: str, known: Optional[list] = None) -> dict:
    """What the error page of URL path ``path`` says: ``message`` in words for people (what is wrong), the
    nearest matches (at most five links) and one link back to the closest page that exists. Worked out from
    the path, so every error on a page URL gets it whichever layer raised it."""
    segs = [unquote(s) for s in path.split("/") if s]
    short = message.split(". Known ")[0].split(". Layers of ")[0]
    out = {"message": short, "near": [], "back": {"label": "all models", "url": "/"}}
    if segs and segs[0] == "models" and len(segs) >= 2:
        model = segs[1]
        layer = segs[3] if len(segs) >= 4 and segs[2] == "layers" else None
        neuron = segs[5] if layer is not None and len(segs) >= 6 and segs[4] == "neurons" else None
        try:
            g = views.gone(ex, model, layer, neuron)
        except ExplorerError:
            g = None
        if g is not None:
            keep = out["message"] if status == 422 and neuron is None else None  # a malformed name: say why
            out.update(g)
            if keep:
                out["message"] = keep
    elif segs and segs[0] == "experiments":
        out["back"] = {"label": "all experiments", "url": "/experiments"}
        if len(segs) >= 2 and known:  # a handful of experiments: all of them when none is near
            near = nearest(segs[1], known) or (known if len(known) <= 8 else [])
            out["near"] = [{"label": k, "url": f"/experiments/{k}"} for k in near]
    elif segs and segs[0] == "jobs":
        out["back"] = {"label": "all jobs", "url": "/jobs"}
        if known:
            out["near"] = [{"label": k, "url": f"/jobs/{k}"} for k in known[:5]]
    return out


def error_view(ex: Explorer, path: str, status: int, message: str, known: Optional[tuple]) -> tuple[str, dict]:
    e = people_error(ex, path, status, message, list(known) if known else None)
    heading = {404: "Not found", 422: "Bad request"}.get(status, "Something is wrong")
    return "error.html", dict(title=f"{heading} · convscope", code=status, heading=heading, message=e["message"],
                              near=e["near"], back=e["back"], detail=message,
                              crumbs=[{"label": e["back"]["label"], "url": e["back"]["url"]}, {"label": heading}])


def error_page(request: Request, status: int, message: str, known: Optional[list] = None) -> Response:
    """The error page for people (:func:`people_error`), rendered once per (path, error, cache state): a
    link that points at nothing tends to be followed again."""
    blob = request.app.state.pages.blob(explorer(request), "error", request.url.path, status, message,
                                        tuple(known) if known else None)
    return send(request, blob, media_type=HTML, status=status)


@router.get("/assets/{version}/{rel:path}")
def asset_file(request: Request, version: str, rel: str):
    e = assets.entry(rel)
    if e is None:
        raise NotFound(f"no static file {rel!r}")
    digest, body, gz = e
    blob = Blob(body=body, etag=f'"{digest}"', gz=gz if len(body) > 1000 else None)
    return send(request, blob, cache_control=IMMUTABLE if version == digest else "no-cache",
                media_type=_TYPES.get(Path(rel).suffix, "application/octet-stream"))


#: the front door's groups, in order: what was trained first, then experiment variants, then untrained twins
GROUPS = [("trained", "Trained models", "Networks trained to convergence by others (ImageNet, CIFAR-10) and your uploads."),
          ("variant", "Experiment variants", "Short runs trained here with one architectural change each; see Experiments."),
          ("untrained", "Random initialisations", "The same architectures before training: what each phenomenon looks like "
                                                  "without learning.")]


def model_group(m: dict) -> str:
    extra = (m.get("source_detail") or {}) if isinstance(m.get("source_detail"), dict) else {}
    if m["family"] == "random" or m.get("variant") == "random" or extra.get("variant") == "random":
        return "untrained"
    return "variant" if m["family"] == "variant" else "trained"


# ---- the pages over the cache, rendered once per cache state -------------------------------------------
# Each view is a pure function of the explorer and the page's arguments: (template, context). The routes
# (and the fast path in front of FastAPI, server/api.py) serve them through a PageCache, so a page is
# rendered once per state of the records it shows, not once per request.
def home_view(ex: Explorer) -> tuple[str, dict]:
    models = views.list_models(ex)
    for m in models:
        run = run_of(ex.record(m["name"]))
        m["variant"] = run.variant if run is not None else None
        m["group"] = model_group(m)
    families = [f for f in FAMILIES if any(m["family"] == f for m in models)] + sorted(
        {m["family"] for m in models} - set(FAMILIES))
    groups = [{"id": g, "title": t, "lede": d, "models": [m for m in models if m["group"] == g]} for g, t, d in GROUPS]
    f = ex.findings() if models else None
    return "home.html", dict(title="convscope · models", models=models, families=families,
                             groups=[g for g in groups if g["models"]], f=f, boot={"page": "home", "findings": teaser(f)})


def teaser(f: Optional[dict]) -> Optional[dict]:
    """The front door's findings: the top row of each ranking (trained models only), with its numbers."""
    if not f:
        return None
    pick = lambda rows: next((r for r in rows if not r.get("untrained")), None)  # noqa: E731
    return {"banding": pick(f["banding"]), "symmetry": pick(f["symmetry_drops"]), "gamma": pick(f["gamma"]),
            "colour": pick(f["colour_axis"]), "thresholds": f["thresholds"]}


def findings_view(ex: Explorer) -> tuple[str, dict]:
    f = ex.findings()
    return "findings.html", dict(title="findings · convscope", f=f, crumbs=[{"label": "Findings"}],
                                 boot={"page": "findings", "findings": f})


def model_view(ex: Explorer, model: str) -> tuple[str, dict]:
    detail = views.model_detail(ex, model)
    return "model.html", dict(title=f"{model} · convscope", m=detail,
                              crumbs=[{"label": "Models", "url": "/"}, {"label": model}],
                              boot={"page": "model", "model": model, "api": f"/api/models/{model}"})


def layer_view(ex: Explorer, model: str, layer: str, overlay: Optional[str]) -> tuple[str, dict]:
    ctx = views.layer_context(ex, model, layer)
    summary = views.model_detail(ex, model)["summary"]
    overlay_ok, overlay_gone = views.check_pairs(ex, overlay, "histogram")
    label = f"{ctx['human']} ({layer})" if ctx.get("human") else layer
    return "layer.html", dict(title=f"{ctx.get('human') or layer} · {model} · convscope", c=ctx, summary=summary,
                              crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                                      {"label": label}],
                              boot={"page": "layer", "model": model, "layer": layer, "context": ctx,
                                    "overlay_gone": overlay_gone})


def neuron_view(ex: Explorer, model: str, layer: str, neuron: str) -> tuple[str, dict]:
    _, row = ex.row(model, layer)
    i = views.neuron_index(model, layer, row, neuron)  # the API's rule: 422 not an index, 404 out of range
    data = views.neuron(ex, model, layer, i)
    data["human"] = ex.human_names(model).get(layer)
    return "neuron.html", dict(title=f"neuron {i} · {layer} · {model} · convscope", d=data,
                               crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                                       {"label": layer, "url": f"/models/{model}/layers/{layer}"},
                                       {"label": f"neuron {i}"}],
                               boot={"page": "neuron", "model": model, "layer": layer, "neuron": i,
                                     "context": views.layer_context(ex, model, layer)})


def compare_view(ex: Explorer, pairs: Optional[str]) -> tuple[str, dict]:
    models = views.list_models(ex)
    ok, gone = views.check_pairs(ex, pairs, "nmf")
    return "compare.html", dict(title="compare · convscope", crumbs=[{"label": "Compare"}],
                                boot={"page": "compare", "models": [m["name"] for m in models],
                                      "pairs_given": pairs is not None, "pairs_ok": ok, "pairs_gone": gone})


def _one_model(ex: Explorer, model: str, *rest) -> tuple:
    return ex.record(model)["_stamp"]  # also the 422/404 of a bad model name, before any rendering


def _layer_state(ex: Explorer, model: str, layer: str, overlay: Optional[str]) -> tuple:
    # overlays name other models' layers: the whole cache's state then
    return ex.record(model)["_stamp"], (ex.cache_state() if overlay else None)


def _whole_cache(ex: Explorer, *args) -> tuple:
    return ex.cache_state()


#: page -> (view, the state of the cache it shows: its records' stamps)
VIEWS = {"home": (home_view, _whole_cache), "findings": (findings_view, _whole_cache),
         "model": (model_view, _one_model), "layer": (layer_view, _layer_state),
         "neuron": (neuron_view, _one_model), "compare": (compare_view, _whole_cache),
         "error": (error_view, _whole_cache)}


def render_html(name: str, ctx: dict) -> str:
    """A template rendered to text, outside a request (the templates use no request; the upload page, which
    does, is rendered by :func:`render`)."""
    return templates.get_template(name).render(_defaults(name, ctx))


class PageCache:
    """Rendered pages as :class:`Blob` (HTML bytes, their gzip, ETag), in an LRU bounded by entries and bytes,
    keyed by (page, arguments, the stamps of the records the page shows). A page is rendered on the first
    request after its records change and served from memory after that. Templates and static files are
    read when the page is rendered: a changed template shows after a restart (or a change in the cache)."""

    def __init__(self, max_items: int = 2048, max_bytes: int = 128 << 20, max_errors: int = 512):
        self._lru = LRU(max_items, max_bytes, sizeof=lambda b: b.size)
        # error pages apart: a client requesting many bad URLs must not push the good pages out
        self._errors = LRU(max_errors, max_bytes // 8, sizeof=lambda b: b.size)
        self._lock = threading.Lock()
        self._rendering: dict[tuple, threading.Lock] = {}
        #: pages rendered since start (each miss that rendered)
        self.renders = 0

    def blob(self, ex: Explorer, page: str, *args, cached_only: bool = False) -> Optional[Blob]:
        """The page (``cached_only``: None unless it is in memory)."""
        view, state = VIEWS[page]
        key = (page, args, state(ex, *args))
        lru = self._errors if page == "error" else self._lru
        blob = lru.get(key)
        if blob is not None or cached_only:
            return blob
        # one render of a page at a time: the requests that miss it meanwhile (all clients at once, right
        # after a record changed) wait for that render instead of each rendering it again
        with self._lock:
            rendering = self._rendering.setdefault(key, threading.Lock())
        try:
            with rendering:
                blob = lru.get(key)
                if blob is None:
                    name, ctx = view(ex, *args)
                    blob = Blob.make(render_html(name, ctx).encode())
                    lru.put(key, blob)
                    with self._lock:
                        self.renders += 1
        finally:
            with self._lock:
                if self._rendering.get(key) is rendering:
                    del self._rendering[key]
        return blob


def page(request: Request, name: str, *args) -> Response:
    return send(request, request.app.state.pages.blob(explorer(request), name, *args), media_type=HTML)


@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    return page(request, "home")


@router.get("/findings", response_class=HTMLResponse)
def findings_page(request: Request):
    return page(request, "findings")


@router.get("/models/{model}", response_class=HTMLResponse)
def model_page(request: Request, model: str):
    return page(request, "model", model)


@router.get("/models/{model}/layers/{layer}", response_class=HTMLResponse)
def layer_page(request: Request, model: str, layer: str):
    return page(request, "layer", model, layer, request.query_params.get("overlay"))


@router.get("/models/{model}/layers/{layer}/neurons/{neuron}", response_class=HTMLResponse)
def neuron_page(request: Request, model: str, layer: str, neuron: str):
    return page(request, "neuron", model, layer, neuron)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request):
    return page(request, "compare", request.query_params.get("pairs"))


#: the cached pages on the fast path (server/api.py: FastPath): (pattern on the decoded path, the page from
#: memory, or None: the route above renders it in the thread pool); the same pages as the routes above
def _fast(page: str, *names: str):
    return lambda st, q, *groups: st.pages.blob(st.explorer, page, *groups, *(q.get(n) for n in names),
                                                cached_only=True)


FAST_PAGES = [
    (re.compile(r"^/$"), _fast("home")),
    (re.compile(r"^/findings$"), _fast("findings")),
    (re.compile(r"^/compare$"), _fast("compare", "pairs")),
    (re.compile(r"^/models/([^/]+)$"), _fast("model")),
    (re.compile(r"^/models/([^/]+)/layers/([^/]+)$"), _fast("layer", "overlay")),
    (re.compile(r"^/models/([^/]+)/layers/([^/]+)/neurons/([^/]+)$"), _fast("neuron")),
]


@router.get("/experiments", response_class=HTMLResponse)
def experiments_page(request: Request):
    data = list_experiments(explorer(request))
    return render(request, "experiments.html", title="experiments · convscope", d=data,
                  crumbs=[{"label": "Experiments"}], boot={"page": "experiments"})


@router.get("/experiments/{experiment}", response_class=HTMLResponse)
def experiment_page(request: Request, experiment: str):
    d = experiment_detail(explorer(request), experiment)
    return render(request, "experiment.html", title=f"{experiment} · experiments · convscope", d=d,
                  crumbs=[{"label": "Experiments", "url": "/experiments"}, {"label": d["title"]}],
                  boot={"page": "experiment", "experiment": experiment, "api": d["api"], "data": d})


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request):
    settings = request.app.state.settings
    return render(request, "upload.html", title="add a model · convscope", crumbs=[{"label": "Add a model"}],
                  max_bytes=settings.max_upload_bytes,
                  jobs=[public_job(j) for j in recent_jobs(settings, 10, "upload")],
                  boot={"page": "upload", "max_bytes": settings.max_upload_bytes})


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request):
    """Every recent job (precompute, upload, train), newest first, with its state and progress, and the
    workers' state (the embedded worker alive, restarted N times, or down with its last exit), the same
    object ``/healthz`` and ``/api/jobs`` report: queued jobs that never start are explained here."""
    settings = request.app.state.settings
    jobs = [public_job(j) for j in recent_jobs(settings, 200)]
    counts = {s: sum(1 for j in jobs if j["state"] == s) for s in ("queued", "running", "done", "failed")}
    return render(request, "jobs.html", title="jobs · convscope", crumbs=[{"label": "Jobs"}], jobs=jobs,
                  counts=counts, workers=worker_status(settings, request.app.state.embedded), boot={"page": "jobs"})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str):
    job = public_job(get_job(request.app.state.settings, job_id))
    return render(request, "job.html", title=f"{job['kind']} job · {job['model'] or job_id} · convscope",
                  crumbs=[{"label": "Jobs", "url": "/jobs"}, {"label": f"{job['kind']} job" + (f" · {job['model']}" if job["model"] else "")}],
                  job=job, boot={"page": "job", "job": job_id})


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request):
    """The OpenAPI schema rendered as a page (FastAPI's own /docs loads its assets from a CDN)."""
    schema = request.app.openapi()
    endpoints = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            params = [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                       "type": (p.get("schema") or {}).get("type", ""),
                       "description": p.get("description") or (p.get("schema") or {}).get("description", "")}
                      for p in op.get("parameters", [])]
            body = (op.get("requestBody") or {}).get("content", {})
            endpoints.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                              "tags": op.get("tags", []), "params": params,
                              "body": list(body), "responses": {k: v.get("description", "")
                                                                for k, v in op.get("responses", {}).items()}})
    return render(request, "apidocs.html", title="API · convscope", endpoints=endpoints,
                  description=schema.get("info", {}).get("description", ""),
                  crumbs=[{"label": "API"}], boot={"page": "apidocs"})
