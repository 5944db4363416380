"""
Issue #13 end to end: the real server (``twistd -n rumpus-secure``) with
``--xferlog`` and ``--metrics``, real clients (ftplib over explicit FTPS,
curl over implicit FTPS and HTTPS), and what lands in ``audit.log``, the
xferlog, the console, the access log and the Prometheus page.
"""

from __future__ import annotations

import ftplib
import io
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServerProcess, free_port, require_tool

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


class FTPS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control TLS session."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("transfer-logs")
    metrics_port = free_port()
    process = ServerProcess(
        tmp, xferlog=str(tmp / "xferlog"), public_host="127.0.0.1",
        metrics=f"tcp:{metrics_port}:interface=127.0.0.1", safe_list="127.0.0.0/8",
    )
    process.ports["metrics"] = metrics_port  # start() waits for it too
    with process:
        process.add_user("alice", "alice-password-1")
        process.add_user("bob", "bob-password-22")
        yield process
    assert "Traceback" not in process.log_text(), process.log_text()


def login(server: ServerProcess, name: str, password: str) -> FTPS:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = FTPS(context=context, timeout=TIMEOUT)
    ftp.connect("127.0.0.1", server.ftp_port)
    ftp.auth()
    ftp.login(name, password)
    ftp.prot_p()
    return ftp


def audit(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.audit_path.read_text().splitlines()]


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def scrape(server: ServerProcess) -> str:
    url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/plain")
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        if {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


def test_ftp_transfers_reach_every_log(server: ServerProcess) -> None:
    before = scrape(server)
    alice = login(server, "alice", "alice-password-1")
    bob = login(server, "bob", "bob-password-22")
    # Two accounts from one address, interleaved.
    alice.storbinary("STOR report two.pdf", io.BytesIO(b"a" * 100_000))
    bob.mkd("inbox")
    bob.storbinary("STOR inbox/b.txt", io.BytesIO(b"bob's file"))
    got = bytearray()
    alice.retrbinary("RETR report two.pdf", got.extend)
    assert len(got) == 100_000
    bob.rename("inbox/b.txt", "inbox/c.txt")
    bob.delete("inbox/c.txt")
    bob.rmd("inbox")
    during = scrape(server)
    assert sample(during, "rumpus_sessions_open", protocol="ftps-explicit") >= 2
    alice.quit()
    bob.quit()

    wait_for(lambda: len([e for e in audit(server) if e["event"] == "ftp.rmdir"]) == 1,
             "the rmdir was not audited")
    events = audit(server)
    [up_a] = [e for e in events if e["event"] == "ftp.upload" and e["account"] == "alice"]
    assert (up_a["path"], up_a["bytes"], up_a["outcome"], up_a["protocol"]) == (
        "/report two.pdf", 100_000, "complete", "ftps-explicit")
    assert up_a["tls"].startswith("TLSv1.") and up_a["client"] == "127.0.0.1"
    [up_b] = [e for e in events if e["event"] == "ftp.upload" and e["account"] == "bob"]
    assert (up_b["path"], up_b["bytes"]) == ("/inbox/b.txt", 10)
    [down] = [e for e in events if e["event"] == "ftp.download"]
    assert (down["account"], down["bytes"]) == ("alice", 100_000)
    changes = [(e["event"], e["account"], e["path"]) for e in events
               if e["event"] in ("ftp.mkdir", "ftp.rename", "ftp.delete", "ftp.rmdir")]
    assert changes == [("ftp.mkdir", "bob", "/inbox"),
                       ("ftp.rename", "bob", "/inbox/b.txt"),
                       ("ftp.delete", "bob", "/inbox/c.txt"),
                       ("ftp.rmdir", "bob", "/inbox")]

    lines = (server.tmp_path / "xferlog").read_text().splitlines()
    fields = [line.split(" ")[-13:] for line in lines]
    assert [(f[3], f[2], f[6], f[8], f[12]) for f in fields] == [
        ("/report_two.pdf", "100000", "i", "alice", "c"),
        ("/inbox/b.txt", "10", "i", "bob", "c"),
        ("/report_two.pdf", "100000", "o", "alice", "c"),
    ]

    console = server.log_text()
    assert "upload complete: alice /report_two.pdf (100000 bytes" in console
    assert "download complete: alice" in console
    assert "Starting factory" not in console

    after = scrape(server)
    for direction, size in (("upload", 100_010), ("download", 100_000)):
        grown = (sample(after, "rumpus_transfer_bytes_total", protocol="ftps-explicit",
                        direction=direction, outcome="complete")
                 - sample(before, "rumpus_transfer_bytes_total", protocol="ftps-explicit",
                          direction=direction, outcome="complete"))
        assert grown == size, direction
    assert (sample(after, "rumpus_logins_total", protocol="ftps-explicit", outcome="ok")
            - sample(before, "rumpus_logins_total", protocol="ftps-explicit",
                     outcome="ok")) == 2
    assert sample(after, "rumpus_tls_handshakes_total", protocol="ftps-explicit",
                  version="TLSv1.3") >= 2
    assert sample(after, "rumpus_password_check_seconds_count") >= 2
    assert 800 < sample(after, "rumpus_certificate_expiry_days") < 830  # 825-day self-signed

    report = server.cli("audit").stdout
    section = report.split("Transfers\n")[1]
    row = next(line for line in section.splitlines() if line.startswith("alice"))
    assert row.split()[:5] == ["alice", "1", "100000", "1", "100000"]


def test_implicit_ftps_download_with_curl(server: ServerProcess) -> None:
    curl = require_tool("curl")
    target = server.home("bob") / "pub.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"public\n")
    result = subprocess.run(
        [curl, "-sS", "-k", "--user", "bob:bob-password-22",
         f"ftps://127.0.0.1:{server.ftps_port}/pub.txt"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert result.stdout == b"public\n", result.stderr
    wait_for(lambda: any(e["event"] == "ftp.download" and e["path"] == "/pub.txt"
                         for e in audit(server)), "curl's download was not audited")
    [event] = [e for e in audit(server) if e.get("path") == "/pub.txt"]
    assert (event["account"], event["protocol"], event["bytes"]) == (
        "bob", "ftps-implicit", 7)


def test_cleartext_and_refused_commands_are_counted(server: ServerProcess) -> None:
    before = scrape(server)
    with socket.create_connection(("127.0.0.1", server.ftp_port), timeout=TIMEOUT) as s:
        s.recv(1024)
        s.sendall(b"LIST\r\n")
        s.recv(1024)
    after = scrape(server)
    assert (sample(after, "rumpus_refused_before_tls_total", command="LIST")
            - sample(before, "rumpus_refused_before_tls_total", command="LIST")) == 1


def test_web_access_log_and_server_header(server: ServerProcess, tmp_path: Path) -> None:
    curl = require_tool("curl")
    base = f"https://127.0.0.1:{server.https_port}"
    jar = tmp_path / "jar"

    def run(*args: str) -> str:
        result = subprocess.run([curl, "-sS", "-k", *args], capture_output=True,
                                text=True, timeout=30, stdin=subprocess.DEVNULL,
                                check=True)
        return result.stdout

    headers = run("-D", "-", "-o", "/dev/null", f"{base}/login")
    assert "server: rumpus-secure" in headers.lower()
    assert "twisted" not in headers.lower()
    plain = run("-D", "-", "-o", "/dev/null", f"http://127.0.0.1:{server.http_port}/")
    assert "twisted" not in plain.lower() and "server: rumpus-secure" in plain.lower()

    run("-c", str(jar), "-o", "/dev/null", "-H", f"Origin: {base}",
        "--data-urlencode", "username=alice",
        "--data-urlencode", "password=alice-password-1", f"{base}/login")
    run("-b", str(jar), "-o", "/dev/null", f"{base}/files/?marker=1")
    run("-b", str(jar), "-o", "/dev/null", f"{base}/static/app.css")
    wait_for(lambda: "/files/?marker=1" in server.log_text(), "no access log line")
    [line] = [x for x in server.log_text().splitlines() if "/files/?marker=1" in x]
    assert '"127.0.0.1" - alice [' in line
    assert "/static/app.css" not in server.log_text()


def test_start_up_noise_is_gone(server: ServerProcess) -> None:
    console = server.log_text()
    assert console.count("is self-signed") == 1, console
    assert "Starting factory" not in console
    assert "object at 0x" not in console


def test_port_in_use_is_reported_once(tmp_path: Path) -> None:
    """
    On a terminal stdout (twistd -n's log) and stderr show together: the
    error must be there once, not once per stream.
    """
    from tests.server_process import subprocess_env, twistd_command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            twistd_command("--data-dir", str(tmp_path / "d"),
                           "--ftp", f"tcp:{port}:interface=127.0.0.1",
                           "--ftps", "none", "--http", "none", "--https", "none"),
            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL, check=False)
    both = result.stdout + result.stderr
    assert result.returncode == 1, both
    assert both.count("cannot listen for ftp") == 1, both


def test_https_handshakes_and_failures_are_counted(server: ServerProcess) -> None:
    curl = require_tool("curl")
    before = scrape(server)
    subprocess.run([curl, "-sS", "-k", "-o", "/dev/null", "--tlsv1.2", "--tls-max", "1.2",
                    f"https://127.0.0.1:{server.https_port}/login"],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    # Plain HTTP to the HTTPS port: a failed handshake.
    subprocess.run([curl, "-sS", "-o", "/dev/null", "--max-time", "5",
                    f"http://127.0.0.1:{server.https_port}/"],
                   check=False, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)
    after = scrape(server)

    def grown(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grown("rumpus_tls_handshakes_total", protocol="https", version="TLSv1.2") == 1
    assert grown("rumpus_tls_handshake_failures_total", protocol="https",
                 reason="http-request") == 1
