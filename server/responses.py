"""How the server's answers become HTTP, in one place for the routes (:mod:`server.api`, :mod:`server.pages`,
the app's error handlers) and the fast path in front of them: the status and headers of each domain error
(:mod:`server.errors` knows none), and the one way a ready body (:class:`~server.blobs.Blob`) is sent, with
its ETag (``If-None-Match`` -> 304) and, when the client accepts it, the gzip kept beside it.
"""

from __future__ import annotations

from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .blobs import Blob
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


# ---- the one sending path ---------------------------------------------------------------------------
JSON = "application/json"
HTML = "text/html"


def etag_matches(header: Optional[str], etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (one of a list, weak or strong, or ``*``)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return etag in tags or f"W/{etag}" in tags


def blob_response(blob: Blob, if_none_match: Optional[str], accepts_gzip: bool, media_type: str = JSON,
                  cache_control: str = "no-cache", status: int = 200) -> Response:
    """``blob`` as a response: 304 when ``if_none_match`` names its ETag, its stored gzip when the client
    accepts gzip (``accepts_gzip``) and it has one. A body sent with another status than 200 (an error page)
    is not the resource the URL names: it goes without ETag and Cache-Control, and never as a 304."""
    if status != 200:
        headers = {"Vary": "Accept-Encoding"}
    else:
        headers = {"ETag": blob.etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
        if etag_matches(if_none_match, blob.etag):
            return Response(status_code=304, headers=headers)
    if blob.gz is not None and accepts_gzip:
        headers["Content-Encoding"] = "gzip"
        return Response(blob.gz, status_code=status, media_type=media_type, headers=headers)
    return Response(blob.body, status_code=status, media_type=media_type, headers=headers)


def send(request: Request, blob: Blob, cache_control: str = "no-cache", media_type: str = JSON,
         status: int = 200) -> Response:
    """``blob`` as the response to ``request`` (:func:`blob_response` with the request's headers)."""
    return blob_response(blob, request.headers.get("if-none-match"),
                         "gzip" in request.headers.get("accept-encoding", ""), media_type, cache_control, status)
