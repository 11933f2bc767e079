"""Behaviour kept through refactoring: the JSON API answers byte-identical bodies on a fixed cache.

``tests/data/api-bodies/cache`` is a committed result cache (the precomputed ``cifar10-cnn`` of the server
fixture, every analysis); ``bodies.json`` holds, for every GET of the API over it (the model list, the
model, each layer, each result, two neurons per layer, findings, experiments, clusters, and requests that
must fail), the status, content type, ETag and the sha256 of the body, as the code answered before the
refactoring of issue 17. Any change in what a client receives fails here, naming the URLs.

A deliberate change of the API: record again and commit the new ``bodies.json`` with it,

    CONVSCOPE_RECORD_API_BODIES=1 .venv/bin/python -m pytest -q tests/test_api_bodies.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from precompute.settings import Settings
from server.app import create_app

DATA = Path(__file__).resolve().parent / "data" / "api-bodies"
BODIES = DATA / "bodies.json"


def _urls(client: TestClient) -> list[str]:
    """Every GET the recording covers, from the cache itself."""
    urls = ["/api/models", "/api/findings", "/api/experiments", "/api/experiments/banding", "/api/architectures",
            "/api/models/nope", "/api/clusters?pairs=a:b&k=3", "/api/clusters?pairs=a:b&k=99"]
    nmf = []
    for name in [m["name"] for m in client.get("/api/models").json()["models"]]:
        rec = client.get(f"/api/models/{name}").json()
        urls.append(f"/api/models/{name}")
        for row in rec["inventory"]:
            urls += [f"/api/models/{name}/layers/{row['name']}", f"/api/models/{name}/layers/{row['name']}/neurons/0",
                     f"/api/models/{name}/layers/{row['name']}/neurons/+3"]
        for analysis, info in sorted(rec["analyses"].items()):
            for layer in info["layers"]:
                urls.append(f"/api/models/{name}/layers/{layer}/{analysis}")
                if analysis == "nmf":
                    nmf.append(f"{name}:{layer}")
        urls.append(f"/api/models/{name}/layers/nope/nmf")
    urls += ["/api/clusters?pairs=" + ",".join(nmf[:2]) + "&k=5", "/api/clusters?pairs=" + ",".join(nmf[:1] * 17)]
    return urls


def _answer(client: TestClient, url: str) -> dict:
    r = client.get(url)
    return {"status": r.status_code, "type": r.headers.get("content-type"), "etag": r.headers.get("etag"),
            "sha256": hashlib.sha256(r.content).hexdigest()}


@pytest.fixture
def client(tmp_path):
    shutil.copytree(DATA / "cache", tmp_path / "cache")  # the app may write (clusters' group entries)
    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", device="cpu")
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_api_answers_the_recorded_bodies(client):
    if os.environ.get("CONVSCOPE_RECORD_API_BODIES") == "1":
        BODIES.write_text(json.dumps({u: _answer(client, u) for u in _urls(client)}, indent=1) + "\n")
    recorded = json.loads(BODIES.read_text())
    assert len(recorded) > 80 and set(_urls(client)) == set(recorded), "the cache's URLs are not the recorded ones"
    changed = {u: (want, got) for u, want in recorded.items() if (got := _answer(client, u)) != want}
    assert not changed, f"{len(changed)} of {len(recorded)} answers changed:\n" + "\n".join(
        f"{u}: {want} -> {got}" for u, (want, got) in list(changed.items())[:20])
