"""
What an attacker with the README found on the FTP control channel (round 3),
each with a second client beside it: bare-LF lines and reply splitting, an
endless line under TLS, connections that never log in, a REST that outlived
other commands, and the client address lost once the connection was gone.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from rumpus_secure.ftp.control import CLOSE_GRACE
from rumpus_secure.guard import EVICT_MIN_AGE
from tests.ftp_fakes import connect, make_server
from tests.test_guard_ftp import guarded, send

REPLY = re.compile(r"\d{3}[ -]")


def replies(transport) -> list[str]:
    raw = transport.value().decode("utf-8", "surrogateescape")
    assert raw.endswith("\r\n") or raw == ""
    return raw.split("\r\n")[:-1] if raw else []


def test_bare_lf_ends_a_command(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    transport.clear()
    proto.dataReceived(b"NOOP\n")
    assert replies(transport) == ["200 OK."]


def test_a_line_break_inside_a_line_cannot_forge_a_reply(tmp_path: Path) -> None:
    """
    ``NOOP\\n200 injected\\r\\n`` is two commands; no reply line of ours is
    the client's text, and no reply carries a bare CR or LF.
    """
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    transport.clear()
    proto.dataReceived(b"NOOP\n200 injected\r\nFOO\rBAR 200 x\r\n")
    lines = replies(transport)
    assert len(lines) == 3
    for line in lines:
        assert REPLY.match(line) and "\r" not in line and "\n" not in line
    assert not any(line.startswith("200 injected") for line in lines)


def test_careless_client_with_bare_lf_has_its_password_checked(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, reactor = connect(server)
    proto.dataReceived(b"USER alice\nPASS right\n")
    reactor.advance(0)
    events = server.audit.named("ftp.cleartext_password")
    assert events and events[0]["account"] == "alice"


def test_an_endless_line_is_refused_once_and_cut(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, reactor = connect(server)
    other, other_transport, _ = connect(server, reactor=reactor, peer="192.0.2.7")
    for _ in range(20):
        proto.dataReceived(b"C" * 16384)
    assert len(server.audit.named("ftp.protocol_garbage")) == 1
    assert transport.disconnecting
    # TLS waits for its close_notify; a client that never stops sending
    # does not keep the connection: it is aborted after the grace.
    assert not transport.disconnected
    reactor.advance(CLOSE_GRACE)
    assert transport.disconnected
    # The other client at the same address is untouched.
    other_transport.clear()
    other.dataReceived(b"NOOP\r\n")
    assert replies(other_transport) == ["200 OK."]


def test_a_client_that_does_not_log_in_is_closed_after_the_login_timeout(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, config={"login_timeout": 30.0})
    idle, idle_transport, _ = connect(server, implicit=True, reactor=reactor)
    busy, busy_transport, _ = connect(server, implicit=True, reactor=reactor)
    send(busy, busy_transport, "USER alice", "PASS right")
    reactor.advance(29)
    assert not idle_transport.disconnecting
    reactor.advance(1)
    assert replies(idle_transport)[-1] == "421 Not logged in within 30 s; closing."
    assert idle_transport.disconnecting
    assert server.audit.named("ftp.login_timeout")
    # The logged-in session on the same address stays.
    reactor.advance(300)
    assert not busy_transport.disconnecting
    # REIN starts a new login deadline.
    send(busy, busy_transport, "REIN")
    reactor.advance(30)
    assert busy_transport.disconnecting


def test_a_full_server_evicts_the_oldest_connection_that_has_not_logged_in(
        tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, max_connections=3, config={"login_timeout": 0})
    logged, logged_transport, _ = connect(server, implicit=True, reactor=reactor,
                                          peer="192.0.2.1")
    send(logged, logged_transport, "USER alice", "PASS right")
    idle1, idle1_transport, _ = connect(server, reactor=reactor, peer="192.0.2.2")
    reactor.advance(1)
    idle2, idle2_transport, _ = connect(server, reactor=reactor, peer="192.0.2.3")
    # A burst: nobody has waited EVICT_MIN_AGE yet, so the newcomer is refused.
    _, burst, _ = connect(server, reactor=reactor, peer="192.0.2.4")
    assert replies(burst)[-1].startswith("421 Too many connections to this server")
    reactor.advance(EVICT_MIN_AGE)
    _, newcomer, _ = connect(server, reactor=reactor, peer="192.0.2.5")
    assert replies(newcomer)[0].startswith("220 ")
    assert replies(idle1_transport)[-1].startswith("421 The server is full")
    assert idle1_transport.disconnecting and not idle2_transport.disconnecting
    # Its slot was given back at once: connectionLost does not free it twice.
    idle1.connectionLost(Failure(ConnectionDone()))
    assert server.guard.total_connections == 3  # logged, idle2, newcomer
    # The next newcomer takes the slot of the oldest connection still not
    # logged in; the logged-in session is never the one.
    _, second, _ = connect(server, reactor=reactor, peer="192.0.2.6")
    assert replies(second)[0].startswith("220 ")
    assert idle2_transport.disconnecting and not logged_transport.disconnecting
    # Left: the logged-in session and two connections younger than the
    # minimum age: the next one is refused, nobody is evicted.
    _, third, _ = connect(server, reactor=reactor, peer="192.0.2.7")
    assert replies(third)[-1].startswith("421 Too many connections to this server")
    assert not logged_transport.disconnecting
    assert server.audit.named("ftp.evicted")


def test_rest_does_not_outlive_other_commands(tmp_path: Path) -> None:
    from tests.test_ftp_files import Session, codes

    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"0123456789")
    s.send("REST 4")
    s.send("SIZE f")  # anything but a transfer or its set-up cancels it
    assert codes(s.stor("STOR f", b"ab")) == ["150", "226"]
    assert s.disk() == {"f": b"ab"}
    # Set-up commands between REST and the transfer keep it (clients send
    # PASV or TYPE there).
    (s.home / "g").write_bytes(b"0123456789")
    s.send("REST 4")
    s.send("TYPE I")
    assert codes(s.stor("STOR g", b"ab")) == ["150", "226"]
    assert s.disk()["g"] == b"0123ab"


def test_the_client_address_is_kept_after_the_connection_is_gone(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server, peer="192.0.2.9")
    assert proto.client_host == "192.0.2.9"
    proto.connectionLost(Failure(ConnectionDone()))
    proto.transport = None
    assert proto.client_host == "192.0.2.9"
