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
import threading

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from .data import Explorer, ExplorerError, NotFound, nearest
from .jobs import get_job, public_job, recent_jobs, worker_status

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
        p = (STATIC / rel).resolve()
        return p if STATIC.resolve() in p.parents and p.is_file() else None

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


def render(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
    ctx.setdefault("crumbs", [])
    ctx.setdefault("boot", {})
    ctx.setdefault("title", "convscope")
    ctx.setdefault("page", name.removesuffix(".html"))
    return templates.TemplateResponse(request, name, ctx, status_code=status)


def people_error(request: Request, status: int, message: str, known: Optional[list] = None) -> dict:
    """What the error page says: ``message`` in words for people (what is wrong), the nearest matches
    (at most five links) and one link back to the closest page that exists. Worked out from the path, so
    every error on a page URL gets it whichever layer raised it."""
    segs = [unquote(s) for s in request.url.path.split("/") if s]
    ex = explorer(request)
    short = message.split(". Known ")[0].split(". Layers of ")[0]
    out = {"message": short, "near": [], "back": {"label": "all models", "url": "/"}}
    if segs and segs[0] == "models" and len(segs) >= 2:
        model = segs[1]
        layer = segs[3] if len(segs) >= 4 and segs[2] == "layers" else None
        neuron = segs[5] if layer is not None and len(segs) >= 6 and segs[4] == "neurons" else None
        try:
            g = ex.gone(model, layer, neuron)
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


def error_page(request: Request, status: int, message: str, known: Optional[list] = None) -> HTMLResponse:
    e = people_error(request, status, message, known)
    heading = {404: "Not found", 422: "Bad request"}.get(status, "Something is wrong")
    return render(request, "error.html", status=status, title=f"{heading} · convscope", code=status, heading=heading,
                  message=e["message"], near=e["near"], back=e["back"], detail=message,
                  crumbs=[{"label": e["back"]["label"], "url": e["back"]["url"]}, {"label": heading}])


@router.get("/assets/{version}/{rel:path}")
def asset_file(request: Request, version: str, rel: str):
    e = assets.entry(rel)
    if e is None:
        raise NotFound(f"no static file {rel!r}")
    digest, body, gz = e
    headers = {"ETag": f'"{digest}"', "Vary": "Accept-Encoding",
               "Cache-Control": IMMUTABLE if version == digest else "no-cache"}
    if request.headers.get("if-none-match") == f'"{digest}"':
        return Response(status_code=304, headers=headers)
    media = _TYPES.get(Path(rel).suffix, "application/octet-stream")
    if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1000:
        return Response(gz, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return Response(body, media_type=media, headers=headers)


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


@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    ex = explorer(request)
    models = ex.list_models()
    for m in models:
        rec = ex.record(m["name"])
        m["variant"] = ((rec.get("spec") or {}).get("extra") or {}).get("variant")
        m["group"] = model_group(m)
    families = [f for f in FAMILIES if any(m["family"] == f for m in models)] + sorted(
        {m["family"] for m in models} - set(FAMILIES))
    groups = [{"id": g, "title": t, "lede": d, "models": [m for m in models if m["group"] == g]} for g, t, d in GROUPS]
    f = ex.findings() if models else None
    return render(request, "home.html", title="convscope · models", models=models, families=families,
                  groups=[g for g in groups if g["models"]], f=f, boot={"page": "home", "findings": teaser(f)})


def teaser(f: Optional[dict]) -> Optional[dict]:
    """The front door's findings: the top row of each ranking (trained models only), with its numbers."""
    if not f:
        return None
    pick = lambda rows: next((r for r in rows if not r.get("untrained")), None)  # noqa: E731
    return {"banding": pick(f["banding"]), "symmetry": pick(f["symmetry_drops"]), "gamma": pick(f["gamma"]),
            "colour": pick(f["colour_axis"]), "thresholds": f["thresholds"]}


@router.get("/findings", response_class=HTMLResponse)
def findings_page(request: Request):
    f = explorer(request).findings()
    return render(request, "findings.html", title="findings · convscope", f=f, crumbs=[{"label": "Findings"}],
                  boot={"page": "findings", "findings": f})


@router.get("/models/{model}", response_class=HTMLResponse)
def model_page(request: Request, model: str):
    detail = explorer(request).model_detail(model)
    return render(request, "model.html", title=f"{model} · convscope", m=detail,
                  crumbs=[{"label": "Models", "url": "/"}, {"label": model}],
                  boot={"page": "model", "model": model, "api": f"/api/models/{model}"})


@router.get("/models/{model}/layers/{layer}", response_class=HTMLResponse)
def layer_page(request: Request, model: str, layer: str):
    ex = explorer(request)
    ctx = ex.layer_context(model, layer)
    summary = ex.model_detail(model)["summary"]
    overlay_ok, overlay_gone = ex.check_pairs(request.query_params.get("overlay"), "histogram")
    label = f"{ctx['human']} ({layer})" if ctx.get("human") else layer
    return render(request, "layer.html", title=f"{ctx.get('human') or layer} · {model} · convscope", c=ctx, summary=summary,
                  crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                          {"label": label}],
                  boot={"page": "layer", "model": model, "layer": layer, "context": ctx,
                        "overlay_gone": overlay_gone})


@router.get("/models/{model}/layers/{layer}/neurons/{neuron}", response_class=HTMLResponse)
def neuron_page(request: Request, model: str, layer: str, neuron: str):
    ex = explorer(request)
    _, row = ex.row(model, layer)
    i = ex.neuron_index(model, layer, row, neuron)  # the API's rule: 422 not an index, 404 out of range
    data = ex.neuron(model, layer, i)
    data["human"] = ex.human_names(model).get(layer)
    return render(request, "neuron.html", title=f"neuron {i} · {layer} · {model} · convscope", d=data,
                  crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                          {"label": layer, "url": f"/models/{model}/layers/{layer}"}, {"label": f"neuron {i}"}],
                  boot={"page": "neuron", "model": model, "layer": layer, "neuron": i,
                        "context": ex.layer_context(model, layer)})


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request):
    ex = explorer(request)
    models = ex.list_models()
    given = request.query_params.get("pairs")
    ok, gone = ex.check_pairs(given, "nmf")
    return render(request, "compare.html", title="compare · convscope", crumbs=[{"label": "Compare"}],
                  boot={"page": "compare", "models": [m["name"] for m in models], "pairs_given": given is not None,
                        "pairs_ok": ok, "pairs_gone": gone})


@router.get("/experiments", response_class=HTMLResponse)
def experiments_page(request: Request):
    from .experiments import list_experiments

    data = list_experiments(explorer(request))
    return render(request, "experiments.html", title="experiments · convscope", d=data,
                  crumbs=[{"label": "Experiments"}], boot={"page": "experiments"})


@router.get("/experiments/{experiment}", response_class=HTMLResponse)
def experiment_page(request: Request, experiment: str):
    from .experiments import experiment_detail

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
