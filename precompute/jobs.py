"""The job queue: precompute, train and upload jobs, run by any number of `convscope worker`s.

Transport is Huey: ``SqliteHuey`` in the cache directory by default (no extra service), ``RedisHuey``
when ``CONVSCOPE_REDIS_URL`` is set, so workers on many machines take jobs from one queue.

Job *state* lives beside the results, as one JSON file per job under ``<cache>/jobs/`` (the cache is
the volume every worker and the server share anyway), written atomically:

- **Idempotent**: a job's id is derived from what it computes (kind + model + analyses ...). Submitting
  an id that is queued, running, or done with its result still in the cache returns the existing
  job and enqueues nothing; a failed job may be submitted again.
- **Claimed once**: a worker claims a job under an exclusive file lock, only when it is queued or
  its runner's heartbeat is stale; a second delivery of the same message finds it claimed or done.
- **Crash recovery**: a running job's worker writes a heartbeat every ``HEARTBEAT_S``; each worker
  runs a reaper that re-enqueues jobs whose heartbeat is older than ``STALE_S`` (a worker killed with
  SIGKILL), up to ``MAX_ATTEMPTS``, then marks them failed. Results are written atomically by the
  pipeline, so a killed job leaves no partial entry.

This module is torch-free at import (the web server submits jobs); the job bodies import the
pipeline lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from .cache import Cache, CorruptEntry, ResultKey, atomic_write, canonical_json
from .declarations.limits import JOB_KINDS
from .declarations.records import JobState
from .errors import ModelError
from .locks import file_lock
from .names import MODEL_NAME, InvalidName, check_model_name
from .redact import redact, settings_roots
from .registry import UnknownName
from .settings import Settings, get_settings

HEARTBEAT_S = 1.0
STALE_S = 6.0
MAX_ATTEMPTS = 3
KINDS = JOB_KINDS
STATES = ("queued", "running", "done", "failed")
#: what :func:`job_id` makes: ``<kind>-<model or name>-<16 hex digits>``
JOB_ID = re.compile(r"^(?:" + "|".join(JOB_KINDS) + r")-" + MODEL_NAME + r"-[0-9a-f]{16}$")
#: where the web server streams uploads, under ``settings.uploads`` (a name no model can have)
INCOMING = ".incoming"

log = logging.getLogger("convscope.jobs")


class JobError(Exception):
    """A job that cannot be submitted (bad kind or arguments)."""


class UserError(Exception):
    """An error in the job's input: the job fails at once, it is not retried."""


# ---- ids and state files ----------------------------------------------------------------------
def job_id(kind: str, args: dict) -> str:
    """Deterministic id: the same work always gets the same id (so duplicates collapse)."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
    digest = hashlib.sha256(canonical_json({"kind": kind, "args": args})).hexdigest()[:16]
    label = args.get("model") or args.get("name") or args.get("experiment") or "job"
    return f"{kind}-{check_model_name(str(label))}-{digest}"


def check_job_id(jid: str) -> str:
    """``jid`` when it has the shape of an id :func:`job_id` makes; JobError otherwise."""
    if not isinstance(jid, str) or not JOB_ID.fullmatch(jid) or ".." in jid:
        raise JobError(f"invalid job id {jid!r}: ids look like upload-my-net-0123456789abcdef "
                       f"(<kind>-<model>-<16 hex digits>), as returned when the job was submitted")
    return jid


def jobs_dir(settings: Settings) -> Path:
    return settings.cache / "jobs"


def _state_path(settings: Settings, jid: str) -> Path:
    return jobs_dir(settings) / f"{check_job_id(jid)}.job"


def read_job(settings: Settings, jid: str) -> Optional[dict]:
    """The job's state, or None when there is none (JobError for a malformed id)."""
    try:
        return json.loads(_state_path(settings, jid).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # atomic writes make this unlikely; treat as unknown rather than crash
        return None


def list_jobs(settings: Settings) -> list[dict]:
    """Every job's state, oldest first. Only files named like a job id count: the folder also holds
    ``atomic_write``'s temporary ``.tmp-XXXX.job`` files (and the ``.<id>.lock`` files) while jobs run."""
    out = []
    folder = jobs_dir(settings)
    if folder.is_dir():
        for p in sorted(folder.glob("*.job")):
            if not JOB_ID.fullmatch(p.stem):
                continue
            job = read_job(settings, p.stem)
            if job:
                out.append(job)
    return sorted(out, key=lambda j: j.get("created", 0))


def _write(settings: Settings, job: dict) -> None:
    JobState.as_written(job)  # the state's contract (precompute/declarations/records.py): refused, not written
    atomic_write(_state_path(settings, job["id"]), json.dumps(job, indent=1).encode())


@contextmanager
def _locked(settings: Settings, jid: str):
    """Exclusive lock for read-modify-write of one job's state (across processes)."""
    with file_lock(jobs_dir(settings) / f".{jid}.lock"):
        yield


def _event(job: dict, what: str, **extra) -> None:
    job.setdefault("history", []).append({"t": time.time(), "event": what, **extra})


# ---- the queue ----------------------------------------------------------------------------------
_HUEYS: dict[tuple, Any] = {}


def get_huey(settings: Optional[Settings] = None):
    """The Huey instance for these settings, with the job task registered on it."""
    settings = settings or get_settings()
    key = (settings.redis_url, str(settings.cache))
    if key not in _HUEYS:
        if settings.redis_url:
            from huey import RedisHuey

            huey = RedisHuey("convscope", url=settings.redis_url)
        else:
            from huey import SqliteHuey

            settings.cache.mkdir(parents=True, exist_ok=True)
            huey = SqliteHuey("convscope", filename=str(settings.cache / "queue.sqlite3"))

        @huey.task(name="convscope.run_job")
        def run_job_task(jid: str):
            # the worker's own settings: on another machine the shared cache may be mounted elsewhere
            run_job(jid, settings)

        huey._convscope_task = run_job_task
        _HUEYS[key] = huey
    return _HUEYS[key]


def submit(kind: str, args: dict, settings: Optional[Settings] = None, again: bool = False) -> dict:
    """Queue a job unless the same job is queued, running or done; returns its state.

    ``again`` re-queues a done job (e.g. after a corrupt cache entry was discarded: the pipeline then
    recomputes only what is missing).
    """
    settings = settings or get_settings()
    jid = job_id(kind, args)
    with _locked(settings, jid):
        job = read_job(settings, jid)
        if job and job["state"] in ("queued", "running"):
            return job
        if job and job["state"] == "done" and not again and not job["args"].get("force") \
                and _result_present(settings, job):
            return job
        job = {"id": jid, "kind": kind, "args": args, "state": "queued", "progress": 0.0, "message": "queued",
               "attempts": 0, "worker": None, "heartbeat": None, "error": None, "created": time.time(),
               "started": None, "finished": None, "history": (job or {}).get("history", [])}
        _event(job, "queued")
        _write(settings, job)
    _enqueue(settings, jid)
    return job


def _enqueue(settings: Settings, jid: str) -> None:
    get_huey(settings)._convscope_task(jid)


def _result_present(settings: Settings, job: dict) -> bool:
    """Is what a done job computed still in the cache, under the keys today's code would use?

    A job is keyed by its cache keys, not only by its arguments: the model record names, per analysis,
    the version and parameters it was computed with and its layers; every one of those entries must
    still be present and verify, and the version must be the one the workers' code declares (the
    registry the pipeline writes into the cache), so a bumped analysis or a discarded entry makes the
    same submission run again (the pipeline then recomputes only what is missing)."""
    if job["kind"] == "train":
        return all(Path(r).is_file() for r in (job.get("result") or {}).get("checkpoints", []))
    model = job["args"].get("model") or job["args"].get("name")
    if not model:
        return False
    cache = Cache(settings.cache)
    try:
        record = cache.get_model(model)
    except CorruptEntry:
        return False
    if not record or record.get("status") != "done":
        return False
    registry = cache.get_registry() or {}
    wanted = job["args"].get("analyses") or list(record.get("analyses", {}))
    sha = record.get("weights_sha256", "")
    for name in wanted:
        info = record.get("analyses", {}).get(name)
        if info is None:
            return False
        current = registry.get(name)
        if current and (current["version"] != info["version"] or current["params"] != info["params"]):
            return False
        try:
            key = ResultKey(sha, name, info["version"], info["params"])
        except ValueError:
            return False
        if not all(cache.has(key, layer) for layer in info.get("layers", [])):
            return False
    return True


# ---- running ------------------------------------------------------------------------------------
def _claim(settings: Settings, jid: str, worker: str) -> Optional[dict]:
    with _locked(settings, jid):
        job = read_job(settings, jid)
        if job is None or job["state"] in ("done", "failed"):
            return None
        if job["state"] == "running" and time.time() - (job["heartbeat"] or 0) < STALE_S:
            return None  # someone alive has it
        job.update(state="running", worker=worker, heartbeat=time.time(), started=time.time(),
                   attempts=job["attempts"] + 1, message="starting")
        _event(job, "started", worker=worker, attempt=job["attempts"])
        _write(settings, job)
        return job


def _update(settings: Settings, jid: str, worker: str, **fields) -> bool:
    """Update a job we run; False when another worker has taken it over (we were presumed dead)."""
    with _locked(settings, jid):
        job = read_job(settings, jid)
        if job is None or job.get("worker") != worker or job["state"] != "running":
            return False
        job.update(fields, heartbeat=time.time())
        if fields.get("state") in ("done", "failed"):
            _event(job, fields["state"], worker=worker, error=fields.get("error"))
        _write(settings, job)
        return True


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(jid: str, settings: Optional[Settings] = None) -> Optional[dict]:
    """Run one job if it can be claimed; returns its final state (None when not ours to run)."""
    settings = settings or get_settings()
    me = worker_name()
    job = _claim(settings, jid, me)
    if job is None:
        return read_job(settings, jid)
    stop = threading.Event()
    progress = {"fraction": 0.0, "message": "running"}

    def beat():
        while not stop.wait(HEARTBEAT_S):
            _update(settings, jid, me, progress=progress["fraction"], message=progress["message"])

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()

    def report(fraction: float, message: str) -> None:
        progress.update(fraction=round(float(fraction), 4), message=message)

    def note(**fields) -> None:  # durable facts about the job (e.g. "registered" for uploads)
        job.update(fields)
        _update(settings, jid, me, **fields)

    try:
        result = _execute(job, settings, report, note)
        stop.set()
        beater.join()
        _update(settings, jid, me, state="done", progress=1.0, message="done", finished=time.time(), result=result)
    except BaseException as e:  # noqa: BLE001 - recorded, then decided
        stop.set()
        beater.join()
        user = isinstance(e, UserError) or _is_user_error(e)
        # what clients see: paths relative to the data dir (the traceback, server-side, keeps them whole)
        error = redact(f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e), settings_roots(settings))
        if user or job["attempts"] >= MAX_ATTEMPTS:
            if (read_job(settings, jid) or {}).get("worker") == me:  # not taken over: clean up before
                _cleanup_failed(settings, job)                      # "failed" is visible
            _update(settings, jid, me, state="failed", message="failed", error=error, finished=time.time(),
                    traceback=traceback.format_exc(limit=8))
        else:
            _update(settings, jid, me, state="queued", message=f"retrying after: {error}", error=error)
            _enqueue(settings, jid)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
    return read_job(settings, jid)


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, (ModelError, UnknownName, InvalidName, ValidationError, ValueError, FileNotFoundError))


def _execute(job: dict, settings: Settings, report, note=lambda **f: None) -> dict:
    args = job["args"]
    if job["kind"] == "precompute":
        from .pipeline import precompute_model

        record = precompute_model(args["model"], settings, analyses=args.get("analyses"),
                                  device=args.get("device", settings.device), force=args.get("force", False),
                                  progress=report)
        if record["status"] != "done":
            errors = {k: v for k, v in record["errors"].items() if ":traceback" not in k}
            raise RuntimeError(f"analyses failed: {errors}")
        return {"model": args["model"], "status": record["status"], "seconds": record["seconds"]}
    if job["kind"] == "upload":
        return _run_upload(job, settings, report, note)
    if job["kind"] == "train":
        from .experiments.training import precompute_runs, train

        device = args.get("device", settings.device)
        # resume=True: a re-queued job (its worker died) continues from the last complete epoch
        runs = train(args["experiment"], variants=args.get("variants"), dataset=args.get("dataset"),
                     epochs=args.get("epochs"), device=device, precision=args.get("precision"),
                     seed=args.get("seed", 0), limit=args.get("limit"), settings=settings,
                     progress=lambda f, m: report(0.9 * f, m), resume=True)
        report(0.9, "precomputing the trained variants")
        outcome = precompute_runs(runs, settings, device=device) if args.get("precompute", True) else {}
        return {"models": [r["model"] for r in runs], "checkpoints": [r["checkpoint_path"] for r in runs],
                "accuracy": {r["model"]: r["final_test_accuracy"] for r in runs}, "precompute": outcome}
    raise UserError(f"unknown job kind {job['kind']!r}")


# ---- uploads --------------------------------------------------------------------------------------
def upload_file(settings: Settings, args: dict) -> Path:
    """The checkpoint of an upload job: ``path`` as given when absolute, else under ``settings.uploads``
    (the web server sends ``.incoming/<token>/<file>``, so a worker that mounts the shared volume
    elsewhere still finds it)."""
    p = Path(args["path"])
    return p if p.is_absolute() else settings.uploads / p


def _discard_incoming(settings: Settings, path: Path) -> None:
    """Delete a streamed upload (and its token folder) once it is registered or refused; only files
    under ``<uploads>/.incoming`` are ever deleted."""
    incoming = (settings.uploads / INCOMING).resolve()
    try:
        folder = path.resolve().parent
    except OSError:
        return
    if folder.parent == incoming:
        shutil.rmtree(folder, ignore_errors=True)


def _run_upload(job: dict, settings: Settings, report, note) -> dict:
    """Register the checkpoint (safe read, strict load into the architecture), then precompute it.

    Every problem of the file (not a checkpoint, truncated, pickled code, wrong architecture) fails
    the job with a message that names the uploaded file as the user called it; a failed upload leaves
    no registration, no model record and no file behind (:func:`_cleanup_failed`)."""
    from .pipeline import precompute_model
    from .usermodels import add_user_model

    args = job["args"]
    path, name = upload_file(settings, args), args["name"]
    shown = args.get("filename") or path.name

    def clean(message: str) -> str:
        return message.replace(str(path), shown).replace(str(path.parent) + "/", "")

    if not job.get("registered"):  # a retry after a killed worker skips what is done
        report(0.02, f"checking {shown} against {args['arch']}")
        size = tuple(args["input_size"]) if args.get("input_size") else None
        try:
            add_user_model(path, args["arch"], name, settings, dataset=args.get("dataset") or "unknown",
                           input_size=size)
        except (ModelError, UnknownName, InvalidName, ValueError, OSError) as e:
            raise UserError(clean(str(e))) from None
        except Exception as e:  # noqa: BLE001 - reading a hostile file: deterministic, never worth a retry
            raise UserError(clean(f"could not read {shown} as a {args['arch']} checkpoint: "
                                  f"{type(e).__name__}: {e}")) from None
        note(registered=True)
    _discard_incoming(settings, path)  # add_user_model copied it to <uploads>/<name>/
    report(0.05, f"precomputing {name}")
    record = precompute_model(name, settings, device=args.get("device", settings.device),
                              progress=lambda f, m: report(0.05 + 0.95 * f, m))
    return {"model": name, "status": record["status"],
            "errors": {k: v for k, v in record["errors"].items() if ":traceback" not in k}}


def _cleanup_failed(settings: Settings, job: dict) -> None:
    """After a job failed for good: an upload leaves nothing behind (its streamed file, and, when it
    had registered the model, the registration, the copied checkpoint and any model record)."""
    if job.get("kind") != "upload":
        return
    args = job.get("args", {})
    try:
        _discard_incoming(settings, upload_file(settings, args))
        if job.get("registered") or _state_registered(settings, job["id"]):
            from .usermodels import remove_user_model

            try:
                remove_user_model(args["name"], settings)
            except Exception:  # noqa: BLE001 - already gone
                pass
            Cache(settings.cache).discard(Cache(settings.cache).model_path(args["name"]))
    except Exception:  # noqa: BLE001 - cleanup must never hide the job's own error
        traceback.print_exc()


def _state_registered(settings: Settings, jid: str) -> bool:
    return bool((read_job(settings, jid) or {}).get("registered"))


def reap(settings: Settings) -> list[str]:
    """Re-enqueue running jobs whose worker stopped beating (killed); fail them after MAX_ATTEMPTS."""
    revived = []
    now = time.time()
    for job in list_jobs(settings):
        if job["state"] != "running" or now - (job.get("heartbeat") or 0) < STALE_S:
            continue
        with _locked(settings, job["id"]):
            cur = read_job(settings, job["id"])
            if not cur or cur["state"] != "running" or now - (cur.get("heartbeat") or 0) < STALE_S:
                continue
            _event(cur, "lost", worker=cur.get("worker"))
            if cur["attempts"] >= MAX_ATTEMPTS:
                cur.update(state="failed", error=f"its worker stopped {cur['attempts']} times (killed or crashed: "
                                                 f"no heartbeat for {STALE_S:.0f} s)", finished=time.time())
                _cleanup_failed(settings, cur)  # before "failed" is visible
                _write(settings, cur)
                continue
            cur.update(state="queued", message=f"requeued: its worker stopped (no heartbeat for {STALE_S:.0f} s)",
                       worker=None)
            _write(settings, cur)
        _enqueue(settings, job["id"])
        revived.append(job["id"])
    return revived


#: seconds between two reap cycles (each also renews the worker's presence file)
REAP_EVERY_S = 2.0
#: an embedded worker whose server is gone and that has not stopped gracefully by then exits outright
ORPHAN_GRACE_S = 15.0
#: a presence file whose worker has not renewed it for this long belongs to a dead worker: removed
PRESENCE_FORGET_S = 3600.0


# ---- which workers are alive: one presence file per worker, beside the job states ----------------------
def workers_dir(settings: Settings) -> Path:
    return settings.cache / "workers"


def _presence_path(settings: Settings, token: str) -> Path:
    # not .json: the cache's own walks (Cache.iter_entries, verify_all) take every .json file for an entry
    return workers_dir(settings) / f"{token}.worker"


def live_workers(settings: Settings) -> list[dict]:
    """The workers (on any machine sharing the cache) whose presence file was renewed less than
    ``STALE_S`` ago: ``{"id", "host", "pid", "embedded", "started", "beat"}`` each."""
    out, now = [], time.time()
    folder = workers_dir(settings)
    if folder.is_dir():
        for p in folder.glob("*.worker"):
            if p.name.startswith("."):
                continue
            try:
                w = json.loads(p.read_bytes())
            except (OSError, ValueError):  # gone, or a stray file: not a live worker
                continue
            if isinstance(w, dict) and now - float(w.get("beat") or 0) < STALE_S:
                out.append(w)
    return sorted(out, key=lambda w: w.get("started") or 0)


def _forget_dead_workers(settings: Settings) -> None:
    now = time.time()
    for p in workers_dir(settings).glob("*.worker"):
        try:
            if now - p.stat().st_mtime > PRESENCE_FORGET_S:
                p.unlink()
        except FileNotFoundError:
            pass


def run_worker(settings: Optional[Settings] = None, workers: int = 1, reap_every: float = REAP_EVERY_S,
               parent: Optional[int] = None) -> None:
    """A worker process: a Huey consumer plus a reaper thread. Blocks until SIGINT/SIGTERM, or, given the
    pid of its ``parent`` process, until that parent is gone (the worker is then re-parented, so its
    parent pid changes; a reused pid cannot fool that). It then stops as on SIGINT: a job it was running
    is re-queued by the reaper of the next worker, as after any crash. Every reap cycle renews its
    presence file (:func:`live_workers`), removed when it stops."""
    settings = settings or get_settings()
    huey = get_huey(settings)
    stop = threading.Event()
    me = {"id": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid(), "embedded": parent is not None,
          "started": time.time(), "beat": time.time()}
    presence = _presence_path(settings, me["id"])

    def reaper():
        orphaned = None
        while True:
            if parent is not None and os.getppid() != parent:
                # the consumer's own graceful stop, asked again every half second: a SIGINT that lands while
                # the consumer is still starting (before it handles signals; seen under load) is lost. A
                # worker that has not stopped ORPHAN_GRACE_S after its parent went exits outright.
                if stop.is_set():  # the consumer has stopped: nothing left to ask
                    return
                orphaned = orphaned or time.monotonic()
                if time.monotonic() - orphaned > ORPHAN_GRACE_S:
                    presence.unlink(missing_ok=True)
                    os._exit(0)
                os.kill(os.getpid(), signal.SIGINT)
                stop.wait(0.5)
                continue
            try:
                atomic_write(presence, json.dumps(dict(me, beat=time.time())).encode())
                reap(settings)
                _forget_dead_workers(settings)
                settings.worker_alive_file.touch()
            except Exception:  # the reaper must not die on a transient error
                traceback.print_exc()
            if stop.wait(reap_every):
                return

    threading.Thread(target=reaper, daemon=True).start()
    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                    initial_delay=0.05, backoff=1.15, max_delay=0.5)
    try:
        consumer.run()
    finally:
        stop.set()
        presence.unlink(missing_ok=True)


# ---- the embedded worker of `convscope serve`, supervised ------------------------------------------------
#: first wait before restarting a dead embedded worker; doubled while it keeps dying young, up to the max
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
#: a worker that ran this long before dying is restarted after RESTART_MIN_S again
RESTART_RESET_S = 60.0


def describe_exit(code: int) -> str:
    """``-9`` -> ``killed by SIGKILL``, ``1`` -> ``exit status 1`` (a Popen return code)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class EmbeddedWorker:
    """The worker that ``convscope serve`` runs beside its web server (embedded SQLite queue): a child
    process ``convscope worker --parent <this pid>`` (it stops when the server is gone), restarted when
    it dies, after ``RESTART_MIN_S`` doubling up to ``RESTART_MAX_S`` while it keeps dying young. A job
    it was running is re-queued by the restarted worker's reaper (its heartbeat went stale).
    :meth:`status` is what ``/healthz`` and the jobs API report."""

    def __init__(self, command: Optional[list[str]] = None, poll_s: float = 0.2):
        self.command = command or [sys.executable, "-m", "precompute.cli", "worker", "--parent", str(os.getpid())]
        self.poll_s = poll_s
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.restarts = 0
        self.last_exit: Optional[str] = None
        self.state = "stopped"
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    def start(self) -> "EmbeddedWorker":
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="embedded-worker", daemon=True)
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.command)
        self.started = time.time()
        self.state = "running"

    def _watch(self) -> None:
        delay = RESTART_MIN_S
        while not self._stop.wait(self.poll_s):
            code = self.proc.poll()
            if code is None:
                continue
            if time.time() - self.started >= RESTART_RESET_S:
                delay = RESTART_MIN_S
            self.last_exit, self.state = describe_exit(code), "restarting"
            log.warning("the embedded worker (pid %s) stopped: %s; restarting it in %.0f s", self.proc.pid,
                        self.last_exit, delay)
            if self._stop.wait(delay):
                return
            self._spawn()
            self.restarts += 1
            delay = min(2 * delay, RESTART_MAX_S)

    def status(self) -> dict:
        """``{"state": "running" | "restarting" | "stopped", "restarts", "last_exit"}``."""
        return {"state": self.state, "restarts": self.restarts, "last_exit": self.last_exit}

    def stop(self, timeout: float = 30) -> None:
        """Stop supervising, then stop the worker (SIGTERM; SIGKILL after ``timeout`` seconds)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self.state = "stopped"
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
