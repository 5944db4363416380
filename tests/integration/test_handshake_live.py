"""
Stalled TLS handshakes against a running server, on real sockets: 500 of
them (implicit FTPS and after AUTH TLS, from 25 addresses) do not keep honest
clients out, and a stall ends at the handshake deadline.
"""

from __future__ import annotations

import resource
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rumpus_secure.handshake import DEFAULT_MIN_AGE

from tests.integration.clients import client_context
from tests.integration.test_guard_live import ftps_login
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration

#: The start of a TLS ClientHello record that announces 512 bytes and stops.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        pytest.skip(f"cannot open {needed} files")


def stall_implicit(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    sock.sendall(PARTIAL_HELLO)
    return sock


def stall_after_auth(port: int, source: str) -> socket.socket | None:
    sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    stream = sock.makefile("rb")
    if not stream.readline().startswith(b"220"):
        sock.close()  # over a limit already: 421
        return None
    sock.sendall(b"AUTH TLS\r\n")
    assert stream.readline().startswith(b"234")
    sock.sendall(PARTIAL_HELLO)
    return sock


def implicit_login(port: int, user: str, password: str, source: str) -> list[str]:
    replies = []
    raw = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    with client_context().wrap_socket(raw) as tls:
        stream = tls.makefile("rb")
        replies.append(stream.readline().decode().strip())
        if not replies[0].startswith("220"):
            return replies
        for line in (f"USER {user}", f"PASS {password}"):
            tls.sendall(line.encode() + b"\r\n")
            replies.append(stream.readline().decode().strip())
    return replies


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: aborted


def log_in_until(deadline: float, login, *args) -> tuple[list[str], float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while True:
        try:
            replies = login(*args)
        except (OSError, ssl.SSLError) as e:
            replies = [f"error {e}"]
        if replies[-1].startswith("230") or time.monotonic() > deadline:
            return replies, time.monotonic() - started
        time.sleep(0.2)


def test_500_stalled_handshakes_do_not_keep_honest_clients_out(tmp_path: Path) -> None:
    raise_fd_limit(2048)
    # A deadline far away: this test is about the bound on handshakes in
    # flight, the next one about the deadline.
    server = ServerProcess(tmp_path, handshake_timeout="300", http="none", https="none",
                           login_failure_delay="0")
    with server:
        server.add_user("honest", "honest-password-1")
        server.add_user("other", "other-password-2")
        sources = [f"127.0.1.{n}" for n in range(1, 26)]
        stalled: list[socket.socket] = []
        for n in range(500):
            source = sources[n % 25]
            if n % 2:
                sock = stall_after_auth(server.ftp_port, source)
                if sock is not None:
                    stalled.append(sock)
            else:
                stalled.append(stall_implicit(server.ftps_port, source))
        try:
            # Real time (a server process): the stalls are now old enough to be
            # pushed out (DEFAULT_MIN_AGE, 3 s; younger ones are an honest
            # burst still queueing for CPU).
            time.sleep(DEFAULT_MIN_AGE + 0.2)
            deadline = time.monotonic() + 15
            # In parallel: a fresh address, and an attacker's address with
            # another account, over implicit FTPS and AUTH TLS.
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda job: log_in_until(deadline, *job), [
                    (implicit_login, server.ftps_port, "honest", "honest-password-1",
                     "127.0.0.1"),
                    (ftps_login, server.ftp_port, "honest", "honest-password-1",
                     "127.0.0.1"),
                    (implicit_login, server.ftps_port, "other", "other-password-2",
                     sources[0]),
                    (ftps_login, server.ftp_port, "other", "other-password-2",
                     sources[0]),
                ]))
            for replies, took in results:
                assert replies[-1].startswith("230"), replies
                assert took < 10
            # Stalls were pushed out to let them in, long before their 300 s
            # deadline (one per honest handshake at least).
            assert sum(closed_by_server(s) for s in stalled) >= 4
        finally:
            for sock in stalled:
                sock.close()


def test_a_stalled_handshake_ends_at_the_deadline(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, handshake_timeout="2", http="none", https="none",
                           max_connections_per_ip="4")
    with server:
        server.add_user("honest", "honest-password-1")
        source = "127.0.2.1"
        stalled = [stall_implicit(server.ftps_port, source) for _ in range(2)]
        auth = [stall_after_auth(server.ftp_port, source) for _ in range(2)]
        stalled += [s for s in auth if s is not None]
        assert len(stalled) == 4
        try:
            # The address is at its limit (4): turned away for now...
            assert ftps_login(server.ftp_port, "honest", "honest-password-1",
                              source)[0].startswith("421")
            started = time.monotonic()
            # ...and welcome again once the deadline freed the slots.
            replies, took = log_in_until(started + 10, ftps_login, server.ftp_port,
                                         "honest", "honest-password-1", source)
            assert replies[-1].startswith("230"), replies
            assert 0.5 < took < 6
            assert all(closed_by_server(s) for s in stalled)
        finally:
            for sock in stalled:
                sock.close()
