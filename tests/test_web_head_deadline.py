"""
Slow request heads: a deadline for finishing a request's head (from its
first byte, ``--line-timeout``), and eviction of HTTPS connections that have
not completed a request when the server is full.

The second client is bob, from the same address, who must be served in the
window between two steps of the attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server, parse_response

HEAD = b"GET /login HTTP/1.1\r\nHost: files.example.org:8443\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa"


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "alice-pw")
    server.store.add("bob", "bob-pw")
    return server


class Slow:
    """A client that opens a connection and sends its head a byte at a time."""

    def __init__(self, site: Any, port: int = 1) -> None:
        self.protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port))
        self.protocol.makeConnection(self.transport)
        self.sent = 0

    def drip(self, count: int = 1) -> None:
        for _ in range(count):
            if self.sent < len(HEAD):
                self.protocol.dataReceived(HEAD[self.sent:self.sent + 1])
                self.sent += 1

    def close(self) -> None:
        self.protocol.connectionLost(None)


def bob_is_served(site: Any) -> None:
    bob = HTTPDriver(site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bob-pw"}).status == 303
    assert bob.get(b"/files/").status == 200


@pytest.mark.parametrize("plain", [False, True], ids=["https", "http"])
def test_slow_head_is_cut_after_line_timeout(server, plain):
    site = (build_http_site(server, server.reactor) if plain
            else build_https_site(server, server.reactor))
    https = site if not plain else build_https_site(server, server.reactor)
    slow = Slow(site)
    server.reactor.advance(50)  # an idle connection: no head deadline (the idle timeout is 60 s)
    assert not slow.transport.disconnecting
    for second in range(0, 30, 5):  # one byte every 5 s, as in the attack
        slow.drip()
        bob_is_served(https)  # same address, in between
        assert not slow.transport.disconnecting, second
        server.reactor.advance(5)
    response = parse_response(slow.transport.value())
    assert response.status == 408
    assert slow.transport.disconnecting
    if not plain:
        assert response.header(b"strict-transport-security") is not None
    bob_is_served(https)
    slow.close()


def test_head_deadline_off_and_configurable(tmp_path):
    server = make_server(tmp_path, line_timeout=0.0)
    slow = Slow(build_https_site(server, server.reactor))
    for _ in range(20):
        slow.drip()
        server.reactor.advance(5)
    assert not slow.transport.disconnecting
    server = make_server(tmp_path, line_timeout=3.0)
    slow = Slow(build_https_site(server, server.reactor))
    slow.drip()
    server.reactor.advance(3)
    assert slow.transport.disconnecting


def test_head_deadline_counts_each_request_of_a_kept_alive_connection(server):
    site = build_https_site(server, server.reactor)
    client = Slow(site)
    client.protocol.dataReceived(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.transport.value().startswith(b"HTTP/1.1 200")
    server.reactor.advance(50)  # kept alive, idle: no head deadline
    assert not client.transport.disconnecting
    client.protocol.dataReceived(b"GET /login HTTP/1.1\r\n")
    server.reactor.advance(29)
    client.protocol.dataReceived(b"Host: x\r\n\r\n")
    server.reactor.advance(10)
    assert not client.transport.disconnecting
    assert client.transport.value().count(b"HTTP/1.1 200") == 2


def _guarded(server: Any, limit: int, **settings: Any) -> Any:
    server.guard = Guard(GuardSettings(max_connections=limit, max_connections_per_ip=0,
                                       login_failure_delay=0.0, **settings),
                         server.reactor, audit=server.audit)
    return build_https_site(server, server.reactor)


def test_full_server_evicts_the_oldest_connection_without_a_request(server):
    site = _guarded(server, 4)
    bob_is_served(site)
    slow = [Slow(site, port) for port in range(1, 5)]
    for client in slow:
        client.drip(3)
        server.reactor.advance(1)
    server.reactor.advance(2)
    assert server.guard.total_connections == 4
    bob_is_served(site)  # a fifth connection: the oldest slow one made room
    assert parse_response(slow[0].transport.value()).status == 503
    assert slow[0].transport.disconnecting
    assert not any(client.transport.disconnecting for client in slow[1:])
    slow[0].close()  # its slot was released at eviction, not again now
    assert server.guard.total_connections == 3
    for client in slow[1:]:
        client.close()
    assert server.guard.total_connections == 0


def test_connection_with_a_request_is_not_evicted(server):
    site = _guarded(server, 2)
    busy = []
    for port in (1, 2):
        client = Slow(site, port)
        # A complete head whose body is still coming: a request in progress.
        client.protocol.dataReceived(b"POST /login HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 100\r\n\r\nusername=")
        busy.append(client)
    server.reactor.advance(10)
    refused = HTTPDriver(site).get(b"/login")
    assert refused.status == 503  # full, and nobody may be evicted
    assert not any(client.transport.disconnecting for client in busy)
    for client in busy:
        client.close()
    assert server.guard.total_connections == 0
    bob_is_served(site)


def test_eviction_while_logins_wait_for_verification(server):
    """
    The guard's queue of logins waiting to be verified and its eviction
    registry were one dict (both ``_not_logged_in``): with a login waiting,
    eviction took the queue for a connection and failed.
    """
    site = _guarded(server, 2, max_verifying_per_ip=1)
    first = server.guard.begin_login("198.51.100.9", "ftp", "carol")
    waiting = server.guard.begin_login("198.51.100.9", "ftp", "carol")
    assert first.called and not waiting.called
    slow = [Slow(site, port) for port in (1, 2)]
    for client in slow:
        client.drip(2)
    server.reactor.advance(3)
    bob = HTTPDriver(site)
    assert bob.get(b"/login").status == 200
    assert parse_response(slow[0].transport.value()).status == 503
    first.result.succeeded()
    assert waiting.called  # the queued login still starts
    for client in slow:
        client.close()
