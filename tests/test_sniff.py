"""
First-byte sniffing on TLS ports (L{rumpus_secure.sniff}), without sockets.

The real clients (curl, ftplib, lftp) on the wrong ports are in
C{tests/integration/test_wrong_port.py}.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rumpus_secure.config import build_config
from rumpus_secure.sniff import (
    FTPS_SILENCE,
    TLS_HANDSHAKE_FAILURE_ALERT,
    SniffingFactory,
    https_plain_reply,
    implicit_ftps_reply,
    wrap_https,
    wrap_implicit_ftps,
    wrap_plain_http,
)

CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class Recorder(protocol.Protocol):
    """
    The wrapped protocol: records what it is given.
    """

    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class RecordingFactory(protocol.Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder()
        self.built.append(p)
        return p


def config(**values: Any) -> Any:
    return build_config({"ftp": "tcp:2121", "ftps": "tcp:9990",
                         "public-host": "files.example.com", **values})


def connect(factory: SniffingFactory) -> tuple[Any, StringTransport]:
    p = factory.buildProtocol(ADDR)
    transport = StringTransport(peerAddress=ADDR)
    p.makeConnection(transport)
    return p, transport


def test_tls_client_on_implicit_ftps_is_handed_over_byte_for_byte() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_implicit_ftps(inner, config(), clock))
    # One byte alone is enough to decide, and nothing is lost.
    p.dataReceived(CLIENT_HELLO_START[:1])
    p.dataReceived(CLIENT_HELLO_START[1:])
    [wrapped] = inner.built
    assert wrapped.made and wrapped.received == CLIENT_HELLO_START
    # The silence timer is gone: a slow TLS handshake is not interrupted.
    assert clock.getDelayedCalls() == []
    clock.advance(FTPS_SILENCE * 10)
    assert transport.value() == b"" and not transport.disconnecting
    p.connectionLost(protocol.connectionDone)
    assert wrapped.lost is not None


def test_silent_client_on_implicit_ftps_gets_421_after_the_silence() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_implicit_ftps(inner, config(), clock))
    clock.advance(FTPS_SILENCE - 0.01)
    assert transport.value() == b""
    clock.advance(0.02)
    assert transport.value() == (
        b"421 This port is implicit FTPS: TLS from the first byte. Use "
        b"ftps://files.example.com:9990, or explicit FTPS (AUTH TLS) on port 2121.\r\n"
    )
    assert transport.disconnecting and inner.built == []
    assert FTPS_SILENCE < 1.0  # "every wrong-port case within a second"


class SocketStringTransport(StringTransport):
    """A StringTransport whose getHandle is a real socket (for the peek)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(peerAddress=ADDR)
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.mark.parametrize("waiting", [b"\x16\x03\x01", b""])
def test_a_client_whose_bytes_wait_unread_is_not_called_silent(waiting: bytes) -> None:
    """
    A busy reactor may read a ClientHello after the silence deadline: the
    bytes are in the socket, so the client is not told it was silent.  An
    end of stream waiting is not answered either.
    """
    clock, inner = Clock(), RecordingFactory()
    factory = wrap_implicit_ftps(inner, config(), clock)
    ours, client = socket.socketpair()
    try:
        p = factory.buildProtocol(ADDR)
        transport = SocketStringTransport(ours)
        p.makeConnection(transport)
        if waiting:
            client.sendall(waiting)
        else:
            client.shutdown(socket.SHUT_WR)
        clock.advance(FTPS_SILENCE + 0.1)
        assert transport.value() == b"" and not transport.disconnecting
        # A second connection, silent for real, is still told where to go.
        ours2, client2 = socket.socketpair()
        try:
            p2 = factory.buildProtocol(ADDR)
            transport2 = SocketStringTransport(ours2)
            p2.makeConnection(transport2)
            clock.advance(FTPS_SILENCE + 0.1)
            assert transport2.value().startswith(b"421 ") and transport2.disconnecting
        finally:
            ours2.close()
            client2.close()
        if waiting:
            p.dataReceived(waiting)  # read at last: handed over as TLS
            [wrapped] = inner.built
            assert wrapped.received == waiting
    finally:
        ours.close()
        client.close()


def test_plain_command_on_implicit_ftps_gets_421_at_once() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_implicit_ftps(inner, config(), clock))
    p.dataReceived(b"AUTH TLS\r\n")
    assert transport.value().startswith(b"421 This port is implicit FTPS")
    assert transport.disconnecting and inner.built == []
    assert clock.getDelayedCalls() == []
    # More bytes after the answer are ignored, not handed to anyone.
    p.dataReceived(b"\x16\x03")
    assert inner.built == []


def test_implicit_ftps_reply_without_a_plain_ftp_port() -> None:
    reply = implicit_ftps_reply("h", 990, None)
    assert reply == b"421 This port is implicit FTPS: TLS from the first byte. Use ftps://h:990.\r\n"


def test_lost_before_a_byte_cancels_the_silence_timer() -> None:
    clock = Clock()
    p, _ = connect(wrap_implicit_ftps(RecordingFactory(), config(), clock))
    p.connectionLost(protocol.connectionDone)
    assert clock.getDelayedCalls() == []


def test_plain_http_on_https_port_gets_400_naming_https() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_https(inner, config(https="tcp:8443"), clock))
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = transport.value()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"https://files.example.com:8443/" in body
    assert transport.disconnecting and inner.built == []


def test_https_reply_uses_public_port_and_omits_443() -> None:
    assert b"https://h:4443/" in https_plain_reply("h", 4443)
    assert b"https://h/" in https_plain_reply("h", 443)


def test_tls_on_https_port_is_handed_over() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_https(inner, config(), clock))
    p.dataReceived(CLIENT_HELLO_START)
    assert inner.built[0].received == CLIENT_HELLO_START
    assert transport.value() == b""


def test_client_hello_on_plain_http_is_refused_at_once() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_plain_http(inner, config(), clock))
    p.dataReceived(CLIENT_HELLO_START)
    assert transport.value() == TLS_HANDSHAKE_FAILURE_ALERT
    assert transport.disconnecting and inner.built == []


def test_plain_http_request_passes_through() -> None:
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap_plain_http(inner, config(), clock))
    p.dataReceived(b"GET / HTTP/1.1\r\n")
    p.dataReceived(b"\r\n")
    assert inner.built[0].received == b"GET / HTTP/1.1\r\n\r\n"
    assert not transport.disconnecting


def test_wrapped_factory_refusing_closes_the_connection() -> None:
    class Refusing(protocol.Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    p, transport = connect(wrap_plain_http(Refusing(), config(), Clock()))
    p.dataReceived(b"GET /")
    assert transport.disconnecting


def test_start_and_stop_reach_the_wrapped_factory() -> None:
    inner = RecordingFactory()
    sniffer = wrap_plain_http(inner, config(), Clock())
    sniffer.doStart()
    assert inner.numPorts == 1
    sniffer.doStop()
    assert inner.numPorts == 0


@pytest.mark.parametrize("wrap, first", [
    (wrap_https, CLIENT_HELLO_START),
    (wrap_plain_http, b"GET / HTTP/1.1\r\n"),
])
def test_silent_web_connections_close_after_the_http_timeout(wrap: Any,
                                                             first: bytes) -> None:
    """
    Before the first byte no HTTP channel (with its own timeout) exists: the
    sniffer closes a connection that never speaks after --http-timeout,
    quietly, and drops that timer once the client speaks.
    """
    settings = config(**{"http-timeout": "30"})
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap(inner, settings, clock))
    clock.advance(29.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and transport.value() == b""
    assert inner.built == []
    clock, inner = Clock(), RecordingFactory()
    p, transport = connect(wrap(inner, settings, clock))
    p.dataReceived(first)
    assert inner.built[0].received == first
    assert clock.getDelayedCalls() == []


class PausingRecorder(Recorder):
    """
    Pauses its transport in connectionMade, as twisted.web's channel does
    when it answers before a TLS handshake has finished.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()


def test_a_protocol_that_pauses_in_connection_made_is_still_read() -> None:
    """
    A TCP port starts reading after makeConnection; the sniffer connects its
    inner protocol later, so it must do the same, or a protocol that paused
    in connectionMade (the HTTPS per-address limit's 503) never reads the
    rest of the TLS handshake and hangs until its timeout.
    """

    class Factory(RecordingFactory):
        def buildProtocol(self, addr: Any) -> Recorder:
            p = PausingRecorder()
            self.built.append(p)
            return p

    inner = Factory()
    p, transport = connect(wrap_implicit_ftps(inner, config(), Clock()))
    p.dataReceived(CLIENT_HELLO_START)
    [wrapped] = inner.built
    assert wrapped.made and transport.producerState == "producing"
    p.dataReceived(b"rest of the handshake")
    assert wrapped.received == CLIENT_HELLO_START + b"rest of the handshake"
