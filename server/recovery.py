"""The one place where a read of the cache writes: a cache entry that does not verify, or that the model
record lists but the cache lacks, is discarded and its model queued for recomputation.

The reader (:mod:`server.reader`) hands every such find to :meth:`Recovery.recover`, which discards the
entry, queues a ``precompute`` job for the model (the pipeline recomputes only what is missing), logs it and
raises :class:`~server.errors.Recomputing` naming the job. This runs once per find, inside the request
that found it: that request answers the job (a 503 with Retry-After, at the routes), and nothing computes
the answer a second time (the fast path answers the error itself instead of falling through to the app).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import NoReturn, Optional

from precompute.cache import Cache
from precompute.jobs import job_id, read_job, submit
from precompute.settings import Settings

from .errors import Recomputing

log = logging.getLogger("convscope.server")

#: a model whose recompute job finished less than this many seconds ago is not queued again by a request
RECOMPUTE_EVERY = 30.0
#: the models remembered as being recovered (forgotten all at once beyond this many)
RECOVERING_MAX = 10000


class Recovery:
    """Discards what does not verify and queues the recompute jobs; remembers which models it queued."""

    def __init__(self, settings: Settings, cache: Cache):
        self.settings = settings
        self.cache = cache
        self._recovering: dict[str, tuple[float, str]] = {}  # model -> (time queued, job id)
        self._lock = threading.Lock()

    def recover(self, model: str, corrupt: Optional[Path], why: str) -> NoReturn:
        """Discard a corrupt entry (``corrupt``), queue a ``precompute`` job for ``model`` that recomputes
        what is missing, log it, and raise :class:`Recomputing` naming the job."""
        if corrupt is not None:
            self.cache.discard(corrupt)
        job = self._queue_recompute(model, fresh_damage=corrupt is not None)
        log.warning("%s; %s; recompute job %s is %s", why, "discarded it" if corrupt is not None else "missing",
                    job["id"], job["state"])
        what = "it was discarded, never served, and " if corrupt is not None else ""
        raise Recomputing(f"{why}; {what}{model} is being recomputed (job {job['id']}, {job['state']}); "
                          f"retry in a few seconds", job=job["id"], job_url=f"/api/jobs/{job['id']}")

    def _queue_recompute(self, model: str, fresh_damage: bool) -> dict:
        """The recompute job of ``model``: the queued or running one, else a new one. A request that only
        finds an entry still missing does not queue another job within RECOMPUTE_EVERY seconds of the last
        (no loop of jobs when a result cannot be restored); a newly discarded entry always does."""
        args = {"model": model, "force": False}  # as `convscope submit`, so the ids collapse
        jid = job_id("precompute", args)
        with self._lock:
            job = read_job(self.settings, jid)
            if job and job["state"] in ("queued", "running"):
                return job
            last = self._recovering.get(model)
            if not fresh_damage and job and last and time.time() - last[0] < RECOMPUTE_EVERY:
                return job  # just recomputed: do not let requests queue it in a loop
            job = submit("precompute", args, self.settings, again=True)
            self._recovering[model] = (time.time(), job["id"])
            if len(self._recovering) > RECOVERING_MAX:
                self._recovering.clear()
            return job

    def still_recovering(self, model: str) -> None:
        """A model whose record was discarded as corrupt raises :class:`Recomputing` (not "unknown model")
        while its job runs."""
        hit = self._recovering.get(model)
        if hit is None:
            return
        job = read_job(self.settings, hit[1])
        if job and job["state"] in ("queued", "running"):
            raise Recomputing(f"the record of {model} is being recomputed (job {job['id']}, {job['state']}); "
                              f"retry in a few seconds", job=job["id"], job_url=f"/api/jobs/{job['id']}")
