"""
Stand-ins for the guard and exposure tests: a checker whose verifications
finish only when the test says so, and raw HTTP requests left open.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from rumpus_secure.ftp.realm import FTPRealm
from tests.fake_accounts import FakeChecker, FakeStore
from tests.test_web_support import Response, parse_response


class HeldChecker(FakeChecker):
    """
    A L{FakeChecker} whose logins and password checks wait in L{held} and
    L{held_checks} until released: a busy verification pool, under control.

    @ivar verified: how many logins were released (passwords verified).
    """

    def __init__(self, store: FakeStore, hold_checks: bool = False) -> None:
        super().__init__(store)
        self.held: list[tuple[Any, defer.Deferred[Any]]] = []
        self.held_checks: list[tuple[str, str, defer.Deferred[bool]]] = []
        self.hold_checks = hold_checks
        self.verified = 0
        self.check_options: list[dict[str, Any]] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.held.append((credentials, d))
        return d

    def release(self, index: int = 0) -> None:
        credentials, d = self.held.pop(index)
        self.verified += 1
        FakeChecker.requestAvatarId(self, credentials).chainDeferred(d)

    def check_password(self, name: str, password: str, threadpool: Any = None,
                       cache: Any = None) -> defer.Deferred[bool]:
        self.check_options.append({"threadpool": threadpool, "cache": cache})
        if not self.hold_checks:
            return super().check_password(name, password)
        d: defer.Deferred[bool] = defer.Deferred()
        self.held_checks.append((name, password, d))
        return d

    def release_check(self, index: int = 0) -> None:
        name, password, d = self.held_checks.pop(index)
        super().check_password(name, password).chainDeferred(d)


def hold_logins(server: Any, hold_checks: bool = False) -> HeldChecker:
    """
    Give C{server} (an FTP or web fake) a L{HeldChecker}.
    """
    checker = HeldChecker(server.store, hold_checks=hold_checks)
    server.checker = checker
    if hasattr(server, "portal"):
        server.portal = Portal(FTPRealm(server.store), [checker])
    return checker


class OpenRequest:
    """
    One HTTP request fed to C{site} from C{peer}, its answer read later.
    """

    def __init__(self, site: Any, method: bytes, target: bytes, *, peer: str,
                 body: bytes = b"", headers: dict[bytes, bytes] | None = None) -> None:
        address = IPv4Address("TCP", peer, 40000)
        self.protocol = site.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        all_headers = {b"host": b"files.example.org:8443", b"connection": b"close",
                       b"content-length": b"%d" % len(body)}
        all_headers.update(headers or {})
        self.protocol.dataReceived(
            method + b" " + target + b" HTTP/1.1\r\n"
            + b"".join(k + b": " + v + b"\r\n" for k, v in all_headers.items())
            + b"\r\n" + body)

    @property
    def answered(self) -> bool:
        return b"\r\n\r\n" in self.transport.value()

    def response(self) -> Response:
        return parse_response(self.transport.value())


def login_form(username: str, password: str) -> tuple[bytes, dict[bytes, bytes]]:
    from urllib.parse import urlencode

    body = urlencode({"username": username, "password": password}).encode("ascii")
    return body, {b"content-type": b"application/x-www-form-urlencoded",
                  b"origin": b"https://files.example.org:8443"}
