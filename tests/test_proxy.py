"""
The PROXY protocol (issue #17): parsed before the wrapped protocol exists,
only from trusted proxies, and on passive data ports without eating a byte.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from rumpus_secure.ftp.passive import PassiveListener
from rumpus_secure.proxy import (
    ProxyHeaderError,
    ProxyProtocolFactory,
    TrustedProxies,
    node_host,
    parse_header,
    split_proxy,
    v1_header,
    v2_header,
)

CLIENT = ("198.51.100.7", 50123)
VIRTUAL = ("203.0.113.1", 21)


# -- the parser ---------------------------------------------------------------

@pytest.mark.parametrize("make", [v1_header, v2_header])
def test_header_parses_at_every_split(make: Any) -> None:
    """
    Every strict prefix asks for more; the whole gives both addresses and
    the exact length, whatever follows.
    """
    header = make(CLIENT, VIRTUAL)
    for cut in range(len(header)):
        assert parse_header(header[:cut]) is None, cut
    parsed = parse_header(header + b"USER alice\r\n")
    assert parsed is not None
    assert parsed.length == len(header)
    assert (parsed.source.host, parsed.source.port) == CLIENT
    assert (parsed.destination.host, parsed.destination.port) == VIRTUAL


def test_ipv6_headers() -> None:
    for make in (v1_header, v2_header):
        parsed = parse_header(make(("2001:db8::7", 1234), ("2001:db8::1", 21)))
        assert parsed is not None and parsed.source.host == "2001:db8::7"


def test_local_and_unknown_keep_the_connection_addresses() -> None:
    local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0, 0])
    assert parse_header(local).source is None
    assert parse_header(b"PROXY UNKNOWN\r\n").source is None


@pytest.mark.parametrize("bad", [
    b"USER alice\r\n",
    b"\x16\x03\x01\x02\x00",                              # a TLS ClientHello
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                  # no CR
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",                  # a port missing
    b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",                    # mixed families
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY " + b"A" * 120,                               # longer than 107
    b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x31, 0x11, 0, 12]) + bytes(12),  # version 3
    b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0, 4]) + bytes(4),   # too short
    b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x12, 0, 12]) + bytes(12),  # datagram
])
def test_malformed_headers_are_refused(bad: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(bad)


def test_trusted_proxies() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])
    assert "10.1.2.3" in trusted and "192.0.2.1" in trusted
    assert "::ffff:10.1.2.3" in trusted
    assert "192.0.2.2" not in trusted and "?" not in trusted
    assert not TrustedProxies([])


def test_split_proxy() -> None:
    assert split_proxy("haproxy:tcp:21") == (True, "tcp:21")
    assert split_proxy("tcp:21") == (False, "tcp:21")


# -- the wrapper --------------------------------------------------------------

class Recorder(Protocol):
    """
    Records what a guard would see in connectionMade, and the bytes.
    """

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.data = b""

    def connectionMade(self) -> None:
        self.log.append(("made", self.transport.getPeer().host,
                         self.transport.getHost().host))

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.log.append(("data", data))

    def connectionLost(self, reason: Any) -> None:
        self.log.append(("lost",))


class RecordingFactory(Factory):
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.built: list[Any] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        self.built.append(addr.host)
        return Recorder(self.log)


def _connect(peer: str, clock: Clock | None = None) -> tuple[Any, RecordingFactory, Any]:
    inner = RecordingFactory()
    factory = ProxyProtocolFactory(inner, TrustedProxies(["10.0.0.2"]),
                                   clock or Clock(), timeout=5)
    protocol = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000),
                                hostAddress=IPv4Address("TCP", "10.0.0.11", 21))
    protocol.makeConnection(transport)
    return protocol, inner, transport


def test_wrapped_protocol_is_made_only_after_the_header() -> None:
    """
    The bug of twisted/twisted#12501: nothing is built or connected while
    the header is incomplete, so no check can see the proxy's address.  Two
    clients through the same proxy each see their own address.
    """
    first, inner, transport = _connect("10.0.0.2")
    second, _, _ = _connect("10.0.0.2")
    header = v1_header(CLIENT, VIRTUAL)
    for byte in header[:-1]:
        first.dataReceived(bytes([byte]))
    assert inner.built == [] and inner.log == []
    second.dataReceived(v2_header(("198.51.100.8", 1), VIRTUAL))
    first.dataReceived(header[-1:] + b"USER alice\r\n")
    assert inner.built == [CLIENT[0]]
    assert inner.log == [("made", CLIENT[0], VIRTUAL[0]), ("data", b"USER alice\r\n")]
    assert not transport.disconnecting
    # The node's own address stays reachable for binding passive ports.
    assert node_host(first) == "10.0.0.11"
    assert node_host(transport) is None
    first.connectionLost(None)
    assert inner.log[-1] == ("lost",)


def test_untrusted_peer_is_dropped_before_anything() -> None:
    """
    A client reaching the node directly cannot name an address of its choice.
    """
    protocol, inner, transport = _connect("198.51.100.66")
    assert transport.disconnecting
    protocol.dataReceived(v1_header(CLIENT, VIRTUAL) + b"USER a\r\n")
    assert inner.built == [] and inner.log == []


def test_missing_or_malformed_header_drops_the_connection() -> None:
    protocol, inner, transport = _connect("10.0.0.2")
    protocol.dataReceived(b"USER alice\r\n")
    assert transport.disconnecting
    assert inner.built == []
    protocol.connectionLost(None)
    assert inner.log == []


def test_no_header_in_time_drops_the_connection() -> None:
    clock = Clock()
    protocol, inner, transport = _connect("10.0.0.2", clock)
    protocol.dataReceived(b"PROXY TCP4 ")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert inner.built == [] and clock.getDelayedCalls() == []


def test_header_in_time_cancels_the_deadline() -> None:
    clock = Clock()
    protocol, inner, transport = _connect("10.0.0.2", clock)
    protocol.dataReceived(v2_header(CLIENT, VIRTUAL))
    assert clock.getDelayedCalls() == []
    assert inner.built == [CLIENT[0]]


def test_listener_without_trusted_proxies_refuses_to_start(tmp_path: Any) -> None:
    from rumpus_secure import tap

    with pytest.raises(SystemExit, match="--trusted-proxies"):
        tap._endpoint(reactor, "ftp", "haproxy:tcp:0:interface=127.0.0.1")
    endpoint = tap._endpoint(reactor, "ftp", "haproxy:tcp:0:interface=127.0.0.1",
                             ("127.0.0.1",))
    assert endpoint.trusted and "127.0.0.1" in endpoint.trusted


# -- passive data ports -------------------------------------------------------

def _send_through_proxy(port: int, source: str, payload: bytes) -> bytes:
    """
    Play HAProxy's send-proxy-v2 towards a passive port from 127.0.0.1.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    # The header and the client's first bytes in one segment, the hard case.
    sock.sendall(v2_header((source, 41000), ("127.0.0.2", port)) + payload)
    try:
        return sock.recv(100)
    except OSError:
        return b""
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_passive_port_holds_the_proxied_client_to_the_control_peer() -> None:
    """
    Through a trusted proxy the header's source is checked, not the proxy:
    another client's connection is refused and the port keeps waiting; the
    rightful one is accepted and what follows the header is intact.
    """
    refused: list[str] = []
    listener = PassiveListener(reactor, "127.0.0.1", range(1), "127.0.0.50", 5.0,
                               on_refused=refused.append,
                               trusted=TrustedProxies(["127.0.0.1"]))
    try:
        reply = await deferToThread(_send_through_proxy, listener.port, "127.0.0.51",
                                    b"stolen")
        assert reply == b""
        assert refused == ["127.0.0.51"]
        assert listener.listening
        sending = deferToThread(_send_through_proxy, listener.port, "127.0.0.50",
                                b"\x16\x03\x01hello")
        accepted = await listener.wait()
        try:
            accepted.settimeout(5)
            assert accepted.recv(100) == b"\x16\x03\x01hello"
            accepted.sendall(b"ok")
        finally:
            accepted.close()
        assert await sending == b"ok"
        assert refused == ["127.0.0.51"]
    finally:
        listener.close()


@pytest_twisted.ensureDeferred
async def test_passive_port_refuses_a_bad_header_from_the_proxy() -> None:
    refused: list[str] = []
    listener = PassiveListener(reactor, "127.0.0.1", range(1), "127.0.0.50", 5.0,
                               on_refused=refused.append,
                               trusted=TrustedProxies(["127.0.0.1"]))

    def garbage() -> bytes:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            return sock.recv(10)
        except OSError:  # reset: the unread request was thrown away
            return b""
        finally:
            sock.close()

    try:
        assert await deferToThread(garbage) == b""
        assert refused == ["127.0.0.1"]
        assert listener.listening
    finally:
        listener.close()
    with pytest.raises(defer.CancelledError):
        await listener.wait()


# -- the order of the layers --------------------------------------------------

def _sniffed(clock: Clock) -> tuple[Any, RecordingFactory, StringTransport]:
    from rumpus_secure.sniff import SniffingFactory

    inner = RecordingFactory()
    sniffing = SniffingFactory(inner, expect_tls=True,
                               on_wrong=lambda first: b"421 wrong port\r\n",
                               on_silence=lambda: b"421 silent\r\n", clock=clock)
    factory = ProxyProtocolFactory(sniffing, TrustedProxies(["10.0.0.2"]), clock,
                                   timeout=5)
    peer = IPv4Address("TCP", "10.0.0.2", 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer,
                                hostAddress=IPv4Address("TCP", "10.0.0.11", 990))
    protocol.makeConnection(transport)
    return protocol, inner, transport


def test_sniffer_judges_the_clients_first_byte_not_the_header() -> None:
    """
    A v2 header starts with CR, a v1 header with "P": the sniffer must see
    neither, only the client's ClientHello (or its plain command).
    """
    clock = Clock()
    tls, inner, transport = _sniffed(clock)
    tls.dataReceived(v2_header(CLIENT, VIRTUAL) + b"\x16\x03\x01\x00\x05hello")
    assert inner.built == [CLIENT[0]]
    assert inner.log[0] == ("made", CLIENT[0], VIRTUAL[0])
    assert inner.log[1] == ("data", b"\x16\x03\x01\x00\x05hello")
    assert transport.value() == b""
    plain, inner2, transport2 = _sniffed(clock)
    plain.dataReceived(v1_header(CLIENT, VIRTUAL) + b"USER alice\r\n")
    assert transport2.value() == b"421 wrong port\r\n"
    assert inner2.built == []


def test_silence_deadline_starts_after_the_header() -> None:
    clock = Clock()
    protocol, inner, transport = _sniffed(clock)
    clock.advance(0.9)
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(v2_header(CLIENT, VIRTUAL))
    clock.advance(0.5)
    assert transport.value() == b""
    clock.advance(0.4)
    assert transport.value() == b"421 silent\r\n"
    assert clock.getDelayedCalls() == []


def test_passive_listeners_bind_the_node_not_the_virtual_address() -> None:
    """
    Behind PROXY, getHost() is the virtual address (announced to clients);
    the listener binds this node's address, or --passive-bind.
    """
    from types import SimpleNamespace

    from rumpus_secure.ftp.data import bind_address, trusted_proxies

    wrapper, _, _ = _connect("10.0.0.2")
    wrapper.dataReceived(v2_header(CLIENT, VIRTUAL))
    control = SimpleNamespace(transport=wrapper, config=SimpleNamespace(
        passive_bind=None, trusted_proxies=()))
    assert wrapper.getHost().host == VIRTUAL[0]
    assert bind_address(control) == "10.0.0.11"
    assert trusted_proxies(control) is None
    control.config = SimpleNamespace(passive_bind="10.0.0.99",
                                     trusted_proxies=("10.0.0.2",))
    assert bind_address(control) == "10.0.0.99"
    assert "10.0.0.2" in trusted_proxies(control)
    direct = SimpleNamespace(transport=StringTransport(
        hostAddress=IPv4Address("TCP", "192.0.2.5", 21)),
        config=SimpleNamespace(passive_bind=None, trusted_proxies=()))
    assert bind_address(direct) == "192.0.2.5"


@pytest_twisted.ensureDeferred
async def test_strangers_through_the_proxy_cannot_push_out_the_rightful_client() -> None:
    """
    Through a proxy anyone can reach a passive port.  Connections whose
    header stalls or names another client never take a candidate's place:
    the rightful client's vetting (a TLS handshake, held here) survives
    twenty of them.
    """
    from rumpus_secure.ftp.passive import MAX_CANDIDATES

    refused: list[str] = []
    listener = PassiveListener(reactor, "127.0.0.1", range(1), "127.0.0.50", 10.0,
                               on_refused=refused.append,
                               trusted=TrustedProxies(["127.0.0.1"]))
    vetting: list[tuple[Any, defer.Deferred[Any]]] = []

    def held(sock: socket.socket, host: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        vetting.append((sock, d))
        return d

    listener.vet = held
    header = v2_header(("127.0.0.50", 41000), ("127.0.0.2", listener.port))
    rightful = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    strangers: list[socket.socket] = []
    try:
        rightful.sendall(header)
        while not vetting:
            await deferLater(reactor, 0.01)
        for n in range(MAX_CANDIDATES + 2):
            stalled = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
            stalled.sendall(header[:10])
            other = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
            other.sendall(v2_header(("127.0.0.51", 41000 + n), ("127.0.0.2", 1)))
            strangers += [stalled, other]
            await deferLater(reactor, 0.01)  # the reactor accepts them
        while len(refused) < MAX_CANDIDATES + 2:
            await deferLater(reactor, 0.01)
        assert len(vetting) == 1 and not vetting[0][1].called
        sock, d = vetting[0]
        d.callback(sock)
        accepted = await listener.wait()
        assert accepted is sock
        accepted.close()
        assert set(refused) == {"127.0.0.51"}
    finally:
        rightful.close()
        for stranger in strangers:
            stranger.close()
        listener.close()
