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


class LimitedChannel(http.HTTPChannel):
    """
    An C{HTTPChannel} that answers an over-long header line with ``431``
    and closes (see the module docstring).
    """

    MAX_LENGTH = MAX_LINE

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
