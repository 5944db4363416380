"""
The HTTP channel of both web listeners, and answering a request before (or
instead of) reading its body.

B{Over-long header lines.}  twisted.web reads the request line and each
header line with C{LineReceiver}, whose limit is 16 KiB (C{MAX_LENGTH}).
Past it, C{LineReceiver.lineLengthExceeded} calls
C{transport.loseConnection()} directly.  The channel is still registered as
the transport's producer, and a TLS transport waits for its producer to go
before it shuts down, so on HTTPS the connection was held, silent, until the
60 s idle timeout.  L{LimitedChannel} answers ``431 Request Header Fields Too
Large`` and closes through the channel, which unregisters it first.

B{A deadline for each request's head.}  twisted.web's only clock is the
idle timeout (``--http-timeout``, 60 s), which every byte resets: round 3
held a connection open for over 80 s by sending one header byte every 5 s,
and 500 of them from 25 addresses filled every HTTPS slot.  A request's
head (request line and headers) must now be complete within
L{LimitedChannel.head_timeout} seconds of its first byte -- the site's
C{head_timeout}, set from ``--line-timeout`` (30 s, the same promise FTP
makes for a command line; 0 turns it off) -- or the connection gets ``408
Request Timeout`` and is closed.  The clock starts at the head's first
byte, not at the connection's start, so a browser's preconnected or
kept-alive connection that waits for its next request is governed by the
idle timeout alone (and, on HTTPS, by eviction when the server is full:
L{rumpus_secure.web.site.GuardedChannel}).  Request bodies are not under
this deadline.

B{Answers before the body.}  L{answer_and_close} writes a whole response
from the request's headers alone (no status line from twisted.web's
C{Request}, which only knows its method and version once the body is in)
and closes the connection, so a client that sends a body we will not read
learns why at once and cannot keep the connection busy.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.logger import Logger
from twisted.web import http
from twisted.web.http_headers import Headers

_log = Logger()

#: Longest request line or header line, as in twisted.web (and nginx's 8-16 KiB).
MAX_LINE = 16 * 1024


class Discard:
    """A request body dropped as it arrives (the C{request.content} face)."""

    def write(self, data: bytes) -> None:
        pass

    def tell(self) -> int:
        return 0

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


def answer_and_close(channel: http.HTTPChannel, status: int, body: bytes,
                     content_type: bytes,
                     extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """
    Write a complete response on C{channel} and close it, whatever state its
    parser is in.

    @param extra_headers: e.g. the site's security headers.
    """
    transport = channel.transport
    if transport is None or getattr(transport, "disconnecting", False):
        return
    headers = Headers()
    for name, value in extra_headers:
        headers.setRawHeaders(name, [value])
    headers.setRawHeaders(b"content-type", [content_type])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"connection", [b"close"])
    headers.setRawHeaders(b"date", [http.datetimeToString()])
    reason = http.RESPONSES.get(status, b"Error")
    channel.writeHeaders(b"HTTP/1.1", b"%d" % status, reason, headers)
    if body:
        channel.write(body)
    channel.loseConnection()


#: Seconds to finish a request's head when the site sets none (--line-timeout).
HEAD_TIMEOUT = 30.0


class LimitedChannel(http.HTTPChannel):
    """
    An C{HTTPChannel} that answers an over-long header line with ``431``
    and a head not finished in time with ``408``, and closes (see the
    module docstring).
    """

    MAX_LENGTH = MAX_LINE
    _head_timer: Any = None

    @property
    def head_timeout(self) -> float:
        return float(getattr(getattr(self, "site", None), "head_timeout", HEAD_TIMEOUT))

    def _reading_head(self) -> bool:
        return bool(self.line_mode) and not self._handlingRequest

    def dataReceived(self, data: bytes) -> None:
        if (data and self._head_timer is None and self._reading_head()
                and self.head_timeout > 0 and self.transport is not None
                and not getattr(self.transport, "disconnecting", False)):
            self._head_timer = self.callLater(self.head_timeout, self._head_timed_out)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel_head_timer()
        super().allHeadersReceived()

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head():
            return
        peer = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
        _log.info("web: request head from {client} not complete within {timeout} s; "
                  "answered 408", client=peer, timeout=self.head_timeout)
        site = getattr(self, "site", None)
        answer_and_close(
            self, 408,
            b"Request timeout: the request headers did not arrive within %d seconds.\n"
            % self.head_timeout,
            b"text/plain; charset=utf-8", getattr(site, "security_headers", ()))

    def connectionLost(self, reason: Any) -> None:
        self._cancel_head_timer()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        twisted.web's own ``400`` (duplicate C{Content-Length}, both
        C{Content-Length} and C{Transfer-Encoding}, a control character in
        a header name, more than 500 headers, a malformed chunk...) is a
        bare status line written straight to the transport: no security
        headers.  This answers the same ``400`` through L{answer_and_close},
        with the site's security headers.

        B{Private API.}  This overrides a private method of
        C{twisted.web.http.HTTPChannel} (every bad-request path of its
        parser calls it); C{tests/test_web_round3.py} fails loudly if a
        Twisted release renames it or stops calling it.
        """
        site = getattr(self, "site", None)
        answer_and_close(self, 400, b"Bad request: the request is malformed.\n",
                         b"text/plain; charset=utf-8",
                         getattr(site, "security_headers", ()))
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        peer = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
        _log.info("web: header line over {limit} bytes from {client}; answered 431",
                  limit=self.MAX_LENGTH, client=peer)
        site = getattr(self, "site", None)
        answer_and_close(
            self, 431,
            b"Request header fields too large: no line may exceed %d bytes.\n"
            % self.MAX_LENGTH,
            b"text/plain; charset=utf-8",
            getattr(site, "security_headers", ()),
        )
