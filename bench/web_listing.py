#!/usr/bin/env python3
"""
The web manager's folder page for a big folder: time to the first byte and
to the first row, total time, the server's peak memory and CPU, and what a
second account waits meanwhile.  Not a test.

    python bench/web_listing.py [--entries 100000] [--rounds 3]
                                [--tree before=/path/to/old/checkout ...]

Starts the real server (twistd -n rumpus-secure) on loopback for each tree
(by default only this one; ``--tree NAME=PATH`` adds an older checkout, e.g.
``git archive <commit> | tar -x -C /tmp/before``, so before and after are
measured in the same run, alternating), with a throw-away data directory
each.  It fills one folder with N empty files (a tenth of them folders),
logs in over HTTPS and fetches, ROUNDS times:

* ``page``: ``/files/big/`` as a person gets it (the whole folder on one
  page before streaming; one page of it after);
* ``all``: ``/files/big/?page=all``, every entry on one page (the same page
  as ``page`` for a tree without pages);
* ``find``: ``/files/big/?q=photo 0999``, a search of every entry (91
  matches; this tree only).

For each it prints the median time to the response's first byte (the status
line), to the first row of the table, and to the last byte, the size, the
server's peak RSS growth over its RSS just before (sampled every 5 ms; the
largest of the rounds) and its CPU time (user + system, from /proc).  While
each big listing runs, a second account fetches its own small folder again
and again: the median and worst of those times show whether one big listing
holds everyone else up.  Last, the weight of an empty folder's page and the
static files.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "listing bench pw 1"
ROW = b"<td class=pick>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int) -> http.client.HTTPSConnection:
    context = ssl._create_unverified_context()  # the server's own self-signed certificate
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=600)


def fetch(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = connect(port)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Sample a process's RSS every 5 ms until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        """The growth in KiB."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_kib(self.pid)) - self.base


class Neighbour:
    """The other account, fetching its small folder in a loop until stopped."""

    def __init__(self, port: int, cookie: str) -> None:
        self.port, self.cookie = port, cookie
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            status, _, _ = fetch(self.port, "GET", "/files/", headers={"Cookie": self.cookie})
            assert status == 200, status
            self.times.append(time.perf_counter() - started)
            self._stop.wait(0.02)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.times


@dataclass
class Result:
    first_byte: float
    first_row: float
    total: float
    size: int
    rows: int
    grown_kib: int
    cpu: float
    neighbour: list[float] = field(default_factory=list)


def listing_once(server: Tree, path: str) -> Result:
    connection = connect(server.port)
    connection.connect()
    pid = server.process.pid
    sampler = PeakMemory(pid)
    cpu = cpu_seconds(pid)
    neighbour = Neighbour(server.port, server.neighbour_cookie)
    started = time.perf_counter()
    connection.request("GET", path, headers={"Cookie": server.cookie})
    response = connection.getresponse()
    first_byte = time.perf_counter()
    first_row = None
    size = rows = 0
    tail = b""
    while True:
        chunk = response.read1(256 * 1024)
        if not chunk:
            break
        seen = tail + chunk
        count = seen.count(ROW)
        if count and first_row is None:
            first_row = time.perf_counter()
        rows += count
        tail = seen[-(len(ROW) - 1):]
        size += len(chunk)
    ended = time.perf_counter()
    assert response.status == 200, response.status
    connection.close()
    used = cpu_seconds(pid) - cpu
    grown = sampler.stop()
    return Result(first_byte - started, (first_row or ended) - started, ended - started,
                  size, rows, grown, used, neighbour.stop())


@dataclass
class Tree:
    name: str
    path: Path
    work: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None  # type: ignore[assignment]
    cookie: str = ""
    neighbour_cookie: str = ""

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.path), PYTHONUNBUFFERED="1")

    def start(self, entries: int) -> None:
        data = self.work / "data"
        cli = [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data)]
        subprocess.run([*cli, "init"], check=True, capture_output=True, env=self.env())
        for user in ("bench", "neighbour"):
            subprocess.run([*cli, "user", "add", user, "--password-stdin"],
                           input=PASSWORD + "\n", text=True, env=self.env(), check=True,
                           capture_output=True)
        fill(data / "files" / "bench" / "big", entries)
        fill(data / "files" / "neighbour", 30)
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "rumpus-secure", "--data-dir", str(data), "--ftp", "none",
             "--ftps", "none", "--http", "none",
             "--https", f"tcp:{self.port}:interface=127.0.0.1", "--public-host", "127.0.0.1"],
            cwd=self.work, env=self.env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.name}: server did not start")
                time.sleep(0.1)
        self.cookie = self.login("bench")
        self.neighbour_cookie = self.login("neighbour")

    def login(self, user: str) -> str:
        status, headers, _ = fetch(
            self.port, "POST", "/login",
            urlencode({"username": user, "password": PASSWORD}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded",
             "Origin": f"https://127.0.0.1:{self.port}"})
        assert status == 303, status
        return headers["set-cookie"].split(";", 1)[0]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


def fill(folder: Path, entries: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(entries):
        if index % 10 == 0:
            (folder / f"folder {index:06d}").mkdir()
        else:
            (folder / f"holiday photo {index:06d} - final version.jpg").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[],
                        help="NAME=PATH of another checkout to measure too")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rumpus-web-listing-", dir=args.dir) as tmp:
        trees = [Tree("this", REPO, Path(tmp) / "this")]
        for spec in args.tree:
            name, _, path = spec.partition("=")
            trees.append(Tree(name, Path(path).resolve(), Path(tmp) / name))
        results: dict[tuple[str, str], list[Result]] = {}
        try:
            for tree in trees:
                tree.work.mkdir()
                tree.start(args.entries)
            print(f"{len(trees)} server(s), a folder of {args.entries} entries each; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            for round_ in range(args.rounds):
                for view, path in (("page", "/files/big/"), ("all", "/files/big/?page=all"),
                                   ("find", "/files/big/?q=photo%200999")):
                    for tree in trees:
                        if view == "find" and tree.name != "this":
                            continue  # older trees have no search
                        result = listing_once(tree, path)
                        results.setdefault((tree.name, view), []).append(result)
                        neighbour = result.neighbour or [0.0]
                        print(f"round {round_ + 1} {tree.name:8s} {view:4s} first byte "
                              f"{result.first_byte * 1000:7.0f} ms  first row "
                              f"{result.first_row * 1000:7.0f} ms  last "
                              f"{result.total * 1000:7.0f} ms  {result.size / 1e6:6.2f} MB "
                              f"{result.rows:6d} rows  peak +{result.grown_kib / 1024:6.1f} MiB"
                              f"  cpu {result.cpu:5.2f} s  neighbour median "
                              f"{statistics.median(neighbour) * 1000:5.0f} ms "
                              f"worst {max(neighbour) * 1000:5.0f} ms", flush=True)
            _, _, empty = fetch(trees[0].port, "GET", "/files/",
                                headers={"Cookie": trees[0].neighbour_cookie})
            css = fetch(trees[0].port, "GET", "/static/app.css")[2]
            js = fetch(trees[0].port, "GET", "/static/app.js")[2]
        finally:
            for tree in trees:
                tree.stop()
    print()
    print(f"{args.entries} entries, median of {args.rounds} (peak: largest growth of any "
          f"round); load average {os.getloadavg()[0]:.2f}")
    print(f"{'tree':8s} {'view':5s} {'first byte':>10s} {'first row':>10s} {'total':>8s} "
          f"{'MB':>7s} {'rows':>7s} {'peak MiB':>9s} {'CPU s':>6s} {'2nd acct ms':>12s}")
    for (name, view), runs in results.items():
        neighbour = [t for r in runs for t in r.neighbour] or [0.0]
        print(f"{name:8s} {view:5s} "
              f"{statistics.median(r.first_byte for r in runs) * 1000:8.0f}ms "
              f"{statistics.median(r.first_row for r in runs) * 1000:8.0f}ms "
              f"{statistics.median(r.total for r in runs) * 1000:6.0f}ms "
              f"{runs[0].size / 1e6:7.2f} {runs[0].rows:7d} "
              f"{max(r.grown_kib for r in runs) / 1024:9.1f} "
              f"{statistics.median(r.cpu for r in runs):6.2f} "
              f"{statistics.median(neighbour) * 1000:5.0f}/{max(neighbour) * 1000:<6.0f}")
    print("2nd acct: another account's small folder page, fetched in a loop during the "
          "listing: median/worst ms")
    sprite = (REPO / "rumpus_secure" / "web" / "static" / "icons.svg").read_bytes()

    def kib(data: bytes) -> str:
        return f"{len(data) / 1024:8.1f} KiB raw {len(gzip.compress(data)) / 1024:7.1f} KiB gzip"

    print("page weight of a folder of 30 entries (HTML + CSS + JS):")
    print(f"  HTML              {kib(empty)}  (icon sprite {len(sprite)} B of it)")
    print(f"  app.css           {kib(css)}")
    print(f"  app.js            {kib(js)}")
    print(f"  total             {kib(empty + css + js)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
