"""
The guard's promises against a running server with real clients (issue #11
parts 3, 4, 5): parallel guesses are capped, an exposed password never logs
in while its check runs, and ``rumpus-secure check`` never bans its admin.

These servers do not safe-list loopback: the guessers use addresses of
127.0.0.0/8 of their own.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher

from rumpus_secure.accounts.store import SQLiteAccountStore
from tests.integration.clients import client_context
from tests.server_process import REPO, ServerProcess, subprocess_env

pytestmark = pytest.mark.integration

THRESHOLD = 15
IN_FLIGHT = 4


def implicit_login(port: int, user: str, password: str, source: str) -> str:
    """
    Implicit FTPS from C{source}: USER/PASS; the reply to PASS (or the
    greeting when refused).
    """
    with socket.create_connection(("127.0.0.1", port), 30,
                                  source_address=(source, 0)) as raw:
        with client_context().wrap_socket(raw) as tls:
            stream = tls.makefile("rb")
            greeting = stream.readline().decode().strip()
            if not greeting.startswith("220"):
                return greeting
            tls.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
            stream.readline()
            return stream.readline().decode().strip()


def https_login(port: int, user: str, password: str, source: str) -> int:
    context = client_context()
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                             context=context, source_address=(source, 0))
    body = urlencode({"username": user, "password": password})
    try:
        connection.request("POST", "/login", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            # The configured public origin (--public-host localhost); the
            # Host header is not trusted for the Origin check.
            "Origin": f"https://localhost:{port}", "Host": f"127.0.0.1:{port}"})
        return connection.getresponse().status
    except (ConnectionError, ssl.SSLError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def events(server: ServerProcess, name: str, client: str) -> list[dict[str, Any]]:
    found = []
    for line in server.audit_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == name and event.get("client") == client:
            found.append(event)
    return found


def test_parallel_guesses_on_ftps_and_https_are_capped(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, login_failure_delay="0", ban_time="600",
                           max_connections_per_ip="300")
    with server:
        server.add_user("victim", "the-right-password-1")
        server.add_user("other", "the-other-password-1")
        for protocol, source, login, ok in (
            ("ftp", "127.0.0.21", implicit_login, lambda r: str(r).startswith("230")),
            ("web", "127.0.0.22", https_login, lambda r: r == 303),
        ):
            port = server.ftps_port if protocol == "ftp" else server.https_port

            def guess(i: int, port: int = port, source: str = source,
                      login: Any = login) -> Any:
                if i == 60:  # the same address, another account
                    return login(port, "other", "the-other-password-1", source)
                password = "the-right-password-1" if i == 95 else f"wrong-guess-{i}"
                return login(port, "victim", password, source)

            with ThreadPoolExecutor(100) as pool:
                results = list(pool.map(guess, range(100)))
            verified = [e for e in events(server, f"{protocol}.login", source)
                        if e["outcome"] in ("failed", "ok", "locked", "banned-meanwhile")]
            assert len(verified) <= THRESHOLD + IN_FLIGHT, (protocol, len(verified))
            assert not ok(results[95]), f"{protocol}: the right password logged in after the ban"
            assert not [e for e in verified if e["outcome"] == "ok"
                        and e["account"] == "victim"], protocol
        # Everyone else is served.
        assert implicit_login(server.ftps_port, "victim", "the-right-password-1",
                              "127.0.0.1").startswith("230")
        assert https_login(server.https_port, "victim", "the-right-password-1",
                           "127.0.0.1") == 303


def test_an_exposed_password_never_logs_in_while_checked(tmp_path: Path) -> None:
    """
    A cleartext PASS immediately followed by a TLS login with the same
    password, 50 times in a row, with the password pool kept busy.
    """
    server = ServerProcess(tmp_path, ban_threshold="0", cleartext_grace="2")
    with server:
        store = SQLiteAccountStore(server.data_dir / "accounts.sqlite3",
                                   server.data_dir / "files",
                                   hasher=PasswordHasher(time_cost=1, memory_cost=8192,
                                                         parallelism=1))
        for i in range(50):
            store.add(f"exposed{i}", f"exposed-password-{i}")
        stop = threading.Event()

        def keep_busy(source: str) -> None:
            while not stop.is_set():
                https_login(server.https_port, "nobody", "wrong", source)

        busy = [threading.Thread(target=keep_busy, args=(f"127.0.0.{30 + n}",))
                for n in range(8)]
        for thread in busy:
            thread.start()
        try:
            replies = []
            for i in range(50):
                name, password = f"exposed{i}", f"exposed-password-{i}"
                with socket.create_connection(("127.0.0.1", server.ftp_port), 30) as clear:
                    clear.makefile("rb").readline()
                    clear.sendall(f"USER {name}\r\nPASS {password}\r\n".encode())
                    replies.append(implicit_login(server.ftps_port, name, password,
                                                  "127.0.0.40"))
        finally:
            stop.set()
            for thread in busy:
                thread.join()
        assert not [r for r in replies if r.startswith("230")], replies
        assert all(r.startswith("530 Login refused: this account is locked")
                   for r in replies), replies


def _check(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "check", *server.arguments()],
        check=False, capture_output=True, text=True, cwd=REPO, env=subprocess_env(),
        timeout=60,
    )


def test_check_five_times_in_a_row_bans_nobody(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)  # loopback is not safe-listed
    with server:
        for run in range(5):
            result = _check(server)
            assert result.returncode == 0, (run, result.stdout + result.stderr)
            assert "FAIL" not in result.stdout and "WARN" not in result.stdout
        assert "guard.ban" not in server.audit_path.read_text()
        assert "no address is banned" in server.cli("ban", "list").stdout


def test_check_says_when_its_address_is_banned(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, ban_threshold="3", login_failure_delay="0")
    with server:
        for _ in range(3):
            implicit_login(server.ftps_port, "nobody", "wrong", "127.0.0.1")
        deadline = time.monotonic() + 10
        while "127.0.0.1" not in server.cli("ban", "list").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        result = _check(server)
        assert result.returncode == 1
        line = next(row for row in result.stdout.splitlines()
                    if row.startswith("FTP: login without TLS refused"))
        assert "FAIL" in line and "turned this address away" in line
        assert "implicit-only" not in line


def test_https_connections_are_limited_per_address(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, max_connections_per_ip="2")
    with server:
        held = []
        try:
            for _ in range(2):
                raw = socket.create_connection(("127.0.0.1", server.https_port), 10,
                                               source_address=("127.0.0.23", 0))
                held.append(client_context().wrap_socket(raw))
            raw = socket.create_connection(("127.0.0.1", server.https_port), 10,
                                           source_address=("127.0.0.23", 0))
            with client_context().wrap_socket(raw) as third:
                answer = third.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 503 ") and b"limit 2" in answer
            assert https_login(server.https_port, "nobody", "x", "127.0.0.24") == 401
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while https_login(server.https_port, "nobody", "x", "127.0.0.23") != 401:
            assert time.monotonic() < deadline, "closed connections still counted"
            time.sleep(0.2)
