"""
The guard against a running server: a ban earned over FTP holds for FTP
and the web alike and survives a restart; connection limits answer 421.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.clients import client_context
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration

GUESSER = "127.0.0.5"


def ftps_login(port: int, user: str, password: str, source: str) -> list[str]:
    """
    Connect from C{source}, AUTH TLS, USER/PASS; the replies seen.
    """
    replies = []
    with socket.create_connection(("127.0.0.1", port), 10,
                                  source_address=(source, 0)) as raw:
        stream = raw.makefile("rb")
        greeting = stream.readline().decode()
        replies.append(greeting.strip())
        if not greeting.startswith("220"):
            return replies
        raw.sendall(b"AUTH TLS\r\n")
        replies.append(stream.readline().decode().strip())
        tls = client_context().wrap_socket(raw)
        tls_stream = tls.makefile("rb")
        for line in (f"USER {user}", f"PASS {password}"):
            tls.sendall(line.encode() + b"\r\n")
            replies.append(tls_stream.readline().decode().strip())
        tls.close()
    return replies


def greeting_from(port: int, source: str) -> str:
    with socket.create_connection(("127.0.0.1", port), 10,
                                  source_address=(source, 0)) as raw:
        return raw.makefile("rb").readline().decode().strip()


def https_status(port: int, source: str) -> int:
    curl = require_tool("curl")
    result = subprocess.run(
        [curl, "-sk", "--interface", source, "-o", "/dev/null", "-w", "%{http_code}",
         f"https://127.0.0.1:{port}/login"], capture_output=True, text=True, timeout=30)
    return int(result.stdout or 0)


def test_ban_over_ftp_holds_for_web_and_survives_restart(tmp_path: Path) -> None:
    options = dict(ban_threshold="3", login_failure_delay="0", ban_time="600")
    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    server = ServerProcess(tmp_path / "run1", data_dir=tmp_path / "data", **options)
    with server:
        server.add_user("victim", "the-right-password-1")
        for _ in range(3):
            ftps_login(server.ftp_port, "victim", "wrong-guess", GUESSER)
        greeting = greeting_from(server.ftp_port, GUESSER)
        assert greeting.startswith("421 ") and "try again" in greeting
        assert https_status(server.https_port, GUESSER) == 403
        # Everyone else is served as before.
        assert ftps_login(server.ftp_port, "victim", "the-right-password-1",
                          "127.0.0.1")[-1].startswith("230")
        assert https_status(server.https_port, "127.0.0.1") == 200
        audit = server.audit_path.read_text()
        assert '"guard.ban"' in audit and GUESSER in audit
        assert GUESSER in server.cli("ban", "list").stdout
    restarted = ServerProcess(tmp_path / "run2", data_dir=tmp_path / "data", **options)
    with restarted:
        assert greeting_from(restarted.ftp_port, GUESSER).startswith("421 ")
        assert greeting_from(restarted.ftp_port, "127.0.0.1").startswith("220 ")


def test_connections_per_address_limit(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, max_connections_per_ip="2")
    with server:
        first = socket.create_connection(("127.0.0.1", server.ftp_port), 10,
                                         source_address=("127.0.0.6", 0))
        second = socket.create_connection(("127.0.0.1", server.ftp_port), 10,
                                          source_address=("127.0.0.6", 0))
        try:
            assert first.makefile("rb").readline().startswith(b"220")
            assert second.makefile("rb").readline().startswith(b"220")
            third = greeting_from(server.ftp_port, "127.0.0.6")
            assert third.startswith("421 ") and "limit 2" in third
            assert greeting_from(server.ftp_port, "127.0.0.7").startswith("220")
        finally:
            first.close()
            second.close()
        # Once they are gone, the address is welcome again.
        for _ in range(50):
            reply = greeting_from(server.ftp_port, "127.0.0.6")
            if reply.startswith("220"):
                break
        assert reply.startswith("220"), reply


def test_ban_lifted_with_the_admin_command_lets_the_address_in(tmp_path: Path) -> None:
    import time

    server = ServerProcess(tmp_path, ban_threshold="3", login_failure_delay="0",
                           ban_time="600")
    with server:
        server.add_user("victim", "the-right-password-1")
        for _ in range(3):
            ftps_login(server.ftp_port, "victim", "wrong-guess", GUESSER)
        assert greeting_from(server.ftp_port, GUESSER).startswith("421 ")
        assert "lifted" in server.cli("ban", "lift", GUESSER).stdout
        # The server reads the stored bans every few seconds.
        deadline = time.monotonic() + 30
        while greeting_from(server.ftp_port, GUESSER).startswith("421 "):
            assert time.monotonic() < deadline, "the lifted ban still holds"
            time.sleep(0.5)
        assert ftps_login(server.ftp_port, "victim", "the-right-password-1",
                          GUESSER)[-1].startswith("230")
        assert '"guard.lifted"' in server.audit_path.read_text()
        assert "no address is banned" in server.cli("ban", "list").stdout
