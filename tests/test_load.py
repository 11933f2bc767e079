"""Load and memory: a real uvicorn subprocess over the precomputed cache takes 2,000 requests from 32
concurrent keep-alive clients, spread over the mix of ``benchmarks/api_load.py --mix`` (model, layer,
analysis and neuron JSON, the models list, findings and clusters, the home, model, layer, neuron, findings
and compare pages, and 10 % invalid requests): every request gets the status its path must get (200, or
the 404/422 of an invalid one), and the server's resident memory, sampled every 50 ms, grows by less than
a generous bound. A bound, not a timing: the figures of the full 10,000-request run are in BENCHMARKS.md
("Load and memory")."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

from server_fixtures import REPO, settings_env  # noqa: E402

REQUESTS, CLIENTS = 2000, 32
#: most the server's RSS may grow during the run (after a warm-up over every path)
GROWTH_MB = 100


def _bench():
    spec = importlib.util.spec_from_file_location("api_load", REPO / "benchmarks" / "api_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_2000_requests_at_32_clients_no_failure_bounded_memory(srv_settings, srv_models):
    out = _bench().run_benchmark(settings_env(srv_settings), mix=True, requests=REQUESTS, concurrency=CLIENTS)
    print(json.dumps({k: v for k, v in out.items() if k != "paths"}))
    assert out["requests"] == REQUESTS
    assert out["distinct_paths"] >= 10  # several endpoints and pages, not one URL
    assert out["invalid_paths"] >= 1  # and bad requests among them
    assert out["failures"] == 0, out["first_failures"]
    assert out["rss_samples"] >= 3
    assert out["rss_growth_mb"] < GROWTH_MB, out
