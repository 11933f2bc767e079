"""The pages, rendered over the real precomputed cache (no browser: see test_browser.py for that)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
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
        assert re.search(r'<script src="/assets/[0-9a-f]{12}/js/model\.js"></script>', r.text)
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


@pytest.mark.parametrize("path,status,word,back", [
    ("/models/no-such-model", 404, "no model named 'no-such-model'", "/"),
    ("/models/{m}/layers/no.such.layer", 404, "has no layer 'no.such.layer'", "/models/{m}#layers"),
    ("/models/{m}/layers/{l}/neurons/100000", 404, "there is no neuron 100000", "/models/{m}/layers/{l}"),
    ("/models/{m}/layers/{l}/neurons/abc", 422, "is not a neuron number", "/models/{m}/layers/{l}"),
    ("/models/BAD", 422, "invalid model name", "/"),
    ("/jobs/nope", 422, "invalid job id", "/jobs"),
    ("/nothing/here", 404, "no such page", "/"),
])
def test_error_pages_say_what_is_wrong_and_link_back(srv_client, srv_records, path, status, word, back):
    """An error page for people: what is wrong (never the list of every name), at most five nearest
    matches, and one link back to the closest page that exists."""
    import html as htmllib

    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(path.format(m=model, l=layer))
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    msg = htmllib.unescape(re.search(r'id="error-message">(.*?)</p>', r.text, re.S).group(1))
    assert word in msg, msg
    assert "Known" not in msg and "convscope precompute" not in msg
    assert re.search(rf'id="error-back" href="{re.escape(back.format(m=model, l=layer))}"', r.text)
    near = re.findall(r'<li><a href="([^"]+)">', r.text)
    assert len(near) <= 5
    if "neurons/100000" in path:  # the nearest neuron that exists: the last one
        n = next(x for x in srv_records[model]["inventory"] if x["name"] == layer)["out_channels"]
        assert near == [f"/models/{model}/layers/{layer}/neurons/{n - 1}"]


def test_unknown_model_page_names_the_nearest_models_once(srv_client, srv_records):
    name = sorted(srv_records)[0]
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")  # one letter off
    r = srv_client.get(f"/models/{typo}")
    assert r.status_code == 404
    assert f'<li><a href="/models/{name}">{name}</a></li>' in r.text
    # every other model is not listed (the old page printed all names twice)
    listed = re.findall(r'href="/models/([^"/#]+)"', r.text)
    assert listed.count(name) == 1 and len(listed) <= 5


def test_unknown_layer_is_found_by_its_human_name(srv_client, srv_records):
    if "vgg16-hed" not in srv_records:
        pytest.skip("vgg16-hed is not precomputed (its wheel was not at hand)")
    r = srv_client.get("/models/vgg16-hed/layers/conv5_3")
    assert r.status_code == 404 and '<li><a href="/models/vgg16-hed/layers/28">28 (conv5_3)</a></li>' in r.text


def test_jobs_page_lists_jobs(tmp_settings):
    """/jobs lists every job (it was a 404); each job page leads back to it. A queue of its own, so the
    shared test cache sees no job."""
    from fastapi.testclient import TestClient

    from precompute.jobs import submit
    from server.app import create_app

    with TestClient(create_app(tmp_settings)) as client:
        r = client.get("/jobs")
        assert r.status_code == 200 and 'id="no-jobs"' in r.text
        jobs = [submit("precompute", {"model": m, "force": False}, tmp_settings) for m in ("resnet20-random", "cifar10-cnn")]
        r = client.get("/jobs")
        assert r.status_code == 200
        for job in jobs:
            assert f'href="/jobs/{job["id"]}"' in r.text and f'data-job="{job["id"]}"' in r.text
        r = client.get(f"/jobs/{jobs[0]['id']}")
        assert r.status_code == 200 and '<a href="/jobs">Jobs</a>' in r.text


def _workers_card(client) -> tuple[dict, str]:
    r = client.get("/jobs")
    assert r.status_code == 200
    m = re.search(r'<section class="card" id="workers"([^>]*)>(.*?)</section>', r.text, re.S)
    assert m, "the jobs page has no workers card"
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m.group(1))), " ".join(re.sub(r"<[^>]+>", "", m.group(2)).split())


def _wait_card(client, until, timeout: float = 90) -> tuple[dict, str]:
    deadline = time.time() + timeout
    while True:
        attrs, text = _workers_card(client)
        if until(attrs) or time.time() > deadline:
            return attrs, text
        time.sleep(0.05)


def test_jobs_page_shows_the_embedded_workers_state(tmp_settings, monkeypatch):
    """/jobs says whether jobs will run: the embedded worker of `convscope serve` alive, then down with its
    last exit after a SIGKILL, then alive again and restarted once (a real `convscope worker` process under
    the real supervisor); without an embedded worker, how many workers are alive."""
    from fastapi.testclient import TestClient

    import precompute.jobs as pjobs
    from precompute.jobs import EmbeddedWorker
    from server.app import create_app
    from server_fixtures import settings_env

    with TestClient(create_app(tmp_settings)) as client:
        attrs, text = _workers_card(client)
        assert attrs == {"ok": "false"} and "no worker is running" in text, (attrs, text)

    # the worker process reads its settings from the environment, as under `convscope serve`
    for k, v in settings_env(tmp_settings).items():
        if k.startswith("CONVSCOPE_"):
            monkeypatch.setenv(k, v)
    # down for 5 s instead of 1 s after the kill, so that a loaded machine's poll sees the "down" state
    monkeypatch.setattr(pjobs, "RESTART_MIN_S", 5.0)
    worker = EmbeddedWorker().start()
    try:
        with TestClient(create_app(tmp_settings, embedded=worker)) as client:
            attrs, text = _workers_card(client)
            assert attrs["embedded"] == "running" and attrs["restarts"] == "0" and attrs["ok"] == "true", (attrs, text)
            assert "is alive." in text and "restarted" not in text and "down" not in text, text
            # counted among the live workers once its presence file is written (it has started)
            deadline = time.time() + 90
            while "1 worker alive in all" not in text and time.time() < deadline:
                time.sleep(0.2)
                attrs, text = _workers_card(client)
            assert "1 worker alive in all" in text, text

            first = worker.proc.pid
            os.kill(first, signal.SIGKILL)
            attrs, text = _wait_card(client, lambda a: a["embedded"] != "running")
            assert attrs["embedded"] == "restarting" and attrs["ok"] == "false", (attrs, text)
            assert "is down (restarting; last exit: killed by SIGKILL)" in text, text

            attrs, text = _wait_card(client, lambda a: a["embedded"] == "running")
            assert attrs["embedded"] == "running" and attrs["restarts"] == "1" and attrs["ok"] == "true", (attrs, text)
            assert "is alive, restarted 1 time (last stop: killed by SIGKILL)." in text, text
            assert worker.proc.pid != first and worker.proc.poll() is None
    finally:
        worker.stop()


def test_pages_are_rendered_once_per_cache_state(srv_settings, srv_records, tmp_path):
    """A page is rendered once and then served from memory (the same bytes, ETag, 304 on If-None-Match,
    the stored gzip), by the route and by the fast path in front of FastAPI alike, until a record it shows
    changes: a rewritten model record changes its model page, a new model the home page, at once."""
    import shutil

    from fastapi.testclient import TestClient

    from precompute.cache import Cache
    from server.app import create_app
    from server_fixtures import make_settings

    shutil.copytree(srv_settings.cache, tmp_path / "cache", ignore=shutil.ignore_patterns("jobs", "queue.sqlite3*"))
    s = make_settings(tmp_path)
    cache = Cache(s.cache)
    model, layer = first_with(srv_records, "nmf")
    app = create_app(s)
    with TestClient(app) as client:
        first = client.get(f"/models/{model}")  # rendered by the route (nothing in memory yet)
        again = client.get(f"/models/{model}")  # answered by the fast path, from memory
        assert first.status_code == again.status_code == 200
        assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
        assert again.headers["content-type"] == first.headers["content-type"] == "text/html; charset=utf-8"
        assert again.headers["content-encoding"] == "gzip"  # the stored gzip (TestClient asks for it)
        assert client.get(f"/models/{model}", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        plain = client.get(f"/models/{model}", headers={"Accept-Encoding": "identity"})
        assert plain.content == first.content and "content-encoding" not in plain.headers
        for path in ("/", f"/models/{model}/layers/{layer}", f"/models/{model}/layers/{layer}/neurons/0", "/findings"):
            a, b = client.get(path), client.get(path)
            assert a.status_code == 200 and a.content == b.content and a.headers["etag"] == b.headers["etag"], path

        rec = cache.get_model(model)
        rec["spec"]["description"] = "A description written after the page was first shown"
        cache.put_model(model, rec)
        changed = client.get(f"/models/{model}")
        assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
        assert "A description written after the page was first shown" in changed.text
        assert client.get(f"/models/{model}", headers={"If-None-Match": first.headers["etag"]}).status_code == 200

        assert 'data-name="copy-of-a-model"' not in client.get("/").text
        rec["name"] = "copy-of-a-model"
        cache.put_model("copy-of-a-model", rec)
        assert 'data-name="copy-of-a-model"' in client.get("/").text
        assert client.get("/models/copy-of-a-model").status_code == 200


def test_a_page_missed_by_many_clients_at_once_is_rendered_once(srv_settings, srv_records):
    """Right after a change every client misses the page at once: one of them renders it, the others wait
    for that render (the findings page: the slowest to render)."""
    import threading

    from server.explorer import Explorer
    from server.pages import PageCache

    ex, pages = Explorer(srv_settings), PageCache()
    start, got = threading.Barrier(8), []

    def client():
        start.wait()
        got.append(pages.blob(ex, "findings"))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len({b.etag for b in got}) == 1
    assert pages.renders == 1
    pages.blob(ex, "findings")
    assert pages.renders == 1


def test_error_pages_are_the_same_from_memory(srv_client, srv_records):
    """An error page is rendered once per (path, error, cache state) and answered with its status each time."""
    model, layer = first_with(srv_records, "nmf")
    for path, status in ((f"/models/{model}/layers/no.such.layer", 404), ("/models/no-such-model-xyz", 404),
                         (f"/models/{model}/layers/{layer}/neurons/abc", 422)):
        a, b = srv_client.get(path), srv_client.get(path)
        assert a.status_code == b.status_code == status and a.text == b.text, path
        assert a.headers["content-type"] == b.headers["content-type"] == "text/html; charset=utf-8", path
        assert ("Not found" if status == 404 else "Bad request") in a.text, path


def test_compare_boot_splits_the_pairs_that_exist_from_the_gone_ones(srv_client, srv_records):
    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(f"/compare?pairs={model}:{layer},nope:0,{model}:no.layer")
    b = boot(r.text)
    assert b["pairs_ok"] == [f"{model}:{layer}"]
    gone = {g["pair"]: g["reason"] for g in b["pairs_gone"]}
    assert set(gone) == {"nope:0", f"{model}:no.layer"}
    assert "no model named 'nope'" in gone["nope:0"] and "has no layer 'no.layer'" in gone[f"{model}:no.layer"]
    assert all("Known" not in v for v in gone.values())


def test_layer_boot_names_the_overlays_that_are_gone(srv_client, srv_records):
    model, layer = first_with(srv_records, "histogram")
    r = srv_client.get(f"/models/{model}/layers/{layer}?overlay=nope:x,{model}:{layer}")
    assert [g["pair"] for g in boot(r.text)["overlay_gone"]] == ["nope:x"]


def test_findings_page_and_json(srv_client, srv_records):
    f = srv_client.get("/api/findings")
    assert f.status_code == 200 and "etag" in f.headers
    data = f.json()
    r = srv_client.get("/findings")
    assert r.status_code == 200 and boot(r.text)["findings"] == data
    for row in data["banding"][:20]:  # every row links to its view, which exists
        assert f'href="{row["url"]}"' in r.text.replace("&amp;", "&")
        assert srv_client.get(row["url"].split("#")[0]).status_code == 200
    for row in data["colour_axis"]:
        assert srv_client.get(row["url"].split("#")[0]).status_code == 200
    home = srv_client.get("/")
    assert 'id="findings-strip"' in home.text and 'href="/findings"' in home.text


def test_home_groups_trained_models_first(srv_client, srv_records):
    r = srv_client.get("/")
    order = re.findall(r'<section class="model-group" data-group="([a-z]+)"', r.text)
    assert order == [g for g in ("trained", "variant", "untrained") if g in order] and order[0] == "trained"
    untrained = r.text.index('data-group="untrained"') if "untrained" in order else len(r.text)
    for name, rec in srv_records.items():
        pos = r.text.index(f'data-name="{name}"')
        assert (pos > untrained) == (rec["spec"]["family"] == "random"), name


def test_versioned_static_urls_are_cached_for_a_year(srv_client):
    html = srv_client.get("/").text
    css = re.search(r'href="(/assets/([0-9a-f]{12})/css/app\.css)"', html)
    plotly = re.search(r'<meta name="convscope-plotly" content="(/assets/[0-9a-f]{12}/vendor/plotly\.min\.js)">', html)
    assert css and plotly
    r = srv_client.get(css.group(1))
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["content-type"].startswith("text/css")
    assert r.content == (REPO / "frontend" / "static" / "css" / "app.css").read_bytes()
    stale = srv_client.get(css.group(1).replace(css.group(2), "000000000000"))
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"  # today's file, revalidated
    assert srv_client.get(css.group(1), headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    p = srv_client.get(plotly.group(1), headers={"Accept-Encoding": "gzip"})
    assert p.status_code == 200 and p.headers["content-encoding"] == "gzip" and "immutable" in p.headers["cache-control"]
    for bad in ["/assets/x/../../server/app.py", "/assets/x/%2e%2e/%2e%2e/server/app.py", "/assets/x/nope.js"]:
        assert srv_client.get(bad).status_code == 404, bad


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
    """Every page loads only from this server: no script, style, image or font from elsewhere. The only
    links out are the references a figure cites (``<a class="ref">`` to the papers), which a reader may
    follow and the page never loads."""
    from server.pages import REFS

    papers = {url for _, url in REFS.values()}
    model, layer = first_with(srv_records, "nmf")
    cited = set()
    for p in ["/", "/findings", f"/models/{model}", f"/models/{model}/layers/{layer}", f"/models/{model}/layers/{layer}/neurons/0",
              "/compare", "/upload", "/jobs", "/api/docs", "/models/nope"]:
        html = srv_client.get(p).text
        refs = re.findall(r'<a class="ref" href="(https://[^"]+)" rel="noopener"', html)
        cited.update(refs)
        rest = re.sub(r'<a class="ref" href="https://[^"]+" rel="noopener"', "", html)
        assert not EXTERNAL.findall(rest), (p, EXTERNAL.findall(rest))
        assert set(refs) <= papers
    assert cited, "no figure cites its paper"
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
