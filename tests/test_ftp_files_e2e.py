"""
The FTP file service with real clients over explicit FTPS (PROT P).

One server subprocess (``twistd -n rumpus-secure``) for the module; Python's
ftplib, curl and lftp talk to it on loopback.  Run alone with
``pytest -m integration tests/test_ftp_files_e2e.py``.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import secrets
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

server_process = pytest.importorskip("tests.server_process")

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


class FTPS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control TLS session."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    process = server_process.ServerProcess(tmp_path_factory.mktemp("ftp-files"))
    with process:
        yield process
    assert "Traceback" not in process.log_text(), process.log_text()


class Account:
    def __init__(self, server: Any) -> None:
        self.name = "u" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(12)
        server.add_user(self.name, self.password)
        self.home = server.home(self.name)
        self.port = server.ftp_port


@pytest.fixture
def account(server: Any) -> Account:
    return Account(server)


def login(account: Account) -> FTPS:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = FTPS(context=context, timeout=TIMEOUT)
    ftp.encoding = "utf-8"
    ftp.connect("127.0.0.1", account.port)
    ftp.auth()
    ftp.login(account.name, account.password)
    ftp.prot_p()
    return ftp


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        found[relative] = "dir" if path.is_dir() else sha256(path.read_bytes())
    return found


def lftp(account: Account, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    server_process.require_tool("lftp")
    setup = ("set ftp:ssl-force true; set ftp:ssl-protect-data true; "
             "set ssl:verify-certificate no; set net:max-retries 1; "
             "set net:timeout 15; set cmd:fail-exit true; "
             f"open -u {account.name},{account.password} "
             f"ftp://127.0.0.1:{account.port}; ")
    result = subprocess.run(["lftp", "-c", setup + script], cwd=cwd, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def curl(account: Account, *args: str) -> subprocess.CompletedProcess[str]:
    server_process.require_tool("curl")
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--ssl-reqd", "--insecure",
         "--user", f"{account.name}:{account.password}", *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result


# -- ftplib -------------------------------------------------------------------


def test_round_trip_hash_and_listing(account: Account) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    ftp = login(account)
    try:
        ftp.mkd("dir with space")
        ftp.cwd("dir with space")
        ftp.storbinary("STOR données €.bin", _reader(content))
        assert ftp.pwd() == "/dir with space"
        assert ftp.size("données €.bin") == len(content)
        got = bytearray()
        ftp.retrbinary("RETR données €.bin", got.extend)
        assert sha256(bytes(got)) == sha256(content)
        ftp.sendcmd("OPTS HASH SHA-256")
        reply = ftp.sendcmd("HASH données €.bin")
        assert reply.split()[3] == sha256(content)
        facts = dict(ftp.mlsd())
        assert facts["données €.bin"]["type"] == "file"
        assert facts["données €.bin"]["size"] == str(len(content))
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        assert lines[0].startswith("-rw") and lines[0].endswith(" données €.bin")
    finally:
        ftp.quit()
    stored = account.home / "dir with space" / "données €.bin"
    assert stored.read_bytes() == content


@pytest.mark.parametrize("how", ["fin-without-close-notify", "reset"])
def test_cut_upload_keeps_old_file(account: Account, how: str) -> None:
    (account.home / "keep.bin").write_bytes(b"the old content")
    ftp = login(account)
    try:
        ftp.voidcmd("TYPE I")
        conn, _ = ftp.ntransfercmd("STOR keep.bin")
        conn.sendall(os.urandom(256 * 1024))
        raw = socket.socket(fileno=conn.detach())  # no TLS close_notify
        if how == "reset":
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        with pytest.raises(ftplib.error_temp) as refused:
            ftp.voidresp()
        reply = str(refused.value)
        assert reply.startswith("426 ") and "unchanged" in reply
        assert ftp.sendcmd("NOOP").startswith("200")
    finally:
        ftp.close()
    assert (account.home / "keep.bin").read_bytes() == b"the old content"
    assert sorted(os.listdir(account.home)) == ["keep.bin"]


def test_cut_new_upload_is_kept_for_resume(account: Account) -> None:
    content = os.urandom(512 * 1024)
    ftp = login(account)
    try:
        conn, _ = ftp.ntransfercmd("STOR new.bin")
        conn.sendall(content[:200_000])
        socket.socket(fileno=conn.detach()).close()  # no TLS close_notify
        with pytest.raises(ftplib.error_temp) as refused:
            ftp.voidresp()
        assert "kept" in str(refused.value)
        offset = ftp.size("new.bin")
        assert 0 < offset <= 200_000
        ftp.storbinary("STOR new.bin", _reader(content[offset:]), rest=offset)
    finally:
        ftp.quit()
    assert (account.home / "new.bin").read_bytes() == content


def _reader(content: bytes) -> Any:
    import io

    return io.BytesIO(content)


# -- curl ---------------------------------------------------------------------


def test_curl_resumes_download_and_upload(account: Account, tmp_path: Path) -> None:
    content = os.urandom(2 * 1024 * 1024)
    (account.home / "c.bin").write_bytes(content)
    url = f"ftp://127.0.0.1:{account.port}/"
    local = tmp_path / "c.bin"
    local.write_bytes(content[:700_000])
    curl(account, "-C", "-", "-o", str(local), url + "c.bin")
    assert sha256(local.read_bytes()) == sha256(content)

    (account.home / "up.bin").write_bytes(content[:300_000])
    source = tmp_path / "up-source.bin"
    source.write_bytes(content)
    curl(account, "-C", "-", "-T", str(source), url + "up.bin")
    assert sha256((account.home / "up.bin").read_bytes()) == sha256(content)


# -- lftp ---------------------------------------------------------------------


def test_lftp_get_and_put_resume(account: Account, tmp_path: Path) -> None:
    content = os.urandom(1024 * 1024 + 5)
    (account.home / "l.bin").write_bytes(content)
    (tmp_path / "l.bin").write_bytes(content[:400_000])
    (tmp_path / "p.bin").write_bytes(content)
    (account.home / "p.bin").write_bytes(content[:123_456])
    lftp(account, "get -c l.bin; put -c p.bin", tmp_path)
    assert sha256((tmp_path / "l.bin").read_bytes()) == sha256(content)
    assert sha256((account.home / "p.bin").read_bytes()) == sha256(content)


def test_lftp_mirror_both_ways(account: Account, tmp_path: Path) -> None:
    source = tmp_path / "source"
    for relative, size in [("a.txt", 10), ("sub dir/b €.bin", 300_000),
                           ("sub dir/deeper/ünï cödé.txt", 5), ("empty/.keep", 0),
                           ("top/mid/low/leaf.bin", 70_000)]:
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    lftp(account, "mirror -R source uploaded", tmp_path)
    assert tree(account.home / "uploaded") == tree(source)
    lftp(account, "mirror uploaded back", tmp_path)
    assert tree(tmp_path / "back") == tree(source)
