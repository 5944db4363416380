"""
Issue #11: a data connection must resume I{its own} control connection's
TLS session.

Every test has a victim and a thief at the same address (127.0.0.1), each on
a control connection of its own.  The thief either logged in as another
account or only did C{AUTH TLS}; it connects to the victim's passive port
and resumes its own, perfectly valid, session there.  Under TLS 1.3
(tickets), TLS 1.2 with tickets and TLS 1.2 with session ids, for RETR and
STOR, explicit and implicit: the thief gets nothing, and the victim's
transfer completes with the victim's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.clients import RawControl, client_context
from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration

TLS_MODES = ["1.3", "1.2-tickets", "1.2-session-ids"]


@pytest.fixture(scope="module")
def short_connect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("short-connect"),
                           data_connect_timeout="1", safe_list="127.0.0.0/8")
    with server:
        yield server


def _context(mode: str) -> ssl.SSLContext:
    context = client_context()
    version = ssl.TLSVersion.TLSv1_3 if mode == "1.3" else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    if mode == "1.2-session-ids":
        context.options |= ssl.OP_NO_TICKET
    return context


class Control(RawControl):
    """
    A control connection over TLS (explicit or implicit) with one TLS mode.

    @param user: log in, PBSZ 0 and PROT P; L{None}: only TLS (the thief
        that did nothing but C{AUTH TLS}).
    """

    def __init__(self, port: int, mode: str, user: User | None,
                 implicit: bool = False) -> None:
        self.context = _context(mode)
        self.buffer = b""
        raw = socket.create_connection(("127.0.0.1", port), 10)
        if implicit:
            self.sock = self.context.wrap_socket(raw)
            assert self.reply()[0].startswith("220")
        else:
            self.sock = raw
            assert self.reply()[0].startswith("220")
            assert self.command("AUTH TLS")[0].startswith("234")
            self.sock = self.context.wrap_socket(raw)
        if user is not None:
            assert self.command(f"USER {user.name}")[0].startswith("331")
            assert self.command(f"PASS {user.password}")[0].startswith("230")
            assert self.command("PBSZ 0")[0].startswith("200")
            assert self.command("PROT P")[0].startswith("200")
        else:
            # Any reply: reading it takes in the TLS 1.3 tickets.
            self.command("NOOP")
        assert self.sock.version() == ("TLSv1.3" if mode == "1.3" else "TLSv1.2")
        self.session = self.sock.session
        assert self.session is not None

    def passive_port(self) -> int:
        [reply] = self.command("EPSV")
        assert reply.startswith("229 "), reply
        return int(reply.split("|||")[1].split("|")[0])

    def data(self, port: int) -> ssl.SSLSocket:
        """
        A data connection resuming this control connection's session.
        """
        raw = socket.create_connection(("127.0.0.1", port), 10)
        conn = self.context.wrap_socket(raw, session=self.session,
                                        do_handshake_on_connect=False)
        conn.settimeout(10)
        conn.do_handshake()
        assert conn.session_reused
        return conn


def _steal(thief: Control, port: int, upload: bytes | None = None) -> tuple[bool, bytes]:
    """
    Connect to someone else's passive port resuming the thief's own session.

    Returns whether the handshake completed and what was received.
    """
    raw = socket.create_connection(("127.0.0.1", port), 10)
    conn = thief.context.wrap_socket(raw, session=thief.session,
                                     do_handshake_on_connect=False)
    conn.settimeout(10)
    handshaken = False
    received = b""
    try:
        conn.do_handshake()
        handshaken = True
        if upload is not None:
            conn.sendall(upload)
            conn.unwrap()
        while chunk := conn.recv(65536):
            received += chunk
    except (ssl.SSLError, OSError):
        pass
    conn.close()
    return handshaken, received


def _read_all(conn: ssl.SSLSocket) -> bytes:
    chunks = []
    while chunk := conn.recv(1 << 20):
        chunks.append(chunk)
    conn.close()
    return b"".join(chunks)


def _thief(server: ServerProcess, make_user: UserFactory | None, kind: str, mode: str,
           port: int, implicit: bool = False) -> Control:
    """
    A thief of one kind, whose own session resumes on its own data port.
    """
    if kind == "auth-only":
        return Control(port, mode, None, implicit)
    assert make_user is not None
    thief = Control(port, mode, make_user("thief"), implicit)
    # Its session is good: its own data connections resume it.
    own = thief.data(thief.passive_port())
    thief.send("LIST\r\n")
    assert thief.reply()[0].startswith("150")
    _read_all(own)
    assert thief.reply()[0].startswith("226")
    return thief


def _refusals(server: ServerProcess, account: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in server.audit_path.read_text().splitlines()]
    return [e for e in events
            if e.get("event") == "ftp.data_refused" and e.get("account") == account]


@pytest.mark.parametrize("mode", TLS_MODES)
@pytest.mark.parametrize("kind", ["other-account", "auth-only"])
def test_thief_cannot_take_a_download(server: ServerProcess, make_user: UserFactory,
                                      mode: str, kind: str) -> None:
    victim_user = make_user("victim")
    secret = os.urandom(300_000)
    (victim_user.home / "secret.bin").write_bytes(secret)
    with Control(server.ftp_port, mode, victim_user) as victim, \
            _thief(server, make_user, kind, mode, server.ftp_port) as thief:
        port = victim.passive_port()
        # Before the victim's RETR ...
        assert _steal(thief, port) == (False, b"")
        victim.send("RETR secret.bin\r\n")
        assert victim.reply()[0].startswith("150")
        # ... and between the 150 and the victim's own connection.
        assert _steal(thief, port) == (False, b"")
        assert _read_all(victim.data(port)) == secret
        assert victim.reply()[0].startswith("226")
        assert victim.command("NOOP")[0].startswith("200")
    refusals = _refusals(server, victim_user.name)
    assert len(refusals) == 2
    assert all(r["reason"] == "foreign-session" and r["data_client"] == "127.0.0.1"
               for r in refusals)


@pytest.mark.parametrize("mode", TLS_MODES)
@pytest.mark.parametrize("kind", ["other-account", "auth-only"])
def test_thief_cannot_write_an_upload(server: ServerProcess, make_user: UserFactory,
                                      mode: str, kind: str) -> None:
    victim_user = make_user("victim")
    original = b"the victim's file\n" * 1000
    (victim_user.home / "doc.txt").write_bytes(original)
    upload = os.urandom(200_000)
    with Control(server.ftp_port, mode, victim_user) as victim, \
            _thief(server, make_user, kind, mode, server.ftp_port) as thief:
        port = victim.passive_port()
        assert _steal(thief, port, b"EVIL " * 100) == (False, b"")
        assert (victim_user.home / "doc.txt").read_bytes() == original
        victim.send("STOR doc.txt\r\n")
        assert victim.reply()[0].startswith("150")
        assert _steal(thief, port, b"EVIL " * 100) == (False, b"")
        conn = victim.data(port)
        conn.sendall(upload)
        conn.unwrap().close()
        assert victim.reply()[0].startswith("226")
    assert (victim_user.home / "doc.txt").read_bytes() == upload
    assert [r["reason"] for r in _refusals(server, victim_user.name)] == [
        "foreign-session", "foreign-session"]


@pytest.mark.parametrize("mode", ["1.3", "1.2-tickets"])
def test_implicit_thief_cannot_take_a_download(implicit_server: ServerProcess,
                                               mode: str) -> None:
    server = implicit_server
    password = f"implicit-victim-pw-{mode}"
    name = "ivictim" + mode.replace(".", "").replace("-", "")
    server.add_user(name, password)
    secret = os.urandom(100_000)
    (server.home(name) / "secret.bin").write_bytes(secret)
    victim_user = User(name, password, server.home(name))
    with Control(server.ftps_port, mode, victim_user, implicit=True) as victim, \
            Control(server.ftps_port, mode, None, implicit=True) as thief:
        port = victim.passive_port()
        victim.send("RETR secret.bin\r\n")
        assert victim.reply()[0].startswith("150")
        assert _steal(thief, port) == (False, b"")
        assert _read_all(victim.data(port)) == secret
        assert victim.reply()[0].startswith("226")
    assert [r["reason"] for r in _refusals(server, name)] == ["foreign-session"]


def test_stalled_impostors_do_not_hold_the_port(server: ServerProcess,
                                                make_user: UserFactory) -> None:
    """
    Connections from the victim's address that never handshake (more than
    are vetted at once) do not keep the rightful one out.
    """
    victim_user = make_user("victim")
    secret = os.urandom(50_000)
    (victim_user.home / "secret.bin").write_bytes(secret)
    with Control(server.ftp_port, "1.3", victim_user) as victim:
        port = victim.passive_port()
        stalled = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(12)]
        victim.send("RETR secret.bin\r\n")
        assert victim.reply()[0].startswith("150")
        assert _read_all(victim.data(port)) == secret
        assert victim.reply()[0].startswith("226")
        for sock in stalled:
            sock.close()


def test_thief_alone_ends_in_522_after_the_connect_timeout(
        short_connect: ServerProcess) -> None:
    """
    The thief alone on the port (the victim never connects): the victim
    learns at the end of the connect timeout why nothing came.
    """
    server = short_connect
    server.add_user("lonevictim", "lone-victim-pw-1")
    (server.home("lonevictim") / "f.bin").write_bytes(b"x" * 1000)
    victim_user = User("lonevictim", "lone-victim-pw-1", server.home("lonevictim"))
    with Control(server.ftp_port, "1.3", victim_user) as victim, \
            Control(server.ftp_port, "1.3", None) as thief:
        port = victim.passive_port()
        victim.send("RETR f.bin\r\n")
        assert victim.reply()[0].startswith("150")
        assert _steal(thief, port) == (False, b"")
        [reply] = victim.reply()
        assert reply.startswith("522 ") and "session" in reply, reply
        assert victim.command("NOOP")[0].startswith("200")


def _fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("mode", TLS_MODES)
def test_data_connections_resume_across_a_certificate_reload(
        tmp_path: Path, mode: str) -> None:
    """
    Issue #18: one TLS context serves every control connection, and a
    reload replaces it.  A victim logged in before a certificate reload
    (SIGHUP) still gets its data connections after it, resuming its
    session on the context it was made on; a thief logged in after the
    reload, on the new context, at the same address, still gets nothing
    from the victim's port; new connections get the new certificate.
    """
    from rumpus_secure.audit import read_events
    from rumpus_secure.certificates import ensure_certificate

    (tmp_path / "server").mkdir()
    with ServerProcess(tmp_path / "server", safe_list="127.0.0.0/8",
                       cert_check_interval="0") as server:
        assert server.process is not None
        server.add_user("rvictim", "reload-victim-pw-1")
        server.add_user("rthief", "reload-thief-pw-1")
        secret = os.urandom(200_000)
        (server.home("rvictim") / "secret.bin").write_bytes(secret)
        victim_user = User("rvictim", "reload-victim-pw-1", server.home("rvictim"))
        thief_user = User("rthief", "reload-thief-pw-1", server.home("rthief"))
        with Control(server.ftp_port, mode, victim_user) as victim:
            old = _fingerprint(victim.sock)
            before = victim.data(victim.passive_port())
            victim.send("LIST\r\n")
            assert victim.reply()[0].startswith("150")
            _read_all(before)
            assert victim.reply()[0].startswith("226")

            new = ensure_certificate(tmp_path / "new", "localhost", None, None)
            for source, target in ((new.key_path, server.data_dir / "tls" / "key.pem"),
                                   (new.cert_path, server.cert_path)):
                aside = target.with_name(target.name + ".new")
                aside.write_bytes(source.read_bytes())
                os.replace(aside, target)
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not [e for e in read_events(server.audit_path)
                       if e["event"] == "tls.reload" and e["outcome"] == "ok"]:
                assert time.monotonic() < deadline, "no tls.reload"
                time.sleep(0.05)

            with Control(server.ftp_port, mode, thief_user) as thief:
                assert _fingerprint(thief.sock) != old
                # The thief's session is good on its own (new) context ...
                own = thief.data(thief.passive_port())
                thief.send("LIST\r\n")
                assert thief.reply()[0].startswith("150")
                _read_all(own)
                assert thief.reply()[0].startswith("226")
                for _ in range(2):  # ... the victim's on its old one.
                    port = victim.passive_port()
                    victim.send("RETR secret.bin\r\n")
                    assert victim.reply()[0].startswith("150")
                    assert _steal(thief, port) == (False, b"")
                    assert _read_all(victim.data(port)) == secret
                    assert victim.reply()[0].startswith("226")
            assert _fingerprint(victim.sock) == old
        assert [r["reason"] for r in _refusals(server, "rvictim")] == [
            "foreign-session", "foreign-session"]
    assert "Traceback" not in server.log_text(), server.log_text()
