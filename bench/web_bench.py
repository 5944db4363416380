"""
Web benchmarks; prints numbers (not a test).

    python bench/web_bench.py upload   [--size-gib 2]   server memory during a streamed upload
    python bench/web_bench.py download [--size-gib 1]   HTTPS download, rumpus vs nginx (sendfile)
    python bench/web_bench.py redirect [--seconds 5]    wrk on the HTTP redirect vs stock twisted.web
    python bench/web_bench.py all

Runs the real server (twistd -n rumpus-secure) on loopback ports with a
throw-away data directory.  Needs curl, nginx and wrk on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench password 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if process.poll() is not None:
                raise SystemExit("process exited early")
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


class Server:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.http, self.https = free_port(), free_port()
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(self.data),
                        "init"], check=True, capture_output=True, env=env())
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(self.data),
                        "user", "add", "bench", "--password-stdin"], input=PASSWORD + "\n",
                       text=True, env=env(), check=True, capture_output=True)
        self.log = open(root / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "rumpus-secure", "--data-dir", str(self.data), "--ftp", "none",
             "--ftps", "none", "--http", f"tcp:{self.http}:interface=127.0.0.1",
             "--https", f"tcp:{self.https}:interface=127.0.0.1", "--public-host", "127.0.0.1"],
            cwd=root, env=env(), stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.https, self.process)
        self.origin = f"https://127.0.0.1:{self.https}"
        self.jar = root / "cookies.txt"
        self.home = self.data / "files" / "bench"

    def login(self) -> str:
        subprocess.run(["curl", "-sk", "-c", str(self.jar), "-H", f"Origin: {self.origin}",
                        "-d", f"username=bench&password={PASSWORD}", "-o", "/dev/null",
                        self.origin + "/login"], check=True)
        page = subprocess.run(["curl", "-sk", "-b", str(self.jar), self.origin + "/files/"],
                              check=True, capture_output=True, text=True).stdout
        return re.search(r"name=csrf value='([^']+)'", page).group(1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def bench_upload(root: Path, size_gib: float) -> None:
    server = Server(root)
    try:
        token = server.login()
        big = root / "upload.bin"
        with open(big, "wb") as f:
            f.truncate(int(size_gib * 2**30))
        pid = server.process.pid
        before_rss = status_kib(pid, "VmRSS")
        before_hwm = status_kib(pid, "VmHWM")
        start = time.monotonic()
        curl = subprocess.Popen(
            ["curl", "-sk", "-b", str(server.jar), "-H", f"Origin: {server.origin}",
             "-H", "Accept: application/json", "-F", f"csrf={token}", "-F", f"file=@{big}",
             "-w", "%{http_code}", "-o", "/dev/null", server.origin + "/upload?dir=/"],
            stdout=subprocess.PIPE, text=True)
        peak_rss = before_rss
        while curl.poll() is None:  # sample: the login's argon2 peak hides VmHWM growth
            peak_rss = max(peak_rss, status_kib(pid, "VmRSS"))
            time.sleep(0.02)
        out = curl.stdout.read()
        elapsed = time.monotonic() - start
        after_hwm = status_kib(pid, "VmHWM")
        stored = (server.home / "upload.bin").stat().st_size
        print(f"upload {size_gib:g} GiB: HTTP {out}, stored {stored} bytes in {elapsed:.1f} s "
              f"({stored / elapsed / 2**20:.0f} MiB/s)")
        print(f"  server RSS before {before_rss / 1024:.1f} MiB, peak before "
              f"{before_hwm / 1024:.1f} MiB, peak after {after_hwm / 1024:.1f} MiB: "
              f"growth {(after_hwm - before_hwm) / 1024:.1f} MiB")
        print(f"  sampled RSS during the upload: max {peak_rss / 1024:.1f} MiB, "
              f"growth over before {(peak_rss - before_rss) / 1024:.1f} MiB")
    finally:
        server.stop()


def curl_speed(url: str, jar: Path | None = None) -> float:
    args = ["curl", "-skf", "-o", "/dev/null", "-w", "%{speed_download}", url]
    if jar is not None:
        args[1:1] = ["-b", str(jar)]
    return float(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def bench_download(root: Path, size_gib: float) -> None:
    server = Server(root)
    nginx = None
    try:
        server.login()
        target = server.home / "big.bin"
        # Real bytes, not a sparse file: reading holes is a special case, and
        # the first read of fresh pages on this VM costs ~10x a later one, so
        # writing the file also warms the page cache both servers read from.
        block = os.urandom(1 << 20)
        with open(target, "wb") as f:
            for _ in range(int(size_gib * 1024)):
                f.write(block)
        cert = next(p for p in server.data.rglob("*.pem") if "key" not in p.name)
        key = next(p for p in server.data.rglob("*key*.pem"))
        port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""
            user root; worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/nginx.err;
            events {{ worker_connections 64; }}
            http {{ access_log off; sendfile on; tcp_nopush on;
              client_body_temp_path {root}/ntmp; proxy_temp_path {root}/ntmp;
              fastcgi_temp_path {root}/ntmp; uwsgi_temp_path {root}/ntmp; scgi_temp_path {root}/ntmp;
              server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert};
                ssl_certificate_key {key}; root {server.home}; }} }}
        """))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)])
        wait_port(port, nginx)
        ratios = []
        for round_ in range(3):
            ours = curl_speed(server.origin + "/files/big.bin", server.jar)
            theirs = curl_speed(f"https://127.0.0.1:{port}/big.bin")
            ratios.append(ours / theirs)
            print(f"download {size_gib:g} GiB round {round_ + 1}: rumpus {ours / 2**20:.0f} MiB/s, "
                  f"nginx {theirs / 2**20:.0f} MiB/s, ratio {ours / theirs:.2f}")
        print(f"download median ratio rumpus/nginx: {statistics.median(ratios):.2f}")
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.stop()


STOCK = """
import sys
from twisted.internet import reactor
from twisted.web import server, util
site = server.Site(util.Redirect(b"https://127.0.0.1/"))
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
reactor.run()
"""


def wrk(url: str, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", url], check=True,
                         capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def bench_redirect(root: Path, seconds: int) -> None:
    server = Server(root)
    stock_port = free_port()
    stock = subprocess.Popen([sys.executable, "-c", STOCK, str(stock_port)], env=env())
    try:
        wait_port(stock_port, stock)
        path = "/files/some%20dir/file.txt?x=1"
        ours = wrk(f"http://127.0.0.1:{server.http}{path}", seconds)
        theirs = wrk(f"http://127.0.0.1:{stock_port}{path}", seconds)
        print(f"redirect: rumpus {ours:.0f} req/s, stock twisted.web util.Redirect "
              f"{theirs:.0f} req/s, ratio {ours / theirs:.2f}")
    finally:
        stock.terminate()
        stock.wait(10)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["upload", "download", "redirect", "all"])
    parser.add_argument("--size-gib", type=float, default=None)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("curl", "nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"note: {tool} not found")
    with tempfile.TemporaryDirectory(prefix="rumpus-bench-") as tmp:
        root = Path(tmp)
        if args.what in ("upload", "all"):
            (root / "u").mkdir()
            bench_upload(root / "u", args.size_gib or 2)
        if args.what in ("download", "all"):
            (root / "d").mkdir()
            (root / "d" / "ntmp").mkdir()
            bench_download(root / "d", args.size_gib or 1)
        if args.what in ("redirect", "all"):
            (root / "r").mkdir()
            bench_redirect(root / "r", args.seconds)


if __name__ == "__main__":
    main()
