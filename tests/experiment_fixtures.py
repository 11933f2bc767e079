"""Fixtures for the experiment pages (API, pages, browser), loaded with ``pytest_plugins = ["experiment_fixtures"]``.

- ``exp_settings`` (session): a data dir whose reference folder holds tiny reference runs made by the real
  command line, ``convscope train EXPERIMENT --variant ...`` for every experiment (all its declared variants and
  ``random``), ``--limit 256 --epochs 1`` on Fashion-MNIST, written with ``--out`` into a temporary folder that
  ``CONVSCOPE_REFERENCE_DIR`` names, precomputed by ``convscope train`` itself (as a user's run is); then
  checked and topped up by the real pipeline.
  ``exp_runs``: {experiment: {variant: run record}}; ``exp_zoo_list``: ``convscope zoo list --json`` rows.
  For quick iteration, ``CONVSCOPE_EXPERIMENT_TEST_DATA=/some/folder`` keeps that data (made there once, reused after).
- ``exp_client``: a ``TestClient`` over ``create_app(exp_settings)``; ``exp_live``: uvicorn over it (base URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from precompute.settings import Settings

REPO = Path(__file__).resolve().parent.parent
STORE = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
LIMIT = 256
#: experiment -> variants trained for the tests (all declared ones and random)
TRAINED = {"banding": ["baseline", "rot90", "nogap", "xpool", "random"], "bnonly": ["all", "bn", "bn-output", "random"],
           "symmetry": ["zeropad", "reflectpad", "oddsize", "random"], "branches": ["1", "2", "4", "random"]}

needs_fashion = pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST missing: sudo apt-get install "
                                                                "dataset-fashion-mnist (make system-deps)")


def _env(settings: Settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(CONVSCOPE_DATA_DIR=str(settings.data_dir), CONVSCOPE_REFERENCE_DIR=str(settings.reference_dir),
               CONVSCOPE_STORE_DIR=str(settings.store_dir), CONVSCOPE_DEVICE="cpu", PYTHONPATH=str(REPO))
    return env


def convscope(settings: Settings, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "precompute.cli", *args], cwd=REPO, env=_env(settings),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"convscope {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="session")
def exp_settings(tmp_path_factory) -> Settings:
    if not FASHION.is_file():
        pytest.skip("Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist (make system-deps)")
    keep = os.environ.get("CONVSCOPE_EXPERIMENT_TEST_DATA")
    root = Path(keep) if keep else tmp_path_factory.mktemp("experiment-data")
    settings = Settings(data_dir=root / "data", reference_dir=root / "reference", store_dir=STORE, zoo_dir=None,
                        device="cpu")
    if keep and (root / "complete").is_file():
        return settings
    settings.reference_dir.mkdir(parents=True, exist_ok=True)
    for exp, variants in TRAINED.items():
        convscope(settings, "train", exp, "--variant", *variants, "--limit", str(LIMIT), "--epochs", "1",
                  "--device", "cpu", "--out", str(settings.reference_dir))
    from precompute.pipeline import precompute_model

    for exp, variants in TRAINED.items():
        for v in variants:
            rec = precompute_model(f"{exp}-{v}", settings, device="cpu")
            assert rec["inventory"] and rec["spec"]["extra"]["experiment"] == exp
    (root / "complete").write_text("done\n")
    return settings


@pytest.fixture(scope="session")
def exp_runs(exp_settings) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for exp, variants in TRAINED.items():
        for v in variants:
            out.setdefault(exp, {})[v] = json.loads((exp_settings.reference_dir / f"{exp}-{v}.json").read_text())
    return out


@pytest.fixture(scope="session")
def exp_zoo_list(exp_settings) -> list[dict]:
    return json.loads(convscope(exp_settings, "zoo", "list", "--json").stdout)


@pytest.fixture(scope="session")
def exp_app(exp_settings):
    from server.app import create_app

    return create_app(exp_settings)


@pytest.fixture(scope="session")
def exp_client(exp_app):
    from fastapi.testclient import TestClient

    with TestClient(exp_app) as c:
        yield c


@pytest.fixture(scope="session")
def exp_live(exp_settings, tmp_path_factory):
    from server_fixtures import start_uvicorn

    log = tmp_path_factory.mktemp("exp-live-log") / "uvicorn.log"
    proc, base = start_uvicorn(exp_settings, log)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
