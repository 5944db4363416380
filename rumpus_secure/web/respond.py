"""
Answering a request from a coroutine, with a person-readable page for any
failure and nothing written to a connection that has gone.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from rumpus_secure.web.pages import message_page

_log = Logger()


def send(request: IRequest, status: int, body: bytes,
         content_type: bytes = b"text/html; charset=utf-8") -> None:
    """Write a whole response, unless the client has gone."""
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_json(request: IRequest, status: int, value: Any) -> None:
    send(request, status, json.dumps(value).encode("utf-8"),
         b"application/json; charset=utf-8")


def see_other(request: IRequest, location: str) -> None:
    """303 to a local path (never to a URL the client chose)."""
    if not location.startswith("/") or location.startswith("//"):
        location = "/files/"
    request.setHeader(b"location", location.encode("utf-8"))
    send(request, 303, b"")


def error_page(request: IRequest, status: int, title: str, message: str, **kw: Any) -> None:
    send(request, status, message_page(title, message, **kw))


def run(request: IRequest, handler: Callable[[], Awaitable[None]]) -> Any:
    """
    Render through C{handler()}; an unexpected error becomes a 500 page and
    a log entry with the traceback, never a traceback for the client.
    """
    d = Deferred.fromCoroutine(handler())  # type: ignore[arg-type]

    def failed(failure: Failure) -> None:
        from rumpus_secure.db import StoreUnavailable

        if failure.check(StoreUnavailable) and not getattr(request, "startedWriting", False):
            # The shared database is down: not a bug, and not for long.
            _log.warn("web request {method} {path}: {error}", method=request.method,
                      path=request.path, error=str(failure.value))
            error_page(request, 503, "Try again later",
                       "The server cannot reach its database right now. Please try "
                       "again in a moment.", link=("/files/", "Back to your files"))
            return
        _log.failure("web request {method} {path} failed", failure,
                     method=request.method, path=request.path)
        if getattr(request, "startedWriting", False):
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()
            return
        error_page(request, 500, "Something went wrong",
                   "The server could not complete this request. It has been "
                   "logged; please try again, or tell your administrator.",
                   link=("/files/", "Back to your files"))

    d.addErrback(failed)
    return NOT_DONE_YET
