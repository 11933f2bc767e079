"""Shared fixtures.

- ``settings`` (session): for tests on the real zoo. Its store is persistent
  (``$CONVSCOPE_TEST_STORE``, default ``~/.cache/convscope-test-store``) so the weight wheels are
  downloaded once per machine; the CIFAR ResNets come from ``../shared/zoo/cifar10-resnets`` beside
  the checkout when it exists.
- ``tmp_settings`` (function): everything under the test's ``tmp_path``; nothing leaves it.

A test skips, saying what to install, where a system package it needs (Chromium, Fashion-MNIST, ...) is
missing. ``make test`` installs them first and sets ``CONVSCOPE_STRICT_DEPS=1``: there, such a skip
("... missing ...") is a failure, so CI never passes on tests that did not run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from precompute.settings import Settings

REPO = Path(__file__).resolve().parent.parent
ZOO_DIR = REPO.parent / "shared" / "zoo" / "cifar10-resnets"


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    store = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))
    return Settings(
        data_dir=tmp_path_factory.mktemp("convscope-data"),
        store_dir=store,
        zoo_dir=ZOO_DIR if ZOO_DIR.is_dir() else None,
    )


@pytest.fixture
def tmp_settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        cache_dir=tmp_path / "data" / "cache",
        store_dir=tmp_path / "store",
        uploads_dir=tmp_path / "data" / "uploads",
        reference_dir=tmp_path / "reference",
        zoo_dir=None,
        pip_args="",
    )


def _strict_skip(report) -> None:
    """Under CONVSCOPE_STRICT_DEPS=1, a skip whose reason says something is "missing" becomes a failure."""
    if not report.skipped or os.environ.get("CONVSCOPE_STRICT_DEPS") != "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "missing" in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing dependency although `make system-deps` installed them: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a whole module skipped while it is collected (pytest.importorskip at the top of tests/test_fuzz.py)
    # never reaches pytest_runtest_makereport
    outcome = yield
    _strict_skip(outcome.get_result())
