"""
In-memory stand-ins for driving the web sites without sockets or threads.

L{HTTPDriver} feeds raw HTTP/1.1 bytes into a site's protocol over a
L{StringTransport} and parses the reply, so the whole twisted.web path
(including our request classes and the streamed upload) runs for real.
The fake server runs "threaded" work synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from rumpus_secure.audit import MemoryAuditLog
from rumpus_secure.config import ServerConfig
from rumpus_secure.exposure import ExposureGuard
from tests.fake_accounts import FakeChecker, FakeStore


@dataclass
class FakeServer:
    config: ServerConfig
    store: FakeStore
    checker: FakeChecker
    audit: MemoryAuditLog
    reactor: MemoryReactorClock
    exposure: Any = None
    threaded: list[str] = field(default_factory=list)

    def run_in_thread(self, function: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.threaded.append(getattr(function, "__name__", "?"))
        return defer.maybeDeferred(function, *args, **kwargs)


def make_server(tmp_path: Path, **config: Any) -> FakeServer:
    settings: dict[str, Any] = dict(data_dir=tmp_path / "data", https="tcp:8443",
                                    public_host="files.example.org")
    settings.update(config)
    reactor = MemoryReactorClock()
    store = FakeStore(tmp_path / "homes")
    server = FakeServer(ServerConfig(**settings), store, FakeChecker(store),
                        MemoryAuditLog(), reactor)
    server.exposure = ExposureGuard(server, reactor)
    return server


@dataclass
class Response:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(raw: bytes) -> Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return Response(status, headers, body)
    length = headers.get(b"content-length")
    if length is not None:
        rest = rest[: int(length[0])]
    return Response(status, headers, rest)


class HTTPDriver:
    """One connection per request to C{site}, like a browser with a cookie jar."""

    def __init__(self, site: Any, host: bytes = b"files.example.org:8443",
                 origin: bytes | None = b"https://files.example.org:8443") -> None:
        self.site = site
        self.host = host
        self.origin = origin
        self.cookies: dict[bytes, bytes] = {}
        self.transport: StringTransport | None = None

    def request(self, method: bytes, target: bytes, body: bytes | None = None,
                headers: dict[bytes, bytes] | None = None, chunks: int = 1,
                origin: bool = True, raw_head: bytes | None = None) -> Response:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.transport = transport
        protocol.makeConnection(transport)
        all_headers = {b"host": self.host, b"connection": b"close"}
        if origin and self.origin is not None and method == b"POST":
            all_headers[b"origin"] = self.origin
        if self.cookies:
            all_headers[b"cookie"] = b"; ".join(k + b"=" + v for k, v in self.cookies.items())
        if body is not None:
            all_headers[b"content-length"] = b"%d" % len(body)
        all_headers.update(headers or {})
        head = raw_head if raw_head is not None else (
            method + b" " + target + b" HTTP/1.1\r\n"
            + b"".join(k + b": " + v + b"\r\n" for k, v in all_headers.items() if v is not None)
            + b"\r\n")
        protocol.dataReceived(head)
        if body:
            step = max(1, len(body) // chunks)
            for start in range(0, len(body), step):
                protocol.dataReceived(body[start:start + step])
        self.site.reactor.advance(0)
        while transport.producer is not None and not transport.streaming:
            transport.producer.resumeProducing()
        response = parse_response(transport.value())
        for cookie in response.headers.get(b"set-cookie", []):
            pair = cookie.split(b";", 1)[0]
            name, _, value = pair.partition(b"=")
            if b"Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        protocol.connectionLost(None)
        return response

    def get(self, target: bytes, **kw: Any) -> Response:
        return self.request(b"GET", target, **kw)

    def post_form(self, target: bytes, fields: dict[str, str], **kw: Any) -> Response:
        from urllib.parse import urlencode

        body = urlencode(fields).encode("ascii")
        headers = {b"content-type": b"application/x-www-form-urlencoded"}
        headers.update(kw.pop("headers", {}))
        return self.request(b"POST", target, body=body, headers=headers, **kw)


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "XyZbound4ry") -> tuple[bytes, bytes]:
    """A multipart body from C{(name, filename or None, data)}; and its content type."""
    out = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.append(b"Content-Type: application/octet-stream\r\n")
        out.append(b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}".encode()
