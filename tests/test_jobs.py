"""The job queue: idempotent submission, real workers on SQLite and on a real redis-server,
a worker killed with SIGKILL mid-job, failures kept with their error."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from precompute.cache import Cache
from precompute.jobs import JobError, get_huey, job_id, list_jobs, read_job, submit
from precompute.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = ROOT.parent / "shared" / "zoo" / "cifar10-resnets"
STORE = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))


def _env(data_dir: Path, redis_url: str = "") -> dict:
    env = dict(os.environ, CONVSCOPE_DATA_DIR=str(data_dir), CONVSCOPE_STORE_DIR=str(STORE),
               CONVSCOPE_REDIS_URL=redis_url, CONVSCOPE_DEVICE="cpu", OMP_NUM_THREADS="1",
               CONVSCOPE_WORKER_ALIVE_FILE=str(data_dir / f"alive-{time.monotonic_ns()}"))
    if ZOO_DIR.is_dir():
        env["CONVSCOPE_ZOO_DIR"] = str(ZOO_DIR)
    return env


def _settings(data_dir: Path, redis_url: str = "") -> Settings:
    return Settings(data_dir=data_dir, store_dir=STORE, redis_url=redis_url, device="cpu",
                    zoo_dir=ZOO_DIR if ZOO_DIR.is_dir() else None)


def _start_worker(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "precompute.cli", "worker"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_all(settings: Settings, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = {i: read_job(settings, i) for i in ids}
        if all(j and j["state"] in ("done", "failed") for j in jobs.values()):
            return jobs
        time.sleep(0.3)
    states = {i: (j or {}).get("state") for i, j in jobs.items()}
    raise AssertionError(f"jobs did not finish in {timeout}s: {states}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is missing: `make system-deps` (apt-get install redis-server) installs it"
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_job_ids_are_deterministic_and_checked():
    a = job_id("precompute", {"model": "resnet20-random", "analyses": ["nmf"]})
    assert a == job_id("precompute", {"analyses": ["nmf"], "model": "resnet20-random"})
    assert a != job_id("precompute", {"model": "resnet20-random", "analyses": ["svd"]})
    assert a.startswith("precompute-resnet20-random-")
    with pytest.raises(JobError, match="unknown job kind 'nope'"):
        job_id("nope", {})
    with pytest.raises(ValueError, match="invalid model name"):
        job_id("precompute", {"model": "../../etc"})


def test_submitting_twice_enqueues_once(tmp_path):
    settings = _settings(tmp_path)
    first = submit("precompute", {"model": "resnet20-random"}, settings)
    second = submit("precompute", {"model": "resnet20-random"}, settings)
    assert first["id"] == second["id"] and second["state"] == "queued"
    assert get_huey(settings).pending_count() == 1
    assert [j["id"] for j in list_jobs(settings)] == [first["id"]]


@pytest.mark.slow
def test_embedded_sqlite_worker_runs_jobs_and_keeps_failures(tmp_path):
    settings = _settings(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    good = submit("precompute", {"model": "resnet20-random", "analyses": ["symmetry", "batchnorm"]}, settings)
    failing = submit("upload", {"path": str(bad), "arch": "resnet20", "name": "my-bad-net"}, settings)
    worker = _start_worker(_env(tmp_path))
    try:
        jobs = _wait_all(settings, [good["id"], failing["id"]], timeout=120)
    finally:
        _stop([worker])
    assert jobs[good["id"]]["state"] == "done", jobs[good["id"]]
    record = Cache(settings.cache).get_model("resnet20-random")
    assert set(record["analyses"]) == {"symmetry", "batchnorm"}
    f = jobs[failing["id"]]
    assert f["state"] == "failed" and f["attempts"] == 1  # a bad file is not retried
    assert "bad.pt" in f["error"]
    assert Cache(settings.cache).get_model("my-bad-net") is None
    # done, so submitting it again does nothing
    assert submit("precompute", {"model": "resnet20-random", "analyses": ["symmetry", "batchnorm"]},
                  settings)["attempts"] == 1


MODELS = ["resnet20-random", "resnet32-random", "cifar10-cnn", "cifar10-cnn-random", "resnet20-cifar10",
          "resnet32-cifar10"]
ANALYSES = ["symmetry", "histogram", "batchnorm"]


@pytest.mark.slow
def test_two_workers_on_redis_run_20_jobs_exactly_once(tmp_path, redis_url):
    models = MODELS if ZOO_DIR.is_dir() else [m for m in MODELS if "cifar10-cnn" in m or "random" in m] + [
        "resnet44-random", "resnet56-random"]
    settings = _settings(tmp_path, redis_url)
    work = [{"model": m, "analyses": [a]} for m in models for a in ANALYSES]
    assert len(work) == 18
    submitted = [submit("precompute", args, settings) for args in work + work[:2]]  # two duplicates
    ids = sorted({j["id"] for j in submitted})
    assert len(ids) == 18
    workers = [_start_worker(_env(tmp_path, redis_url)) for _ in range(2)]
    try:
        jobs = _wait_all(settings, ids, timeout=300)
    finally:
        _stop(workers)
    ran_on = set()
    for jid, job in jobs.items():
        assert job["state"] == "done", job
        events = [e["event"] for e in job["history"]]
        assert events.count("started") == 1 and events.count("done") == 1, (jid, events)
        ran_on.add(job["worker"])
    assert len(ran_on) == 2, f"both workers should have taken jobs; got {ran_on}"
    cache = Cache(settings.cache)
    for m in models:
        record = cache.get_model(m)
        assert set(record["analyses"]) == set(ANALYSES), (m, record["analyses"].keys())
    assert cache.verify_all() == []


@pytest.mark.slow
def test_worker_killed_mid_job_the_other_finishes_it(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url)
    env = _env(tmp_path, redis_url)
    first = _start_worker(env)
    second = None
    try:
        # all analyses on the largest default architecture: long enough to be killed in the middle
        job = submit("precompute", {"model": "vgg16-bn-random"}, settings)
        deadline = time.time() + 120
        while time.time() < deadline:
            state = read_job(settings, job["id"])
            if state["state"] == "running" and state["progress"] > 0:
                break
            time.sleep(0.1)
        assert state["state"] == "running", state
        second = _start_worker(env)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        final = _wait_all(settings, [job["id"]], timeout=300)[job["id"]]
    finally:
        _stop([p for p in (first, second) if p is not None])
    assert final["state"] == "done", final
    assert final["attempts"] == 2 and final["worker"].endswith(f":{second.pid}")
    events = [e["event"] for e in final["history"]]
    assert events.count("lost") == 1 and events.count("done") == 1
    cache = Cache(settings.cache)
    assert cache.verify_all() == []  # nothing half-written under a real name
    record = cache.get_model("vgg16-bn-random")
    assert record["status"] == "done" and not record["errors"]
