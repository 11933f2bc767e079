"""Experiment pages and their JSON: ``GET /api/experiments``, ``GET /api/experiments/{experiment}``,
``/experiments`` and ``/experiments/{experiment}``, over tiny reference runs made by ``convscope train``
(tests/experiment_fixtures.py) and precomputed by the real pipeline."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

pytest_plugins = ["experiment_fixtures"]
pytest.register_assert_rewrite("experiment_fixtures")

from experiment_fixtures import REPO, TRAINED, needs_fashion  # noqa: E402
from precompute.redact import redact  # noqa: E402

pytestmark = [pytest.mark.slow, needs_fashion]


def test_server_stays_torch_free():
    code = ("import sys, server.experiments, server.app; from server.app import create_app; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_reference_runs_are_in_the_zoo(exp_zoo_list, exp_runs):
    rows = {r["name"]: r for r in exp_zoo_list}
    for exp, variants in TRAINED.items():
        for v in variants:
            r = rows[f"{exp}-{v}"]
            assert r["family"] == "variant" and r["status"] == "ready" and r["precomputed"], r
            assert r["accuracy"] == exp_runs[exp][v]["final_test_accuracy"]


def test_list_experiments(exp_client, exp_runs):
    r = exp_client.get("/api/experiments")
    assert r.status_code == 200 and r.headers["etag"]
    body = r.json()
    assert [e["name"] for e in body["experiments"]] == list(TRAINED)
    assert body["count"] == len(TRAINED)
    for e in body["experiments"]:
        assert e["variants"] == TRAINED[e["name"]]  # registry order, then random
        assert e["models"] == [f"{e['name']}-{v}" for v in TRAINED[e["name"]]]
        assert e["missing"] == [] and e["url"] == f"/experiments/{e['name']}"
        for v in e["variants"]:
            assert e["accuracy"][v] == exp_runs[e["name"]][v]["final_test_accuracy"]
    assert body["untrained"] == []  # every declared experiment has variants here (see the empty-dir test)
    assert exp_client.get("/api/experiments", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def _close(a, b):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("exp", list(TRAINED))
def test_experiment_detail(exp_client, exp_runs, exp_settings, exp):
    from precompute.cache import Cache

    body = exp_client.get(f"/api/experiments/{exp}").json()
    assert body["name"] == exp and body["title"] and body["paper"].endswith(".txt")
    rows = body["variants"]
    assert [r["variant"] for r in rows] == TRAINED[exp]
    assert body["runs"] == [{"dataset": "fashion-mnist", "epochs": 1, "limit": 256, "seed": 0}]
    assert body["mixed_runs"] is False and body["missing"] == []
    cache = Cache(exp_settings.cache)
    for r in rows:
        run = exp_runs[exp][r["variant"]]
        rec = cache.get_model(r["model"])
        assert r["model"] == f"{exp}-{r['variant']}" and r["url"] == f"/models/{r['model']}"
        assert r["accuracy"] == run["final_test_accuracy"] and r["reference"] is True
        # the command as a client sees it: the server's paths in it cut to their last component
        assert r["epochs"] == run["epochs"] and r["limit"] == 256 and r["command"] == redact(run["command"])
        assert "--out reference" in r["command"] and str(exp_settings.reference_dir) not in r["command"]
        # banding index of the last two conv layers with an NMF result, as in the model's scalars
        nmf_layers = [x["name"] for x in sorted(rec["inventory"], key=lambda x: x["index"])
                      if x["name"] in rec["analyses"]["nmf"]["layers"]]
        assert [b["layer"] for b in r["banding"]] == nmf_layers[-2:]
        for b in r["banding"]:
            assert _close(b["value"], rec["scalars"][b["layer"]]["banding_index"])
        # symmetry at exactly the strided conv layers
        strided = [x["name"] for x in rec["inventory"] if x["type"] == "conv" and max(x.get("stride") or [1]) > 1
                   and x["name"] in rec["analyses"]["symmetry"]["layers"]]
        assert [s["layer"] for s in r["strided_symmetry"]] == strided
        for s in r["strided_symmetry"]:
            assert _close(s["value"], rec["scalars"][s["layer"]]["symmetry"])
        # gamma share: the run's measurement where it made one, else from the cached weights
        g = r["gamma_below_0.01"]
        if run["measurements"].get("gamma_clamp"):
            m = run["measurements"]
            assert g == {"value": m["gamma_clamp"]["thresholds"]["0.01"]["fraction_clamped"], "source": "record"}
            assert r["gamma_clamp"]["change"] == m["gamma_clamp"]["change"]
            assert r["dead_relu"]["fraction"] == m["dead_relu"]["fraction"]
            assert 0 <= r["dead_relu"]["fraction"] <= 1
        else:
            assert g["source"] == "weights" and 0 <= g["value"] <= 1
            assert r["gamma_clamp"] is None and r["dead_relu"] is None
        assert r["profiles"]["symmetry"] and r["profiles"]["banding"]
    if exp == "banding":
        assert all(r["strided_symmetry"] == [] for r in rows)  # L2 pooling, no strided conv
        assert body["default_layer"] == "features.conv6"
        assert body["cluster_layers"] == ["features.conv5", "features.conv6"]
    else:  # ResNet-20: the two stride-2 convs and their shortcuts are option A (no conv)
        assert [s["layer"] for s in rows[0]["strided_symmetry"]] == ["layer2.0.conv1", "layer3.0.conv1"]
        assert body["default_layer"] == "layer3.2.conv2"
        assert all(r["gamma_clamp"] is not None for r in rows if r["variant"] != "random")
    assert body["layers"] and body["default_layer"] == body["layers"][-1]


def test_the_bnonly_bn_variant_keeps_the_convs_at_initialisation(exp_client):
    """The frozen convs of `bn` and `bn-output` are the `random` init: their mean kernels are identical."""
    rows = {r["variant"]: r for r in exp_client.get("/api/experiments/bnonly").json()["variants"]}
    sym = lambda v: [(p["layer"], p["value"]) for p in rows[v]["profiles"]["symmetry"]]  # noqa: E731
    assert sym("bn") == sym("random") == sym("bn-output")
    assert sym("all") != sym("random")


def test_clusters_across_variants(exp_client):
    """The page's cluster figure: /api/clusters over every (variant, layer) of the default cluster layers."""
    body = exp_client.get("/api/experiments/banding").json()
    pairs = [f"{r['model']}:{l}" for l in body["cluster_layers"] for r in body["variants"]]
    assert len(pairs) == 10 <= body["max_pairs"]
    got = exp_client.get("/api/clusters", params={"pairs": ",".join(pairs), "k": 6})
    assert got.status_code == 200, got.text
    c = got.json()
    assert c["k"] == 6 and len(c["proportions"]) == len(pairs)
    assert all(abs(sum(p) - 1) < 1e-4 for p in c["proportions"])


@pytest.mark.parametrize("name", ["nope", "bandin", "a" * 90, "<b>x"])
def test_unknown_experiment_is_404_with_the_known_ones(exp_client, name):
    r = exp_client.get(f"/api/experiments/{name}")
    assert r.status_code == 404
    body = r.json()
    assert body["known"] == list(TRAINED)
    assert "banding" in body["detail"] and "bnonly" in body["detail"]
    if name == "bandin":
        assert "did you mean banding" in body["detail"]
    page = exp_client.get(f"/experiments/{name}")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert 'href="/experiments/banding"' in page.text and 'href="/experiments/bnonly"' in page.text
    assert "<b>x" not in page.text


def test_declared_but_untrained_experiment_says_how_to_train_it(tmp_settings):
    """An empty data dir: every experiment is declared but none has a variant; the 404 says what to run."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    client = TestClient(create_app(tmp_settings))
    body = client.get("/api/experiments").json()
    assert body["count"] == 0 and [u["name"] for u in body["untrained"]] == list(TRAINED)
    assert all(u["command"].startswith(f"convscope train {u['name']}") for u in body["untrained"])
    page = client.get("/experiments")
    assert page.status_code == 200 and "convscope train symmetry" in page.text  # declared, not trained here
    r = client.get("/api/experiments/symmetry")
    assert r.status_code == 404 and "convscope train symmetry" in r.json()["detail"]


def test_experiment_pages_render(exp_client):
    idx = exp_client.get("/experiments")
    assert idx.status_code == 200
    for exp in TRAINED:
        assert f'href="/experiments/{exp}"' in idx.text
    for exp, variants in TRAINED.items():
        r = exp_client.get(f"/experiments/{exp}")
        assert r.status_code == 200
        html = r.text
        rows = re.findall(r'<tr data-variant="([^"]+)" data-model="([^"]+)"', html)
        assert rows == [(v, f"{exp}-{v}") for v in variants]
        for v in variants:
            assert f'href="/models/{exp}-{v}"' in html
        # versioned URLs (cached for a year; a new file gets a new URL)
        assert re.search(r'<script src="/assets/[0-9a-f]+/js/experiment.js">', html), html[-600:]
        assert re.search(r'href="/assets/[0-9a-f]+/css/experiments.css"', html)
        assert 'href="/experiments" class="active"' in html  # the header nav


def test_nav_links_the_experiments(exp_client):
    assert 'href="/experiments"' in exp_client.get("/").text


def test_openapi_documents_the_endpoints(exp_client):
    paths = exp_client.get("/openapi.json").json()["paths"]
    assert "/api/experiments" in paths and "/api/experiments/{experiment}" in paths


ALLOWED_VERDICTS = {"reproduced", "not reproduced", "inconclusive", "not measured"}


@pytest.mark.parametrize("exp", list(TRAINED))
def test_verdicts_plateau_and_history_reach_the_page(exp_client, exp_runs, exp):
    from server.verdicts import experiment_verdicts

    d = exp_client.get(f"/api/experiments/{exp}").json()
    assert d["verdicts"] and d["verdicts"] == experiment_verdicts(exp, d["variants"])
    for v in d["verdicts"]:
        assert v["verdict"] in ALLOWED_VERDICTS and v["effect"] and v["paper"] and v["measured"] and v["threshold"]
    # one-epoch runs are short of any plateau (3 epochs needed to judge): every trained run is named
    trained = [f"{exp}-{v}" for v in TRAINED[exp] if v != "random"]
    assert sorted(d["not_at_plateau"]) == sorted(trained)
    for row in d["variants"]:
        rec = exp_runs[exp][row["variant"]]
        assert row["plateau"] == rec["plateau"] and row["seeds"] == []
        h = row["history"]
        assert h["epoch"] == [r["epoch"] for r in rec["history"]]
        assert h["test_accuracy"] == [r["test_accuracy"] for r in rec["history"]]
        last = rec["history"][-1]["metrics"]
        assert {layer: s[-1] for layer, s in h["banding"].items()} == last["banding"]
        assert {t: s[-1] for t, s in h["gamma"].items()} == last["gamma"]
    html = exp_client.get(f"/experiments/{exp}").text
    assert len(re.findall(r'<tr data-verdict="([^"]+)"', html)) == len(d["verdicts"])
    assert html.count('class="plateau-warn"') >= len(trained)


def test_seeds_of_a_variant_are_one_row_with_their_spread(tmp_path):
    """Seeds 0 and 1 of one variant: one table row (seed 0), the other seed under ``seeds``, both in the verdicts."""
    from fastapi.testclient import TestClient

    from experiment_fixtures import convscope
    from precompute.settings import Settings
    from server.app import create_app

    settings = Settings(data_dir=tmp_path / "data", reference_dir=tmp_path / "ref", store_dir=tmp_path / "store",
                        zoo_dir=None, device="cpu")
    for seed in ("0", "1"):
        convscope(settings, "train", "banding", "--variant", "baseline", "--limit", "64", "--epochs", "1",
                  "--seed", seed)
    d = TestClient(create_app(settings)).get("/api/experiments/banding").json()
    (row,) = d["variants"]
    assert row["model"] == "banding-baseline" and row["seed"] == 0
    assert [s["model"] for s in row["seeds"]] == ["banding-baseline-seed1"] and row["seeds"][0]["seed"] == 1
    first = d["verdicts"][0]
    assert len(first["numbers"]["values"]) == 2 and "2 seeds" in first["measured"]
    assert first["not_at_plateau"] == ["banding-baseline", "banding-baseline-seed1"]
