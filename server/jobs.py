"""Upload jobs: stream a checkpoint to disk, then run ``convscope add`` and ``convscope precompute`` in a
subprocess (the server process never imports torch).

Job state is one JSON file per job under ``settings.data_dir/jobs/<id>.json``, written atomically:
``{"id", "state": "queued" | "running" | "done" | "failed", "progress": 0..1, "message", "error",
"model", "arch", "filename", "size", "created", "updated", "log": [last lines]}``.
Jobs run one at a time in a background thread; a job left "running" by a stopped server is marked
failed when the runner starts.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from precompute.cache import atomic_write
from precompute.settings import Settings

from .data import BadRequest, NotFound

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
EXTENSIONS = (".safetensors", ".pt", ".pth", ".th")
#: progress given to the stages (add is quick, precompute is most of the work)
ADD_DONE, PRECOMPUTE_SPAN = 0.15, 0.83
TQDM = re.compile(r"(\d+)/(\d+)\s*\[")
LOG_LINES = 40


HOST = socket.gethostname()


def runner_id() -> str:
    """This server process, as recorded in the jobs it runs."""
    return f"{HOST}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a ``convscope`` subprocess the same Settings as this server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    for name, value in settings.model_dump().items():
        if value is None or value == "":
            continue
        env[f"CONVSCOPE_{name.upper()}"] = str(value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "precompute.cli", *args]


class JobStore:
    """Job files under ``data_dir/jobs`` and the background runner."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = Path(settings.data_dir) / "jobs"
        self._queue: "queue.Queue[str]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._archs: Optional[dict] = None
        self._archs_lock = threading.Lock()

    # ---- files ------------------------------------------------------------------------------
    def path(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise BadRequest(f"invalid job id {job_id!r}: 32 lower-case hex digits, as returned by POST /api/uploads")
        return self.dir / f"{job_id}.json"

    def get(self, job_id: str) -> dict:
        path = self.path(job_id)
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            recent = [j["id"] for j in self.list(10)]
            raise NotFound(f"unknown job {job_id!r}; recent jobs: {', '.join(recent) or 'none'}", known=recent) from None

    def list(self, limit: int = 50) -> list[dict]:
        if not self.dir.is_dir():
            return []
        jobs = []
        for p in self.dir.glob("*.json"):
            if p.name.startswith(".") or not JOB_ID.match(p.stem):
                continue
            try:
                jobs.append(json.loads(p.read_bytes()))
            except (OSError, ValueError):
                continue
        jobs.sort(key=lambda j: j.get("created", ""), reverse=True)
        return jobs[:limit]

    def write(self, job: dict) -> dict:
        job["updated"] = now()
        atomic_write(self.path(job["id"]), json.dumps(job, indent=1).encode())
        return job

    def update(self, job_id: str, **changes: Any) -> dict:
        with self._lock:
            job = self.get(job_id)
            job.update(changes)
            return self.write(job)

    def new_id(self) -> str:
        return uuid.uuid4().hex

    @property
    def incoming(self) -> Path:
        """Where uploads stream to (``convscope add`` then copies them into settings.uploads)."""
        return self.dir / "incoming"

    def upload_path(self, job_id: str, filename: str) -> Path:
        """``incoming/<job>/<filename made safe>``, keeping the checkpoint's extension."""
        ext = next(e for e in EXTENSIONS if filename.lower().endswith(e))
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name[: -len(ext)]).strip("._") or "checkpoint"
        return self.incoming / job_id / f"{stem[:80]}{ext}"

    # ---- validation -------------------------------------------------------------------------
    def check_filename(self, filename: str) -> str:
        if not filename or not any(filename.lower().endswith(e) for e in EXTENSIONS):
            raise BadRequest(f"the checkpoint must be a {', '.join(EXTENSIONS)} file; got {filename!r}",
                             known=list(EXTENSIONS))
        return filename

    def check_arch(self, arch: str) -> str:
        if not arch or not ARCH_NAME.match(arch):
            raise BadRequest(f"invalid architecture {arch!r}", known=self.architectures().get("architectures", []))
        known = self.architectures().get("architectures")
        if known and arch not in known:
            raise BadRequest(f"unknown architecture {arch!r}; known: {', '.join(known)}", known=known)
        return arch

    # ---- architectures (asked of a subprocess: listing them imports torch) ---------------------
    def architectures(self, wait: bool = True) -> dict:
        with self._archs_lock:
            if self._archs is not None:
                return self._archs
            if not wait:
                return {"architectures": [], "pending": True}
            code = ("import json\nfrom precompute.architectures import ARCHITECTURES as A\n"
                    "try:\n import precompute.experiments\nexcept Exception:\n pass\n"
                    "print(json.dumps(sorted(A.names() if hasattr(A, 'names') else A)))")
            try:
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                   env=settings_env(self.settings))
                if p.returncode == 0:
                    self._archs = {"architectures": json.loads(p.stdout.strip().splitlines()[-1])}
                else:
                    tail = (p.stderr.strip().splitlines() or ["?"])[-1]
                    self._archs = {"architectures": [], "error": f"could not list architectures: {tail}"}
            except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
                self._archs = {"architectures": [], "error": f"could not list architectures: {e}"}
            return self._archs

    def warm(self) -> None:
        threading.Thread(target=self.architectures, name="convscope-archs", daemon=True).start()

    # ---- submit and run -----------------------------------------------------------------------
    def create(self, job_id: str, *, model: str, arch: str, filename: str, size: int, dataset: str,
               upload: Path) -> dict:
        job = {"id": job_id, "state": "queued", "progress": 0.0, "message": "queued", "error": None, "runner": runner_id(),
               "model": model, "arch": arch, "dataset": dataset, "filename": filename, "size": size,
               "upload": str(upload), "created": now(), "log": []}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write(job)
        self._queue.put(job_id)
        self._ensure_runner()
        return job

    def _ensure_runner(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._fail_orphans()
            self._thread = threading.Thread(target=self._loop, name="convscope-jobs", daemon=True)
            self._thread.start()

    def _fail_orphans(self) -> None:
        """Fail the jobs whose server process is gone (same host, pid no longer alive); a job of another
        live worker process (uvicorn --workers N) is left alone."""
        for job in self.list(1000):
            if job.get("state") not in ("queued", "running") or job.get("runner") == runner_id():
                continue
            host, _, pid = str(job.get("runner", "")).rpartition(":")
            if host != HOST or (pid.isdigit() and _alive(int(pid))):
                continue
            job.update(state="failed", error="the server stopped before this job finished; upload again")
            self.write(job)

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                self.run(job_id)
            except Exception as e:  # the runner must survive anything
                try:
                    self.update(job_id, state="failed", error=f"internal error: {type(e).__name__}: {e}")
                except Exception:
                    pass

    def _stream(self, job_id: str, cmd: list[str], lo: float, hi: float, log: list[str]) -> tuple[int, list[str]]:
        """Run ``cmd``, mapping tqdm "i/n" on its stderr to progress in [lo, hi]; returns (rc, stderr lines)."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=settings_env(self.settings),
                                cwd=str(Path(__file__).resolve().parent.parent))
        lines: list[str] = []
        buf = b""
        last = 0.0
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for raw in parts:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                m = TQDM.search(line)
                if m and int(m.group(2)):
                    frac = lo + (hi - lo) * int(m.group(1)) / int(m.group(2))
                    if time.monotonic() - last > 0.3:
                        last = time.monotonic()
                        msg = line.split("|")[0].strip()
                        post = line.rsplit(",", 1)[-1].strip(" ]") if "," in line else ""
                        self.update(job_id, progress=round(frac, 3),
                                    message=f"precomputing {msg} {post}".strip())
                    continue
                lines.append(line)
                log.append(line)
                del log[:-LOG_LINES]
        if buf.strip():
            lines.append(buf.decode(errors="replace").strip())
            log.append(lines[-1])
        return proc.wait(), lines

    def run(self, job_id: str) -> dict:
        job = self.update(job_id, state="running", progress=0.02, message="registering the checkpoint")
        model, log = job["model"], []
        rc, out = self._stream(job_id, cli_command("add", job["upload"], "--arch", job["arch"], "--name", model,
                                                   "--dataset", job.get("dataset") or "unknown"), 0.02, ADD_DONE, log)
        _discard_upload(job["upload"])  # `add` copied it into settings.uploads (or refused it)
        if rc != 0:
            shown = job.get("filename") or "the upload"
            error = _error_of(out, "convscope add").replace(job["upload"], shown)
            log = [line.replace(job["upload"], shown) for line in log]
            return self.update(job_id, state="failed", error=error, log=log,
                               message="registering the checkpoint failed")
        self.update(job_id, progress=ADD_DONE, message="precomputing the analyses", log=log)
        rc, out = self._stream(job_id, cli_command("precompute", model, "--progress"), ADD_DONE,
                               ADD_DONE + PRECOMPUTE_SPAN, log)
        if rc != 0:
            subprocess.run(cli_command("remove", model), capture_output=True, env=settings_env(self.settings))
            return self.update(job_id, state="failed", error=_error_of(out, "convscope precompute"), log=log,
                               message="precompute failed")
        return self.update(job_id, state="done", progress=1.0, message="done", log=log)


def _discard_upload(path: str) -> None:
    p = Path(path)
    try:
        p.unlink()
        p.parent.rmdir()
    except OSError:
        pass


def _error_of(lines: list[str], what: str) -> str:
    """The most telling line of a failed CLI run: its ``convscope: error:`` line, else the last lines."""
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip() or line
    for line in reversed(lines):
        if "FAILED" in line:
            return line
    tail = " / ".join(lines[-3:])
    return f"{what} failed" + (f": {tail}" if tail else "")
