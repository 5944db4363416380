"""
First run, restart, and account changes made while the server runs.
"""

from __future__ import annotations

import ftplib
from pathlib import Path

import pytest

from tests.integration.clients import explicit_ftps
from tests.integration.conftest import UserFactory
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


def _login(server: ServerProcess, name: str, password: str) -> str:
    ftp = explicit_ftps(server.ftp_port)
    try:
        ftp.auth()
        return ftp.login(name, password)
    finally:
        ftp.close()


def test_first_run_and_restart(tmp_path: Path) -> None:
    """
    The first run creates admin and prints its password once; a restart on
    the same data directory prints no new password and keeps the certificate.
    """
    server = ServerProcess(tmp_path, http=None, https=None, ftps=None)
    with server:
        password = server.admin_password
        assert password is not None, server.log_text()
        assert server.log_text().count(password) == 1
        assert "admin" in server.user_list()
        cert = server.cert_path.read_bytes()
        assert _login(server, "admin", password).startswith("230")
    assert server.process is None
    with server:
        assert "created account" not in server.log_text()
        assert server.admin_password is None
        assert server.cert_path.read_bytes() == cert
        assert _login(server, "admin", password).startswith("230")
    assert password not in (server.data_dir / "audit.log").read_text("utf-8")


def test_user_added_while_running_logs_in(server: ServerProcess,
                                          make_user: UserFactory) -> None:
    new = make_user("fresh")
    assert _login(server, new.name, new.password).startswith("230")


def test_passwd_takes_effect_on_next_login(server: ServerProcess,
                                           make_user: UserFactory) -> None:
    account = make_user("passwd")
    assert _login(server, account.name, account.password).startswith("230")
    server.cli("user", "passwd", account.name, "--password-stdin",
               input="a brand new one\n")
    with pytest.raises(ftplib.error_perm, match=r"^530 Login incorrect"):
        _login(server, account.name, account.password)
    assert _login(server, account.name, "a brand new one").startswith("230")


def test_lock_refuses_next_login_with_reason(server: ServerProcess,
                                             make_user: UserFactory) -> None:
    account = make_user("lock")
    server.cli("user", "lock", account.name, "--reason", "left the company")
    with pytest.raises(ftplib.error_perm) as e:
        _login(server, account.name, account.password)
    assert str(e.value).startswith("530 ")
    assert "left the company" in str(e.value)
    server.cli("user", "unlock", account.name)
    assert _login(server, account.name, account.password).startswith("230")
