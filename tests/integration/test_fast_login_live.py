"""
The fast path on a real server (issue #18): while the accounts file is
unchanged, repeat logins and session commands take no thread and read no
database; the admin command (another process) changing the account between
two commands is still obeyed by the very next command.  A second account's
session, same address, carries on in the same window.
"""

from __future__ import annotations

import ftplib

import pytest

from tests.integration.clients import explicit_ftps
from tests.integration.conftest import UserFactory
from tests.integration.test_account_changes import expect_421, session
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


def test_admin_change_between_two_commands_is_obeyed_on_the_fast_path(
        server: ServerProcess, make_user: UserFactory) -> None:
    assert "account changes: file events on" in server.log_text()
    victim, other = make_user("fastpath"), make_user("fastcalm")
    for _ in range(3):  # warm: verifier cache and snapshot
        with session(server, victim) as ftp:
            ftp.voidcmd("NOOP")
    with session(server, victim) as ftp, session(server, other) as calm:
        for _ in range(5):
            assert ftp.voidcmd("NOOP").startswith("200")
            assert calm.voidcmd("NOOP").startswith("200")
        server.cli("user", "lock", victim.name, "--reason", "between two commands")
        assert expect_421(ftp, "PWD") == ("421 Session ended: this account was locked "
                                          "(between two commands).")
        assert calm.voidcmd("NOOP").startswith("200")
    # The warm repeat login is refused at once too, the other goes on.
    ftp = explicit_ftps(server.ftp_port, cafile=server.cert_path)
    try:
        ftp.auth()
        with pytest.raises(ftplib.error_perm) as refused:
            ftp.login(victim.name, victim.password)
        assert "locked (between two commands)" in str(refused.value)
    finally:
        ftp.close()
    with session(server, other) as calm:
        assert calm.voidcmd("NOOP").startswith("200")
    server.cli("user", "passwd", victim.name, "--password-stdin",
               input="Fresh-passw0rd-fast-path\n")
    with session(server, victim, "Fresh-passw0rd-fast-path") as ftp:
        assert ftp.voidcmd("NOOP").startswith("200")
    ftp = explicit_ftps(server.ftp_port, cafile=server.cert_path)
    try:
        ftp.auth()
        with pytest.raises(ftplib.error_perm):
            ftp.login(victim.name, victim.password)  # the old one, cached before
    finally:
        ftp.close()
