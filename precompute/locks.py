"""The one file lock: an exclusive advisory lock (POSIX ``flock``) on a lock file, across processes and
machines that share the folder (the cache's model records, job states, fetches into the store, the
user-model list). Torch-free; imports nothing of convscope.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder when missing; never deleted, so that
    every process locks the same inode) for the duration of the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
