"""
A password sent in the clear to a TLS port (the implicit FTPS port, the
HTTPS port) quarantines its account, as it does on the plain ports; another
account used from the same address meanwhile is untouched.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


def wait_locked(server: ServerProcess, name: str, timeout: float = 20.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = server.locked_reason(name)
        if reason:
            return reason
        time.sleep(0.2)
    return None


def test_passwords_sent_in_the_clear_to_tls_ports_are_contained(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, safe_list="127.0.0.0/8")
    with server:
        server.add_user("erin", "erin-Passw0rd-exposed")
        server.add_user("dave", "dave-Passw0rd-exposed")
        server.add_user("bob", "bob-Passw0rd-untouched")
        with socket.create_connection(("127.0.0.1", server.ftps_port), 10) as plain:
            plain.sendall(b"USER erin\r\nPASS erin-Passw0rd-exposed\r\n")
            assert plain.recv(400).startswith(b"421 ")
        body = b"username=dave&password=dave-Passw0rd-exposed"
        with socket.create_connection(("127.0.0.1", server.https_port), 10) as plain:
            plain.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/x-www-form-urlencoded\r\nContent-Length: %d"
                          b"\r\n\r\n" % len(body) + body)
            assert plain.recv(400).startswith(b"HTTP/1.1 400 ")
        assert wait_locked(server, "erin")
        assert wait_locked(server, "dave")
        assert server.locked_reason("bob") is None
        events = [json.loads(line) for line in server.audit_path.read_text().splitlines()]
        exposed = {e.get("account") for e in events if e["event"] == "account.password_exposed"}
        assert {"erin", "dave"} <= exposed
