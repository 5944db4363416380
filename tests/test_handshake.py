"""
The TLS handshake deadline, in memory with a Clock: implicit ports (the
wrapping factory) and FTP after AUTH TLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim

from rumpus_secure.certificates import ensure_certificate
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.handshake import (
    HandshakeDeadlineFactory,
    HandshakesInFlight,
    handshake_finished,
    watch_handshake,
)
from rumpus_secure.tls import TLSContextSource

from .ftp_fakes import TLSStringTransport, connect, make_server


@pytest.fixture
def tls_source(tmp_path: Path) -> TLSContextSource:
    info = ensure_certificate(tmp_path / "tls", "localhost", None, None)
    return TLSContextSource(info.cert_path, info.key_path)


class _Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.made = False
        self.lost: Any = None
        self.received = b""

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class _Silent(protocol.Protocol):
    """A client that connects and never says a word (the stalled handshake)."""


def _serve(
    source: TLSContextSource, clock: MemoryReactorClock, client: Any, timeout: float = 15.0,
) -> tuple[HandshakeDeadlineFactory, _Recorder, iosim.IOPump]:
    inner = protocol.Factory.forProtocol(_Recorder)
    built: list[_Recorder] = []
    original = inner.buildProtocol

    def build(addr: Any) -> Any:
        p = original(addr)
        built.append(p)
        return p

    inner.buildProtocol = build  # type: ignore[method-assign]
    factory = source.wrap_factory(inner, [b"ftp"], clock, handshake_timeout=timeout)
    assert isinstance(factory, HandshakeDeadlineFactory)
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 990))
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    return factory, built[0], pump


def test_stalled_handshake_is_aborted_at_the_deadline(tls_source: TLSContextSource) -> None:
    clock = MemoryReactorClock()
    factory, inner, pump = _serve(tls_source, clock, _Silent())
    pump.flush()
    assert inner.made and inner.lost is None
    clock.advance(14.9)
    pump.flush()
    assert inner.lost is None
    clock.advance(0.2)
    pump.flush()
    assert inner.lost is not None
    assert factory.timed_out == 1
    assert clock.getDelayedCalls() == []


def test_finished_handshake_is_not_aborted(tls_source: TLSContextSource) -> None:
    clock = MemoryReactorClock()
    client_tls = TLSMemoryBIOFactory(
        CertificateOptions(verify=False), True,
        protocol.Factory.forProtocol(_Recorder), clock=clock,
    ).buildProtocol(None)
    factory, inner, pump = _serve(tls_source, clock, client_tls)
    pump.flush()
    client_tls.write(b"hello")
    clock.advance(0)  # the TLS layer's write aggregation
    pump.flush()
    assert inner.received == b"hello"
    assert handshake_finished(client_tls)
    # The deadline was cancelled as soon as the handshake finished: no timer
    # per connection is left for the idle life of the session.
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    clock.advance(60)
    pump.flush()
    assert inner.lost is None and factory.timed_out == 0


def test_zero_turns_the_deadline_off(tls_source: TLSContextSource) -> None:
    clock = MemoryReactorClock()
    factory, inner, pump = _serve(tls_source, clock, _Silent(), timeout=0)
    clock.advance(3600)
    pump.flush()
    assert inner.lost is None and factory.timed_out == 0


class _StartTLSTransport(TLSStringTransport):
    """
    After startTLS, a handle in mid-handshake, as the reactor's TCP
    transport gives; abortConnection is recorded.
    """

    def __init__(self, context: SSL.Context) -> None:
        super().__init__()
        self._context = context
        self._connection: SSL.Connection | None = None
        self.aborted = False

    def startTLS(self, context: Any) -> None:
        super().startTLS(context)
        self._connection = SSL.Connection(self._context, None)
        self._connection.set_accept_state()

    def getHandle(self) -> Any:
        return self._connection

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def _guarded(tmp_path: Path, **config: Any) -> Any:
    server = make_server(tmp_path, **config)
    server.guard = Guard(GuardSettings(max_connections_per_ip=2), MemoryReactorClock())
    return server


def test_auth_tls_handshake_has_its_own_deadline(
        tmp_path: Path, tls_source: TLSContextSource) -> None:
    server = _guarded(tmp_path, handshake_timeout=15.0)
    context = tls_source.context_factory([b"ftp"]).getContext()
    clock = MemoryReactorClock()
    stalled, transport, _ = connect(server, reactor=clock)
    transport.__class__ = _StartTLSTransport
    _StartTLSTransport.__init__(transport, context)
    # The same address, at the same time: an honest client that finishes.
    honest, honest_transport, _ = connect(server, reactor=clock)
    assert server.guard.connections("192.0.2.7") == 2
    stalled.dataReceived(b"AUTH TLS\r\n")
    honest.dataReceived(b"AUTH TLS\r\n")
    clock.advance(5)
    honest.handshakeCompleted()
    clock.advance(9.9)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted
    stalled.connectionLost(Failure(ConnectionAborted()))
    # Its guard slot is free again; the honest session goes on.
    assert server.guard.connections("192.0.2.7") == 1
    assert server.audit.named("ftp.tls_timeout")[0]["outcome"] == "closed"
    assert not honest_transport.disconnecting
    clock.advance(300)
    assert len(server.audit.named("ftp.tls_timeout")) == 1


class _Stalled:
    """A transport whose TLS handshake never finishes."""

    def __init__(self, host: str = "192.0.2.1") -> None:
        self.aborted = False
        self.host = host

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, 50000)

    def getHandle(self) -> Any:
        return SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)

    def abortConnection(self) -> None:
        self.aborted = True


def test_stalled_handshakes_make_room_for_newcomers() -> None:
    clock = MemoryReactorClock()
    in_flight = HandshakesInFlight(clock, limit=3, min_age=1.0)
    stalled = [_Stalled() for _ in range(3)]
    watches = [watch_handshake(clock, t, 15.0, None, in_flight) for t in stalled]
    clock.advance(2)
    honest = _Stalled()
    honest_watch = watch_handshake(clock, honest, 15.0, None, in_flight)
    # The oldest stall was pushed out; the newcomer is in.
    assert [t.aborted for t in stalled] == [True, False, False]
    assert len(in_flight) == 3 and in_flight.evicted == 1
    assert not watches[0].active()
    honest_watch.cancel()  # its handshake finished
    assert len(in_flight) == 2
    clock.advance(13.1)
    assert [t.aborted for t in stalled] == [True, True, True]
    assert not honest.aborted and len(in_flight) == 0
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_a_burst_of_young_handshakes_is_not_pushed_out() -> None:
    clock = MemoryReactorClock()
    in_flight = HandshakesInFlight(clock, limit=2, min_age=1.0)
    burst = [_Stalled() for _ in range(5)]
    for transport in burst:
        watch_handshake(clock, transport, 15.0, None, in_flight)
        clock.advance(0.1)
    assert not any(t.aborted for t in burst) and len(in_flight) == 5
    clock.advance(1)
    late = _Stalled()
    watch_handshake(clock, late, 15.0, None, in_flight)
    # Room is made down to the limit, oldest first.
    assert [t.aborted for t in burst] == [True, True, True, True, False]
    assert not late.aborted and len(in_flight) == 2


def test_one_address_pushes_out_its_own_stalls_first() -> None:
    clock = MemoryReactorClock()
    in_flight = HandshakesInFlight(clock, limit=100, min_age=1.0, per_address=2)
    attacker = [_Stalled("192.0.2.66") for _ in range(2)]
    other = _Stalled("::ffff:192.0.2.9")
    for transport in [*attacker, other]:
        watch_handshake(clock, transport, 15.0, None, in_flight)
    clock.advance(2)
    # The attacker's address opens another: its own oldest makes room,
    # the other address's handshake (as old) is left alone.
    newest = _Stalled("::ffff:192.0.2.66")  # the same address, IPv6-mapped
    watch_handshake(clock, newest, 15.0, None, in_flight)
    assert [t.aborted for t in attacker] == [True, False]
    assert not other.aborted and not newest.aborted
    assert len(in_flight) == 3
