"""
A big folder's page on a real socket (issue #18, target 4): curl gets it
streamed (chunked, no length known in advance) and whole, another account
listing at the same time gets its own whole page, HEAD answers without a
body, and a client that leaves half-way leaves a server that serves on.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration

ENTRIES = 12_000  # more than two pages of 5,000


def curl(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([require_tool("curl"), "-sS", "-k", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def done(process: subprocess.Popen[bytes]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.decode("utf-8")


def fill(folder: Path, prefix: str) -> list[str]:
    folder.mkdir(parents=True)
    names = [f"{prefix} {index:05d}.txt" for index in range(ENTRIES)]
    for name in names:
        (folder / name).touch()
    return names


def names_in(page: str) -> list[str]:
    return re.findall(r"<input type=checkbox form=bulk name=name value='([^']*)'", page)


def test_a_big_folder_streams_to_curl_beside_another_account(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, public_host="127.0.0.1")
    with server:
        base = f"https://127.0.0.1:{server.https_port}"
        jars = {}
        wanted = {}
        for user in ("alice", "bob"):
            server.add_user(user, f"{user} listing pw 1")
            wanted[user] = fill(server.home(user) / "big", user)
            jars[user] = tmp_path / f"{user}.jar"
            login = done(curl("-c", str(jars[user]), "-o", "/dev/null", "-w", "%{http_code}",
                              "-H", f"Origin: {base}", "--data-urlencode", f"username={user}",
                              "--data-urlencode", f"password={user} listing pw 1",
                              f"{base}/login"))
            assert login == "303"
        # Both accounts list every entry at once, in parallel.
        running = {user: curl("-D", "-", "-b", str(jars[user]), f"{base}/files/big/?page=all")
                   for user in ("alice", "bob")}
        pages = {user: done(process) for user, process in running.items()}
        for user, text in pages.items():
            head, _, body = text.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 200")
            assert "transfer-encoding: chunked" in head.lower()
            assert "content-length" not in head.lower()
            assert "content-security-policy: default-src 'none'" in head.lower()
            assert body.endswith("</main></body></html>")
            assert sorted(names_in(body)) == wanted[user]  # each entry once, only hers
            assert "stopped here" not in body
        # The first page: 5,000 entries and the way on.
        first = done(curl("-b", str(jars["alice"]), f"{base}/files/big/"))
        assert len(names_in(first)) == 5000 and "href='?page=2' rel=next" in first
        assert f"of {ENTRIES:,} (page 1 of 3)" in first
        # HEAD: the headers only.
        head = done(curl("-I", "-b", str(jars["alice"]), f"{base}/files/big/"))
        assert head.startswith("HTTP/1.1 200") and "text/html" in head
        # A client that reads a little and leaves.
        cookie = jars["alice"].read_text().strip().splitlines()[-1].split("\t")
        context = ssl._create_unverified_context()
        with socket.create_connection(("127.0.0.1", server.https_port)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /files/big/?page=all HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Cookie: " + f"{cookie[5]}={cookie[6]}".encode() + b"\r\n\r\n")
                got = b""
                while len(got) < 100_000:
                    got += tls.recv(65536)
                assert b"<tbody>" in got
        again = done(curl("-b", str(jars["bob"]), f"{base}/files/big/?page=all"))
        assert sorted(names_in(again)) == wanted["bob"]
    assert "Traceback" not in server.log_text()
