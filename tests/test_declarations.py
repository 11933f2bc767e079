"""The ground floor (precompute/declarations/): torch-free, and the one source of what both sides use.

Each test checks that the torch side is built on the declarations, not beside them: a builder for every
declared architecture and none other, the trainer's experiments being the declared objects, the limits
reaching the OpenAPI schema and the pages' boot data.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from precompute.declarations import architectures as declared_archs
from precompute.declarations import limits
from precompute.declarations.experiments import EXPERIMENTS

REPO = Path(__file__).resolve().parent.parent


def test_the_declarations_load_without_torch():
    code = ("import sys, precompute.declarations.architectures, precompute.declarations.experiments, "
            "precompute.declarations.limits, precompute.declarations.specs\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_every_declared_architecture_has_its_builder_and_no_other():
    from precompute.architectures import ARCHITECTURES, default_input_size

    assert sorted(ARCHITECTURES.names()) == sorted(declared_archs.ARCHITECTURES.names())
    for name in ARCHITECTURES:
        assert default_input_size(name) == declared_archs.input_size(name), name


def test_a_builder_without_a_declaration_is_refused():
    from precompute.architectures import register_arch

    with pytest.raises(ValueError, match=r"'tiny-net' has a builder but no declaration; add declare\('tiny-net'"):
        register_arch("tiny-net")


def test_uploads_take_the_architectures_with_an_input_size():
    up = declared_archs.upload_architectures()
    assert up["resnet20"] == (3, 32, 32) and up["efficientnet-lite2"] == (3, 260, 260)
    assert "banding-net" not in up and "cifar-resnet" not in up
    assert list(up) == sorted(up)


def test_the_trainer_runs_the_declared_experiments():
    from precompute.experiments import recipes

    assert recipes.EXPERIMENTS is EXPERIMENTS
    assert set(recipes.INPUT_TRANSFORMS) == set(recipes.TRANSFORM_FUNCTIONS)
    for exp in EXPERIMENTS.items():
        name, e = exp
        assert e.arch in declared_archs.ARCHITECTURES, name
        for v in e.variants:
            assert v.input_transform is None or v.input_transform in recipes.INPUT_TRANSFORMS, (name, v.name)


@pytest.mark.parametrize("low,high", [(4, 19), (0, 9), (5, 25), (10, 10), (0, 99)])
def test_int_range_pattern_matches_exactly_the_range(low, high):
    pat = re.compile(limits.int_range_pattern(low, high))  # fullmatch: ECMA's $ is the end, Python's not quite
    assert [k for k in range(0, 130) if pat.fullmatch(str(k))] == list(range(low, high + 1))
    assert not pat.fullmatch(f"0{low}") and not pat.fullmatch(f" {low}")


def test_the_openapi_schema_states_the_limits():
    from server.app import create_app

    spec = create_app().openapi()
    params = {p["name"]: p for p in spec["paths"]["/api/clusters"]["get"]["parameters"]}
    assert params["k"]["schema"]["pattern"] == "^(?:[4-9]|1[0-9])$" == limits.CLUSTER_K_PATTERN
    assert params["k"]["schema"]["default"] == str(limits.CLUSTER_K_DEFAULT)
    assert params["pairs"]["schema"]["pattern"].endswith(f"){{0,{limits.MAX_CLUSTER_PAIRS - 1}}}$")
    kinds = {p["name"]: p for p in spec["paths"]["/api/jobs"]["get"]["parameters"]}["kind"]
    assert kinds["schema"]["anyOf"][0]["enum"] == list(limits.JOB_KINDS)


def test_the_batchnorm_scalars_are_keyed_by_the_declared_thresholds():
    """The server reads gamma_below_<t> for each declared threshold; the analysis writes exactly those."""
    from precompute.analyses.batchnorm import BatchNorm

    result = {"frac_below": {t: 0.25 for t in limits.GAMMA_THRESHOLDS}}
    assert list(BatchNorm().scalars(result)) == [f"gamma_below_{t}" for t in limits.GAMMA_THRESHOLDS]


def test_every_page_gets_the_limits_from_the_server(tmp_path):
    """The pages' JavaScript reads the limits from <script id="limits"> (common.js: CS.limits), not copies."""
    import json

    from fastapi.testclient import TestClient

    from precompute.settings import Settings
    from server.app import create_app

    with TestClient(create_app(Settings(data_dir=tmp_path))) as client:
        for url in ("/", "/compare", "/upload"):
            r = client.get(url)
            assert r.status_code == 200, url
            m = re.search(r'<script id="limits" type="application/json">(.*?)</script>', r.text, re.S)
            assert m and json.loads(m.group(1)) == limits.public(), url


def test_the_javascript_holds_no_copy_of_the_limits():
    js = {p.name: p.read_text() for p in (REPO / "frontend" / "static" / "js").glob("*.js")}
    html = {p.name: p.read_text() for p in (REPO / "frontend" / "templates").glob("*.html")}
    for name, text in {**js, **html}.items():
        assert not re.search(r"Math\.max\(4, Math\.min\(19|range\(4, 20\)|max_pairs \|\| 16", text), name
        assert not re.search(r'\[\s*"0\.01",\s*"0\.05",\s*"0\.1"\s*\]|\[0\.01, 0\.05, 0\.1\]', text), name
        # one gamma threshold picked by hand (the compare chart's was "0.05"): limits.gamma_off / gamma_compare
        assert not re.search(r'values\[\s*"0\.\d+"\s*\]|\|γ\| < 0\.\d', text), name


def test_every_declared_analysis_is_registered_with_its_declared_version_and_scope():
    from precompute.analyses import ANALYSES
    from precompute.declarations import analyses as declared

    assert ANALYSES.names() == declared.ANALYSES.names()
    for name, a in ANALYSES.items():
        d = declared.ANALYSES.get(name)
        assert (a.version, a.scope) == (d.version, d.scope), name
    import precompute.clustering as clustering

    assert clustering.VERSION == declared.ANALYSES.get("clusters").version


def test_an_analysis_without_a_declaration_or_with_its_own_version_is_refused():
    from precompute.analyses.base import Analysis, register_analysis

    class Tiny(Analysis):
        name = "tiny"

    with pytest.raises(ValueError, match=r"'tiny' has no declaration; add declare\('tiny', version\)"):
        register_analysis(Tiny)

    class OwnVersion(Analysis):
        name = "symmetry"
        version = 7

    with pytest.raises(ValueError, match="sets its own version or scope"):
        register_analysis(OwnVersion)
