"""The pages: Jinja2 templates over the same functions as the API. Each page embeds a small ``boot``
JSON (names, URLs) and its script fetches the data from the API, so every view is a URL:
model, layer and neuron in the path, view parameters in the query string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from .data import BadRequest, Explorer, neuron_count
from .jobs import get_job, public_job, recent_jobs

ROOT = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(ROOT / "frontend" / "templates"))
router = APIRouter(include_in_schema=False)

FAMILIES = ["real", "random", "variant", "user"]


def explorer(request: Request) -> Explorer:
    return request.app.state.explorer


def render(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
    ctx.setdefault("crumbs", [])
    ctx.setdefault("boot", {})
    ctx.setdefault("title", "convscope")
    ctx.setdefault("page", name.removesuffix(".html"))
    return templates.TemplateResponse(request, name, ctx, status_code=status)


def error_page(request: Request, status: int, message: str, known: Optional[list] = None) -> HTMLResponse:
    segs = [s for s in request.url.path.split("/") if s]
    base = None
    if known and segs and segs[0] == "models":
        if len(segs) >= 4 and segs[2] == "layers" and len(segs) >= 2:
            try:
                explorer(request).record(segs[1])
                base = f"/models/{segs[1]}/layers/"
            except Exception:
                base = "/models/"
        else:
            base = "/models/"
    elif known and segs and segs[0] == "experiments":
        base = "/experiments/"
    links = [{"label": k, "url": (base + k) if base else None} for k in (known or [])][:200]
    return render(request, "error.html", status=status, title=f"{status} · convscope", code=status,
                  message=message, links=links, crumbs=[{"label": "Error"}])


@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    models = explorer(request).list_models()
    families = [f for f in FAMILIES if any(m["family"] == f for m in models)] + sorted(
        {m["family"] for m in models} - set(FAMILIES))
    return render(request, "home.html", title="convscope · models", models=models, families=families,
                  boot={"page": "home"})


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
    return render(request, "layer.html", title=f"{layer} · {model} · convscope", c=ctx, summary=summary,
                  crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                          {"label": layer}],
                  boot={"page": "layer", "model": model, "layer": layer, "context": ctx})


@router.get("/models/{model}/layers/{layer}/neurons/{neuron}", response_class=HTMLResponse)
def neuron_page(request: Request, model: str, layer: str, neuron: str):
    ex = explorer(request)
    _, row = ex.row(model, layer)
    n = neuron_count(row)
    try:
        i = int(neuron)
    except ValueError:
        raise BadRequest(f"neuron must be an integer index in 0..{(n or 1) - 1}; got {neuron!r}",
                         range=[0, (n or 1) - 1]) from None
    data = ex.neuron(model, layer, i)
    return render(request, "neuron.html", title=f"neuron {i} · {layer} · {model} · convscope", d=data,
                  crumbs=[{"label": "Models", "url": "/"}, {"label": model, "url": f"/models/{model}"},
                          {"label": layer, "url": f"/models/{model}/layers/{layer}"}, {"label": f"neuron {i}"}],
                  boot={"page": "neuron", "model": model, "layer": layer, "neuron": i,
                        "context": ex.layer_context(model, layer)})


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request):
    models = explorer(request).list_models()
    return render(request, "compare.html", title="compare · convscope", crumbs=[{"label": "Compare"}],
                  boot={"page": "compare", "models": [m["name"] for m in models]})


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


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str):
    job = public_job(get_job(request.app.state.settings, job_id))
    first = ({"label": "Add a model", "url": "/upload"} if job["kind"] == "upload" else
             {"label": job["model"], "url": f"/models/{job['model']}"} if job["kind"] == "precompute" and job["model"]
             else {"label": "Jobs"})
    return render(request, "job.html", title=f"{job['kind']} job · {job['model'] or job_id} · convscope",
                  crumbs=[first, {"label": f"{job['kind']} job"}], job=job, boot={"page": "job", "job": job_id})


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
