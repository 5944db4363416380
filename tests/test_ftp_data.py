"""
Data-connection set-up commands in memory: PASV, EPSV, PORT, EPRT.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rumpus_secure.ftp import data

from .ftp_fakes import connect, make_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_in(tmp_path: Path, reactor=None, peer: str = "127.0.0.1", **config):
    server = make_server(tmp_path, ftp_security="allow-plain", **config)
    proto, transport, reactor = connect(server, peer=peer, reactor=reactor)
    proto.dataReceived(b"USER alice\r\nPASS right\r\n")
    transport.clear()
    return server, proto, transport, reactor


def send(proto, transport, line: str) -> list[str]:
    transport.clear()
    proto.dataReceived(line.encode() + b"\r\n")
    return transport.lines()


def test_pasv_and_epsv_announce_a_listening_port(tmp_path: Path) -> None:
    server, proto, transport, reactor = logged_in(tmp_path)
    [reply] = send(proto, transport, "PASV")
    assert reply.startswith("227 Entering Passive Mode (127,0,0,1,")
    numbers = reply.split("(")[1].split(")")[0].split(",")
    port = int(numbers[4]) * 256 + int(numbers[5])
    assert proto.data_source.listener.port == port
    [reply] = send(proto, transport, "EPSV")
    assert reply == f"229 Entering Extended Passive Mode (|||{proto.data_source.listener.port}|)."
    proto.connectionLost()
    assert proto.data_source is None


def test_pasv_announces_the_configured_address(tmp_path: Path) -> None:
    server, proto, transport, reactor = logged_in(tmp_path, passive_address="203.0.113.5")
    [reply] = send(proto, transport, "PASV")
    assert reply.startswith("227 Entering Passive Mode (203,0,113,5,")
    proto.connectionLost()


def test_epsv_all_and_wrong_family(tmp_path: Path) -> None:
    server, proto, transport, reactor = logged_in(tmp_path)
    assert send(proto, transport, "EPSV 2")[0].startswith("522 ")
    assert send(proto, transport, "EPSV ALL")[0].startswith("200 ")
    assert send(proto, transport, "PASV")[0].startswith("503 ")
    assert send(proto, transport, "PORT 127,0,0,1,200,10")[0].startswith("503 ")


def test_pasv_waits_for_a_port_of_a_full_range(tmp_path: Path) -> None:
    """
    Sessions of one server share the passive range: a PASV that finds every
    port taken waits for the next one to come free, for a bounded time.
    """
    from twisted.internet.testing import MemoryReactorClock

    from rumpus_secure.ftp.factory import FTPFactories

    from .ftp_fakes import TLSStringTransport

    port = free_port()
    server = make_server(tmp_path, ftp_security="allow-plain", passive_ports=(port, port))
    reactor = MemoryReactorClock()
    factory = FTPFactories(server, reactor).plain()

    def session():
        proto = factory.buildProtocol(None)
        transport = TLSStringTransport("127.0.0.1")
        proto.makeConnection(transport)
        proto.dataReceived(b"USER alice\r\nPASS right\r\n")
        return proto, transport

    (proto1, transport1), (proto2, transport2), (proto3, transport3) = (
        session(), session(), session())
    assert send(proto1, transport1, "PASV")[0].startswith("227 ")
    assert send(proto2, transport2, "PASV") == []  # waiting for the port
    reactor.advance(1.0)
    assert transport2.lines() == []
    assert send(proto1, transport1, "ABOR")[0].startswith("225 ")  # frees the port
    reactor.advance(0)
    [reply] = transport2.lines()
    assert reply.startswith("227 ") and proto2.data_source.listener.port == port
    # A third session that never gets the port is told so, in time.
    send(proto3, transport3, "PASV")
    reactor.advance(data.PORT_WAIT + 1)
    [reply] = transport3.lines()
    assert reply.startswith("425 ")
    for proto in (proto1, proto2, proto3):
        proto.connectionLost()
    assert not reactor.getDelayedCalls() or all(
        not call.active() for call in reactor.getDelayedCalls())


@pytest.mark.parametrize("command", [
    "PORT 192,0,2,99,200,10",      # someone else's address (bounce)
    "PORT 127,0,0,1,0,21",         # a privileged port
    "EPRT |1|192.0.2.99|51000|",
    "EPRT |2|::1|51000|",
    "EPRT |1|127.0.0.1|1023|",
])
def test_port_refuses_bounce_targets(tmp_path: Path, command: str) -> None:
    server, proto, transport, reactor = logged_in(tmp_path)
    [reply] = send(proto, transport, command)
    assert reply.startswith("504 ") and "your own address" in reply
    assert proto.data_source is None
    [event] = server.audit.named("ftp.port_refused")
    assert event["client"] == "127.0.0.1"


@pytest.mark.parametrize("command", ["PORT 1,2,3", "PORT a,b,c,d,e,f", "PORT 300,0,0,1,4,1",
                                     "EPRT |1|not-an-ip|1|", "EPRT nonsense"])
def test_port_refuses_malformed_arguments(tmp_path: Path, command: str) -> None:
    server, proto, transport, reactor = logged_in(tmp_path)
    [reply] = send(proto, transport, command)
    assert reply.startswith("501 ")


def test_port_to_own_address_is_accepted(tmp_path: Path) -> None:
    server, proto, transport, reactor = logged_in(tmp_path, peer="::ffff:127.0.0.1")
    [reply] = send(proto, transport, "PORT 127,0,0,1,200,10")
    assert reply.startswith("200 ")
    assert isinstance(proto.data_source, data.ActiveSource)
    assert (proto.data_source.host, proto.data_source.port) == ("127.0.0.1", 200 * 256 + 10)


def test_normalise_host() -> None:
    assert data.normalise_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert data.normalise_host("::1") == "::1"
    assert data.normalise_host("fe80::1%eth0") == "fe80::1"
