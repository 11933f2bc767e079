"""server/responses.py: the HTTP status of each domain error, and one sending path: the fast path in front of
FastAPI answers exactly what the routes behind it answer (status, headers, body), for results, errors, 304s
and gzip, on the committed cache of tests/test_api_bodies.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from precompute.settings import Settings
from server import errors
from server.app import create_app
from server.responses import error_headers, error_status

CACHE = Path(__file__).resolve().parent / "data" / "api-bodies" / "cache"


@pytest.mark.parametrize("error, status, retry", [
    (errors.BadRequest, 422, None), (errors.NotFound, 404, None), (errors.Conflict, 409, None),
    (errors.TooLarge, 413, None), (errors.CacheProblem, 503, None), (errors.Recomputing, 503, "5"),
    (errors.Busy, 503, "3")])
def test_each_domain_error_has_its_status(error, status, retry):
    e = error("what went wrong", known=["a"])
    assert error_status(e) == status
    assert (error_headers(e) or {}).get("Retry-After") == retry
    assert e.body() == {"detail": "what went wrong", "known": ["a"]}


def test_every_domain_error_class_is_mapped_on_purpose():
    """A new error class falls back to its parent's status: list it here once its status is decided."""
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ExplorerError)}
    assert classes == {errors.ExplorerError, errors.BadRequest, errors.NotFound, errors.Conflict, errors.TooLarge,
                       errors.CacheProblem, errors.Recomputing, errors.Busy}


@pytest.fixture
def app(tmp_path):
    shutil.copytree(CACHE, tmp_path / "cache")
    return create_app(Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu"))


def _answers(app, urls, headers, fast: bool):
    app.fast, kept = (app.fast if fast else None), app.fast
    try:
        with TestClient(app) as client:
            out = {}
            for u in urls:
                r = client.get(u, headers=headers)
                out[u] = (r.status_code, sorted((k, v) for k, v in r.headers.items() if k != "content-length"),
                          r.content)
            return out
    finally:
        app.fast = kept


def test_the_fast_path_answers_what_the_routes_answer(app):
    with TestClient(app) as client:
        name = client.get("/api/models").json()["models"][0]["name"]
        rec = client.get(f"/api/models/{name}").json()
        layer = rec["analyses"]["nmf"]["layers"][0]
        etag = client.get(f"/api/models/{name}/layers/{layer}/nmf").headers["etag"]
    urls = ["/api/models", f"/api/models/{name}", f"/api/models/{name}/layers/{layer}",
            f"/api/models/{name}/layers/{layer}/nmf", f"/api/models/{name}/layers/{layer}/neurons/0",
            f"/api/models/{name}/layers/{layer}/neurons/99999", f"/api/models/{name}/layers/nope",
            f"/api/models/{name}/layers/{layer}/nope", "/api/models/Bad%20Name", f"/models/{name}",
            f"/models/{name}/layers/{layer}"]
    for headers in ({}, {"Accept-Encoding": "gzip"}, {"If-None-Match": f'"x", {etag}'}):
        routed = _answers(app, urls, headers, fast=False)
        fast = _answers(app, urls, headers, fast=True)  # the pages are in memory now: the fast path serves them
        assert fast == routed, [u for u in urls if fast[u] != routed[u]]
    assert routed[f"/api/models/{name}/layers/{layer}/nmf"][0] == 304  # the If-None-Match list named it
    assert {routed[u][0] for u in urls[5:9]} == {404, 422}
