"""
The FTPS data channel against the real server: encryption, session reuse,
peer binding, bounce protection, truncation, timeouts and ABOR.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.clients import (
    RawControl,
    ReusingFTP_TLS,
    client_context,
    explicit_ftps,
    retrieve,
    sha256,
)
from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration


class TLSControl(RawControl):
    """
    A control connection upgraded with AUTH TLS, logged in, PROT P.
    """

    def __init__(self, port: int, user: User, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10,
                                             source_address=(source, 0))
        self.buffer = b""
        assert self.reply()[0].startswith("220")
        assert self.command("AUTH TLS")[0].startswith("234")
        self.context = client_context()
        self.sock = self.context.wrap_socket(self.sock)
        assert self.command(f"USER {user.name}")[0].startswith("331")
        assert self.command(f"PASS {user.password}")[0].startswith("230")
        assert self.command("PBSZ 0")[0].startswith("200")
        assert self.command("PROT P")[0].startswith("200")

    def passive_port(self) -> int:
        [reply] = self.command("EPSV")
        assert reply.startswith("229 "), reply
        return int(reply.split("|||")[1].split("|")[0])

    def data(self, port: int, source: str = "127.0.0.1", reuse: bool = True) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
        session = self.sock.session if reuse else None
        return self.context.wrap_socket(raw, session=session, do_handshake_on_connect=False)


def _read_all(conn: ssl.SSLSocket) -> bytes:
    chunks = []
    try:
        conn.do_handshake()
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except (ssl.SSLError, OSError):
        pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def reuse_optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("reuse-optional"),
                           data_tls_reuse="optional", safe_list="127.0.0.0/8")
    with server:
        yield server


@pytest.fixture(scope="module")
def short_timeouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("short-timeouts"),
                           data_connect_timeout="1", data_idle_timeout="1",
                           passive_ports="41000-41004", safe_list="127.0.0.0/8")
    with server:
        yield server


def _user_with_file(make_user: UserFactory, size: int, name: str = "f.bin") -> tuple[User, bytes]:
    user = make_user("data")
    content = os.urandom(size)
    (user.home / name).write_bytes(content)
    return user, content


# -- session reuse -------------------------------------------------------------


def test_ftplib_without_reuse_is_refused_522(short_timeouts: ServerProcess) -> None:
    """
    A data connection that does not resume the session is refused; the
    port waits on for the rightful one (issue #11), so the 522 comes when
    the connect timeout (1 s here) ends.
    """
    password = "short-timeouts-pw4"
    short_timeouts.add_user("noreuse", password)
    (short_timeouts.home("noreuse") / "f.bin").write_bytes(os.urandom(50_000))
    user = User("noreuse", password, short_timeouts.home("noreuse"))
    server = short_timeouts
    ftp = ftplib.FTP_TLS(context=client_context(), timeout=10)
    ftp.connect("127.0.0.1", server.ftp_port)
    ftp.login(user.name, user.password)
    ftp.prot_p()
    with pytest.raises((ftplib.error_reply, ftplib.error_temp, ftplib.error_perm,
                        ssl.SSLError, OSError)) as refused:
        retrieve(ftp, "f.bin")
    if isinstance(refused.value, ftplib.Error):
        assert str(refused.value).startswith("522 ")
    else:
        # The client saw the data connection close first; the 522 follows.
        with pytest.raises(ftplib.error_perm, match="^522 .*session reuse"):
            ftp.getresp()
    events = [line for line in server.audit_path.read_text().splitlines()
              if "ftp.data_refused" in line and user.name in line]
    assert events and '"foreign-session"' in events[0]


def test_ftplib_with_reuse_works(server: ServerProcess, make_user: UserFactory) -> None:
    user, content = _user_with_file(make_user, 3 * 1024 * 1024 + 1)
    ftp = explicit_ftps(server.ftp_port)
    ftp.login(user.name, user.password)
    ftp.prot_p()
    for _ in range(3):  # the same control session resumed again and again
        assert sha256(retrieve(ftp, "f.bin")) == sha256(content)
    ftp.quit()


def test_plain_ftplib_accepted_when_reuse_optional(reuse_optional: ServerProcess,
                                                   tmp_path: Path) -> None:
    password = "reuse-optional-pw1"
    reuse_optional.add_user("plainpy", password)
    content = os.urandom(200_000)
    (reuse_optional.home("plainpy") / "f.bin").write_bytes(content)
    ftp = ftplib.FTP_TLS(context=client_context(), timeout=10)
    ftp.connect("127.0.0.1", reuse_optional.ftp_port)
    ftp.login("plainpy", password)
    ftp.prot_p()
    assert retrieve(ftp, "f.bin") == content
    ftp.quit()


# -- PROT --------------------------------------------------------------------


def test_prot_c_transfer_refused_521(server: ServerProcess, make_user: UserFactory) -> None:
    user, _ = _user_with_file(make_user, 10)
    with TLSControl(server.ftp_port, user) as control:
        assert control.command("PROT C")[0].startswith("200")
        control.passive_port()
        for verb in ("LIST", "NLST", "MLSD", "RETR f.bin", "STOR g", "APPE g", "STOU"):
            [reply] = control.command(verb)
            assert reply.startswith("521 "), (verb, reply)


# -- who may connect -----------------------------------------------------------


def test_passive_connection_from_another_address_is_refused(
        server: ServerProcess, make_user: UserFactory) -> None:
    user, content = _user_with_file(make_user, 100_000)
    with TLSControl(server.ftp_port, user, source="127.0.0.1") as control:
        port = control.passive_port()
        intruder = socket.create_connection(("127.0.0.1", port), 5,
                                            source_address=("127.0.0.2", 0))
        intruder.settimeout(5)
        assert intruder.recv(1024) == b""  # closed at once
        intruder.close()
        # The passive port is still there for the rightful client.
        conn = control.data(port)
        control.send("RETR f.bin\r\n")
        assert control.reply()[0].startswith("150")
        assert _read_all(conn) == content
        assert control.reply()[0].startswith("226")
    audit = server.audit_path.read_text()
    assert '"data_client": "127.0.0.2"' in audit and "ftp.data_peer_refused" in audit


@pytest.mark.parametrize("argument, verb", [
    ("127,0,0,3,200,10", "PORT"),
    ("127,0,0,1,0,21", "PORT"),
    ("|1|127.0.0.3|51210|", "EPRT"),
    ("|1|127.0.0.1|80|", "EPRT"),
])
def test_bounce_targets_are_refused(server: ServerProcess, make_user: UserFactory,
                                    argument: str, verb: str) -> None:
    user = make_user("bounce")
    with TLSControl(server.ftp_port, user) as control:
        [reply] = control.command(f"{verb} {argument}")
        assert reply.startswith("504 ") and "your own address" in reply
    assert "ftp.port_refused" in server.audit_path.read_text()


# -- real clients, passive and active ---------------------------------------


def test_curl_passive(server: ServerProcess, make_user: UserFactory,
                      tmp_path: Path) -> None:
    """
    curl over explicit FTPS with PROT P, EPSV and PASV.

    (curl 7.88's active mode fails on its own side before the TLS handshake:
    "sa_addr inet_ntop() failed with errno 97" after accepting our
    connection; active mode is tested with lftp and ftplib below.)
    """
    curl = require_tool("curl")
    user = make_user("curl")
    content = os.urandom(4 * 1024 * 1024 + 7)
    source = tmp_path / "src.bin"
    source.write_bytes(content)
    base = f"ftp://127.0.0.1:{server.ftp_port}/"
    auth = f"{user.name}:{user.password}"
    for mode in ([], ["--disable-epsv"]):
        common = [curl, "-sS", "--ssl-reqd", "-k", "-u", auth, *mode]
        up = subprocess.run([*common, "-T", str(source), base + "up.bin"],
                            capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert sha256((user.home / "up.bin").read_bytes()) == sha256(content)
        down = subprocess.run([*common, base + "up.bin", "-o", str(tmp_path / "down.bin")],
                              capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert sha256((tmp_path / "down.bin").read_bytes()) == sha256(content)
        (user.home / "up.bin").unlink()


def test_lftp_active_mode(server: ServerProcess, make_user: UserFactory,
                          tmp_path: Path) -> None:
    lftp = require_tool("lftp")
    user = make_user("active")
    content = os.urandom(2 * 1024 * 1024 + 3)
    (tmp_path / "src.bin").write_bytes(content)
    script = "; ".join([
        "set cmd:fail-exit true", "set net:max-retries 1", "set net:timeout 20",
        "set ssl:verify-certificate no", "set ftp:ssl-force true",
        "set ftp:ssl-protect-data true", "set ftp:passive-mode false",
        f"open -u {user.name},{user.password} ftp://127.0.0.1:{server.ftp_port}",
        f"lcd {tmp_path}", "put src.bin -o act.bin", "get act.bin -o back.bin",
    ])
    result = subprocess.run([lftp, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sha256((user.home / "act.bin").read_bytes()) == sha256(content)
    assert sha256((tmp_path / "back.bin").read_bytes()) == sha256(content)


def test_ftplib_active_mode(server: ServerProcess, make_user: UserFactory) -> None:
    user, content = _user_with_file(make_user, 1_500_000)
    ftp = explicit_ftps(server.ftp_port)
    ftp.login(user.name, user.password)
    ftp.prot_p()
    ftp.set_pasv(False)
    assert sha256(retrieve(ftp, "f.bin")) == sha256(content)
    ftp.quit()


@pytest.mark.parametrize("version", ["TLS1.2", "TLS1.3"])
def test_lftp_uploads_twenty_times(server: ServerProcess, make_user: UserFactory,
                                   tmp_path: Path, version: str) -> None:
    """
    Twenty lftp (GnuTLS) uploads in a row, each complete and intact.

    TLS 1.3 uploads used to be cut short at random sizes by a reset that
    the client's unread session tickets provoked (see transfer.start_tls).
    """
    lftp = require_tool("lftp")
    user = make_user("lftp")
    content = os.urandom(3 * 1024 * 1024 + 11)
    (tmp_path / "src.bin").write_bytes(content)
    puts = "; ".join(f"put src.bin -o up{i}.bin" for i in range(20))
    script = "; ".join([
        "set cmd:fail-exit true", "set net:max-retries 1", "set net:timeout 20",
        "set ssl:verify-certificate no", "set ftp:ssl-force true",
        "set ftp:ssl-protect-data true",
        f"set ssl:priority NORMAL:-VERS-ALL:+VERS-{version}",
        f"open -u {user.name},{user.password} ftp://127.0.0.1:{server.ftp_port}",
        f"lcd {tmp_path}", puts,
    ])
    result = subprocess.run([lftp, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = sha256(content)
    for i in range(20):
        assert sha256((user.home / f"up{i}.bin").read_bytes()) == expected, i
    tls_versions = {line.split('"tls": "')[1].split('"')[0]
                    for line in server.audit_path.read_text().splitlines()
                    if '"ftp.login"' in line and user.name in line and '"tls": "' in line}
    assert tls_versions == {version.replace("TLS", "TLSv")}


# -- cut short, aborted, timed out ------------------------------------------


def test_upload_cut_without_close_notify_is_not_committed(
        server: ServerProcess, make_user: UserFactory) -> None:
    user, old = _user_with_file(make_user, 1000, "keep.bin")
    with TLSControl(server.ftp_port, user) as control:
        port = control.passive_port()
        conn = control.data(port)
        control.send("STOR keep.bin\r\n")
        assert control.reply()[0].startswith("150")
        conn.do_handshake()
        conn.sendall(os.urandom(300_000))
        # Close the TCP connection under TLS: no close_notify.
        raw = socket.socket(fileno=os.dup(conn.fileno()))
        raw.shutdown(socket.SHUT_RDWR)
        raw.close()
        conn.close()
        [reply] = control.reply()
        assert reply.startswith("426 ") and "unchanged" in reply, reply
    assert (user.home / "keep.bin").read_bytes() == old
    assert not [p for p in user.home.iterdir() if p.name.startswith(".rumpus-upload-")]


def test_abor_during_download(server: ServerProcess, make_user: UserFactory) -> None:
    user, _ = _user_with_file(make_user, 64 * 1024 * 1024)
    with TLSControl(server.ftp_port, user) as control:
        port = control.passive_port()
        conn = control.data(port)
        control.send("RETR f.bin\r\n")
        assert control.reply()[0].startswith("150")
        conn.do_handshake()
        conn.recv(65536)  # some data, then stop reading
        control.send("ABOR\r\n")
        replies = [control.reply()[0], control.reply()[0]]
        conn.close()
        assert replies[0].startswith("426 ") and replies[1].startswith("226 "), replies
        assert control.command("NOOP")[0].startswith("200")


def test_data_connection_that_never_arrives(short_timeouts: ServerProcess) -> None:
    password = "short-timeouts-pw1"
    short_timeouts.add_user("late", password)
    (short_timeouts.home("late") / "f.bin").write_bytes(b"x" * 1000)
    user = User("late", password, short_timeouts.home("late"))
    with TLSControl(short_timeouts.ftp_port, user) as control:
        port = control.passive_port()
        started = time.monotonic()
        control.send("RETR f.bin\r\n")
        assert control.reply()[0].startswith("150")
        [reply] = control.reply()
        assert reply.startswith("425 "), reply
        assert time.monotonic() - started < 5
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 2).close()
        assert control.command("NOOP")[0].startswith("200")


def test_client_that_stops_reading_times_out(short_timeouts: ServerProcess) -> None:
    password = "short-timeouts-pw2"
    short_timeouts.add_user("stalls", password)
    (short_timeouts.home("stalls") / "f.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    user = User("stalls", password, short_timeouts.home("stalls"))
    with TLSControl(short_timeouts.ftp_port, user) as control:
        port = control.passive_port()
        conn = control.data(port)
        control.send("RETR f.bin\r\n")
        assert control.reply()[0].startswith("150")
        conn.do_handshake()
        conn.recv(1024)  # then never read again
        [reply] = control.reply()
        assert reply.startswith("426 "), reply
        conn.close()
        assert control.command("NOOP")[0].startswith("200")


def test_passive_range_serves_more_transfers_than_ports(
        short_timeouts: ServerProcess) -> None:
    password = "short-timeouts-pw3"
    short_timeouts.add_user("many", password)
    content = os.urandom(100_000)
    (short_timeouts.home("many") / "f.bin").write_bytes(content)
    ftp = ReusingFTP_TLS(context=client_context(), timeout=10)
    ftp.connect("127.0.0.1", short_timeouts.ftp_port)
    ftp.login("many", password)
    ftp.prot_p()
    digest = hashlib.sha256(content).hexdigest()
    for _ in range(25):  # 25 transfers through a range of 5 ports
        assert sha256(retrieve(ftp, "f.bin")) == digest
    ftp.quit()


def test_client_that_handshakes_before_the_command(server: ServerProcess,
                                                   make_user: UserFactory) -> None:
    """
    Some clients start TLS on a passive data connection before they send
    RETR; the server must not wait for the command to answer the handshake.
    """
    user, content = _user_with_file(make_user, 2_000_000)
    with TLSControl(server.ftp_port, user) as control:
        port = control.passive_port()
        conn = control.data(port)
        conn.settimeout(10)
        conn.do_handshake()  # before any transfer command: must not hang
        control.send("RETR f.bin\r\n")
        assert control.reply()[0].startswith("150")
        assert _read_all(conn) == content
        assert control.reply()[0].startswith("226")
        # A connection handshaken and then abandoned is cleaned up by the next PASV.
        port = control.passive_port()
        idle = control.data(port)
        idle.settimeout(10)
        idle.do_handshake()
        control.passive_port()
        idle.settimeout(5)
        assert idle.recv(1) == b""
        assert control.command("NOOP")[0].startswith("200")
