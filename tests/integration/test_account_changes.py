"""
Account changes made with the admin command while the server runs reach
the FTPS sessions that are already open (issue #11, part 2).

Each test has a second session, of another account, from the same address
(127.0.0.1), open in the same window, that must carry on untouched.
"""

from __future__ import annotations

import ftplib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.integration.clients import RawControl, ReusingFTP_TLS, explicit_ftps, retrieve
from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess, subprocess_env

pytestmark = pytest.mark.integration

BIG = 256 * 1024 * 1024  # sparse: never read completely within the test


@contextmanager
def session(server: ServerProcess, user: User, password: str | None = None
            ) -> Iterator[ReusingFTP_TLS]:
    ftp = explicit_ftps(server.ftp_port, cafile=server.cert_path)
    try:
        ftp.auth()
        assert ftp.login(user.name, password or user.password).startswith("230")
        ftp.prot_p()
        yield ftp
    finally:
        ftp.close()


def ended(server: ServerProcess, name: str) -> list[dict]:
    events = [json.loads(line) for line in
              server.audit_path.read_text("utf-8").splitlines() if line.strip()]
    return [e for e in events if e["event"] == "ftp.session_ended" and e["account"] == name]


def expect_421(ftp: ftplib.FTP, command: str) -> str:
    with pytest.raises(ftplib.error_temp) as e:
        ftp.sendcmd(command)
    reply = str(e.value)
    assert reply.startswith("421 Session ended: "), reply
    return reply


def test_lock_aborts_a_running_download(server: ServerProcess,
                                        make_user: UserFactory) -> None:
    victim, other = make_user("lockdl"), make_user("bystander")
    with open(victim.home / "big.bin", "wb") as f:
        f.truncate(BIG)
    (other.home / "small.bin").write_bytes(b"s" * 300_000)
    with session(server, victim) as ftp, session(server, other) as calm:
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        got = len(conn.recv(65536))
        started = time.monotonic()
        server.cli("user", "lock", victim.name, "--reason", "laptop stolen")
        # Keep reading: the server must cut the data connection.
        conn.settimeout(10)
        try:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except (OSError, ssl.SSLError):
            pass
        cut_after = time.monotonic() - started
        conn.close()
        assert got < BIG
        with pytest.raises(ftplib.error_temp) as aborted:
            ftp.voidresp()
        assert str(aborted.value).startswith("426 Transfer aborted after ")
        assert "this account was locked (laptop stolen)" in str(aborted.value)
        line = ftp.getline()
        assert line == "421 Session ended: this account was locked (laptop stolen)."
        # The other account, same address, same moment: untouched.
        assert calm.voidcmd("NOOP").startswith("200")
        assert retrieve(calm, "small.bin") == b"s" * 300_000
    [event] = ended(server, victim.name)
    assert event["reason"] == "lock" and event["command"] == "RETR"
    assert event["detail"] == "laptop stolen" and event["bytes"] < BIG
    assert ended(server, other.name) == []
    assert cut_after < 5, cut_after


def test_idle_session_hears_of_a_lock_within_seconds(server: ServerProcess,
                                                     make_user: UserFactory) -> None:
    victim, other = make_user("lockidle"), make_user("bystander")
    with session(server, victim) as ftp, session(server, other) as calm:
        server.cli("user", "lock", victim.name, "--reason", "idle check")
        locked = time.monotonic()
        ftp.sock.settimeout(5)
        line = ftp.getline()  # nothing sent: the server pushes it
        assert line == "421 Session ended: this account was locked (idle check)."
        assert time.monotonic() - locked < 3
        assert ftp.sock.recv(1) == b""  # and closes
        assert calm.voidcmd("NOOP").startswith("200")


def test_quarantine_ends_the_accounts_open_sessions(server: ServerProcess,
                                                    make_user: UserFactory) -> None:
    """
    The password leaks over cleartext FTP while the owner (or a thief) is
    logged in over FTPS: the quarantine ends that session too.
    """
    victim, other = make_user("leaked"), make_user("bystander")
    with session(server, victim) as ftp, session(server, other) as calm:
        with RawControl(server.ftp_port) as leak:
            leak.reply()
            leak.send(f"USER {victim.name}\r\nPASS {victim.password}\r\n")
            assert leak.reply()[0].startswith("530 ")
        ftp.sock.settimeout(10)
        line = ftp.getline()  # pushed: the session sent nothing
        assert line.startswith("421 Session ended: this account was locked (password "
                               "sent unencrypted from 127.0.0.1 at "), line
        assert calm.voidcmd("NOOP").startswith("200")
    [event] = ended(server, victim.name)
    assert event["reason"] == "lock" and "unencrypted" in event["detail"]


def test_delete_ends_the_session_at_its_next_command(server: ServerProcess,
                                                      make_user: UserFactory) -> None:
    victim, other = make_user("deleted"), make_user("bystander")
    with session(server, victim) as ftp, session(server, other) as calm:
        server.cli("user", "del", victim.name)
        # At once, before the timer could have told it.
        assert expect_421(ftp, "PWD") == "421 Session ended: this account was deleted."
        assert calm.pwd() == "/"
    [event] = ended(server, victim.name)
    assert event["reason"] == "delete"


def test_new_password_ends_the_accounts_other_sessions(server: ServerProcess,
                                                        make_user: UserFactory) -> None:
    victim, other = make_user("passwd"), make_user("bystander")
    with session(server, victim) as first, session(server, victim) as second, \
            session(server, other) as calm:
        server.cli("user", "passwd", victim.name, "--password-stdin", input="Fresh-passw0rd-after-reset\n")
        for ftp in (first, second):
            assert "the password of this account was changed" in expect_421(ftp, "NOOP")
        assert calm.voidcmd("NOOP").startswith("200")
        with session(server, victim, password="Fresh-passw0rd-after-reset") as again:
            time.sleep(1.5)  # a timer read passes: the new session is not ended
            assert again.voidcmd("NOOP").startswith("200")
    assert [e["reason"] for e in ended(server, victim.name)] == ["password", "password"]


def test_permission_change_applies_to_the_next_command(server: ServerProcess,
                                                        make_user: UserFactory) -> None:
    victim, other = make_user("perms"), make_user("bystander")
    (victim.home / "f.txt").write_bytes(b"before")
    (other.home / "f.txt").write_bytes(b"other")
    with session(server, victim) as ftp, session(server, other) as calm:
        assert retrieve(ftp, "f.txt") == b"before"
        # No admin subcommand changes permissions yet: another process
        # writes the same store, as the admin command would.
        script = ("import sys; from pathlib import Path; "
                  "from rumpus_secure.accounts.store import SQLiteAccountStore as S; "
                  "S.in_data_dir(Path(sys.argv[1]), Path(sys.argv[2]))"
                  ".set_perms(sys.argv[3], ['list'])")
        subprocess.run([sys.executable, "-c", script, str(server.data_dir),
                        str(server.home(victim.name).parent), victim.name],
                       check=True, env=subprocess_env(), timeout=30)
        with pytest.raises(ftplib.error_perm) as refused:
            retrieve(ftp, "f.txt")
        assert str(refused.value).startswith("550 ")
        assert any("f.txt" in line for line in ftp.nlst())  # still logged in
        assert retrieve(calm, "f.txt") == b"other"

