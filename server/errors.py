"""What can go wrong when a client asks for something, as domain errors, and the words that say so.

No HTTP here: which status and headers each error answers with is decided by the routes alone
(:mod:`server.responses`). Every message names the bad value and what exists (:func:`unknown`), and
``extra`` carries the machine-readable part (``known``, ``range``, ``job``) into the error's body.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any


class ExplorerError(Exception):
    """A request that cannot be answered with what it asked for. ``extra`` goes into the JSON body."""

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"detail": self.message, **self.extra}


class NotFound(ExplorerError):
    """A well-formed name that names nothing (an unknown model, layer, analysis; a neuron out of range)."""


class BadRequest(ExplorerError):
    """A malformed name or parameter."""


class Conflict(ExplorerError):
    """The name asked for is taken (an upload's model name)."""


class CacheProblem(ExplorerError):
    """The cache (or the job queue) holds or does something wrong: the server's problem, not the client's."""


class Recomputing(CacheProblem):
    """A cache entry was corrupt (discarded) or missing: a precompute job is restoring it; retry shortly."""


class Busy(ExplorerError):
    """A result that must be computed now while the server computes another one: retry shortly."""


class TooLarge(ExplorerError):
    """An upload larger than ``settings.max_upload_bytes``."""


# ---- the words --------------------------------------------------------------------------------------
#: the difflib searches of error messages are memoised per (name, known names): a search over a model's 129
#: layers costs about as much as 100 cached responses, and a client repeating a bad URL repeats it. At most
#: this many, of names up to CLOSE_MEMO_NAME characters (a longer one is searched each time, not kept)
CLOSE_MEMO, CLOSE_MEMO_NAME = 4096, 200


@functools.lru_cache(maxsize=CLOSE_MEMO)
def _close_memo(name: str, known: tuple, n: int, cutoff: float) -> tuple:
    return tuple(difflib.get_close_matches(name, known, n=n, cutoff=cutoff))


def _close(name: str, known: tuple, n: int, cutoff: float) -> tuple:
    if len(name) > CLOSE_MEMO_NAME:
        return tuple(difflib.get_close_matches(name, known, n=n, cutoff=cutoff))
    return _close_memo(name, known, n, cutoff)


def unknown(kind: str, name: str, known, where: str = "") -> str:
    """``unknown layer 'x' of m; did you mean a, b? Known layers: ...`` (names the bad value and what exists)."""
    known = list(known)
    close = _close(str(name), tuple(known), 3, 0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{' of ' + where if where else ''}{hint}. Known {kind}s: {listing(known)}"


def listing(items, limit: int = 40) -> str:
    """``a, b, c`` (the first ``limit``, then `` ...``), or ``none``."""
    items = list(items)
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "") if items else "none"


def nearest(name: str, known, n: int = 5) -> list[str]:
    """The known names a person most likely meant by ``name``: difflib's closest first, then names that
    contain it or that it contains (``vgg16`` -> ``vgg16-hed``); at most ``n``, each once."""
    known = [str(k) for k in known]
    low = {k.lower(): k for k in known}
    text = str(name).lower()
    out = [low[k] for k in _close(text, tuple(low), n, 0.5)]
    if len(text) >= 2:
        out += [k for k in known if text in k.lower() or (len(k) >= 2 and k.lower() in text)]
    seen: list[str] = []
    for k in out:
        if k not in seen:
            seen.append(k)
    return seen[:n]
