"""
Real clients on the wrong port get an answer within a second, not a hang.

Before first-byte sniffing (L{rumpus_secure.sniff}) a plain FTP client on
the implicit FTPS port waited 130 s, ``http://`` to the HTTPS port got
"empty reply" and ``https://`` to the HTTP port hung.
"""

from __future__ import annotations

import ftplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration

#: "Every wrong-port case gets its answer within a second."
WITHIN = 1.0


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    result = subprocess.run(argv, check=False, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    return time.monotonic() - started, result


def test_ftplib_plain_on_implicit_ftps_port(server: ServerProcess) -> None:
    started = time.monotonic()
    ftp = ftplib.FTP(timeout=10)
    with pytest.raises(ftplib.error_temp) as raised:
        ftp.connect("127.0.0.1", server.ftps_port)
    elapsed = time.monotonic() - started
    ftp.close()
    message = str(raised.value)
    assert message == (
        f"421 This port is implicit FTPS: TLS from the first byte. Use "
        f"ftps://localhost:{server.ftps_port}, or explicit FTPS (AUTH TLS) on "
        f"port {server.ftp_port}."
    )
    assert elapsed < WITHIN


def test_ftplib_explicit_tls_on_implicit_ftps_port(server: ServerProcess) -> None:
    """
    An explicit-TLS client also waits for a greeting first.
    """
    started = time.monotonic()
    ftp = ftplib.FTP_TLS(timeout=10, context=ssl._create_unverified_context())
    with pytest.raises(ftplib.error_temp, match="^421 This port is implicit FTPS"):
        ftp.connect("127.0.0.1", server.ftps_port)
    ftp.close()
    assert time.monotonic() - started < WITHIN


def test_client_sending_a_command_first_is_answered_at_once(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.ftps_port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"USER anonymous\r\n")
        reply = s.recv(4096)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"421 This port is implicit FTPS")
    assert elapsed < 0.5  # no silence timer when the client speaks


def test_lftp_plain_on_implicit_ftps_port(server: ServerProcess) -> None:
    lftp = require_tool("lftp")
    elapsed, result = timed([
        lftp, "-d", "-c",
        "set net:max-retries 1; set net:timeout 10; set ftp:ssl-allow no; "
        f"open ftp://127.0.0.1:{server.ftps_port}; ls",
    ])
    assert result.returncode != 0
    assert "421 This port is implicit FTPS" in result.stderr + result.stdout
    assert elapsed < WITHIN + 1.0  # lftp's own start-up and exit


def test_implicit_ftps_still_works_with_tls(server: ServerProcess) -> None:
    from tests.integration.clients import implicit_ftps

    started = time.monotonic()
    ftp = implicit_ftps(server.ftps_port)
    try:
        assert ftp.getwelcome().startswith("220")
    finally:
        ftp.close()
    assert time.monotonic() - started < WITHIN


def test_curl_http_to_https_port_gets_400_naming_https(server: ServerProcess) -> None:
    curl = require_tool("curl")
    elapsed, result = timed([curl, "-sS", "-i", f"http://127.0.0.1:{server.https_port}/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 400 Bad Request")
    assert f"https://localhost:{server.https_port}/" in result.stdout
    assert elapsed < WITHIN


def test_curl_https_to_http_port_is_refused_at_once(server: ServerProcess) -> None:
    curl = require_tool("curl")
    elapsed, result = timed([curl, "-sS", "-k", f"https://127.0.0.1:{server.http_port}/"])
    assert result.returncode == 35, result.stderr  # CURLE_SSL_CONNECT_ERROR
    assert elapsed < WITHIN
    # The plain HTTP port still redirects plain clients.
    plain = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{server.http_port}/"],
                           check=False, capture_output=True, text=True, timeout=30)
    assert plain.stdout == "301"


def test_silent_plain_client_does_not_hold_up_a_tls_client(server: ServerProcess) -> None:
    """
    A second client, same address, in the window: while a plain client sits
    silent on the implicit FTPS port, a TLS client connects and gets its
    greeting at once; then the plain one gets its 421.
    """
    from tests.integration.clients import implicit_ftps

    with socket.create_connection(("127.0.0.1", server.ftps_port), timeout=5) as plain:
        started = time.monotonic()
        ftp = implicit_ftps(server.ftps_port)
        try:
            assert ftp.getwelcome().startswith("220")
            tls_elapsed = time.monotonic() - started
        finally:
            ftp.close()
        reply = plain.recv(4096)
        plain_elapsed = time.monotonic() - started
    assert tls_elapsed < 0.5
    assert reply.startswith(b"421 This port is implicit FTPS")
    assert plain_elapsed < WITHIN
