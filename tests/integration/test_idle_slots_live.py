"""
Connections that only read the greeting cannot keep everyone out (an
attacker's finding, round 3): a real server full of them still lets an honest
client in, from another address, over explicit and implicit FTPS.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.integration.test_guard_races_live import implicit_login
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration

PASSWORD = "honest-Passw0rd-for-slots"


def test_idle_connections_that_never_log_in_do_not_lock_everyone_out(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, max_connections="20", max_connections_per_ip="5")
    with server:
        server.add_user("honest", PASSWORD)
        idle = []
        try:
            # 20 connections from 4 addresses, each under its own limit:
            # the server is full.
            for n in range(20):
                sock = socket.create_connection(
                    ("127.0.0.1", server.ftp_port), 10,
                    source_address=(f"127.0.6.{n // 5 + 1}", 0))
                assert sock.recv(200).startswith(b"220 ")
                idle.append(sock)
            time.sleep(2.5)  # real time: eviction spares connections < 2 s old
            assert implicit_login(server.ftps_port, "honest", PASSWORD,
                                  "127.0.6.50").startswith("230 ")
            # The oldest idle connection gave its slot and was told why.
            idle[0].settimeout(10)
            told = idle[0].recv(200)
            assert told.startswith(b"421 The server is full"), told
        finally:
            for sock in idle:
                sock.close()
