"""
The TLS policy seen from a raw socket, and the three --ftp-security modes.
"""

from __future__ import annotations

import ftplib
import os
import socket

import pytest

from tests.integration.clients import (
    RawControl,
    implicit_ftps,
)
from tests.integration.conftest import User
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


# -- require-tls (default) ------------------------------------------------


def test_feat_before_tls_lists_auth_tls(server: ServerProcess) -> None:
    with RawControl(server.ftp_port) as c:
        assert c.reply()[0].startswith("220 ")
        lines = c.command("FEAT")
        assert lines[0].startswith("211-") and lines[-1].startswith("211 ")
        assert " AUTH TLS" in lines


def test_list_before_tls_is_534_naming_both_ports(server: ServerProcess) -> None:
    with RawControl(server.ftp_port) as c:
        c.reply()
        (line,) = c.command("LIST")
        assert line.startswith("534 ")
        assert "AUTH TLS" in line
        assert str(server.ftp_port) in line and str(server.ftps_port) in line
        # The session goes on: a harmless command still works.
        assert c.command("NOOP") == ["200 OK."]


def test_bytes_pipelined_behind_auth_are_refused(server: ServerProcess) -> None:
    """
    STARTTLS injection: ``AUTH TLS`` and ``USER`` in one send get 503 and
    the connection closes, no TLS handshake is offered.
    """
    with RawControl(server.ftp_port) as c:
        c.reply()
        c.send("AUTH TLS\r\nUSER x\r\n")
        (line,) = c.reply()
        assert line.startswith("503 "), line
        assert c.read_until_closed() == b""


def test_http_request_on_ftp_port_is_closed_silently(server: ServerProcess) -> None:
    with RawControl(server.ftp_port) as c:
        c.reply()
        c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert c.read_until_closed() == b""


def test_implicit_port_gives_no_banner_to_plaintext(server: ServerProcess) -> None:
    with RawControl(server.ftps_port, timeout=0.5) as c:
        with pytest.raises(socket.timeout):
            c.sock.recv(1024)
        c.send(b"USER someone\r\n")
        received = c.read_until_closed()
        assert b"220" not in received and b"someone" not in received


def test_implicit_port_survives_garbage_handshake(server: ServerProcess,
                                                  user: User) -> None:
    for garbage in (os.urandom(4096), b"\x16\x03\x01\x02\x00" + os.urandom(512)):
        with RawControl(server.ftps_port) as c:
            c.send(garbage)
            try:
                c.read_until_closed()
            except ConnectionResetError:
                pass
    ftp = implicit_ftps(server.ftps_port)
    try:
        assert ftp.welcome.startswith("220 ")
        assert ftp.login(user.name, user.password).startswith("230")
    finally:
        ftp.close()
    assert server.running


def test_feat_on_implicit_port_has_no_auth(server: ServerProcess) -> None:
    ftp = implicit_ftps(server.ftps_port)
    try:
        features = ftp.sendcmd("FEAT")
    finally:
        ftp.close()
    assert features.startswith("211")
    assert "PROT" in features and "AUTH" not in features


# -- implicit-only -------------------------------------------------------


def test_implicit_only_plain_port_says_where_and_closes(
        implicit_server: ServerProcess) -> None:
    with RawControl(implicit_server.ftp_port) as c:
        received = c.read_until_closed()
    lines = received.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 2, received
    assert lines[0].startswith(b"421 ")
    assert str(implicit_server.ftps_port).encode() in lines[0]


def test_implicit_only_serves_implicit_ftps(implicit_server: ServerProcess) -> None:
    import io
    implicit_server.add_user("ionly", "implicit only pw")
    ftp = implicit_ftps(implicit_server.ftps_port, cafile=implicit_server.cert_path)
    try:
        features = ftp.sendcmd("FEAT")
        assert "AUTH" not in features
        assert ftp.login("ionly", "implicit only pw").startswith("230")
        ftp.prot_p()
        assert ftp.storbinary("STOR x.txt", io.BytesIO(b"hello")).startswith("226")
    finally:
        ftp.close()
    assert (implicit_server.home("ionly") / "x.txt").read_bytes() == b"hello"


# -- allow-plain ---------------------------------------------------------


def test_allow_plain_login_and_list(plain_server: ServerProcess) -> None:
    import io
    plain_server.add_user("legacy", "legacy password")
    ftp = ftplib.FTP()
    try:
        assert ftp.connect("127.0.0.1", plain_server.ftp_port, timeout=10).startswith("220")
        assert ftp.login("legacy", "legacy password").startswith("230")
        assert ftp.storbinary("STOR plain.txt", io.BytesIO(b"in the clear")).startswith("226")
        assert "plain.txt" in ftp.nlst()
        listing: list[str] = []
        assert ftp.retrlines("LIST", listing.append).startswith("226")
        assert any(line.endswith(" plain.txt") for line in listing), listing
        ftp.quit()
    finally:
        ftp.close()
    assert (plain_server.home("legacy") / "plain.txt").read_bytes() == b"in the clear"
    assert plain_server.locked_reason("legacy") is None
