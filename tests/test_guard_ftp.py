"""
The guard's hooks in the FTP control connection, driven in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from rumpus_secure.accounts.bans import MemoryBanStore
from rumpus_secure.guard import Guard, GuardSettings

from .ftp_fakes import FakeServer, connect, make_server

START = 1_800_000_000.0
PEER = "192.0.2.7"


def guarded(tmp_path: Path, **settings: Any) -> tuple[FakeServer, MemoryReactorClock]:
    config = settings.pop("config", {})
    server = make_server(tmp_path, **config)
    reactor = MemoryReactorClock()
    reactor.advance(START)
    values: dict[str, Any] = {"threshold": 15, "login_failure_delay": 1.0}
    values.update(settings)
    server.guard = Guard(GuardSettings(**values), reactor, store=MemoryBanStore(),
                         audit=server.audit)
    return server, reactor


def send(proto: Any, transport: Any, *lines: str) -> list[str]:
    transport.clear()
    proto.dataReceived("".join(line + "\r\n" for line in lines).encode("utf-8"))
    return transport.lines()


def hang_up(proto: Any) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def test_banned_address_gets_421_greeting_and_close(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=2, ban_time=900.0)
    for _ in range(2):
        server.guard.offence(PEER, "login_failed", protocol="https")
    proto, transport, _ = connect(server, reactor=reactor, peer=PEER)
    assert transport.lines() == [
        "421 Too many failed attempts from your address; try again in 15 minutes."
    ]
    assert transport.disconnecting
    # Nothing is executed afterwards, and no connection is counted.
    assert send(proto, transport, "USER alice") == []
    assert server.guard.connections(PEER) == 0
    [refused] = server.audit.named("guard.refused")
    assert refused["client"] == PEER and refused["protocol"] == "ftp"
    hang_up(proto)
    assert server.guard.total_connections == 0

    _, other, _ = connect(server, reactor=reactor, peer="192.0.2.8")
    assert other.lines()[0].startswith("220 ")


def test_banned_address_on_the_implicit_port(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=1)
    server.guard.offence(PEER, "login_failed", protocol="ftp")
    proto, transport, _ = connect(server, implicit=True, reactor=reactor, peer=PEER)
    assert transport.lines()[0].startswith("421 Too many failed attempts")
    assert transport.disconnecting


def test_failed_login_is_answered_after_the_delay(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, login_failure_delay=1.0)
    proto, transport, _ = connect(server, implicit=True, reactor=reactor)
    assert send(proto, transport, "USER alice", "PASS wrong", "NOOP") == [
        "331 Password required for alice."
    ]
    # Meanwhile another client logs in at once.
    other, other_transport, _ = connect(server, implicit=True, reactor=reactor,
                                        peer="192.0.2.9")
    assert send(other, other_transport, "USER alice", "PASS right") == [
        "331 Password required for alice.", "230 Welcome, alice: logged in."
    ]
    transport.clear()
    reactor.advance(0.9)
    assert transport.lines() == []
    reactor.advance(0.1)
    reactor.advance(0)  # the command loop resumes on the next turn
    assert transport.lines() == ["530 Login incorrect.", "200 OK."]
    assert not transport.disconnecting


def test_failed_logins_ban_and_close(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=3, ban_time=600.0)
    proto, transport, _ = connect(server, implicit=True, reactor=reactor)
    for _ in range(2):
        send(proto, transport, "USER alice", "PASS wrong")
        reactor.advance(1)
        reactor.advance(0)
        assert transport.lines()[-1] == "530 Login incorrect."
    send(proto, transport, "USER alice", "PASS wrong")
    reactor.advance(1)
    assert transport.lines()[-1] == (
        "421 Too many failed attempts from your address; try again in 10 minutes.")
    assert transport.disconnecting
    [ban] = server.audit.named("guard.ban")
    assert ban["client"] == PEER and ban["account"] == "alice"
    assert ban["reason"] == "login_failed" and ban["protocol"] == "ftps-implicit"
    _, again, _ = connect(server, reactor=reactor)
    assert again.lines()[0].startswith("421 Too many failed attempts")


def test_successful_login_is_not_delayed_or_scored(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=1)
    proto, transport, _ = connect(server, implicit=True, reactor=reactor)
    replies = send(proto, transport, "USER alice", "PASS right")
    assert replies[-1] == "230 Welcome, alice: logged in."
    assert server.guard.is_banned(PEER) is None


def test_per_address_connection_limit(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, max_connections_per_ip=2)
    first, _, _ = connect(server, reactor=reactor)
    connect(server, reactor=reactor)
    third, transport, _ = connect(server, reactor=reactor)
    assert transport.lines() == [
        "421 Too many connections from your address (limit 2); try again later."
    ]
    assert transport.disconnecting
    hang_up(third)
    assert server.guard.connections(PEER) == 2
    _, other, _ = connect(server, reactor=reactor, peer="192.0.2.50")
    assert other.lines()[0].startswith("220 ")
    hang_up(first)
    _, fourth, _ = connect(server, reactor=reactor)
    assert fourth.lines()[0].startswith("220 ")
    [limit] = server.audit.named("guard.limit")
    assert limit["scope"] == "address" and limit["limit"] == 2


def test_total_connection_limit(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, max_connections=2)
    connect(server, reactor=reactor, peer="192.0.2.1")
    connect(server, reactor=reactor, peer="192.0.2.2")
    _, transport, _ = connect(server, reactor=reactor, peer="192.0.2.3")
    assert transport.lines() == [
        "421 Too many connections to this server (limit 2); try again later."
    ]


def test_sessions_per_account(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, max_sessions_per_account=1)
    first, t1, _ = connect(server, implicit=True, reactor=reactor)
    assert send(first, t1, "USER alice", "PASS right")[-1].startswith("230 ")
    second, t2, _ = connect(server, implicit=True, reactor=reactor)
    assert send(second, t2, "USER alice", "PASS right")[-1] == (
        "421 Too many sessions for this account (limit 1); try again later.")
    assert t2.disconnecting
    hang_up(second)
    assert server.guard.sessions("alice") == 1
    # REIN logs out, so the session is free again.
    send(first, t1, "REIN")
    assert server.guard.sessions("alice") == 0
    assert send(first, t1, "USER alice", "PASS right")[-1].startswith("230 ")
    hang_up(first)
    assert server.guard.sessions("alice") == 0
    assert server.guard.total_connections == 0


def test_partial_line_that_never_finishes_is_closed(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, config={"line_timeout": 30.0, "login_timeout": 0})
    proto, transport, _ = connect(server, reactor=reactor)
    transport.clear()
    proto.dataReceived(b"FE")
    reactor.advance(20)
    proto.dataReceived(b"A")  # more bytes of the same line: no extension
    reactor.advance(9)
    assert not transport.disconnecting
    reactor.advance(1)
    assert transport.lines() == ["421 Command line not completed in time; closing."]
    assert transport.disconnecting
    assert server.audit.named("ftp.slow_line")
    hang_up(proto)
    assert reactor.getDelayedCalls() == [] or all(
        not call.active() for call in reactor.getDelayedCalls()
        if call.func == proto._line_timed_out)


def test_finished_lines_cancel_the_line_timer(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, config={"line_timeout": 30.0, "login_timeout": 0})
    proto, transport, _ = connect(server, reactor=reactor)
    proto.dataReceived(b"NO")
    reactor.advance(20)
    proto.dataReceived(b"OP\r\nSY")  # one line done, the next started
    reactor.advance(20)
    assert not transport.disconnecting
    proto.dataReceived(b"ST\r\n")
    assert proto._line_timer is None
    reactor.advance(100)
    assert not transport.disconnecting


def test_protocol_garbage_and_cleartext_logins_score(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=10)
    for _ in range(2):
        proto, transport, _ = connect(server, reactor=reactor)
        send(proto, transport, "GET / HTTP/1.1")
        hang_up(proto)
    assert server.guard.is_banned(PEER) is not None
    assert server.audit.named("guard.ban")[0]["reason"] == "protocol_garbage"

    for _ in range(4):
        proto, transport, _ = connect(server, reactor=reactor, peer="192.0.2.20")
        send(proto, transport, "USER alice")
        hang_up(proto)
    assert server.guard.is_banned("192.0.2.20") is not None
    assert server.audit.named("guard.ban")[1]["reason"] == "cleartext_login"


def test_without_a_guard_nothing_changes(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, reactor = connect(server, implicit=True)
    replies = send(proto, transport, "USER alice", "PASS wrong")
    assert replies[-1] == "530 Login incorrect."


def test_connections_open_before_a_ban_get_no_more_tries(tmp_path: Path) -> None:
    """
    A guesser with several connections: once one of them earns the ban, the
    others are refused at their next PASS, even with the right password.
    """
    server, reactor = guarded(tmp_path, threshold=3, login_failure_delay=0.0)
    first, first_transport, _ = connect(server, implicit=True, reactor=reactor, peer=PEER)
    second, second_transport, _ = connect(server, implicit=True, reactor=reactor, peer=PEER)
    third, third_transport, _ = connect(server, implicit=True, reactor=reactor, peer=PEER)
    for _ in range(2):
        send(first, first_transport, "USER alice", "PASS wrong")
        reactor.advance(0)
    # The third failure, on another connection, bans the address.
    send(second, second_transport, "USER alice", "PASS wrong")
    reactor.advance(0)
    assert server.guard.is_banned(PEER) is not None
    assert second_transport.lines()[-1].startswith("421 Too many failed attempts")
    # A connection that was already open gets no further guess, right or wrong.
    replies = send(third, third_transport, "USER alice", "PASS right")
    reactor.advance(0)
    assert replies[-1].startswith("421 Too many failed attempts"), replies
    assert third_transport.disconnecting
    assert not [e for e in server.audit.named("ftp.login") if e["outcome"] == "ok"]
    assert send(first, first_transport, "USER alice", "PASS wrong")[-1].startswith("421 ")
