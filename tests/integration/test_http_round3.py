"""
Round 3 web findings end to end, with curl and raw sockets against a real
server: cleartext credentials on the plain port in every shape the attacker
used, the HTTPS login at exactly ``/login``, and the head deadline.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import UserFactory
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration


def _curl(*args: str) -> tuple[int, str, str]:
    curl = require_tool("curl")
    result = subprocess.run([curl, "-sS", "--path-as-is", "-D", "/dev/stderr", *args],
                            check=False, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    head = result.stderr.replace("\r\n", "\n")
    status = int(head.split("\n", 1)[0].split()[1])
    return status, head, result.stdout


def _variants(port: int, name: str, password: str) -> dict[str, list[str]]:
    form = ["--data-urlencode", f"username={name}", "--data-urlencode", f"password={password}"]
    base = f"http://127.0.0.1:{port}"
    basic = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {
        "trailing-slash": [*form, f"{base}/login/"],
        "double-slash": [*form, f"{base}//login"],
        "escaped": [*form, f"{base}/%6cogin"],
        "chunked": ["-H", "Transfer-Encoding: chunked", *form, f"{base}/login"],
        "query": ["-G", *form, f"{base}/login"],
        "proxy-basic": ["-H", f"Proxy-Authorization: Basic {basic}", f"{base}/files/"],
    }


@pytest.mark.parametrize("shape", ["trailing-slash", "double-slash", "escaped", "chunked",
                                   "query", "proxy-basic"])
def test_cleartext_credentials_contained_end_to_end(server: ServerProcess,
                                                    make_user: UserFactory, shape: str) -> None:
    victim, bystander = make_user("exposed"), make_user("bystander")
    status, head, body = _curl(*_variants(server.http_port, victim.name, victim.password)[shape])
    assert status == 403, head
    assert "location:" not in head.lower()
    assert victim.password not in head and victim.password not in body
    assert server.locked_reason(victim.name) is not None  # checked and quarantined
    # The HTTPS side would not have taken the look-alike anyway; the real
    # login refuses the quarantined password.
    https = f"https://127.0.0.1:{server.https_port}"
    origin = ["-k", "-H", f"Origin: https://localhost:{server.https_port}"]
    status, _, _ = _curl(*origin, "--data-urlencode", f"username={victim.name}",
                         "--data-urlencode", f"password={victim.password}", f"{https}/login")
    assert status == 403
    # The second client, same address: another account, unaffected.
    assert server.locked_reason(bystander.name) is None
    status, head, _ = _curl(*origin, "--data-urlencode", f"username={bystander.name}",
                            "--data-urlencode", f"password={bystander.password}",
                            f"{https}/login")
    assert status == 303 and "set-cookie:" in head.lower()


@pytest.mark.parametrize("target", ["/login/", "//login", "/%6cogin",
                                    "/login?username=U&password=P"])
def test_https_login_only_at_login(server: ServerProcess, make_user: UserFactory,
                                   target: str) -> None:
    user, other = make_user("lookalike"), make_user("other")
    target = target.replace("U", user.name).replace("P", user.password)
    https = f"https://127.0.0.1:{server.https_port}"
    origin = ["-k", "-H", f"Origin: https://localhost:{server.https_port}"]
    status, head, _ = _curl(*origin, "--data-urlencode", f"username={user.name}",
                            "--data-urlencode", f"password={user.password}", https + target)
    assert status == (400 if "?" in target else 404), head
    assert "set-cookie:" not in head.lower()
    status, head, _ = _curl(*origin, "--data-urlencode", f"username={other.name}",
                            "--data-urlencode", f"password={other.password}", f"{https}/login")
    assert status == 303


def _drip(sock: socket.socket, data: bytes, every: float, limit: float,
          between: Any = None) -> bytes:
    """
    Send C{data} a byte at a time; return what the server answered.

    @param between: called after the second byte, while the head is open.
    """
    sock.settimeout(every)
    started = time.monotonic()
    for index, byte in enumerate(data):
        if index == 2 and between is not None:
            between()
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            answer = sock.recv(4096)
            if answer or time.monotonic() - started > limit:
                return answer
        except TimeoutError:
            continue
    return b""


def test_slow_head_cut_on_both_ports(tmp_path: Path) -> None:
    head = b"GET /login HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200
    with ServerProcess(tmp_path, line_timeout="2", safe_list="127.0.0.0/8") as server:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.http_port)) as plain:
            answer = _drip(plain, head, 0.5, 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 6
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.https_port)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            served: list[int] = []
            # Meanwhile, another client on the same address is served.
            answer = _drip(tls, head, 0.5, 10, between=lambda: served.append(
                _curl("-k", f"https://127.0.0.1:{server.https_port}/login")[0]))
            assert served == [200]
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"strict-transport-security" in answer.lower()
        assert time.monotonic() - started < 6


def test_slow_https_heads_do_not_lock_everyone_out(tmp_path: Path) -> None:
    """
    The attack at a small scale: the server full of HTTPS connections that
    each sent part of a head; an honest HTTPS user and an implicit-FTPS user
    from other addresses still get in (the oldest slow connections make room).
    """
    from tests.integration.test_guard_races_live import implicit_login

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    server = ServerProcess(tmp_path, max_connections="20", max_connections_per_ip="5")
    with server:
        server.add_user("honest", "honest-Passw0rd-for-web-slots")
        slow = []
        try:
            for n in range(20):
                raw = socket.create_connection(("127.0.0.1", server.https_port), 10,
                                               source_address=(f"127.0.7.{n // 5 + 1}", 0))
                tls = context.wrap_socket(raw, server_hostname="localhost")
                tls.sendall(b"GET /login HTTP/1.1\r\nHost: local")
                slow.append(tls)
            time.sleep(2.5)  # eviction spares connections younger than 2 s
            status, _, _ = _curl("-k", "--interface", "127.0.7.50",
                                 f"https://127.0.0.1:{server.https_port}/login")
            assert status == 200
            assert implicit_login(server.ftps_port, "honest", "honest-Passw0rd-for-web-slots",
                                  "127.0.7.51").startswith("230 ")
            slow[0].settimeout(10)
            told = slow[0].recv(300)
            assert told.startswith(b"HTTP/1.1 503"), told
        finally:
            for sock in slow:
                sock.close()
