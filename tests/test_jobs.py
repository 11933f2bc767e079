"""The job queue: idempotent submission, real workers on SQLite and on a real redis-server,
a worker killed with SIGKILL mid-job, failures kept with their error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from precompute import jobs
from precompute.cache import Cache
from precompute.jobs import JobError, get_huey, job_id, list_jobs, read_job, submit
from precompute.settings import Settings
from server.jobs import public_job
from server_fixtures import free_port, redis_server, stop_processes

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


def _wait_all(settings: Settings, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = {i: read_job(settings, i) for i in ids}
        if all(j and j["state"] in ("done", "failed") for j in jobs.values()):
            return jobs
        time.sleep(0.3)
    states = {i: (j or {}).get("state") for i, j in jobs.items()}
    raise AssertionError(f"jobs did not finish in {timeout}s: {states}")


@pytest.fixture
def redis_url(tmp_path):
    with redis_server(tmp_path / "redis") as url:
        yield url


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
        stop_processes([worker])
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
        stop_processes(workers)
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
        stop_processes([p for p in (first, second) if p is not None])
    assert final["state"] == "done", final
    assert final["attempts"] == 2 and final["worker"].endswith(f":{second.pid}")
    events = [e["event"] for e in final["history"]]
    assert events.count("lost") == 1 and events.count("done") == 1
    cache = Cache(settings.cache)
    assert cache.verify_all() == []  # nothing half-written under a real name
    record = cache.get_model("vgg16-bn-random")
    assert record["status"] == "done" and not record["errors"]


# ---- the retry limit, in-process: the real queue (SQLite in tmp), the real run_job and reaper ----------
@pytest.fixture
def queue_settings(tmp_settings) -> Settings:
    return tmp_settings.model_copy(update={"redis_url": "", "device": "cpu"})  # embedded SqliteHuey in tmp


def _drain(settings: Settings, limit: int = 20) -> int:
    """Run every message in the queue (and those the runs enqueue) through the registered Huey task, as
    a consumer would; returns how many ran."""
    huey = get_huey(settings)
    ran = 0
    while huey.pending_count():
        assert ran < limit, "the job kept re-enqueueing itself past the retry limit"
        huey.execute(huey.dequeue())
        ran += 1
    return ran


def test_transient_error_is_retried_max_attempts_times_then_failed_with_the_error(queue_settings, monkeypatch):
    calls = []

    def transient(job, settings, report, note=None):  # the job body; the retry machinery is under test
        calls.append(job["attempts"])
        raise RuntimeError(f"connection reset (attempt {job['attempts']})")

    monkeypatch.setattr(jobs, "_execute", transient)
    assert not jobs._is_user_error(RuntimeError("x"))  # a transient error, not the input's fault
    jid = submit("precompute", {"model": "resnet20-random"}, queue_settings)["id"]

    assert _drain(queue_settings) == jobs.MAX_ATTEMPTS  # each failure but the last re-enqueued it
    assert calls == list(range(1, jobs.MAX_ATTEMPTS + 1))
    job = read_job(queue_settings, jid)
    assert job["state"] == "failed" and job["attempts"] == jobs.MAX_ATTEMPTS
    assert job["error"] == f"RuntimeError: connection reset (attempt {jobs.MAX_ATTEMPTS})"
    assert "RuntimeError" in job["traceback"] and job["finished"]
    events = [e["event"] for e in job["history"]]
    assert events.count("started") == jobs.MAX_ATTEMPTS and events[-1] == "failed"
    # a late duplicate delivery does not run a failed job again
    assert jobs.run_job(jid, queue_settings)["state"] == "failed" and len(calls) == jobs.MAX_ATTEMPTS
    # ... but submitting it again does, from attempt 1
    again = submit("precompute", {"model": "resnet20-random"}, queue_settings)
    assert again["state"] == "queued" and again["attempts"] == 0 and again["error"] is None


def test_retry_in_between_keeps_the_last_error_and_the_next_attempt_can_succeed(queue_settings, monkeypatch):
    def flaky(job, settings, report, note=None):
        if job["attempts"] < jobs.MAX_ATTEMPTS:
            raise RuntimeError("worker ran out of shared memory")
        return {"model": job["args"]["model"], "status": "done", "seconds": 0.0}

    monkeypatch.setattr(jobs, "_execute", flaky)
    jid = submit("precompute", {"model": "resnet20-random"}, queue_settings)["id"]
    huey = get_huey(queue_settings)
    huey.execute(huey.dequeue())
    job = read_job(queue_settings, jid)
    assert job["state"] == "queued" and job["attempts"] == 1
    assert job["error"] == "RuntimeError: worker ran out of shared memory" and "retrying" in job["message"]
    assert _drain(queue_settings) == jobs.MAX_ATTEMPTS - 1
    job = read_job(queue_settings, jid)
    assert job["state"] == "done" and job["attempts"] == jobs.MAX_ATTEMPTS and job["result"]["status"] == "done"


def test_user_error_fails_at_once_without_retries(queue_settings, monkeypatch):
    def bad_input(job, settings, report, note=None):
        raise jobs.UserError("my.pt is not a checkpoint")

    monkeypatch.setattr(jobs, "_execute", bad_input)
    jid = submit("precompute", {"model": "resnet20-random"}, queue_settings)["id"]
    assert _drain(queue_settings) == 1
    job = read_job(queue_settings, jid)
    assert job["state"] == "failed" and job["attempts"] == 1 and job["error"] == "my.pt is not a checkpoint"


def _claim(settings: Settings, jid: str, worker: str) -> dict:
    job = jobs._claim(settings, jid, worker)
    assert job is not None and job["state"] == "running" and job["worker"] == worker
    return job


def _die(settings: Settings, jid: str) -> None:
    """The running job's worker is killed (SIGKILL): its heartbeat in the job state file goes stale."""
    job = read_job(settings, jid)
    job["heartbeat"] = time.time() - jobs.STALE_S - 1
    (jobs.jobs_dir(settings) / f"{jid}.job").write_text(json.dumps(job))


def test_reaper_requeues_lost_jobs_then_fails_them_after_max_attempts(queue_settings):
    jid = submit("precompute", {"model": "resnet20-random"}, queue_settings)["id"]
    huey = get_huey(queue_settings)
    for attempt in range(1, jobs.MAX_ATTEMPTS):
        _claim(queue_settings, jid, f"dead:{attempt}")
        assert jobs.reap(queue_settings) == []  # a fresh heartbeat: left alone
        assert read_job(queue_settings, jid)["state"] == "running"
        _die(queue_settings, jid)
        pending = huey.pending_count()
        assert jobs.reap(queue_settings) == [jid]
        job = read_job(queue_settings, jid)
        assert job["state"] == "queued" and job["attempts"] == attempt and job["worker"] is None
        assert huey.pending_count() == pending + 1  # re-enqueued for another worker
    _claim(queue_settings, jid, f"dead:{jobs.MAX_ATTEMPTS}")
    _die(queue_settings, jid)
    pending = huey.pending_count()
    assert jobs.reap(queue_settings) == []
    job = read_job(queue_settings, jid)
    assert job["state"] == "failed" and job["attempts"] == jobs.MAX_ATTEMPTS
    assert job["error"] == (f"its worker stopped {jobs.MAX_ATTEMPTS} times (killed or crashed: no heartbeat for "
                            f"{jobs.STALE_S:.0f} s)") and job["finished"]
    assert "dead:" not in json.dumps(public_job(job))  # the worker's host name stays on the server
    assert [e.get("worker") for e in job["history"] if e["event"] == "lost"][-1] == f"dead:{jobs.MAX_ATTEMPTS}"
    assert [e["event"] for e in job["history"]].count("lost") == jobs.MAX_ATTEMPTS
    assert huey.pending_count() == pending  # not enqueued again
    assert jobs.reap(queue_settings) == []  # a second reap changes nothing
    assert jobs.run_job(jid, queue_settings)["state"] == "failed"  # nor does a late delivery


@pytest.mark.slow
def test_embedded_worker_does_not_outlive_its_server(tmp_path):
    """`convscope serve` (embedded mode) starts a worker process; killing the server with SIGKILL, which
    runs no cleanup, still stops that worker (it watches its parent) instead of leaving an orphan."""
    env = _env(tmp_path)
    env.pop("CONVSCOPE_REDIS_URL")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "precompute.cli", "serve", "--port", str(port)], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker_pid = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and worker_pid is None:
            children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
            worker_pid = int(children[0]) if children else None
            time.sleep(0.2)
        assert worker_pid, "serve started no worker"
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        deadline = time.time() + 60
        while time.time() < deadline and Path(f"/proc/{worker_pid}").exists():
            state = Path(f"/proc/{worker_pid}/stat").read_text().split()[2] if Path(f"/proc/{worker_pid}/stat").exists() else "X"
            if state == "Z":
                break  # exited; a zombie until init reaps it
            time.sleep(0.2)
        stat = Path(f"/proc/{worker_pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z", "the worker outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
        if worker_pid:
            try:
                os.kill(worker_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- a state file being written is not a job (issue 14, item 3) ---------------------------------------
def test_temporary_state_files_do_not_break_listing_reaping_or_the_api(queue_settings):
    """While any job runs, ``atomic_write`` has ``.tmp-XXXX.job`` files in the jobs folder (they match
    ``*.job``). Listing, the reaper, ``GET /api/jobs`` and the 404 of an unknown job id (which lists
    recent jobs) must skip them instead of failing on their name."""
    import tempfile

    from fastapi.testclient import TestClient

    from server.app import create_app

    jid = submit("precompute", {"model": "resnet20-random"}, queue_settings)["id"]
    folder = jobs.jobs_dir(queue_settings)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".job")  # what atomic_write creates
    os.write(fd, b'{"id": "half-writ')
    os.close(fd)
    (folder / "notes.job").write_text("{}")  # nor is any other file that is not named like a job id

    assert [j["id"] for j in list_jobs(queue_settings)] == [jid]
    _claim(queue_settings, jid, "gone:1")
    _die(queue_settings, jid)
    assert jobs.reap(queue_settings) == [jid]
    with TestClient(create_app(queue_settings)) as client:
        r = client.get("/api/jobs")
        assert r.status_code == 200, r.text
        assert [j["id"] for j in r.json()["jobs"]] == [jid]
        unknown = "upload-nothing-" + "0" * 16
        r = client.get(f"/api/jobs/{unknown}")
        assert r.status_code == 404, r.text
        assert unknown in r.json()["detail"] and jid in r.json()["detail"]
        assert client.get("/api/jobs/.tmp-x").status_code == 422
    assert Path(tmp).exists()  # only skipped, never touched


# ---- what a client sees of a failed job: no server paths, no host names (issue 14, item 6) ------------------
def test_a_failed_jobs_error_shows_paths_relative_to_the_data_dir(queue_settings):
    """A user model whose checkpoint file went missing: the real pipeline fails with the file's absolute
    path; the job's error (what the API and the job page show) names it relative to the data dir, the
    traceback kept on the server has it whole."""
    import torch

    from precompute.architectures import build
    from precompute.usermodels import add_user_model

    ckpt = queue_settings.data_dir / "mine.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build("resnet20").state_dict(), ckpt)
    add_user_model(ckpt, "resnet20", "gone-net", queue_settings)
    stored = next((queue_settings.uploads / "gone-net").iterdir())
    stored.unlink()
    jid = submit("precompute", {"model": "gone-net", "analyses": ["symmetry"]}, queue_settings)["id"]
    _drain(queue_settings)
    job = read_job(queue_settings, jid)
    assert job["state"] == "failed" and job["attempts"] == 1, job  # a missing file is the input's fault
    assert f"uploads/gone-net/{stored.name}" in job["error"], job["error"]
    shown = json.dumps(public_job(job))
    for secret in {str(queue_settings.data_dir), str(queue_settings.data_dir.resolve()), str(stored)}:
        assert secret not in shown, (secret, shown)
    assert str(stored) in job["traceback"]  # the full detail stays on the server


def test_a_records_source_shows_the_checkpoints_file_name_only(queue_settings):
    """The model record (what /api/models and /api/models/{m} show as source_detail and spec.source)
    carries a user checkpoint's file name, not its path on the server."""
    import torch

    from precompute.architectures import build
    from precompute.usermodels import add_user_model, user_specs

    ckpt = queue_settings.data_dir / "mine.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build("resnet20").state_dict(), ckpt)
    add_user_model(ckpt, "resnet20", "named-net", queue_settings)
    spec = next(s for s in user_specs(queue_settings) if s.name == "named-net")
    public = spec.public()
    assert public["source"]["path"] == spec.source.path.name, public["source"]
    assert str(queue_settings.data_dir) not in json.dumps(public)


# ---- `convscope serve`: torch-free, and its embedded worker supervised (issue 14, items 2 and 4) -------------
def _get_json(url: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `convscope serve` (embedded SQLite queue, so it runs its own worker) on a fresh data dir."""
    data = tmp_path_factory.mktemp("served")
    env = _env(data)
    env.pop("CONVSCOPE_REDIS_URL")
    port = free_port()
    log = open(data / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "precompute.cli", "serve", "--port", str(port)], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        body: dict = {}
        while time.time() < deadline:
            assert server.poll() is None, (data / "serve.log").read_text()[-3000:]
            try:
                status, body = _get_json(base + "/healthz")
                if status == 200 and body["workers"]["alive"] >= 1:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"convscope serve did not come up with a live worker in 120 s: {body}")
        yield SimpleNamespace(proc=server, base=base, settings=_settings(data), log=data / "serve.log")
    finally:
        workers = _children(server.pid)
        stop_processes([server])
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_convscope_serve_does_not_load_torch(served):
    """The real `convscope serve` process (CLI, app, embedded-worker supervisor) maps no libtorch: only
    its worker, a separate process, loads torch."""
    status, body = _get_json(served.base + "/api/jobs")  # the app has answered: its routes are imported
    assert status == 200, body
    maps = Path(f"/proc/{served.proc.pid}/maps").read_text()
    torch_libs = sorted({line.split()[-1] for line in maps.splitlines() if "torch" in line.split()[-1]})
    assert torch_libs == [], torch_libs
    rss_mb = int(next(l for l in Path(f"/proc/{served.proc.pid}/status").read_text().splitlines()
                      if l.startswith("VmRSS:")).split()[1]) // 1024
    assert rss_mb < 400, f"convscope serve uses {rss_mb} MB"


@pytest.mark.slow
def test_a_killed_embedded_worker_is_restarted_and_its_job_finishes(served):
    """SIGKILL of `convscope serve`'s worker mid-job: /healthz says so (503, then the restart and how the
    worker stopped), the supervisor starts a new worker, whose reaper re-queues the job; the job and one
    submitted after the kill both finish."""
    settings = served.settings
    (worker,) = _children(served.proc.pid)
    job = submit("precompute", {"model": "vgg16-bn-random"}, settings)
    deadline = time.time() + 180
    while time.time() < deadline:
        state = read_job(settings, job["id"])
        if state["state"] == "running" and state["progress"] > 0:
            break
        time.sleep(0.1)
    assert state["state"] == "running" and state["worker"].endswith(f":{worker}"), state
    os.kill(worker, signal.SIGKILL)
    later = submit("precompute", {"model": "resnet20-random", "analyses": ["symmetry"]}, settings)

    seen_down, restarted = False, None
    deadline = time.time() + 60
    while time.time() < deadline:
        status, health = _get_json(served.base + "/healthz")
        embedded = health["workers"]["embedded"]
        if status == 503:
            assert not health["ok"] and embedded["state"] == "restarting", health
            assert embedded["last_exit"] == "killed by SIGKILL", health
            seen_down = True
        if status == 200 and embedded["restarts"] == 1:
            restarted = health
            break
        time.sleep(0.05)
    assert restarted, health
    assert restarted["ok"] and restarted["workers"]["embedded"] == {"state": "running", "restarts": 1,
                                                                    "last_exit": "killed by SIGKILL"}
    new = _children(served.proc.pid)
    assert len(new) == 1 and new[0] != worker, new
    status, listing = _get_json(served.base + "/api/jobs")
    assert status == 200 and listing["workers"]["embedded"]["restarts"] == 1

    final = _wait_all(settings, [job["id"], later["id"]], timeout=400)
    assert final[job["id"]]["state"] == "done" and final[job["id"]]["attempts"] == 2, final[job["id"]]
    assert [e["event"] for e in final[job["id"]]["history"]].count("lost") == 1
    assert final[job["id"]]["worker"].endswith(f":{new[0]}")
    assert final[later["id"]]["state"] == "done", final[later["id"]]
    assert "killed by SIGKILL" in served.log.read_text()  # the server log says what happened
    assert seen_down, "/healthz never reported the dead worker (the window lasts RESTART_MIN_S = 1 s)"
