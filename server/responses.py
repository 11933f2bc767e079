"""How the server's answers become HTTP, in one place for the routes (:mod:`server.api`, :mod:`server.pages`,
the app's error handlers) and the fast path in front of them: the status and headers of each domain error
(:mod:`server.errors` knows none), and the one way a ready body (:class:`~server.blobs.Blob`) is sent, with
its ETag (``If-None-Match`` -> 304) and, when the client accepts it, the gzip kept beside it.
"""

from __future__ import annotations

from typing import Optional

from fastapi.responses import JSONResponse

from .errors import BadRequest, Busy, CacheProblem, Conflict, ExplorerError, NotFound, Recomputing, TooLarge

#: the HTTP status of each domain error (the most specific class along the error's MRO decides)
STATUS: dict[type, int] = {ExplorerError: 422, BadRequest: 422, NotFound: 404, Conflict: 409, TooLarge: 413,
                           CacheProblem: 503, Busy: 503}
#: extra headers of an error's response: a 503 that will pass says when to retry, and is never cached
HEADERS: dict[type, dict[str, str]] = {Recomputing: {"Retry-After": "5", "Cache-Control": "no-store"},
                                       Busy: {"Retry-After": "3", "Cache-Control": "no-store"}}


def _most_specific(table: dict, e: ExplorerError):
    return next((table[c] for c in type(e).__mro__ if c in table), None)


def error_status(e: ExplorerError) -> int:
    """The HTTP status that answers ``e``."""
    return _most_specific(STATUS, e)


def error_headers(e: ExplorerError) -> Optional[dict[str, str]]:
    """The extra headers of the response to ``e`` (None: none)."""
    return _most_specific(HEADERS, e)


def error_json(e: ExplorerError) -> JSONResponse:
    """The API's answer to ``e``: ``{"detail": message, **extra}`` with its status and headers."""
    return JSONResponse(e.body(), status_code=error_status(e), headers=error_headers(e))
