"""The pages, rendered over the real precomputed cache (no browser: see test_browser.py for that)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

from server_fixtures import REPO, first_with  # noqa: E402

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


def boot(html: str) -> dict:
    m = re.search(r'<script id="boot" type="application/json">(.*?)</script>', html, re.S)
    assert m, "page has no boot JSON"
    return json.loads(m.group(1))


def test_home_lists_every_model_as_a_card(srv_client, srv_models, srv_records):
    r = srv_client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for m in srv_models:
        assert f'data-name="{m}"' in r.text
        assert f'href="/models/{m}"' in r.text
    families = {rec["spec"]["family"] for rec in srv_records.values()}
    for f in families:
        assert f'data-family="{f}"' in r.text
    assert 'id="filter-text"' in r.text


def test_model_page(srv_client, srv_records):
    for name, rec in srv_records.items():
        r = srv_client.get(f"/models/{name}")
        assert r.status_code == 200
        for fig in ("symmetry", "banding", "gamma", "sparsity"):
            assert f'id="fig-{fig}"' in r.text
        for row in rec["inventory"]:
            assert f'data-layer="{row["name"]}"' in r.text
        assert boot(r.text) == {"page": "model", "model": name, "api": f"/api/models/{name}"}
        assert '<script src="/static/js/model.js"></script>' in r.text
        # breadcrumbs: Models > model
        assert 'aria-label="breadcrumbs"' in r.text and '<a href="/">Models</a>' in r.text


def test_layer_page_shows_the_figures_that_apply(srv_client, srv_records):
    for name, rec in srv_records.items():
        for row in rec["inventory"]:
            r = srv_client.get(f"/models/{name}/layers/{row['name']}")
            assert r.status_code == 200, (name, row["name"])
            have = {a for a, i in rec["analyses"].items() if row["name"] in i["layers"]}
            assert ('id="neuron-grid"' in r.text) == ("nmf" in have)
            assert ('id="fig-svd"' in r.text) == ("svd" in have)
            assert ('id="fig-histogram"' in r.text) == ("histogram" in have)
            assert ('id="fig-fcspatial"' in r.text) == ("fc-spatial" in have)
            b = boot(r.text)
            assert b["model"] == name and b["layer"] == row["name"] and b["context"]["row"] == row
            assert f'<a href="/models/{name}">{name}</a>' in r.text  # breadcrumb


def test_neuron_page(srv_client, srv_records):
    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(f"/models/{model}/layers/{layer}/neurons/0")
    assert r.status_code == 200
    assert 'id="reduced"' in r.text and 'id="neuron-data"' in r.text
    assert f'<a href="/models/{model}/layers/{layer}">{layer}</a>' in r.text
    assert "neuron 0" in r.text


@pytest.mark.parametrize("path,status,word", [
    ("/models/no-such-model", 404, "no-such-model"),
    ("/models/{m}/layers/no.such.layer", 404, "no.such.layer"),
    ("/models/{m}/layers/{l}/neurons/100000", 404, "out of range"),
    ("/models/{m}/layers/{l}/neurons/abc", 422, "integer"),
    ("/models/BAD", 422, "invalid model name"),
    ("/jobs/nope", 422, "invalid job id"),
    ("/nothing/here", 404, "no such page"),
])
def test_error_pages_say_what_exists(srv_client, srv_records, path, status, word):
    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(path.format(m=model, l=layer))
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert word in r.text
    if "no-such-model" in path:
        for m in srv_records:
            assert f'href="/models/{m}"' in r.text
    if "no.such.layer" in path:
        assert f'href="/models/{model}/layers/{layer}"' in r.text


def test_compare_upload_job_and_docs_pages(srv_client, srv_models):
    r = srv_client.get("/compare?pairs=x:y&k=5")
    assert r.status_code == 200 and boot(r.text)["models"] == srv_models
    r = srv_client.get("/upload")
    assert r.status_code == 200 and 'id="upload-form"' in r.text and 'name="arch"' in r.text
    assert srv_client.get("/api/docs").status_code == 200


def test_plotly_is_served_locally(srv_client):
    assert '"/vendor/plotly.min.js"' in (REPO / "frontend" / "static" / "js" / "common.js").read_text()
    r = srv_client.get("/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["content-encoding"] == "gzip"
    assert len(r.content) > 1_000_000 and b"plotly" in r.content[:2000].lower()
    assert srv_client.get("/vendor/plotly.min.js", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_static_files(srv_client):
    for p in ["/static/css/app.css", "/static/js/common.js", "/static/js/home.js", "/static/js/model.js",
              "/static/js/layer.js", "/static/js/neuron.js", "/static/js/compare.js", "/static/js/upload.js",
              "/static/js/job.js", "/static/favicon.svg"]:
        assert srv_client.get(p).status_code == 200, p


def test_no_cdn_anywhere(srv_client, srv_records):
    """Every page and every static file refers only to this server."""
    model, layer = first_with(srv_records, "nmf")
    for p in ["/", f"/models/{model}", f"/models/{model}/layers/{layer}", f"/models/{model}/layers/{layer}/neurons/0",
              "/compare", "/upload", "/api/docs", "/models/nope"]:
        html = srv_client.get(p).text
        assert not EXTERNAL.findall(html), (p, EXTERNAL.findall(html))
    for f in (REPO / "frontend").rglob("*"):
        if f.suffix in (".html", ".js", ".css"):
            text = f.read_text()
            assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)[a-z]", text.replace("{{ request.base_url }}", "")), f


def test_templates_escape_names(srv_client, srv_records):
    """A name is never injected raw into HTML (the name rules forbid <, but the error page echoes input)."""
    r = srv_client.get("/models/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert r.status_code in (404, 422)
    assert "<script>alert(1)</script>" not in r.text


def test_create_app_has_no_import_side_effects():
    import importlib

    mod = importlib.import_module("server.app")
    assert not hasattr(mod, "app"), "server.app must not build an app at import (use the factory)"
    assert callable(mod.create_app)
    assert Path(mod.STATIC).is_dir()
