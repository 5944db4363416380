#!/usr/bin/env python3
"""
Listings of a big folder: rumpus-secure vs pyftpdlib vs vsftpd.

Starts the three servers of ``bench/ftps_throughput.py`` on loopback, fills
one folder in each home with N empty files (a tenth of them folders), and
lists it over FTPS (PROT P, TLS session reuse, Python's ftplib as client)
with MLSD, LIST and NLST, alternating between the servers, ROUNDS times.
For each it prints the median time to the first byte of the listing (from
sending the command: the server's directory read before it starts sending),
the median time to the last byte, and the server's peak memory growth
during the listing over its RSS just before it (the server and its session
processes, sampled every 5 ms; the largest of the rounds).  vsftpd has no MLSD.  rumpus-secure's web listing of
the same folder (HTTPS, the file manager page) is measured the same way.

    python bench/listings.py [--entries 100000] [--rounds 3] [--skip vsftpd]

Needs root for vsftpd.  Not a test.
"""

from __future__ import annotations

import argparse
import ftplib
import http.client
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ftps_throughput import (  # noqa: E402
    PASSWORD,
    Server,
    USER,
    Vsftpd,
    start_servers,
)

FOLDER = "big"


def family(pid: int) -> list[int]:
    """The process and its descendants (vsftpd runs two per session)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
                queue.extend(int(c) for c in children.split())
        except OSError:
            continue
    return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except OSError:
            pass
    return total


class PeakMemory:
    """Sample the RSS of some processes every 5 ms until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base = rss_kib(pids)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib(self.pids))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pids))
        return self.peak


class Client(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control session (RFC 4217)."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                        session=self.sock.session)
        return conn, size


def ftp_client(server: Server) -> Client:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ftp = Client(context=context, timeout=300)
    ftp.connect("127.0.0.1", server.port)
    ftp.login(USER, PASSWORD)
    ftp.prot_p()
    ftp.cwd(FOLDER)
    return ftp


def list_once(ftp: Client, command: str) -> tuple[float, float, int, int]:
    """(seconds to the first byte, to the last, bytes, lines) of one listing."""
    started = time.perf_counter()
    conn, _ = ftp.ntransfercmd(command)
    first = None
    size = lines = 0
    with conn:
        while True:
            chunk = conn.recv(256 * 1024)
            if not chunk:
                break
            if first is None:
                first = time.perf_counter()
            size += len(chunk)
            lines += chunk.count(b"\n")
        conn.unwrap()
    ended = time.perf_counter()
    ftp.voidresp()
    return (first or ended) - started, ended - started, size, lines


def web_once(port: int, cookie: str) -> tuple[float, float, int, int]:
    context = ssl._create_unverified_context()  # the server's own self-signed certificate
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=300)
    connection.connect()
    started = time.perf_counter()
    # every entry on one page, as MLSD sends them (the default page has 5,000)
    connection.request("GET", f"/files/{FOLDER}/?page=all", headers={"Cookie": cookie})
    response = connection.getresponse()
    first = None
    size = 0
    while True:
        chunk = response.read1(256 * 1024)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter()
        size += len(chunk)
    ended = time.perf_counter()
    assert response.status == 200, response.status
    connection.close()
    return (first or ended) - started, ended - started, size, 0


def web_login(port: int) -> str:
    context = ssl._create_unverified_context()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    connection.request("POST", "/login", body=urlencode(
        {"username": USER, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Origin": f"https://127.0.0.1:{port}"})
    response = connection.getresponse()
    response.read()
    assert response.status == 303, response.status
    return response.getheader("set-cookie", "").split(";", 1)[0]


def fill(folder: Path, entries: int, owner: str | None) -> None:
    folder.mkdir()
    for index in range(entries):
        if index % 10 == 0:
            (folder / f"folder {index:06d}").mkdir()
        else:
            (folder / f"holiday photo {index:06d} - final version.jpg").touch()
    if owner:
        for path in [folder, *folder.iterdir()]:
            shutil.chown(path, owner)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[],
                        help="server to skip: vsftpd or pyftpdlib")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rumpus-listings-", dir=args.dir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        marker = work / "marker.bin"
        marker.write_bytes(b"x")
        servers: list[Server] = []
        try:
            rumpus = start_servers(servers, work, marker, args.skip, order=("pyftpdlib", "vsftpd"))
            for server in servers:
                fill(server.home / FOLDER, args.entries,
                     USER if isinstance(server, Vsftpd) else None)
            print(f"{len(servers)} folders of {args.entries} entries in {work}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            cookie = web_login(rumpus.https_port)
            clients = {server.name: ftp_client(server) for server in servers}
            # name -> command -> [(first, last, bytes, lines)]; name -> command -> peak KiB
            runs: dict[str, dict[str, list[tuple[float, float, int, int]]]] = {}
            growth: dict[str, dict[str, int]] = {}
            targets: list[tuple[Server, str]] = []
            for command in ("MLSD", "LIST", "NLST", "web"):
                for server in servers:
                    if command == "MLSD" and isinstance(server, Vsftpd):
                        continue
                    if command == "web" and server is not rumpus:
                        continue
                    targets.append((server, command))
            for round_ in range(args.rounds):
                for server, command in targets:
                    pids = family(server.proc.pid)  # type: ignore[attr-defined]
                    sampler = PeakMemory(pids)
                    if command == "web":
                        result = web_once(rumpus.https_port, cookie)
                    else:
                        result = list_once(clients[server.name], command)
                    peak = sampler.stop()
                    runs.setdefault(server.name, {}).setdefault(command, []).append(result)
                    grown = growth.setdefault(server.name, {})
                    grown[command] = max(grown.get(command, 0), peak - sampler.base)
                    print(f"round {round_ + 1} {server.name:14s} {command:4s} first "
                          f"{result[0] * 1000:7.0f} ms  last {result[1] * 1000:7.0f} ms  "
                          f"{result[2] / 1e6:6.2f} MB  {result[3]} lines  "
                          f"peak +{(peak - sampler.base) / 1024:.1f} MiB", flush=True)
            for ftp in clients.values():
                ftp.quit()
            print()
            print(f"{args.entries} entries, ftplib over FTPS (PROT P), median of {args.rounds}; "
                  f"load average {os.getloadavg()[0]:.2f}")
            print(f"{'server':14s} {'command':8s} {'first byte ms':>14s} {'total ms':>9s} "
                  f"{'MB':>6s} {'peak MiB':>9s}")
            for name, commands in runs.items():
                for command, results in commands.items():
                    print(f"{name:14s} {command:8s} "
                          f"{statistics.median(r[0] for r in results) * 1000:14.0f} "
                          f"{statistics.median(r[1] for r in results) * 1000:9.0f} "
                          f"{results[0][2] / 1e6:6.2f} {growth[name][command] / 1024:9.1f}")
            print()
            print("peak MiB: the largest growth of the server's RSS (with its session "
                  "processes) during one listing, any round")
            print("peer time / rumpus-secure time (above 1: rumpus-secure is faster)")
            mine = runs["rumpus-secure"]
            for name, commands in runs.items():
                if name == "rumpus-secure":
                    continue
                for command, results in commands.items():
                    ours = mine[command]
                    print(f"{name} / rumpus-secure {command}: first byte "
                          f"{statistics.median(r[0] for r in results) / statistics.median(r[0] for r in ours):.2f}x, "
                          f"total {statistics.median(r[1] for r in results) / statistics.median(r[1] for r in ours):.2f}x")
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
