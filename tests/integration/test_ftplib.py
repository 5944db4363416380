"""
The stdlib client: explicit and implicit FTPS, and cleartext logins refused.
"""

from __future__ import annotations

import ftplib
import json
import os
import time

import pytest

from tests.integration.clients import (
    RawControl,
    explicit_ftps,
    implicit_ftps,
    retrieve,
    sha256,
)
from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


def _wait_locked(server: ServerProcess, name: str, limit: float = 10.0) -> str:
    deadline = time.monotonic() + limit
    while True:
        reason = server.locked_reason(name)
        if reason is not None or time.monotonic() > deadline:
            assert reason is not None, f"{name} not locked after {limit}s"
            return reason
        time.sleep(0.1)


def _audit_events(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in
            server.audit_path.read_text("utf-8").splitlines() if line.strip()]


def test_explicit_ftps_round_trip(server: ServerProcess, user: User) -> None:
    """
    AUTH TLS, login, PROT P, STOR, LIST, RETR: the bytes on disk and the
    bytes read back are those sent.
    """
    content = os.urandom(300_000) + b"\r\n\n\x00end"
    ftp = explicit_ftps(server.ftp_port, cafile=server.cert_path)
    try:
        assert ftp.auth().startswith("234")
        assert ftp.login(user.name, user.password).startswith("230")
        assert ftp.prot_p().startswith("200")
        import io
        reply = ftp.storbinary("STOR explicit.bin", io.BytesIO(content))
        assert reply.startswith("226"), reply
        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        assert any(line.endswith(" explicit.bin") for line in listing), listing
        assert any(str(len(content)) in line for line in listing if "explicit.bin" in line)
        downloaded = retrieve(ftp, "explicit.bin")
        assert ftp.quit().startswith("221")
    finally:
        ftp.close()
    on_disk = (user.home / "explicit.bin").read_bytes()
    assert sha256(downloaded) == sha256(content) == sha256(on_disk)


def test_implicit_ftps_round_trip(server: ServerProcess, user: User) -> None:
    import io
    content = os.urandom(50_000)
    ftp = implicit_ftps(server.ftps_port, cafile=server.cert_path)
    try:
        assert ftp.welcome.startswith("220")
        assert ftp.login(user.name, user.password).startswith("230")
        assert ftp.prot_p().startswith("200")
        assert ftp.storbinary("STOR implicit.bin", io.BytesIO(content)).startswith("226")
        assert "implicit.bin" in ftp.nlst()
        downloaded = retrieve(ftp, "implicit.bin")
        ftp.quit()
    finally:
        ftp.close()
    assert sha256(downloaded) == sha256(content)
    assert (user.home / "implicit.bin").read_bytes() == content


def test_plain_login_refused_without_locking(server: ServerProcess,
                                             make_user: UserFactory) -> None:
    """
    ftplib.FTP without TLS: USER gets 530 and the password is never sent,
    so nothing is locked.
    """
    victim = make_user("plain")
    ftp = ftplib.FTP()
    try:
        ftp.connect("127.0.0.1", server.ftp_port, timeout=10)
        with pytest.raises(ftplib.error_perm) as e:
            ftp.login(victim.name, victim.password)
        assert str(e.value).startswith("530 ")
        assert "TLS" in str(e.value)
    finally:
        ftp.close()
    assert server.locked_reason(victim.name) is None


def test_pipelined_wrong_password_does_not_lock(server: ServerProcess,
                                                make_user: UserFactory) -> None:
    victim = make_user("wrongpw")
    with RawControl(server.ftp_port) as c:
        assert c.reply()[0].startswith("220 ")
        c.send(f"USER {victim.name}\r\nPASS not-{victim.password}\r\n")
        first = c.reply()[0]
        second = c.reply()[0]
        assert first.startswith("530 ") and second.startswith("530 ")
        assert c.read_until_closed() == b""
    # The check runs after the connection closed: wait for its verdict.
    deadline = time.monotonic() + 10
    while True:
        checked = [e for e in _audit_events(server)
                   if e["event"].startswith("ftp.cleartext_pass")
                   and e.get("account") == victim.name]
        if checked:
            break
        assert time.monotonic() < deadline, "the cleartext PASS was never checked"
        time.sleep(0.05)
    assert [e.get("outcome") for e in checked] == ["not-the-password"]
    assert server.locked_reason(victim.name) is None
    assert f"not-{victim.password}" not in server.audit_path.read_text("utf-8")


def test_pipelined_real_password_locks_account(server: ServerProcess,
                                               make_user: UserFactory) -> None:
    """
    A real password sent in the clear quarantines the account; the audit
    log says so and never holds the password; a later TLS login is refused
    with the reason.
    """
    victim = make_user("exposed")
    with RawControl(server.ftp_port) as c:
        c.reply()
        c.send(f"USER {victim.name}\r\nPASS {victim.password}\r\n")
        assert c.reply()[0].startswith("530 ")
        assert c.reply()[0].startswith("530 ")
    reason = _wait_locked(server, victim.name)
    assert "unencrypted" in reason and "127.0.0.1" in reason
    events = _audit_events(server)
    exposed = [e for e in events if e["event"] == "account.password_exposed"
               and e.get("account") == victim.name]
    assert len(exposed) == 1, exposed
    assert victim.password not in server.audit_path.read_text("utf-8")
    assert victim.password not in server.log_text()

    ftp = explicit_ftps(server.ftp_port)
    try:
        ftp.auth()
        with pytest.raises(ftplib.error_perm) as e:
            ftp.login(victim.name, victim.password)
        assert str(e.value).startswith("530 ") and "locked" in str(e.value)
    finally:
        ftp.close()
