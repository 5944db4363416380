"""
The FTP control channel, driven in memory: policy, AUTH, cleartext logins.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from rumpus_secure.ftp.policy import ControlPolicy, Verdict, is_cross_protocol

from .ftp_fakes import connect, make_server


def send(proto, transport, *lines: str) -> list[str]:
    """
    Deliver lines in one buffer and return the reply lines they caused.
    """
    transport.clear()
    proto.dataReceived("".join(line + "\r\n" for line in lines).encode("utf-8"))
    return transport.lines()


# -- the pure policy ----------------------------------------------------


@pytest.mark.parametrize(
    "line, secure, verdict",
    [
        ("AUTH TLS", False, Verdict.EXECUTE),
        ("FEAT", False, Verdict.EXECUTE),
        ("feat", False, Verdict.EXECUTE),
        ("SYST", False, Verdict.EXECUTE),
        ("NOOP", False, Verdict.EXECUTE),
        ("QUIT", False, Verdict.EXECUTE),
        ("HELP", False, Verdict.EXECUTE),
        ("CLNT lftp 4.9", False, Verdict.EXECUTE),
        ("HOST files.example.com", False, Verdict.EXECUTE),
        ("USER alice", False, Verdict.CLEARTEXT_LOGIN),
        ("PASS secret", False, Verdict.CLEARTEXT_LOGIN),
        ("LIST", False, Verdict.NEEDS_TLS),
        ("RETR x", False, Verdict.NEEDS_TLS),
        ("PBSZ 0", False, Verdict.TLS_SEQUENCE),
        ("PROT P", False, Verdict.TLS_SEQUENCE),
        ("USER alice", True, Verdict.EXECUTE),
        ("LIST", True, Verdict.EXECUTE),
        ("GET / HTTP/1.1", False, Verdict.CROSS_PROTOCOL),
        ("GET / HTTP/1.1", True, Verdict.CROSS_PROTOCOL),
        ("Host: example.com", False, Verdict.CROSS_PROTOCOL),
        ("EHLO mail.example.com", False, Verdict.CROSS_PROTOCOL),
        ("HTTP/1.1 200 OK", False, Verdict.CROSS_PROTOCOL),
    ],
)
def test_require_tls_verdicts(line: str, secure: bool, verdict: Verdict) -> None:
    policy = ControlPolicy("require-tls", explicit_port=2121, implicit_port=9990)
    assert policy.verdict(line, secure) is verdict


def test_allow_plain_executes_logins() -> None:
    policy = ControlPolicy("allow-plain")
    assert policy.verdict("USER alice", False) is Verdict.EXECUTE
    assert policy.verdict("POST / HTTP/1.1", False) is Verdict.CROSS_PROTOCOL


def test_ftp_commands_are_not_cross_protocol() -> None:
    for line in ["DELE file", "OPTS UTF8 ON", "CWD dir:with:colons", "STOR report: final"]:
        assert not is_cross_protocol(line), line


def test_refusals_say_what_to_do() -> None:
    policy = ControlPolicy("require-tls", explicit_port=2121, implicit_port=9990)
    text = policy.refusal(Verdict.NEEDS_TLS, "LIST")
    assert text.startswith("534 ")
    assert "AUTH TLS" in text and "2121" in text and "9990" in text
    login = policy.refusal(Verdict.CLEARTEXT_LOGIN, "USER")
    assert login.startswith("530 ") and "9990" in login
    greeting = ControlPolicy("implicit-only", implicit_port=9990).implicit_only_greeting()
    assert greeting.startswith("421 ") and "9990" in greeting


# -- before TLS -----------------------------------------------------------


def test_greeting_asks_for_tls(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    [greeting] = transport.lines()
    assert greeting.startswith("220 ") and "AUTH TLS" in greeting


def test_allow_list_before_tls(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    replies = send(proto, transport, "SYST", "NOOP", "CLNT FancyFTP 2.0", "HOST x")
    assert [r[:3] for r in replies] == ["215", "200", "200", "220"]
    assert proto.client_software == "FancyFTP 2.0"
    feat = send(proto, transport, "FEAT")
    assert feat[0] == "211-Features:" and feat[-1] == "211 End"
    assert " AUTH TLS" in feat and " PBSZ" in feat and " PROT" in feat


@pytest.mark.parametrize("command", ["LIST", "RETR secret.txt", "CWD /", "STOR x", "MKD d"])
def test_other_commands_refused_before_tls(tmp_path: Path, command: str) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    [reply] = send(proto, transport, command)
    assert reply.startswith("534 ") and "AUTH TLS" in reply
    assert not transport.disconnecting
    assert server.audit.named("ftp.refused_before_tls")


def test_pbsz_prot_ccc_before_tls(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    replies = send(proto, transport, "PBSZ 0", "PROT P", "CCC")
    assert [r[:3] for r in replies] == ["503", "503", "533"]


# -- cleartext credentials ------------------------------------------------


def test_pipelined_cleartext_login_quarantines_real_password(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, reactor = connect(server, peer="192.0.2.7")
    replies = send(proto, transport, "USER alice", "PASS right", "LIST", "DELE x")
    assert all(r.startswith("530 ") for r in replies)
    assert len(replies) == 2
    assert transport.disconnecting
    account = server.store.get("alice")
    assert account.locked
    assert "password sent unencrypted from 192.0.2.7 at " in account.lock_reason
    exposed = server.audit.named("account.password_exposed")
    assert exposed and exposed[0]["account"] == "alice"
    assert exposed[0]["client"] == "192.0.2.7"
    assert server.store.lock in server.threaded
    for event in server.audit.events:
        assert "right" not in str(event.values())


def test_cleartext_wrong_password_gives_same_reply_and_no_lock(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    wrong = send(proto, transport, "USER alice", "PASS wrong")
    server2 = make_server(tmp_path / "2")
    proto2, transport2, _ = connect(server2)
    right = send(proto2, transport2, "USER alice", "PASS right")
    server3 = make_server(tmp_path / "3")
    proto3, transport3, _ = connect(server3)
    unknown = send(proto3, transport3, "USER nobody", "PASS right")
    assert wrong == right == unknown
    assert not server.store.get("alice").locked
    assert server2.store.get("alice").locked
    [outcome] = server.audit.named("ftp.cleartext_password")
    assert outcome["outcome"] == "not-the-password"


def test_cleartext_alert_mode_records_but_does_not_lock(tmp_path: Path) -> None:
    server = make_server(tmp_path, exposed_password="alert")
    proto, transport, _ = connect(server)
    send(proto, transport, "USER alice", "PASS right")
    assert not server.store.get("alice").locked
    [event] = server.audit.named("account.password_exposed")
    assert event["action"] == "alert"


def test_cleartext_user_then_pass_later_within_grace(tmp_path: Path) -> None:
    server = make_server(tmp_path, cleartext_grace=2.0)
    proto, transport, reactor = connect(server)
    [reply] = send(proto, transport, "USER alice")
    assert reply.startswith("530 ")
    assert not transport.disconnecting
    reactor.advance(1.5)
    [again] = send(proto, transport, "PASS right")
    assert again.startswith("530 ")
    assert transport.disconnecting
    assert server.store.get("alice").locked
    proto.connectionLost()
    assert not reactor.getDelayedCalls()


def test_cleartext_user_closes_after_grace(tmp_path: Path) -> None:
    server = make_server(tmp_path, cleartext_grace=2.0)
    proto, transport, reactor = connect(server)
    send(proto, transport, "USER alice")
    reactor.advance(1.9)
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting
    assert server.checker.checked == []
    [event] = server.audit.named("ftp.cleartext_user")
    assert event["account"] == "alice" and event["client"] == "192.0.2.7"


def test_nothing_executes_after_cleartext_user(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    replies = send(proto, transport, "USER alice", "SYST", "FEAT")
    assert all(not r.startswith(("215", "211")) for r in replies)


def test_cleartext_client_software_is_audited(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    send(proto, transport, "CLNT OldClient 1.0", "USER alice")
    [event] = server.audit.named("ftp.cleartext_user")
    assert event["software"] == "OldClient 1.0"


# -- AUTH TLS -------------------------------------------------------------


def test_auth_tls_starts_tls_and_resets(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    [reply] = send(proto, transport, "AUTH TLS")
    assert reply.startswith("234 ")
    assert transport.tls_started is server.tls.context
    assert proto.secure and proto.prot == "C"
    replies = send(proto, transport, "USER alice", "PASS right")
    assert [r[:3] for r in replies] == ["331", "230"]
    assert proto.account == "alice"
    assert server.audit.named("ftp.login")[0]["outcome"] == "ok"


def test_pipelined_plaintext_behind_auth_is_never_executed(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    replies = send(proto, transport, "AUTH TLS", "USER alice", "PASS right")
    assert replies == ["503 Spurious data after AUTH command; closing."]
    assert transport.tls_started is None
    assert transport.disconnecting
    assert proto.account is None
    assert server.audit.named("ftp.auth_injection")


def test_partial_line_behind_auth_is_also_refused(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    transport.clear()
    proto.dataReceived(b"AUTH TLS\r\nUSE")
    assert transport.lines()[0].startswith("503 ")
    assert transport.tls_started is None


@pytest.mark.parametrize("mechanism", ["TLS", "SSL", "TLS-C", "TLS-P", "tls"])
def test_auth_mechanisms(tmp_path: Path, mechanism: str) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    [reply] = send(proto, transport, f"AUTH {mechanism}")
    assert reply.startswith("234 ")
    expected = "P" if mechanism.upper() in ("SSL", "TLS-P") else "C"
    assert proto.prot == expected


def test_auth_unknown_mechanism_and_second_auth(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    [reply] = send(proto, transport, "AUTH KERBEROS")
    assert reply.startswith("504 ")
    send(proto, transport, "AUTH TLS")
    [again] = send(proto, transport, "AUTH TLS")
    assert again.startswith("503 ")


def test_tls_commands_after_auth(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    send(proto, transport, "AUTH TLS")
    replies = send(proto, transport, "PROT P", "PBSZ 0", "PROT S", "PROT E",
                   "PROT X", "PROT P", "CCC")
    assert [r[:3] for r in replies] == ["503", "200", "536", "536", "504", "200", "534"]
    assert proto.prot == "P"


def test_prot_c_transfer_refused_with_521(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    send(proto, transport, "AUTH TLS")
    send(proto, transport, "USER alice", "PASS right", "PBSZ 0", "PROT C")
    for command in ("LIST", "NLST", "RETR x", "STOR y"):
        [reply] = send(proto, transport, command)
        assert reply.startswith("521 ") and "PROT P" in reply


def test_rein_keeps_tls_and_logs_out(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    send(proto, transport, "AUTH TLS")
    send(proto, transport, "USER alice", "PASS right", "PBSZ 0", "PROT P")
    [reply] = send(proto, transport, "REIN")
    assert reply.startswith("220 ")
    assert proto.secure and proto.account is None and proto.prot == "C"
    [refused] = send(proto, transport, "PWD")
    assert refused.startswith("530 ")


def test_locked_account_is_told_only_with_right_password(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.store.lock("alice", "password sent unencrypted from 192.0.2.9")
    proto, transport, _ = connect(server)
    send(proto, transport, "AUTH TLS")
    wrong = send(proto, transport, "USER alice", "PASS nope")
    assert wrong[-1] == "530 Login incorrect."
    right = send(proto, transport, "USER alice", "PASS right")
    assert right[-1].startswith("530 ") and "locked" in right[-1]
    assert "192.0.2.9" in right[-1]


# -- cross-protocol ---------------------------------------------------------


@pytest.mark.parametrize("line", ["GET / HTTP/1.1", "POST /login HTTP/1.1",
                                  "EHLO attacker", "Host: victim"])
def test_cross_protocol_closes_without_reply(tmp_path: Path, line: str) -> None:
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    replies = send(proto, transport, line, "USER alice")
    assert replies == []
    assert transport.disconnecting
    assert server.audit.named("ftp.cross_protocol")


# -- other modes ----------------------------------------------------------


def test_implicit_only_plain_port_says_where_and_closes(tmp_path: Path) -> None:
    server = make_server(tmp_path, ftp_security="implicit-only", ftps="tcp:9990")
    proto, transport, _ = connect(server)
    [greeting] = transport.lines()
    assert greeting.startswith("421 ") and "9990" in greeting
    assert transport.disconnecting
    proto.dataReceived(b"USER alice\r\nPASS right\r\n")
    assert transport.lines() == [greeting]
    assert not server.store.get("alice").locked


def test_implicit_only_has_no_auth(tmp_path: Path) -> None:
    server = make_server(tmp_path, ftp_security="implicit-only")
    proto, transport, _ = connect(server, implicit=True)
    proto.handshakeCompleted()
    replies = send(proto, transport, "AUTH TLS", "FEAT")
    assert replies[0].startswith("503 ")
    assert " AUTH TLS" not in replies


def test_implicit_greets_only_after_handshake(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path), implicit=True)
    assert transport.value() == b""
    proto.handshakeCompleted()
    [greeting] = transport.lines()
    assert greeting.startswith("220 ")
    assert proto.prot == "P" and proto.secure


def test_allow_plain_logs_in_without_tls(tmp_path: Path) -> None:
    server = make_server(tmp_path, ftp_security="allow-plain")
    proto, transport, _ = connect(server)
    replies = send(proto, transport, "USER alice", "PASS right")
    assert [r[:3] for r in replies] == ["331", "230"]
    assert not server.store.get("alice").locked
    feat = send(proto, transport, "FEAT")
    assert " AUTH TLS" in feat


def test_idle_timeout_closes(tmp_path: Path) -> None:
    server = make_server(tmp_path, idle_timeout=30.0)
    proto, transport, reactor = connect(server)
    reactor.advance(29)
    assert not transport.disconnecting
    reactor.advance(2)
    assert transport.disconnecting
    assert transport.lines()[-1].startswith("421 ")


def test_overlong_line_closes(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    transport.clear()
    proto.dataReceived(b"A" * 20000)
    assert transport.lines()[0].startswith("500 ")
    assert transport.disconnecting


def test_unknown_command_gets_502(tmp_path: Path) -> None:
    proto, transport, _ = connect(make_server(tmp_path))
    send(proto, transport, "AUTH TLS")
    send(proto, transport, "USER alice", "PASS right")
    [reply] = send(proto, transport, "XYZZY")
    assert reply.startswith("502 ")


# -- real sockets ----------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True])
@pytest_twisted.ensureDeferred
async def test_control_socket_has_nagle_off(tmp_path: Path, implicit: bool) -> None:
    """
    Replies go out at once: with Nagle's algorithm a reply written while the
    previous one waits for the client's delayed ACK is held back for up to
    40 ms, which added that much to every transfer's 226.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import deferLater
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from rumpus_secure.ftp.factory import FTPFactories
    from rumpus_secure.tls import TLSContextSource, ensure_certificate

    server = make_server(tmp_path)
    factories = FTPFactories(server, reactor)
    factory = factories.implicit() if implicit else factories.plain()
    built: list[Any] = []
    build = factory.buildProtocol
    factory.buildProtocol = lambda addr: built.append(build(addr)) or built[-1]  # type: ignore
    if implicit:
        info = ensure_certificate(tmp_path / "tls", "localhost", None, None)
        contexts = TLSContextSource(info.cert_path, info.key_path).context_factory([b"ftp"])
        factory = TLSMemoryBIOFactory(contexts, False, factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
    try:
        for _ in range(100):
            if built and built[0].transport is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        tcp = built[0].transport
        if implicit:
            tcp = tcp.transport  # under the TLS layer
        handle = tcp.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.transport.abortConnection()
        built[0].transport.abortConnection()
        await port.stopListening()


def test_the_control_protocol_hears_of_completed_handshakes() -> None:
    """
    The implicit FTPS greeting is sent from handshakeCompleted, which
    Twisted's TLS layer calls only on an IHandshakeListener (a decorator
    once slipped onto a helper function above the class: no greeting).
    """
    from twisted.internet.interfaces import IHandshakeListener

    from rumpus_secure.ftp.control import ControlProtocol
    assert IHandshakeListener.implementedBy(ControlProtocol)
