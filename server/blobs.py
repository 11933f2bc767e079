"""Response bodies ready to send, and the bounded in-memory caches that keep them.

A :class:`Blob` is a JSON (or HTML) body as bytes, a gzip of it when it is long enough, and its ETag; the
routes send it as it is (:mod:`server.responses`). The caches are keyed by file stamps (:func:`stamp`), so an
entry rewritten on disk is never answered from memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

#: bodies at least this long are kept gzipped next to the plain bytes
GZIP_MIN = 1000
#: version of the computed (non-cached) JSON shapes; part of their ETags
API_VERSION = "1"


@dataclass(frozen=True)
class Blob:
    """A JSON response body ready to send: plain bytes, an optional gzip of them and the ETag."""

    body: bytes
    etag: str  # quoted strong ETag
    gz: Optional[bytes] = None

    @classmethod
    def make(cls, body: bytes, digest: Optional[str] = None) -> "Blob":
        digest = digest or hashlib.sha256(body).hexdigest()
        gz = gzip.compress(body, compresslevel=6, mtime=0) if len(body) >= GZIP_MIN else None
        return cls(body=body, etag=f'"{digest}"', gz=gz)

    @classmethod
    def of(cls, obj: Any) -> "Blob":
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
        return cls.make(body, hashlib.sha256(API_VERSION.encode() + body).hexdigest())

    @property
    def size(self) -> int:
        return len(self.body) + (len(self.gz) if self.gz else 0)

    @property
    def data(self) -> Any:
        return json.loads(self.body)


class LRU:
    """A thread-safe LRU bounded by entries and bytes (``sizeof(value)``)."""

    def __init__(self, max_items: int = 512, max_bytes: int = 256 << 20,
                 sizeof: Callable[[Any], int] = lambda v: 1):
        self.max_items, self.max_bytes, self.sizeof = max_items, max_bytes, sizeof
        self._d: "OrderedDict[Any, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            item = self._d.get(key)
            if item is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value) -> None:
        size = self.sizeof(value)
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._d[key] = (value, size)
            self._bytes += size
            while self._d and (len(self._d) > self.max_items or self._bytes > self.max_bytes):
                _, (_, s) = self._d.popitem(last=False)
                self._bytes -= s

    def __len__(self) -> int:
        return len(self._d)


def stamp(path) -> Optional[tuple[str, int, int]]:
    """(path, mtime_ns, size): what the in-memory caches are keyed by; None when the file is absent."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (path if isinstance(path, str) else str(path), st.st_mtime_ns, st.st_size)
