"""The JSON API over a cache filled by the real pipeline: every endpoint, every error path (never a
500), ETag/304, gzip, uploads and jobs, and that the server never imports torch."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from precompute.cache import ResultKey
from precompute.declarations.limits import UPLOAD_EXTENSIONS

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

from server_fixtures import (REPO, first_with, make_settings, start_uvicorn, start_worker, stop_process,  # noqa: E402
                             wait_job)


def raw(srv_client, path: str):
    """GET with the path exactly as given (percent-escapes not normalised by the client)."""
    url_type = type(srv_client.base_url)  # the TestClient's own httpx URL class
    return srv_client.get(url_type("http://testserver", raw_path=path.encode()))


def raw_post(srv_client, path: str):
    url_type = type(srv_client.base_url)
    return srv_client.post(url_type("http://testserver", raw_path=path.encode()))


def detail(r) -> str:
    body = r.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


# ---- models ------------------------------------------------------------------------------------------
def test_models_list(srv_client, srv_models, srv_records):
    r = srv_client.get("/api/models")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(srv_models)
    names = [m["name"] for m in body["models"]]
    assert names == srv_models
    for m in body["models"]:
        spec = srv_records[m["name"]]["spec"]
        assert m["arch"] == spec["arch"] and m["dataset"] == spec["dataset"] and m["family"] == spec["family"]
        assert m["layers"]["conv"] == sum(1 for row in srv_records[m["name"]]["inventory"] if row["type"] == "conv")
        assert m["weights_sha256"] == srv_records[m["name"]]["weights_sha256"]


def test_model_detail(srv_client, srv_models, srv_records):
    for name in srv_models:
        r = srv_client.get(f"/api/models/{name}")
        assert r.status_code == 200
        d = r.json()
        rec = srv_records[name]
        assert d["name"] == name and d["inventory"] == rec["inventory"] and d["scalars"] == rec["scalars"]
        assert d["analyses"] == rec["analyses"]
        assert all(":traceback" not in k for k in d["errors"])
        # the depth profiles come from the per-layer scalars, in execution order
        sym = d["profiles"]["symmetry"]
        assert [p["value"] for p in sym] == [rec["scalars"][p["layer"]]["symmetry"] for p in sym]
        assert [p["index"] for p in sym] == sorted(p["index"] for p in sym)
        rows = {row["name"]: row for row in rec["inventory"]}
        for p in sym:
            assert p["strided"] == (max(rows[p["layer"]]["stride"]) > 1)
            assert p["label"].endswith("*") == p["strided"]
            assert p["uneven"] == bool(rows[p["layer"]].get("uneven_padding"))
        for p in d["profiles"]["gamma"]:
            assert rows[p["layer"]]["type"] == "batchnorm"


def test_real_models_have_results(srv_records):
    """The fixture really ran the analyses (the server tests are about real results)."""
    assert srv_records
    for name, rec in srv_records.items():
        assert rec["inventory"], name
        assert rec["analyses"], f"{name}: no analysis results ({rec.get('errors')})"


def test_layer_context(srv_client, srv_records):
    for name, rec in srv_records.items():
        for row in rec["inventory"]:
            r = srv_client.get(f"/api/models/{name}/layers/{row['name']}")
            assert r.status_code == 200, (name, row["name"], r.text)
            c = r.json()
            assert c["row"] == row
            assert c["analyses"] == sorted(a for a, i in rec["analyses"].items() if row["name"] in i["layers"])
            bn = [x["name"] for x in rec["inventory"] if x["type"] == "batchnorm" and x.get("follows") == row["name"]]
            assert c["bn"] == (bn[0] if bn else None)


def test_every_cached_result_is_served_as_stored(srv_client, srv_records, srv_cache):
    n = 0
    for name, rec in srv_records.items():
        for analysis, info in rec["analyses"].items():
            key = ResultKey(rec["weights_sha256"], analysis, info["version"], info["params"])
            for layer in info["layers"]:
                entry = srv_cache.get(key, layer)
                r = srv_client.get(f"/api/models/{name}/layers/{layer}/{analysis}")
                assert r.status_code == 200, r.text
                assert r.headers["etag"] == '"' + hashlib.sha256(entry.payload).hexdigest() + '"'
                body = r.json()
                assert body["data"] == entry.data
                assert body["meta"]["analysis"] == analysis and body["meta"]["layer"] == layer
                assert body["meta"]["weights_sha256"] == rec["weights_sha256"]
                n += 1
    assert n > 0


# ---- neurons --------------------------------------------------------------------------------------
def _result(srv_client, model, layer, analysis):
    r = srv_client.get(f"/api/models/{model}/layers/{layer}/{analysis}")
    assert r.status_code == 200
    return r.json()["data"]


def test_neuron_everything(srv_client, srv_records):
    found = first_with(srv_records, "nmf")
    assert found, "no layer with an NMF result"
    model, layer = found
    rec = srv_records[model]
    nmf = _result(srv_client, model, layer, "nmf")
    n = len(nmf["order"])
    for i in sorted({0, n // 2, n - 1}):
        r = srv_client.get(f"/api/models/{model}/layers/{layer}/neurons/{i}")
        assert r.status_code == 200
        d = r.json()
        assert d["neuron"] == i and d["neurons"] == n
        assert d["nmf"]["image"] == nmf["images"][i] and d["nmf"]["error"] == nmf["error"][i]
        pos = nmf["order"].index(i)
        assert d["nmf"]["position"] == pos
        assert d["nmf"]["prev"] == (nmf["order"][pos - 1] if pos else None)
        assert d["nmf"]["next"] == (nmf["order"][pos + 1] if pos + 1 < n else None)
        assert i in [x["neuron"] for x in d["nmf"]["neighbours"]]
        if layer in rec["analyses"].get("kernels", {}).get("layers", []):
            k = _result(srv_client, model, layer, "kernels")
            assert d["kernels"]["kernels"] == k["kernels"][i] and d["kernels"]["top_channels"] == k["top_channels"][i]
        bn = next((x["name"] for x in rec["inventory"] if x["type"] == "batchnorm" and x.get("follows") == layer), None)
        if bn and bn in rec["analyses"].get("batchnorm", {}).get("layers", []):
            b = _result(srv_client, model, bn, "batchnorm")
            assert d["batchnorm"]["layer"] == bn
            assert d["batchnorm"]["gamma"] == b["gamma"][i] and d["batchnorm"]["beta"] == b["beta"][i]
        if layer in rec["analyses"].get("svd", {}).get("layers", []):
            s = _result(srv_client, model, layer, "svd")
            assert d["svd"]["u"] == s["u"][i] and d["svd"]["feeder"] == s["feeder"]
        for f in d["svd_as_feeder"]:
            s = _result(srv_client, model, f["layer"], "svd")
            assert s["feeder"] == layer and f["v"] == s["v"][i]


def test_neuron_of_a_layer_without_nmf(srv_client, srv_records):
    """Linear and BatchNorm layers have neurons too (no NMF image): the endpoint still answers."""
    for t in ("batchnorm", "linear"):
        for name, rec in srv_records.items():
            row = next((r for r in rec["inventory"] if r["type"] == t), None)
            if row:
                r = srv_client.get(f"/api/models/{name}/layers/{row['name']}/neurons/0")
                assert r.status_code == 200 and r.json()["nmf"] is None
                break


@pytest.mark.parametrize("bad,status", [("-1", 404), ("100000", 404), ("x", 422), ("1.5", 422), ("0x1", 422),
                                        ("%2e%2e", 422), ("1e3", 422), ("99999999999999999999", 422)])
def test_neuron_out_of_range_or_bad(srv_client, srv_records, bad, status):
    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(f"/api/models/{model}/layers/{layer}/neurons/{bad}")
    assert r.status_code == status, r.text
    msg = detail(r)
    assert "0.." in msg
    n = next(row["out_channels"] for row in srv_records[model]["inventory"] if row["name"] == layer)
    assert r.json()["range"] == [0, n - 1]


def test_neuron_of_unknown_model_or_layer_lists_what_exists(srv_client, srv_records, srv_models):
    """/neurons/{i} under an unknown model or layer: 404 naming it, ``known`` listing what exists; an
    index past the end: 404 naming the index and the valid range."""
    model, layer = first_with(srv_records, "nmf")
    rec = srv_records[model]
    r = srv_client.get(f"/api/models/no-such-model/layers/{layer}/neurons/0")
    assert r.status_code == 404, r.text
    assert "unknown model 'no-such-model'" in detail(r) and r.json()["known"] == srv_models
    assert all(m in detail(r) for m in srv_models)
    r = srv_client.get(f"/api/models/{model}/layers/no.such.layer/neurons/0")
    assert r.status_code == 404, r.text
    layers = [row["name"] for row in rec["inventory"]]
    assert f"unknown layer 'no.such.layer' of {model}" in detail(r) and r.json()["known"] == layers
    assert all(name in detail(r) for name in layers[:40])
    n = next(row["out_channels"] for row in rec["inventory"] if row["name"] == layer)
    for bad in (n, n + 7):
        r = srv_client.get(f"/api/models/{model}/layers/{layer}/neurons/{bad}")
        assert r.status_code == 404, r.text
        assert f"neuron {bad} is out of range" in detail(r) and f"0..{n - 1}" in detail(r)
        assert r.json()["range"] == [0, n - 1]
    r = srv_client.get(f"/api/models/{model}/layers/{layer}/neurons/first")
    assert r.status_code == 422 and "'first'" in detail(r) and f"0..{n - 1}" in detail(r)
    assert r.json()["range"] == [0, n - 1]


# ---- errors name the bad value and what exists -------------------------------------------------------
def test_unknown_model(srv_client, srv_models):
    r = srv_client.get("/api/models/no-such-model")
    assert r.status_code == 404
    assert "no-such-model" in detail(r) and r.json()["known"] == srv_models
    for m in srv_models:
        assert m in detail(r)


def test_unknown_layer(srv_client, srv_records):
    name, rec = next(iter(srv_records.items()))
    r = srv_client.get(f"/api/models/{name}/layers/no.such.layer")
    assert r.status_code == 404
    assert "no.such.layer" in detail(r)
    assert r.json()["known"] == [row["name"] for row in rec["inventory"]]
    r = srv_client.get(f"/api/models/{name}/layers/no.such.layer/nmf")
    assert r.status_code == 404 and "no.such.layer" in detail(r)


def test_unknown_analysis(srv_client, srv_records):
    name, rec = next(iter(srv_records.items()))
    layer = rec["inventory"][0]["name"]
    r = srv_client.get(f"/api/models/{name}/layers/{layer}/no-such-analysis")
    assert r.status_code == 404
    assert "no-such-analysis" in detail(r) and r.json()["known"] == sorted(rec["analyses"])


def test_analysis_that_does_not_apply_to_the_layer(srv_client, srv_records):
    for name, rec in srv_records.items():
        bn = next((r["name"] for r in rec["inventory"] if r["type"] == "batchnorm"), None)
        if bn and "nmf" in rec["analyses"]:
            r = srv_client.get(f"/api/models/{name}/layers/{bn}/nmf")
            assert r.status_code == 404
            assert "no nmf result" in detail(r) and "batchnorm" in r.json()["known"]
            return
    # the fixture always precomputes resnet20-random (BatchNorm + 3x3 convs): this path must be reached
    raise AssertionError(f"no model with both BatchNorm layers and NMF results in {sorted(srv_records)}")


#: (raw path, status, the bad value as the message quotes it, what the body lists as existing)
MALFORMED = [
    ("/api/models/UPPER", 422, "'UPPER'", "models"), ("/api/models/a%20b", 422, "'a b'", "models"),
    ("/api/models/-x", 422, "'-x'", "models"), ("/api/models/%2e%2e", 422, "'..'", "models"),
    ("/api/models/{m}/layers/%2e%2e", 422, "'..'", "layers"),
    ("/api/models/{m}/layers/a%00b/nmf", 422, r"'a\x00b'", "layers"),
    ("/api/models/{m}/layers/{l}/NMF", 422, "'NMF'", "analyses"),
    # a dot segment or a decoded '/' matches no route: 404 naming the path and listing the endpoints
    ("/api/models/{m}/layers/{l}/..", 404, None, "endpoints"),
    ("/api/models/{m}/layers/{l}/%2e%2e%2fsecret", 404, "../secret", "endpoints"),
]


@pytest.mark.parametrize("path,status,bad,lists", MALFORMED)
def test_malformed_names_422(srv_client, srv_records, path, status, bad, lists):
    """A malformed name is a 422 whose message quotes it and whose ``known`` lists what exists;
    a path that is no endpoint at all is a 404 listing the endpoints."""
    m, rec = next(iter(srv_records.items()))
    path = path.format(m=m, l=rec["inventory"][0]["name"])
    r = raw(srv_client, path)
    assert r.status_code == status, (path, r.status_code, r.text)
    msg, body = detail(r), r.json()
    if lists == "endpoints":
        assert msg.startswith("no such endpoint: /api/models/") and (bad is None or bad in msg), msg
        assert "GET /api/models/{model}/layers/{layer}/{analysis}" in body["endpoints"]
        return
    kind = {"models": "model", "layers": "layer", "analyses": "analysis"}[lists]
    assert f"invalid {kind} name {bad}" in msg, msg
    known = {"models": list(srv_records), "layers": [row["name"] for row in rec["inventory"]],
             "analyses": sorted(rec["analyses"])}[lists]
    assert body["known"] == known
    assert all(k in msg for k in known[:40]), msg  # the message lists them too (the first 40)


# ---- path traversal over a real socket (uvicorn decodes the path as it will in production) --------------
def raw_get(base: str, raw_path: bytes) -> tuple[int, bytes, bytes]:
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


TRAVERSALS = [
    "/api/models/..", "/api/models/../../etc/passwd", "/api/models/%2e%2e", "/api/models/%2E%2E/layers/x/nmf",
    "/api/models/..%2f..%2fetc%2fpasswd", "/api/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/models/{m}/layers/..%2f..%2fmodels%2f{m}/nmf", "/api/models/{m}/layers/%2e%2e/nmf",
    "/api/models/{m}/layers/{l}/..%2f..%2f..%2fetc%2fpasswd", "/api/models/{m}/layers/{l}/nmf%00",
    "/api/models/%00", "/api/models/{m}%00/layers/{l}/nmf", "/api/models/{m}/layers/a%00b/nmf",
    "/api/models/{m}/layers/{l}/neurons/..%2f1", "/api/models/..%5c..%5cwindows", "/api/models/{m}/layers/%2fetc%2fpasswd/nmf",
    "/api/models/{m}/layers/{l}/%2e%2e", "/api/models/{m}/layers/.%2e/nmf", "/api/models/{m}/layers/%2e./nmf",
    "/api/jobs/..%2f..%2fetc%2fpasswd", "/api/jobs/%2e%2e", "/api/jobs/{m}",
    "/api/clusters?pairs=..:..&k=4", "/api/clusters?pairs={m}:..%2f..&k=4", "/api/clusters?pairs=%2e%2e:{l}&k=4",
    "/static/..%2f..%2fserver%2fapp.py", "/static/%2e%2e/%2e%2e/server/app.py",
    "/models/%2e%2e", "/models/{m}/layers/%2e%2e", "/models/{m}/layers/{l}/neurons/%2e%2e", "/jobs/..%2f..%2fetc",
]


def test_path_traversal_never_escapes(live_server, srv_records):
    m, rec = next(iter(srv_records.items()))
    layer = next(r["name"] for r in rec["inventory"] if r["type"] == "conv")
    for path in TRAVERSALS:
        raw = path.format(m=m, l=layer).encode()
        status, head, body = raw_get(live_server, raw)
        assert status in (400, 404, 422), (path, status, body[:300])
        assert b"root:" not in body and b"create_app" not in body, path
        if raw.startswith(b"/api/"):
            assert json.loads(body)["detail"], path


# ---- ETag / 304 / gzip --------------------------------------------------------------------------
def test_etag_and_304(srv_client, srv_records):
    model, layer = first_with(srv_records, "nmf")
    url = f"/api/models/{model}/layers/{layer}/nmf"
    r = srv_client.get(url)
    etag = r.headers["etag"]
    assert etag.startswith('"') and len(etag) == 66
    r2 = srv_client.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    assert srv_client.get(url, headers={"If-None-Match": "W/" + etag}).status_code == 304
    assert srv_client.get(url, headers={"If-None-Match": '"other", ' + etag}).status_code == 304
    assert srv_client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    for u in ("/api/models", f"/api/models/{model}", f"/api/models/{model}/layers/{layer}",
              f"/api/models/{model}/layers/{layer}/neurons/0"):
        r = srv_client.get(u)
        assert r.status_code == 200 and r.headers.get("etag")
        assert srv_client.get(u, headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_gzip(srv_client, srv_records):
    model, layer = first_with(srv_records, "nmf")
    url = f"/api/models/{model}/layers/{layer}/nmf"
    plain = srv_client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    if len(plain.content) >= 1000:
        # read the raw bytes to see the encoding on the wire
        with srv_client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as r:
            raw = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "gzip"
        assert gzip.decompress(raw) == plain.content
    # pages and other JSON go through the gzip middleware
    r = srv_client.get(f"/api/models/{model}", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    r = srv_client.get("/", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    small = srv_client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers


def test_cache_is_read_not_recomputed(srv_client, srv_records, srv_cache, monkeypatch):
    """A second request is served from memory: the entry file is not read again."""
    model, layer = first_with(srv_records, "nmf")
    url = f"/api/models/{model}/layers/{layer}/nmf"
    srv_client.get(url)
    reads = []
    orig = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or orig(self))
    assert srv_client.get(url).status_code == 200
    assert not [p for p in reads if p.name == f"{layer}.json"]


# ---- clusters -------------------------------------------------------------------------------------
def _nmf_pairs(srv_records, n=2):
    pairs = []
    for m, rec in srv_records.items():
        rows = {r["name"]: r for r in rec["inventory"]}
        for layer in rec["analyses"].get("nmf", {}).get("layers", []):
            if rows[layer]["kernel"] == [3, 3]:
                pairs.append((m, layer, rows[layer]["out_channels"]))
                break
    return pairs[:n]


def test_clusters(srv_client, srv_records):
    pairs = _nmf_pairs(srv_records, 3)
    assert pairs, "no 3x3 NMF layer"
    q = ",".join(f"{m}:{l}" for m, l, _ in pairs)
    r = srv_client.get(f"/api/clusters?pairs={q}&k=4")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["k"] == 4 and d["pairs"] == [[m, l] for m, l, _ in pairs]
    assert d["counts"] == [n for _, _, n in pairs]
    for row in d["proportions"]:
        assert len(row) == 4 and abs(sum(row) - 1) < 1e-4
    assert len(d["centroids"]) == 4 and sum(d["sizes"]) == sum(d["counts"])
    assert d["sizes"] == sorted(d["sizes"], reverse=True)
    etag = r.headers["etag"]
    assert srv_client.get(f"/api/clusters?pairs={q}&k=4", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("query,status,words", [
    ("", 422, ["pairs", "Field required"]),  # required in the schema: FastAPI's own check names the parameter
    ("pairs=", 422, ["pairs is required"]),
    ("pairs=nocolon&k=4", 422, ["model:layer"]),
    ("pairs=no-such-model:conv1&k=4", 404, ["no-such-model", "Known models"]),
    ("pairs={m}:no.such.layer&k=4", 404, ["no.such.layer"]),
    ("pairs={m}:{l}&k=3", 422, ["4..19"]),
    ("pairs={m}:{l}&k=20", 422, ["4..19"]),
    ("pairs={m}:{l}&k=abc", 422, ["integer"]),
    ("pairs={m}:{l},{m}:{l}&k=4", 422, ["twice"]),
    ("pairs={m}:{bn}&k=4", 404, ["no NMF result"]),
])
def test_clusters_bad_params(srv_client, srv_records, query, status, words):
    m, l, _ = _nmf_pairs(srv_records, 1)[0]
    bn = next((r["name"] for r in srv_records[m]["inventory"] if r["type"] != "conv"), "x")
    r = srv_client.get("/api/clusters?" + query.format(m=m, l=l, bn=bn))
    assert r.status_code == status, r.text
    for w in words:
        assert w in detail(r)


def test_clusters_match_the_clusters_analysis(srv_client, srv_records):
    """The server's torch-free k-means gives what the ``clusters`` analysis computes (it needs torch)."""
    from precompute.analyses.clusters import compute_clusters as analysis_clusters

    pairs = _nmf_pairs(srv_records, 3)
    entries = [(m, l, _result(srv_client, m, l, "nmf")) for m, l, _ in pairs]
    want = analysis_clusters(entries, k=5, seed=0)
    q = ",".join(f"{m}:{l}" for m, l, _ in pairs)
    got = srv_client.get(f"/api/clusters?pairs={q}&k=5").json()
    for key in ("pairs", "k", "counts", "labels", "proportions", "centroids"):
        assert got[key] == want[key], key


def test_clusters_kernel_size_mismatch():
    import numpy as np

    from precompute.clustering import compute_clusters

    a, b = np.random.rand(10, 3, 3, 3), np.random.rand(10, 5, 5, 3)
    with pytest.raises(ValueError, match="one kernel size"):
        compute_clusters([("m", "a", {"images": a}), ("m", "b", {"images": b})], 3)


def test_clusters_planted_structure():
    """Two kinds of neuron (horizontal vs vertical stripes) in different shares are found as two clusters."""
    import numpy as np

    from precompute.clustering import compute_clusters

    rng = np.random.default_rng(0)
    h = np.zeros((3, 3, 3)); h[1, :, 0] = 1
    v = np.zeros((3, 3, 3)); v[:, 1, 0] = 1
    noise = lambda n: rng.random((n, 3, 3, 3)) * 0.05  # noqa: E731
    a = np.concatenate([h + noise(30), v + noise(10)])
    b = np.concatenate([h + noise(5), v + noise(15)])
    d = compute_clusters([("m1", "a", {"images": a}), ("m2", "b", {"images": b})], 2)
    assert d["proportions"][0] == [0.75, 0.25] and d["proportions"][1] == [0.25, 0.75]


def test_server_and_analysis_share_one_clustering_function(tmp_path, srv_settings, srv_records, monkeypatch):
    """No duplicate k-means: the ``clusters`` analysis is precompute.clustering's function, and a clusters
    request that computes (no group entry yet) goes through that same function, whatever the server's code
    looks like."""
    import shutil

    from fastapi.testclient import TestClient

    import precompute.clustering as clustering
    from precompute.analyses import ANALYSES
    from precompute.analyses import clusters as analysis_module
    from server.app import create_app

    assert analysis_module.compute_clusters is clustering.compute_clusters
    assert ANALYSES.get("clusters").version == clustering.VERSION
    shutil.copytree(srv_settings.cache, tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache" / "groups", ignore_errors=True)  # other tests' requests wrote some
    calls = []
    real = clustering.compute_clusters

    def spy(entries, k, **kw):
        calls.append(([(m, l) for m, l, _ in entries], k))
        return real(entries, k, **kw)

    monkeypatch.setattr(clustering, "compute_clusters", spy)
    pairs = _nmf_pairs(srv_records, 2)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/api/clusters?pairs=" + ",".join(f"{m}:{l}" for m, l, _ in pairs) + "&k=5")
    assert r.status_code == 200, r.text
    assert calls == [([(m, l) for m, l, _ in pairs], 5)]


def test_clusters_are_cached_as_a_group_entry(tmp_path, srv_settings, srv_records, monkeypatch):
    """A clusters result is stored with Cache.put_group; another server process (a fresh app) serves
    the same bytes from that entry without running k-means again; a corrupt group entry is recomputed."""
    import shutil

    from fastapi.testclient import TestClient

    import precompute.clustering as clustering
    from precompute.cache import Cache
    from server.app import create_app

    shutil.copytree(srv_settings.cache, tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache" / "groups", ignore_errors=True)  # other tests' requests wrote some
    settings = make_settings(tmp_path)
    pairs = _nmf_pairs(srv_records, 2)
    url = "/api/clusters?pairs=" + ",".join(f"{m}:{l}" for m, l, _ in pairs) + "&k=5"
    with TestClient(create_app(settings)) as c:
        first = c.get(url)
    assert first.status_code == 200
    groups = list((Path(settings.cache) / "groups" / "clusters").glob("v*.json"))
    assert len(groups) == 1
    entry = Cache.read(groups[0])
    assert entry.meta["params"]["k"] == 5 and entry.meta["params"]["seed"] == 0
    assert [p[:2] for p in entry.meta["params"]["pairs"]] == [[m, l] for m, l, _ in pairs]
    assert all(n["weights_sha256"] == srv_records[m]["weights_sha256"]
               for n, (m, _, _) in zip(entry.meta["params"]["nmf"], pairs))

    def boom(*a, **k):
        raise AssertionError("k-means ran again instead of reading the cached group entry")

    monkeypatch.setattr(clustering, "compute_clusters", boom)
    with TestClient(create_app(settings)) as c:
        again = c.get(url)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    monkeypatch.undo()
    raw = bytearray(groups[0].read_bytes())
    raw[-3] ^= 0x11
    groups[0].write_bytes(bytes(raw))
    with TestClient(create_app(settings)) as c:
        healed = c.get(url)
    assert healed.status_code == 200 and healed.content == first.content
    assert Cache.read(groups[0]) is not None  # rewritten, verifies


# ---- documentation --------------------------------------------------------------------------------
def test_openapi_documents_every_endpoint(srv_client):
    schema = srv_client.get("/openapi.json").json()
    paths = schema["paths"]
    for p in ["/api/models", "/api/models/{model}", "/api/models/{model}/layers/{layer}",
              "/api/models/{model}/layers/{layer}/{analysis}", "/api/models/{model}/layers/{layer}/neurons/{neuron}",
              "/api/clusters", "/api/uploads", "/api/jobs/{job_id}", "/api/jobs", "/api/architectures",
              "/api/models/{model}/precompute"]:
        assert p in paths, p
    page = srv_client.get("/api/docs")
    assert page.status_code == 200
    for p in paths:
        assert p in page.text
    assert srv_client.get("/docs").status_code == 404  # FastAPI's own page would load a CDN


def test_unknown_endpoint_lists_endpoints(srv_client):
    r = srv_client.get("/api/nothing-here")
    assert r.status_code == 404
    assert "GET /api/models" in r.json()["endpoints"]


# ---- uploads and jobs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upload_client(tmp_path_factory):
    """An app over its own empty data dir (uploads never touch the shared real cache), with a real
    ``convscope worker`` subprocess on the same data dir taking the jobs."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = make_settings(tmp_path_factory.mktemp("upload-data"))
    settings.max_upload_bytes = 3_000_000
    worker = start_worker(settings, Path(settings.data_dir) / "worker.log")
    try:
        with TestClient(create_app(settings)) as c:
            c.settings = settings
            yield c
    finally:
        stop_process(worker)


@pytest.fixture(scope="module")
def resnet20_state_dict(tmp_path_factory) -> Path:
    """A real resnet20 state dict saved with torch.save (the test process may import torch)."""
    from precompute.architectures import build
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.manual_seed(0)
    torch.save(build("resnet20").state_dict(), path)
    return path


def test_architectures_lists_the_upload_registry(srv_client):
    """GET /api/architectures: the declared architectures with a native input size
    (precompute/declarations/architectures.py), each with that size; the experiments' nets have none."""
    from precompute.declarations.architectures import upload_architectures

    r = srv_client.get("/api/architectures")
    assert r.status_code == 200
    body = r.json()
    assert body["architectures"] == sorted(upload_architectures())
    assert not {"banding-net", "cifar-resnet"} & set(body["architectures"])
    assert {"resnet20", "resnet56", "cifar10-cnn", "vgg16", "mobilenet-v2"} <= set(body["architectures"])
    assert body["input_sizes"]["resnet20"] == [3, 32, 32] and body["input_sizes"]["vgg16"] == [3, 224, 224]
    assert set(body["input_sizes"]) == set(body["architectures"])


def test_precompute_endpoint_errors(srv_client, srv_records, srv_models):
    """POST /api/models/{model}/precompute refuses, with status and a message naming the bad value and
    what exists, before anything is queued (no worker needed; runs on its own)."""
    c = srv_client
    model = srv_models[0]
    analyses = sorted({a for rec in srv_records.values() for a in rec["analyses"]})
    before = c.get("/api/jobs").json()["jobs"]
    r = c.post("/api/models/no-such-model/precompute")
    assert r.status_code == 404, r.text
    assert "unknown model 'no-such-model'" in detail(r) and r.json()["known"] == srv_models
    r = c.post("/api/models/UPPER/precompute")
    assert r.status_code == 422 and "invalid model name 'UPPER'" in detail(r) and r.json()["known"] == srv_models
    r = c.post(f"/api/models/{model}/precompute?analyses=symmetry,nope")
    assert r.status_code == 404, r.text
    assert "unknown analysis 'nope'" in detail(r) and r.json()["known"] == analyses
    assert all(a in detail(r) for a in analyses)
    for bad, quoted in [("NOPE", "'NOPE'"), ("symmetry,,nmf", "''"), ("nmf,Bad", "'Bad'")]:
        r = c.post(f"/api/models/{model}/precompute?analyses={bad}")
        assert r.status_code == 422, (bad, r.text)
        assert f"invalid analysis name {quoted}" in detail(r) and r.json()["known"] == analyses
    r = c.post(f"/api/models/{model}/precompute?force=maybe")
    assert r.status_code == 422 and "force" in detail(r) and "'maybe'" in detail(r)
    r = raw_post(c, "/api/models/..%2f..%2fetc/precompute")
    assert r.status_code == 404 and detail(r).startswith("no such endpoint")
    assert c.get("/api/jobs").json()["jobs"] == before  # nothing was queued


def _incoming_files(settings) -> list[Path]:
    return [p for p in (Path(settings.uploads) / ".incoming").rglob("*") if p.is_file()]


def test_upload_rejects_bad_requests(upload_client, srv_records):
    c = upload_client
    ok_file = ("m.pt", b"x" * 100)
    r = c.post("/api/uploads", content=b"raw", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 422 and "multipart/form-data" in detail(r)
    r = c.post("/api/uploads", data={"arch": "resnet20", "name": "x1"})
    assert r.status_code == 422 and "file" in detail(r)
    r = c.post("/api/uploads", files={"file": ("m.txt", b"abc")}, data={"arch": "resnet20", "name": "x1"})
    assert r.status_code == 422 and ".safetensors" in detail(r)
    for bad in ["", "UPPER", "../x", "a/b", "a\x00b"]:
        r = c.post("/api/uploads", files={"file": ok_file}, data={"arch": "resnet20", "name": bad})
        assert r.status_code == 422, bad
        assert "invalid model name" in detail(r)
    r = c.post("/api/uploads", files={"file": ok_file}, data={"arch": "no-such-arch", "name": "x1"})
    assert r.status_code == 422 and "no-such-arch" in detail(r) and "resnet20" in r.json()["known"]
    r = c.post("/api/uploads", files={"file": ok_file}, data={"arch": "../../etc", "name": "x1"})
    assert r.status_code == 422
    assert not _incoming_files(c.settings), "rejected uploads must not stay on disk"
    assert c.get("/api/jobs").json()["jobs"] == []  # nothing was queued


def test_upload_name_taken_409(tmp_path, srv_settings, srv_models):
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = make_settings(tmp_path)
    settings.cache_dir = srv_settings.cache  # sees the precomputed models
    with TestClient(create_app(settings)) as c:
        r = c.post("/api/uploads", files={"file": ("m.pt", b"x" * 10)}, data={"arch": "resnet20", "name": srv_models[0]})
    assert r.status_code == 409 and srv_models[0] in detail(r)


def test_upload_too_large_413(upload_client):
    c = upload_client
    big = b"\0" * 3_200_000
    r = c.post("/api/uploads", files={"file": ("m.pt", big)}, data={"arch": "resnet20", "name": "big1"})
    assert r.status_code == 413 and "limit" in detail(r)

    def chunks():  # no Content-Length: the limit is enforced while streaming
        boundary = b"b0undary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="m.pt"\r\n\r\n'
        for _ in range(200):
            yield b"\0" * 16384
        yield b"\r\n--" + boundary + b"--\r\n"

    r = c.post("/api/uploads", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert r.status_code == 413 and "limit" in detail(r)
    assert not _incoming_files(c.settings), "a refused upload must be removed"


def test_jobs_errors(upload_client):
    c = upload_client
    r = c.get("/api/jobs/..%2f..%2fetc")
    assert r.status_code in (404, 422)
    r = c.get("/api/jobs/not-a-job-id")
    assert r.status_code == 422 and "invalid job id" in detail(r)
    r = c.get("/api/jobs/upload-nothing-" + "0" * 16)
    assert r.status_code == 404 and "unknown job" in detail(r)
    assert c.get("/api/jobs").status_code == 200
    assert c.get("/api/jobs?kind=nope").status_code == 422
    assert c.get("/api/jobs?limit=0").status_code == 422


def _job(c, jid):
    return c.get(f"/api/jobs/{jid}").json()


@pytest.mark.slow
def test_upload_runs_on_the_worker_with_progress(upload_client, resnet20_state_dict):
    """An upload is an ``upload`` job of the queue: the worker registers and precomputes it; its
    progress is visible while it runs; the model is then served."""
    c = upload_client
    with open(resnet20_state_dict, "rb") as f:
        r = c.post("/api/uploads", files={"file": ("my resnet20.pt", f.read())},
                   data={"arch": "resnet20", "name": "api-resnet20", "dataset": "cifar10"})
    assert r.status_code == 202, r.text
    body = r.json()
    jid = body["id"]
    assert jid.startswith("upload-api-resnet20-") and body["url"] == f"/api/jobs/{jid}" and body["page"] == f"/jobs/{jid}"
    assert body["job"]["kind"] == "upload" and body["job"]["filename"] == "my resnet20.pt"
    assert "path" not in json.dumps(body["job"])  # no server paths in the public view
    running = wait_job(lambda j: _job(c, j), jid, 120, states=("running", "done", "failed"))
    seen = {running["progress"]}
    while running["state"] == "running":
        seen.add(running["progress"])
        time.sleep(0.3)
        running = _job(c, jid)
    assert running["state"] == "done", running
    # a resnet20 upload can finish within one heartbeat, so intermediate values are not always seen here;
    # test_jobs.py::test_worker_killed_mid_job_the_other_finishes_it sees progress > 0 on a long job
    assert all(0 <= p <= 1 for p in seen) and running["progress"] == 1.0, (seen, running["progress"])
    assert "started" in running["log"][-2] and "done" in running["log"][-1], running["log"]
    assert running["model_url"] == "/models/api-resnet20" and running["result"]["status"] == "done"
    m = c.get("/api/models/api-resnet20").json()
    assert m["summary"]["family"] == "user" and m["summary"]["arch"] == "resnet20"
    # no server paths: the checkpoint shows as its file name (issue 14, item 6)
    listing = c.get("/api/models").text
    for shown in (json.dumps(m), listing):
        assert str(c.settings.data_dir) not in shown and str(Path(c.settings.data_dir).resolve()) not in shown
    assert m["summary"]["source_detail"]["path"] == "my_resnet20.pt", m["summary"]["source_detail"]
    assert not _incoming_files(c.settings)  # the streamed file is gone, the registered copy kept
    assert (Path(c.settings.uploads) / "api-resnet20").is_dir()
    r = c.get("/api/jobs?kind=upload").json()["jobs"]
    assert r[0]["id"] == jid


@pytest.mark.slow
def test_upload_architecture_mismatch_fails_with_reason(upload_client, resnet20_state_dict):
    c = upload_client
    with open(resnet20_state_dict, "rb") as f:
        r = c.post("/api/uploads", files={"file": ("resnet20.pt", f.read())},
                   data={"arch": "resnet32", "name": "wrong-arch"})
    assert r.status_code == 202, r.text
    job = wait_job(lambda j: _job(c, j), r.json()["id"])
    assert job["state"] == "failed" and job["attempts"] == 1  # an input error is not retried
    assert job["error"] and ("missing" in job["error"].lower() or "unexpected" in job["error"].lower()
                             or "size mismatch" in job["error"].lower()), job["error"]
    assert "resnet20.pt" in job["error"] and str(c.settings.uploads) not in job["error"]
    assert "wrong-arch" not in c.get("/api/models").text
    users = Path(c.settings.user_models_file)
    assert not users.exists() or "wrong-arch" not in users.read_text()
    assert not _incoming_files(c.settings)


@pytest.mark.slow
def test_precompute_endpoint_queues_a_job_the_worker_runs(upload_client, resnet20_state_dict):
    """POST /api/models/{model}/precompute: 202 and a job; asking again while it is queued or running
    gives the same job; the worker runs it."""
    c = upload_client
    if c.get("/api/models/api-resnet20").status_code != 200:  # not uploaded yet by the upload test: do it here
        with open(resnet20_state_dict, "rb") as f:
            up = c.post("/api/uploads", files={"file": ("my resnet20.pt", f.read())},
                        data={"arch": "resnet20", "name": "api-resnet20", "dataset": "cifar10"})
        assert up.status_code == 202, up.text
        assert wait_job(lambda j: _job(c, j), up.json()["id"], 300)["state"] == "done"
    r = c.post("/api/models/api-resnet20/precompute?analyses=symmetry,histogram")
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert jid.startswith("precompute-api-resnet20-") and r.json()["job"]["analyses"] == ["symmetry", "histogram"]
    again = c.post("/api/models/api-resnet20/precompute?analyses=symmetry,histogram")
    assert again.json()["id"] == jid
    job = wait_job(lambda j: _job(c, j), jid)
    assert job["state"] == "done", job
    assert c.post("/api/models/no-such-model/precompute").status_code == 404
    assert c.post("/api/models/..%2f..%2fetc/precompute").status_code in (404, 422)
    assert c.post("/api/models/api-resnet20/precompute?analyses=nope").status_code == 404
    assert c.post("/api/models/api-resnet20/precompute?analyses=NOPE").status_code == 422
    assert c.post("/api/models/api-resnet20/precompute?analyses=symmetry,,nmf").status_code == 422
    assert c.post("/api/models/api-resnet20/precompute?force=maybe").status_code == 422


# ---- torch never enters the server -------------------------------------------------------------------
def test_server_does_not_import_torch(tmp_path, srv_settings, srv_records):
    """Serving, submitting jobs and receiving an upload: torch is never imported by the server."""
    import shutil

    shutil.copytree(srv_settings.cache, tmp_path / "cache")
    m, layer = first_with(srv_records, "nmf")
    pairs = ",".join(f"{mm}:{ll}" for mm, ll, _ in _nmf_pairs(srv_records, 2))
    urls = ["/", "/api/models", f"/api/models/{m}", f"/models/{m}", f"/models/{m}/layers/{layer}",
            f"/models/{m}/layers/{layer}/neurons/0", f"/api/models/{m}/layers/{layer}/nmf",
            f"/api/models/{m}/layers/{layer}/neurons/0", f"/api/clusters?pairs={pairs}&k=4", "/compare", "/upload",
            "/api/docs", "/openapi.json", "/api/jobs", "/api/models/nope", "/vendor/plotly.min.js"]
    code = f"""
import sys, json
from pathlib import Path
from fastapi.testclient import TestClient
from precompute.settings import Settings
from server.app import create_app
s = Settings(data_dir=Path({str(tmp_path)!r}))
c = TestClient(create_app(s))
codes = [c.get(u).status_code for u in {urls!r}]
posts = [c.post("/api/models/{m}/precompute").status_code,
         c.post("/api/uploads", files={{"file": ("x.pt", b"x" * 10)}}, data={{"arch": "resnet20", "name": "nt"}}).status_code]
codes += [c.get("/api/jobs").status_code, c.get("/upload").status_code, c.get("/api/architectures").status_code]
print(json.dumps({{"codes": codes, "posts": posts,
                  "torch": sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))}}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["torch"] == [], out["torch"][:5]
    codes = out["codes"][:len(urls)]
    assert codes[:-2] == [200] * (len(urls) - 2) and codes[-2:] == [404, 200], out["codes"]
    assert out["codes"][len(urls):] == [200, 200, 200] and out["posts"] == [202, 202], out


def test_no_500_for_odd_inputs(srv_client, srv_records):
    m, rec = next(iter(srv_records.items()))
    layer = rec["inventory"][0]["name"]
    odd = ["", " ", "%20", "%ff", "%c3%28", "a" * 300, "%e2%80%ae", "%u002e", "~", "*", "%3Cscript%3E", "%22", "'"]
    for o in odd:
        for tmpl in ["/api/models/{o}", "/api/models/{m}/layers/{o}", "/api/models/{m}/layers/{l}/{o}",
                     "/api/models/{m}/layers/{l}/neurons/{o}", "/api/clusters?pairs={o}&k={o}", "/api/jobs/{o}",
                     "/models/{o}", "/models/{m}/layers/{o}", "/models/{m}/layers/{l}/neurons/{o}"]:
            path = tmpl.format(o=o, m=m, l=layer)
            r = raw(srv_client, path)
            assert r.status_code < 500, (path, r.status_code, r.text[:300])


def test_corrupt_entry_is_not_served(tmp_path, srv_settings, srv_records):
    """A cache entry that fails its checksum answers 503 (never garbage): it is discarded and a
    precompute job for the model is queued (the end-to-end recovery with a worker is in test_security)."""
    import shutil

    from fastapi.testclient import TestClient

    from precompute.cache import Cache
    from precompute.jobs import read_job
    from server.app import create_app

    shutil.copytree(srv_settings.cache, tmp_path / "cache")
    settings = make_settings(tmp_path)
    model, layer = first_with(srv_records, "nmf")
    rec = srv_records[model]
    info = rec["analyses"]["nmf"]
    path = Cache(settings.cache).result_path(ResultKey(rec["weights_sha256"], "nmf", info["version"], info["params"]), layer)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x55
    path.write_bytes(bytes(raw))
    with TestClient(create_app(settings)) as c:
        r = c.get(f"/api/models/{model}/layers/{layer}/nmf")
        assert r.status_code == 503 and "does not verify" in detail(r) and "being recomputed" in detail(r)
        assert r.headers["retry-after"] and r.json()["job"].startswith(f"precompute-{model}-")
        assert str(tmp_path) not in r.text  # no server path in what the client sees
        assert not path.exists()  # discarded, never served
        job = read_job(settings, r.json()["job"])
        assert job["state"] == "queued" and job["args"] == {"model": model, "force": False}
        r2 = c.get(f"/api/models/{model}/layers/{layer}/nmf")  # still missing: the same job, not another
        assert r2.status_code == 503 and r2.json()["job"] == job["id"]
        r3 = c.get(f"/models/{model}/layers/{layer}/neurons/0")  # pages too say so, as a page
        assert r3.status_code in (200, 503)


def test_no_gzip_body_when_client_declines(srv_client, srv_records):
    model, layer = first_with(srv_records, "nmf")
    r = srv_client.get(f"/api/models/{model}/layers/{layer}/nmf", headers={"Accept-Encoding": "identity"})
    json.loads(r.content)  # plain JSON on the wire
    io.BytesIO(r.content)


# ---- one neuron-index parser for pages and API (issue 14, item 8) -----------------------------------------
@pytest.mark.parametrize("text", ["1_0", "+3", "\u0663", " 2"])
def test_pages_and_api_refuse_the_same_neuron_indices(srv_client, srv_records, text):
    """``int()`` accepts ``1_0``, ``+3``, non-ASCII digits and spaces; the API's pattern does not. The
    neuron page must answer what the API answers for the same path (422), not show neuron 10."""
    from urllib.parse import quote

    model, layer = first_with(srv_records, "nmf")
    path = f"/models/{model}/layers/{layer}/neurons/{quote(text)}"
    assert srv_client.get("/api" + path).status_code == 422
    assert srv_client.get(path).status_code == 422


# ---- the cost of new clusters results is bounded (issue 14, item 8) ---------------------------------------
def _big_pairs(srv_records, n=16) -> str:
    """Up to ``n`` model:layer pairs with 3x3 NMF results, the widest layers first (the costliest k-means)."""
    rows = []
    for m, rec in srv_records.items():
        inv = {r["name"]: r for r in rec["inventory"]}
        rows += [(inv[l]["out_channels"], m, l) for l in rec["analyses"].get("nmf", {}).get("layers", [])
                 if inv[l]["kernel"] == [3, 3]]
    return ",".join(f"{m}:{l}" for _, m, l in sorted(rows, reverse=True)[:n])


def test_clusters_group_entries_are_bounded(tmp_path, srv_settings, srv_records):
    """Each new (pairs, k) writes a group entry; the cache keeps the newest max_cluster_groups of them."""
    import shutil

    from fastapi.testclient import TestClient

    from server.app import create_app

    shutil.copytree(srv_settings.cache, tmp_path / "cache", ignore=shutil.ignore_patterns("groups"))
    settings = make_settings(tmp_path)
    settings.max_cluster_groups = 2
    pairs = ",".join(f"{m}:{l}" for m, l, _ in _nmf_pairs(srv_records, 2))
    folder = Path(settings.cache) / "groups" / "clusters"
    with TestClient(create_app(settings)) as c:
        for k in (4, 5, 6, 7):
            assert c.get(f"/api/clusters?pairs={pairs}&k={k}").status_code == 200
            time.sleep(0.01)  # distinct modification times
        kept = sorted(folder.glob("v*.json"))
        assert len(kept) == 2, kept
        assert sorted(json.loads(p.read_bytes().split(b"\n", 1)[0])["meta"]["params"]["k"] for p in kept) == [6, 7]
        assert c.get(f"/api/clusters?pairs={pairs}&k=4").status_code == 200  # an evicted one is computed again


@pytest.mark.slow
def test_new_clusters_results_are_computed_one_at_a_time(live_settings, srv_records, tmp_path):
    """Eight clients each asking for a new, costly (pairs, k) at once, to a real server whose
    ``cluster_wait_s`` is 0: it runs one k-means at a time, so a request that arrives while another is
    computed gets 503 with Retry-After at once (never 500, never a second k-means alongside), and asking
    again later gets the result. (With the default 3 s wait, whether any of the eight gets 503 depends on
    how fast the machine's k-means is: CI's finished all eight within the wait.)"""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    settings = live_settings.model_copy(update={"cluster_wait_s": 0.0})
    proc, base = start_uvicorn(settings, tmp_path / "uvicorn.log")
    try:
        pairs = _big_pairs(srv_records)
        urls = [f"{base}/api/clusters?pairs={pairs}&k={k}" for k in range(4, 12)]  # no other test asks these
        with ThreadPoolExecutor(len(urls)) as pool:
            answers = list(pool.map(lambda u: httpx.get(u, timeout=300), urls))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 503}, [(r.status_code, r.text[:200]) for r in answers]
        busy = [r for r in answers if r.status_code == 503]
        assert busy, f"all {len(urls)} new k-means ran at once: {statuses}"
        assert int(busy[0].headers["retry-after"]) > 0 and "one at a time" in busy[0].json()["detail"]
        assert 200 in statuses
        again = httpx.get(busy[0].request.url, timeout=300)
        for _ in range(20):
            if again.status_code != 503:
                break
            time.sleep(int(again.headers["retry-after"]))
            again = httpx.get(busy[0].request.url, timeout=300)
        assert again.status_code == 200, again.text
    finally:
        stop_process(proc)


# ---- the schema says what the handlers do: schemathesis' stateful run (issue 14, item 7) --------------------
def test_clusters_schema_requires_pairs(srv_client):
    """``pairs`` is required by the handler, so the schema says so (it said optional and 422 followed)."""
    spec = srv_client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/api/clusters"]["get"]["parameters"]}
    assert params["pairs"]["required"] is True
    r = srv_client.get("/api/clusters?k=8")
    assert r.status_code == 422 and "pairs" in detail(r)
    upload = spec["paths"]["/api/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"]["x-extensions"] == list(UPLOAD_EXTENSIONS)
    assert {".safetensors", ".pt", ".pth", ".th", ".onnx", ".h5", ".keras"} <= set(UPLOAD_EXTENSIONS)
    for op in ("/api/uploads", "/api/models/{model}/precompute"):
        assert spec["paths"][op]["post"]["responses"]["202"]["links"]["GetJob"]["operationId"] == "get_job"


@pytest.mark.slow
def test_stateful_run_finds_no_server_error_and_no_schema_violation(srv_settings, srv_records, tmp_path,
                                                                     monkeypatch):
    """schemathesis' state machine over the app (in-process, over a copy of the cache): sequences of calls
    that follow the schema's links (a 202's job id into GET /api/jobs/{job_id}); every response is checked
    against the schema (status, content type, headers, body) and none is a 5xx."""
    import shutil

    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings

    from server.app import create_app

    shutil.copytree(srv_settings.cache, tmp_path / "cache", ignore=shutil.ignore_patterns("jobs", "queue.sqlite3*"))
    s = make_settings(tmp_path)
    s.max_upload_bytes = 1_000_000
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(s))
    # as in test_fuzz: two operations have rules no schema states (the upload's file *name*; clusters' pairs
    # of one kernel size), so a schema-valid request may rightly get 422 there; every other check runs
    semantic = {("GET", "/api/clusters"), ("POST", "/api/uploads")}

    class Machine(schema.as_state_machine()):
        def validate_response(self, response, case, additional_checks=None, **kwargs):
            seen.add((case.operation.method.upper(), case.operation.path, response.status_code))
            excluded = [positive_data_acceptance] if (case.operation.method.upper(), case.operation.path) in semantic \
                else []
            case.validate_response(response, additional_checks=additional_checks, excluded_checks=excluded,
                                   transport_kwargs=kwargs or None)

    seen: set = set()
    machine = Machine
    # Hypothesis draws strings from the constants of the project's own source code ("local constants"), so
    # which calls the run makes would change with any edit anywhere in the project: without them, the run
    # depends on the schema and the answers only
    from hypothesis.internal.conjecture import providers

    monkeypatch.setattr(providers, "_get_local_constants", lambda: providers.Constants(
        integers=providers.SortedSet(), floats=providers.SortedSet(key=providers.float_to_int),
        bytes=providers.SortedSet(), strings=providers.SortedSet()))
    machine.TestCase.settings = settings(max_examples=30, stateful_step_count=6, deadline=None, database=None,
                                         derandomize=True, suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()
    # the run reached real resources and followed the link from a 202 to its job
    assert {("GET", "/api/models/{model}", 200), ("POST", "/api/models/{model}/precompute", 202),
            ("GET", "/api/jobs/{job_id}", 200)} <= seen, sorted(seen)
