"""Fuzz the JSON API from its own OpenAPI schema (schemathesis): for every operation, generated valid and
invalid inputs never get a 5xx, and every response (status code, content type, headers, body) matches
what the schema declares (``server/schemas.py``). Bounded: 25 examples per operation.

The app runs in-process (ASGI) over a copy of the precomputed cache, so uploads and precompute jobs the
fuzzer submits stay in that copy (no worker runs them)."""

from __future__ import annotations

import re
import shutil

import pytest

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

# "missing": under make test's strict mode (conftest.py) this skip is a failure, as for a system package
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis missing: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from server_fixtures import first_with, make_settings  # noqa: E402


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every documented operation, from the app's own OpenAPI schema (so a new
    endpoint is fuzzed without touching this file)."""
    from pathlib import Path

    from precompute.settings import Settings
    from server.app import create_app

    spec = create_app(Settings(data_dir=Path("/nonexistent-convscope-data"))).openapi()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


OPERATIONS = _operations()
SEMANTIC_422 = {("GET", "/api/clusters"), ("POST", "/api/uploads")}


@pytest.fixture(scope="module")
def fuzz_app(srv_settings, srv_records, tmp_path_factory):
    from precompute.jobs import submit
    from server.app import create_app

    data = tmp_path_factory.mktemp("fuzz-data")
    shutil.copytree(srv_settings.cache, data / "cache", ignore=shutil.ignore_patterns("jobs", "queue.sqlite3*"))
    s = make_settings(data)
    s.max_upload_bytes = 1_000_000
    app = create_app(s)
    model, layer = first_with(srv_records, "nmf")
    # real values, so that the fuzzer also gets (and checks) the 200 bodies, not only 404s
    app.state.fuzz_real = {"model": model, "layer": layer, "analysis": "nmf", "neuron": "0",
                           "job_id": submit("precompute", {"model": model, "force": False}, s)["id"]}
    return app


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    # schemathesis 4: openapi.from_asgi (3.x had schemathesis.from_asgi). Its pytest loader
    # (schemathesis.pytest.from_fixture + @schema.parametrize) needs pytest < 9 (Node._nodeid), so each
    # operation is fuzzed here with its Hypothesis strategy, which runs the same checks.
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_schema(api_schema, fuzz_app, method, path):
    """Valid and invalid inputs (schemathesis' positive and negative generation): no 5xx, and every
    response conforms to the schema (``case.call_and_validate``: all of schemathesis' default checks)."""
    from schemathesis import GenerationMode

    operation = api_schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    params = set(re.findall(r"\{(\w+)\}", path))
    if params and params <= set(fuzz_app.state.fuzz_real):  # and with real names: the 200 bodies
        real = {k: v for k, v in fuzz_app.state.fuzz_real.items() if k in params}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real))
    strategy = st.one_of(*strategies)

    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # Two operations have rules a schema cannot state, so a schema-valid request may rightly get 422:
    # /api/clusters (pairs given twice, layers of different kernel sizes, k above the neurons chosen) and
    # /api/uploads (the file part's *name* must end in .safetensors/.pt/.pth/.th; OpenAPI describes the
    # bytes, not the name). Every other check still runs on them; every check runs on the rest.
    excluded = [positive_data_acceptance] if (method, path) in SEMANTIC_422 else []

    @given(case=strategy)
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        case.call_and_validate(excluded_checks=excluded)

    run()


def test_responses_are_declared(fuzz_app):
    """The schema is meaningful: every operation declares its success body and its error bodies."""
    spec = fuzz_app.openapi()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = op["responses"]
            ok = codes.get("200") or codes.get("202")
            assert ok, (method, path)
            if not path.startswith("/api/experiments"):  # documented by their own module
                assert "$ref" in str(ok.get("content", {})), (method, path, "no response model")
            for code in ("404", "422"):
                if code in codes:
                    assert "ErrorBody" in str(codes[code]), (method, path, code)
