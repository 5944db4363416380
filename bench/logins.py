#!/usr/bin/env python3
"""
Repeat logins over explicit FTPS: rumpus-secure vs pyftpdlib (vs vsftpd).

Starts the servers of ``bench/ftps_throughput.py`` on loopback, then runs
LOGINS complete logins (connect, AUTH TLS, USER, PASS, QUIT) from WORKERS
client processes (Python's ftplib; processes, not threads, so the client's
GIL is not the limit).  rumpus-secure is warmed first, so its verifier cache
holds the password and no login pays argon2id: this measures the cost of a
login *around* the hash.  pyftpdlib compares plaintext passwords; vsftpd
pays yescrypt through PAM on every login.

Prints logins/s, the median and p99 latency seen by the clients, and the
server's CPU per login (from /proc), each server in the same run, then
rumpus-secure's ratios.

    python bench/logins.py [--logins 2000] [--workers 8] [--skip vsftpd]

Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from ftplib import FTP_TLS
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ftps_throughput import (  # noqa: E402
    PASSWORD,
    Server,
    USER,
    start_servers,
)


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _logins(args: tuple[int, int]) -> list[float]:
    port, count = args
    context = _context()
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        ftp = FTP_TLS(context=context, timeout=30)
        ftp.connect("127.0.0.1", port)
        ftp.auth()
        ftp.login(USER, PASSWORD)
        ftp.quit()
        latencies.append(time.perf_counter() - start)
    return latencies


def measure(server: Server, logins: int, workers: int) -> dict[str, float]:
    _logins((server.port, 3))  # warm: TLS, the verifier cache, the page cache
    per = logins // workers
    before = server.cpu()
    start = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        latencies = [x for part in pool.map(_logins, [(server.port, per)] * workers)
                     for x in part]
    elapsed = time.perf_counter() - start
    after = server.cpu()
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_ms": ((after - before) * 1000 / len(latencies)
                   if before is not None and after is not None else float("nan")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[],
                        help="server to skip: vsftpd or pyftpdlib")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rumpus-logins-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        marker = work / "marker.bin"
        marker.write_bytes(b"x")
        servers: list[Server] = []
        try:
            start_servers(servers, work, marker, args.skip)
            results: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
            for round_ in range(args.rounds):
                for server in servers:
                    r = measure(server, args.logins if server.name != "vsftpd"
                                else max(args.workers, args.logins // 10), args.workers)
                    results[server.name].append(r)
                    print(f"round {round_ + 1} {server.name:14s} {r['rate']:7.0f} logins/s "
                          f"median {r['median_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                          f"server CPU {r['cpu_ms']:5.2f} ms/login", flush=True)
            print()
            print(f"repeat logins (connect, AUTH TLS, USER, PASS, QUIT), {args.workers} "
                  f"client processes, median of {args.rounds} rounds, {os.cpu_count()} cores")
            print(f"{'server':14s} {'logins/s':>9s} {'median ms':>10s} {'p99 ms':>8s} "
                  f"{'CPU ms/login':>13s}")
            medians = {}
            for name, rs in results.items():
                m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                medians[name] = m
                print(f"{name:14s} {m['rate']:9.0f} {m['median_ms']:10.1f} {m['p99_ms']:8.1f} "
                      f"{m['cpu_ms']:13.2f}")
            base = medians["rumpus-secure"]
            for name, m in medians.items():
                if name != "rumpus-secure":
                    print(f"rumpus-secure vs {name}: {base['rate'] / m['rate']:.2f}x the rate, "
                          f"{base['cpu_ms'] / m['cpu_ms']:.2f}x the CPU per login")
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
