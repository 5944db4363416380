"""
Issue #17 on a real HAProxy: three nodes behind one virtual address.

HAProxy on 127.0.0.2, nodes on 127.0.0.11-13 with their own passive ranges
over one shared folder (L{tests.haproxy_rig}).  Every client binds its own
source address (127.0.0.50 and up), so the nodes can only tell clients
apart by the PROXY header.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.haproxy_rig import VIRTUAL, Rig, client_address
from tests.integration.clients import ImplicitFTP_TLS, ReusingFTP_TLS, client_context

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Rig(tmp_path_factory.mktemp("haproxy"), nodes=3, options=dict(
        max_connections_per_ip=2, max_sessions_per_account=0,
        ban_threshold=3, login_failure_delay=0, login_cache_time=0,
    )) as rig:
        yield rig
        for server in rig.servers:
            assert "Traceback" not in server.all_logs(), server.all_logs()


@pytest.fixture(scope="module")
def accounts(rig: Rig) -> dict[str, str]:
    made = {}
    for name in ("alice", "bob", "carol"):
        password = secrets.token_urlsafe(12)
        rig.servers[0].add_user(name, password)
        made[name] = password
    return made


def _plain(source: str, rig: Rig) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=TIMEOUT, source_address=(source, 0))
    ftp.connect(VIRTUAL, rig.control)
    return ftp


def _tls(source: str, rig: Rig) -> ReusingFTP_TLS:
    ftp = ReusingFTP_TLS(context=client_context(rig.data_dir / "tls" / "cert.pem"),
                         timeout=TIMEOUT, source_address=(source, 0))
    ftp.connect(VIRTUAL, rig.control)
    return ftp


def _audit(rig: Rig) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            rig.audit_path.read_text("utf-8").splitlines() if line.strip()]


def test_transfers_through_the_proxy_see_the_real_client(
        rig: Rig, accounts: dict[str, str]) -> None:
    """
    Two clients at once, other addresses and accounts: explicit FTPS with
    PROT P (the data connection resumes the session through HAProxy), and
    the audit names each client's own address, never the proxy's.
    """
    results: dict[str, Any] = {}

    def session(source: str, name: str) -> None:
        content = os.urandom(200_000)
        ftp = _tls(source, rig)
        try:
            ftp.auth()
            ftp.login(name, accounts[name])
            ftp.prot_p()
            ftp.storbinary(f"STOR through-{name}.bin", io.BytesIO(content))
            chunks: list[bytes] = []
            ftp.retrbinary(f"RETR through-{name}.bin", chunks.append)
            results[name] = b"".join(chunks) == content
        finally:
            ftp.close()

    threads = [threading.Thread(target=session, args=(client_address(0), "alice")),
               threading.Thread(target=session, args=(client_address(1), "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"alice": True, "bob": True}
    events = _audit(rig)
    logins = {(e["account"], e["client"]) for e in events
              if e["event"] == "ftp.login" and e.get("outcome") == "ok"}
    assert ("alice", client_address(0)) in logins
    assert ("bob", client_address(1)) in logins
    transfers = [e for e in events if e.get("account") in ("alice", "bob")
                 and "through-" in str(e.get("path", ""))]
    assert transfers, events[-10:]
    assert {e["client"] for e in transfers} == {client_address(0), client_address(1)}
    assert not any(e.get("client") == VIRTUAL for e in events)


def test_sixty_addresses_none_refused_as_one(rig: Rig) -> None:
    """
    The guard allows 2 connections per address here: 60 clients at once,
    each from its own address, are all greeted (the bug: HAProxy's address
    was counted, and 20 of 60 got 421).
    """
    socks: list[socket.socket] = []
    greetings: list[bytes] = []
    try:
        for n in range(100, 160):
            sock = socket.create_connection((VIRTUAL, rig.control), TIMEOUT,
                                            source_address=(client_address(n), 0))
            socks.append(sock)
        for sock in socks:
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
            greetings.append(reply)
    finally:
        for sock in socks:
            sock.close()
    assert len(greetings) == 60
    refused = [g for g in greetings if not g.startswith(b"220")]
    assert refused == []


def test_ban_hits_the_client_not_the_proxy(rig: Rig, accounts: dict[str, str]) -> None:
    """
    Failed logins ban their own address; another client behind the same
    proxy still gets in (the bug: the ban was the proxy's, or a banned
    client got 220).
    """
    offender = client_address(170)
    for _ in range(3):
        ftp = _plain(offender, rig)
        try:
            with pytest.raises(ftplib.error_perm):
                ftp.login("carol", "wrong password!")
        except (EOFError, OSError, ftplib.error_temp):
            pass
        finally:
            ftp.close()
    deadline = time.monotonic() + 10
    while True:
        sock = socket.create_connection((VIRTUAL, rig.control), TIMEOUT,
                                        source_address=(offender, 0))
        try:
            greeting = sock.recv(1024)
        finally:
            sock.close()
        if greeting.startswith(b"421") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert greeting.startswith(b"421"), greeting
    other = _plain(client_address(171), rig)
    try:
        assert other.login("carol", accounts["carol"]).startswith("230")
    finally:
        other.close()


def test_data_connection_from_another_address_is_refused(
        rig: Rig, accounts: dict[str, str]) -> None:
    """
    A thief at another address connects to the announced passive port
    through the same proxy first: the node reads the PROXY header, refuses
    it and keeps the port for the rightful client.
    """
    owner, thief = client_address(180), client_address(181)
    content = os.urandom(50_000)
    (rig.root / "alice").mkdir(exist_ok=True)
    (rig.root / "alice" / "guarded.bin").write_bytes(content)
    ftp = _plain(owner, rig)
    try:
        ftp.login("alice", accounts["alice"])
        ftp.voidcmd("TYPE I")
        host, port = ftp.makepasv()
        assert host == VIRTUAL
        stolen = socket.create_connection((host, port), TIMEOUT,
                                          source_address=(thief, 0))
        try:
            assert stolen.recv(10) == b""
        except ConnectionResetError:
            pass
        finally:
            stolen.close()
        data = socket.create_connection((host, port), TIMEOUT, source_address=(owner, 0))
        ftp.sendcmd("RETR guarded.bin")
        received = b""
        while chunk := data.recv(65536):
            received += chunk
        data.close()
        assert ftp.voidresp().startswith("226")
        assert received == content
    finally:
        ftp.close()
    refused = [e for e in _audit(rig) if e["event"] == "ftp.data_peer_refused"
               and e.get("account") == "alice"]
    assert [e["data_client"] for e in refused] == [thief]
    assert refused[0]["client"] == owner


class _SourcedImplicit(ImplicitFTP_TLS):
    """
    Implicit FTPS from a source address of our choice.
    """

    def connect(self, host: str = "", port: int = 0, timeout: float = -999,
                source_address: Any = None) -> str:
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), self.timeout,
                                       source_address=self.source_address)
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def test_implicit_ftps_through_the_proxy(rig: Rig, accounts: dict[str, str]) -> None:
    """
    The first-byte sniffer sees the client's ClientHello, not the PROXY
    header in front of it; a plain client on that port still gets the
    plain answer that names the right port.
    """
    ftp = _SourcedImplicit(context=client_context(rig.data_dir / "tls" / "cert.pem"),
                           timeout=TIMEOUT, source_address=(client_address(200), 0))
    try:
        assert ftp.connect(VIRTUAL, rig.ports["ftps"]).startswith("220")
        assert ftp.login("alice", accounts["alice"]).startswith("230")
        ftp.prot_p()
        listing: list[str] = []
        ftp.retrlines("NLST", listing.append)
    finally:
        ftp.close()
    plain = socket.create_connection((VIRTUAL, rig.ports["ftps"]), TIMEOUT,
                                     source_address=(client_address(201), 0))
    try:
        plain.sendall(b"USER alice\r\n")
        answer = plain.recv(1024)
    finally:
        plain.close()
    assert answer.startswith(b"421") and str(rig.control).encode() in answer


def test_https_connection_limit_counts_the_client(rig: Rig) -> None:
    """
    The web channel counts connections per address in connectionMade: 40
    browsers at once behind the proxy, limit 2 per address, none gets 503.
    (The sniffer already builds the channel at the first byte after the
    header; this keeps the order of the layers honest.)
    """
    context = client_context(rig.data_dir / "tls" / "cert.pem")
    socks = []
    statuses = []
    try:
        for n in range(210, 250):
            raw = socket.create_connection((VIRTUAL, rig.ports["https"]), TIMEOUT,
                                           source_address=(client_address(n), 0))
            socks.append(context.wrap_socket(raw, server_hostname="localhost"))
        for sock in socks:
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n")
        for sock in socks:
            statuses.append(sock.recv(64).split(b"\r\n", 1)[0])
    finally:
        for sock in socks:
            sock.close()
    assert len(statuses) == 40
    assert [s for s in statuses if b" 503 " in s] == []
    assert all(s.startswith(b"HTTP/1.1 ") for s in statuses), statuses[:3]


def _login_somewhere(source: str, rig: Rig, name: str, password: str) -> ftplib.FTP:
    deadline = time.monotonic() + 15
    while True:
        try:
            ftp = _plain(source, rig)
            ftp.login(name, password)
            return ftp
        except (OSError, EOFError, ftplib.Error):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_node_killed_in_the_middle_of_a_download(
        rig: Rig, accounts: dict[str, str]) -> None:
    """
    The client's node dies (SIGKILL) half-way: the client logs in again
    through the same virtual address, lands on a survivor, resumes with
    REST, and the file is byte-identical.  Runs last in this module.
    """
    source = client_address(190)
    content = os.urandom(24 * 1024 * 1024)
    (rig.root / "bob").mkdir(exist_ok=True)
    (rig.root / "bob" / "big.bin").write_bytes(content)
    ftp = _login_somewhere(source, rig, "bob", accounts["bob"])
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    victim = rig.node_of_port(port)
    data = socket.create_connection((host, port), TIMEOUT, source_address=(source, 0))
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ftp.sendcmd("RETR big.bin")
    received = bytearray()
    while len(received) < 2 * 1024 * 1024:
        received += data.recv(65536)
    rig.kill(victim)
    try:
        while chunk := data.recv(65536):
            received += chunk
    except OSError:
        pass
    data.close()
    ftp.close()
    assert 0 < len(received) < len(content), "the download was not cut"

    again = _login_somewhere(source, rig, "bob", accounts["bob"])
    try:
        again.voidcmd("TYPE I")
        rest: list[bytes] = []
        host, port = again.makepasv()
        assert rig.node_of_port(port) != victim
        again.sendcmd(f"REST {len(received)}")
        data = socket.create_connection((host, port), TIMEOUT, source_address=(source, 0))
        again.sendcmd("RETR big.bin")
        while chunk := data.recv(1 << 20):
            rest.append(chunk)
        data.close()
        assert again.voidresp().startswith("226")
    finally:
        again.close()
    whole = bytes(received) + b"".join(rest)
    assert hashlib.sha256(whole).digest() == hashlib.sha256(content).digest()
