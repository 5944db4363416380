#!/usr/bin/env python3
"""
The web manager's page weight and the time to list a big folder.

    python bench/web_listing.py [--entries 10000] [--rounds 5]

Starts the real server (twistd -n rumpus-secure) on loopback with a
throw-away data directory, fills one folder with N files (a tenth of them
folders), logs in over HTTPS and fetches the listing several times.
Prints the median and worst time to the last byte (the server's work: stat
and list in a thread, sort, render; the client is on loopback), the HTML
size (raw and gzip, as a proxy would send it) and the static CSS, JS and
the inlined icon sprite.  Not a test.
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
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "listing bench pw 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    context = ssl._create_unverified_context()  # the server's own self-signed certificate
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
                        "init"], check=True, capture_output=True, env=env)
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
                        "user", "add", "bench", "--password-stdin"],
                       input=PASSWORD + "\n", text=True, env=env, check=True,
                       capture_output=True)
        home = data / "files" / "bench" / "big"
        home.mkdir(parents=True)
        for index in range(args.entries):
            if index % 10 == 0:
                (home / f"folder {index:05d}").mkdir()
            else:
                (home / f"holiday photo {index:05d} - final version.jpg").write_bytes(b"x")
        port = free_port()
        origin = f"https://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "rumpus-secure", "--data-dir", str(data), "--ftp", "none",
             "--ftps", "none", "--http", "none",
             "--https", f"tcp:{port}:interface=127.0.0.1", "--public-host", "127.0.0.1"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not start")
                    time.sleep(0.1)
            status, headers, _ = fetch(
                port, "POST", "/login",
                urlencode({"username": "bench", "password": PASSWORD}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin})
            assert status == 303, status
            cookie = headers["set-cookie"].split(";", 1)[0]
            times, body = [], b""
            for _ in range(args.rounds):
                started = time.perf_counter()
                status, _, body = fetch(port, "GET", "/files/big/", headers={"Cookie": cookie})
                times.append(time.perf_counter() - started)
                assert status == 200, status
            css = fetch(port, "GET", "/static/app.css")[2]
            js = fetch(port, "GET", "/static/app.js")[2]
            _, _, empty = fetch(port, "GET", "/files/", headers={"Cookie": cookie})
        finally:
            server.terminate()
            server.wait(10)
    sprite = (REPO / "rumpus_secure" / "web" / "static" / "icons.svg").read_bytes()

    def kib(data: bytes) -> str:
        return f"{len(data) / 1024:8.1f} KiB raw {len(gzip.compress(data)) / 1024:7.1f} KiB gzip"

    print(f"listing of {args.entries} entries, {args.rounds} rounds:")
    print(f"  time to last byte: median {statistics.median(times) * 1000:.0f} ms, "
          f"worst {max(times) * 1000:.0f} ms")
    print(f"  HTML              {kib(body)}  ({len(body) / args.entries:.0f} B/entry)")
    print("page weight of an empty folder (HTML + CSS + JS):")
    print(f"  HTML              {kib(empty)}  (icon sprite {len(sprite)} B of it)")
    print(f"  app.css           {kib(css)}")
    print(f"  app.js            {kib(js)}")
    print(f"  total             {kib(empty + css + js)}")


if __name__ == "__main__":
    main()
