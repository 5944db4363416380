"""
Two-factor accounts on FTP, with Python's ftplib over explicit FTPS against
the real server (``twistd -n rumpus-secure``) on loopback.

An account that requires two-factor login is refused with its main password
(a 530 that says to use an app password); an app password works over FTPS;
revoking it ends the open session, while another account's session, open at
the same time from the same address, carries on.
"""

from __future__ import annotations

import ftplib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from rumpus_secure.accounts import app_passwords
from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.accounts.store import SQLiteAccountStore

server_process = pytest.importorskip("tests.server_process")

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    process = server_process.ServerProcess(tmp_path_factory.mktemp("ftp-2fa"))
    with process:
        yield process
    assert "Traceback" not in process.log_text(), process.log_text()


def connect(server: Any) -> ftplib.FTP_TLS:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = ftplib.FTP_TLS(context=context, timeout=TIMEOUT)
    ftp.connect("127.0.0.1", server.ftp_port)
    ftp.auth()
    return ftp


def test_main_password_refused_app_password_works_revocation_ends_it(server):
    server.cli("user", "add", "carol", "--require-2fa", "--password-stdin",
               input="carol main password 1\n")
    server.add_user("dave", "dave main password 1")
    refused = connect(server)
    with pytest.raises(ftplib.error_perm) as reply:
        refused.login("carol", "carol main password 1")
    text = str(reply.value)
    assert text.startswith("530") and "two-factor" in text and "app password" in text
    refused.close()

    store = SQLiteAccountStore.in_data_dir(server.data_dir, server.data_dir / "files")
    new = app_passwords.generate()
    store.add_app_password("carol", new.ident, "ftplib", hash_password(new.password))

    carol = connect(server)
    carol.login("carol", new.password)
    carol.prot_p()
    assert carol.pwd() == "/"
    dave = connect(server)  # same address, another account, meanwhile
    dave.login("dave", "dave main password 1")
    assert dave.pwd() == "/"
    # Another account's app password is no way into carol's.
    other = app_passwords.generate()
    store.add_app_password("dave", other.ident, "x", hash_password(other.password))
    stranger = connect(server)
    with pytest.raises(ftplib.error_perm):
        stranger.login("carol", other.password)
    stranger.close()

    assert store.revoke_app_password("carol", new.ident)
    with pytest.raises((ftplib.error_temp, ftplib.error_perm, EOFError, OSError)):
        carol.pwd()
    assert dave.pwd() == "/"  # dave's session is untouched
    again = connect(server)
    with pytest.raises(ftplib.error_perm):
        again.login("carol", new.password)
    again.close()
    dave.quit()
