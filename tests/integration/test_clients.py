"""
Real client programs: curl, lftp and openssl s_client.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.clients import sha256
from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration

TIMEOUT = 30


def run(*argv: str, input: bytes | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), check=False, input=input, capture_output=True,
                          timeout=timeout, stdin=None if input is not None
                          else subprocess.DEVNULL)


# -- curl -----------------------------------------------------------------


@pytest.fixture
def curl() -> str:
    return require_tool("curl")


def test_curl_explicit_list_upload_download(curl: str, server: ServerProcess,
                                            make_user: UserFactory,
                                            tmp_path: Path) -> None:
    account = make_user("curl")
    content = os.urandom(70_000)
    source = tmp_path / "up.bin"
    source.write_bytes(content)
    base = f"ftp://127.0.0.1:{server.ftp_port}/"
    auth = f"{account.name}:{account.password}"
    up = run(curl, "-sS", "--ssl-reqd", "-k", "-u", auth, "-T", str(source),
             base + "curl.bin")
    assert up.returncode == 0, up.stderr
    assert (account.home / "curl.bin").read_bytes() == content
    listing = run(curl, "-sS", "--ssl-reqd", "-k", "-u", auth, base)
    assert listing.returncode == 0, listing.stderr
    assert b"curl.bin" in listing.stdout
    down = run(curl, "-sS", "--ssl-reqd", "-k", "-u", auth, base + "curl.bin")
    assert down.returncode == 0, down.stderr
    assert sha256(down.stdout) == sha256(content)


def test_curl_implicit(curl: str, server: ServerProcess, user: User) -> None:
    (user.home / "for-curl.txt").write_bytes(b"implicit via curl\n")
    base = f"ftps://127.0.0.1:{server.ftps_port}/"
    auth = f"{user.name}:{user.password}"
    listing = run(curl, "-sS", "-k", "-u", auth, base)
    assert listing.returncode == 0, listing.stderr
    assert b"for-curl.txt" in listing.stdout
    down = run(curl, "-sS", "-k", "-u", auth, base + "for-curl.txt")
    assert (down.returncode, down.stdout) == (0, b"implicit via curl\n"), down.stderr


def test_curl_plain_ftp_login_fails(curl: str, server: ServerProcess,
                                    make_user: UserFactory) -> None:
    """
    Without TLS curl sends USER, gets 530 and gives up: exit 67 (login
    denied), and the password never left the client.
    """
    account = make_user("curlplain")
    result = run(curl, "-sS", "-u", f"{account.name}:{account.password}",
                 f"ftp://127.0.0.1:{server.ftp_port}/")
    assert result.returncode == 67, result.stderr
    assert server.locked_reason(account.name) is None


# -- lftp -----------------------------------------------------------------


@pytest.fixture
def lftp() -> str:
    return require_tool("lftp")


def _lftp(lftp: str, port: int, user: User, commands: str, *settings: str
          ) -> subprocess.CompletedProcess[bytes]:
    script = "; ".join([
        "set cmd:fail-exit true",
        "set net:max-retries 1",
        "set net:timeout 10",
        "set ssl:verify-certificate no",
        *settings,
        f"open -u {user.name},{user.password} ftp://127.0.0.1:{port}",
        commands,
    ])
    return run(lftp, "-c", script)


def test_lftp_explicit(lftp: str, server: ServerProcess, make_user: UserFactory,
                       tmp_path: Path) -> None:
    account = make_user("lftp")
    content = os.urandom(40_000)
    (tmp_path / "l.bin").write_bytes(content)
    result = _lftp(
        lftp, server.ftp_port, account,
        f"put {tmp_path / 'l.bin'} -o l.bin; ls; get l.bin -o {tmp_path / 'back.bin'}",
        "set ftp:ssl-force true", "set ftp:ssl-protect-data true",
    )
    assert result.returncode == 0, result.stderr
    assert b"l.bin" in result.stdout
    assert (account.home / "l.bin").read_bytes() == content
    assert sha256((tmp_path / "back.bin").read_bytes()) == sha256(content)


def test_lftp_without_tls_fails(lftp: str, server: ServerProcess,
                                make_user: UserFactory) -> None:
    account = make_user("lftpplain")
    result = _lftp(lftp, server.ftp_port, account, "ls", "set ftp:ssl-allow false")
    assert result.returncode != 0
    assert b"530" in result.stderr, result.stderr
    assert server.locked_reason(account.name) is None


# -- openssl s_client --------------------------------------------------------


@pytest.fixture
def openssl() -> str:
    return require_tool("openssl")


def test_openssl_starttls_ftp_login(openssl: str, server: ServerProcess,
                                    user: User) -> None:
    script = f"USER {user.name}\r\nPASS {user.password}\r\nPWD\r\nQUIT\r\n"
    result = run(openssl, "s_client", "-starttls", "ftp", "-connect",
                 f"127.0.0.1:{server.ftp_port}", "-ign_eof", "-quiet",
                 input=script.encode())
    out = result.stdout.decode("utf-8", "replace")
    assert "230 " in out, (out, result.stderr)
    assert '257 "/"' in out
    assert "221 " in out


def _handshake(openssl: str, port: int, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return run(openssl, "s_client", "-connect", f"127.0.0.1:{port}", *extra,
               input=b"")


def test_alpn_on_ftps_port(openssl: str, server: ServerProcess) -> None:
    refused = _handshake(openssl, server.ftps_port, "-alpn", "http/1.1")
    assert refused.returncode != 0
    assert b"no application protocol" in refused.stderr, refused.stderr
    accepted = _handshake(openssl, server.ftps_port, "-alpn", "ftp")
    assert accepted.returncode == 0, accepted.stderr
    assert b"ALPN protocol: ftp" in accepted.stdout, accepted.stdout


def test_alpn_ftp_refused_on_https_port(openssl: str, server: ServerProcess) -> None:
    refused = _handshake(openssl, server.https_port, "-alpn", "ftp")
    assert refused.returncode != 0
    assert b"no application protocol" in refused.stderr, refused.stderr
    accepted = _handshake(openssl, server.https_port, "-alpn", "http/1.1")
    assert accepted.returncode == 0, accepted.stderr
