#!/usr/bin/env python3
"""
Small files over FTPS: rumpus-secure vs vsftpd vs pyftpdlib, with lftp.

Starts the three servers of ``bench/ftps_throughput.py`` on loopback, then,
for each, uploads COUNT files of SIZE bytes in one lftp session (``mirror
-R``, PROT P, TLS session reuse on, as lftp does by default) and downloads
them again (``mirror``), with one connection and with ``--parallel=N``.
Prints files/s and the server's CPU milliseconds per file for each, and the
ratios against rumpus-secure, all from the same run.

    python bench/small_files.py [--count 1000] [--size 4096] [--parallel 8]
                                [--skip vsftpd] [--skip pyftpdlib]

With ``--callgrind`` it instead starts rumpus-secure (and pyftpdlib unless
skipped; never vsftpd) under valgrind's callgrind and prints the
instructions executed per file, all threads, for COUNT uploads and COUNT
downloads in one lftp session: on this shared two-core machine CPU time per
file swings by 20-40% from run to run, instruction counts repeat to within
about 1%, so a change of a few percent shows.  System calls and the
kernel's work are not in them (``strace -c -f`` for those).

    python bench/small_files.py --callgrind [--count 200]

Needs lftp; root for vsftpd.  Not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ftps_throughput import (  # noqa: E402
    PASSWORD,
    Server,
    USER,
    Vsftpd,
    start_servers,
)


def lftp(server: Server, commands: str) -> float:
    """
    Run an lftp script against C{server}; return the wall-clock seconds.
    """
    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; "
        "set ssl:verify-certificate no; set ftp:passive-mode on; "
        "set ftp:prefer-epsv no; set net:max-retries 1; set xfer:clobber on; "
        f"open -u {USER},{PASSWORD} ftp://127.0.0.1:{server.port}; {commands}"
    )
    start = time.perf_counter()
    subprocess.run(["lftp", "-c", script], check=True, capture_output=True, timeout=900)
    return time.perf_counter() - start


def server_cpu(server: Server) -> float | None:
    """
    CPU seconds of the server and its session processes, live or reaped.

    vsftpd runs each session in a process of its own: counting only the
    server's reaped children (its C{cutime}) read 0.00 ms per file when the
    session had not been reaped yet.  So the live descendants count too
    (L{ftps_throughput.family_cpu_split}), after a moment for the session
    process to end.
    """
    time.sleep(0.3)
    split = server.cpu_split()
    return None if split is None else split[0] + split[1]


def measure(server: Server, commands: str, count: int) -> tuple[float, float | None]:
    """
    Files per second and the server's CPU milliseconds per file.
    """
    before = server_cpu(server)
    seconds = lftp(server, commands)
    after = server_cpu(server)
    cpu = (after - before) * 1000 / count if before is not None and after is not None else None
    return count / seconds, cpu


def owned_by_bench(path: Path, server: Server) -> None:
    if isinstance(server, Vsftpd):
        for dirpath, _dirs, files in os.walk(path):
            shutil.chown(dirpath, USER)
            for name in files:
                shutil.chown(os.path.join(dirpath, name), USER)


def callgrind_main(args: argparse.Namespace, source: Path, work: Path) -> int:
    """
    Instructions per small upload and download under callgrind.
    """
    import glob

    from login_profile import _under_callgrind, callgrind_count

    out = work / "callgrind.out"
    marker = work / "marker.bin"
    servers: list[Server] = []

    def counted(server: Server, commands: str, label: str) -> float:
        pid = str(server.proc.pid)  # type: ignore[attr-defined]
        for name in glob.glob(f"{out}.{pid}*"):
            os.unlink(name)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        total, files = callgrind_count(server, out, lambda: lftp(server, commands))
        if args.keep:
            for name in files:
                shutil.copy(name, Path(args.keep) / f"{server.name}-{label}-{Path(name).name}")
        return total / args.count

    try:
        with _under_callgrind(out):
            start_servers(servers, work, marker, sorted(set(args.skip) | {"vsftpd"}))
        warm = work / "warm"
        warm.mkdir()
        for i in range(5):
            (warm / f"w{i}.bin").write_bytes(os.urandom(args.size))
        for server in servers:
            lftp(server, f"mirror -R {warm} warm; mirror warm {work / ('warm-' + server.name)}")
            up = counted(server, f"mirror -R {source} up", "stor")
            owned_by_bench(server.home / "up", server)
            down = counted(server, f"mirror up {work / ('down-' + server.name)}", "retr")
            print(f"{server.name:14s} STOR {up / 1e6:6.3f} M  RETR {down / 1e6:6.3f} M "
                  f"instructions per file (callgrind, all threads, {args.count} files)",
                  flush=True)
    finally:
        for server in servers:
            server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--skip", action="append", default=[],
                        help="server to skip: vsftpd or pyftpdlib")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per file under callgrind instead (slow)")
    parser.add_argument("--rumpus-option", action="append", default=[], metavar="NAME=VALUE",
                        help="pass --NAME VALUE to rumpus-secure, e.g. "
                             "data-tls-reuse=optional")
    parser.add_argument("--keep", metavar="DIR",
                        help="with --callgrind: copy the callgrind files there")
    args = parser.parse_args()
    import ftps_throughput

    for option in args.rumpus_option:
        name, _, value = option.partition("=")
        ftps_throughput.Rumpus.extra_args += [f"--{name}", value]
    if not shutil.which("lftp"):
        print("lftp is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rumpus-small-", dir=args.dir) as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        source = work / "source"
        source.mkdir()
        for i in range(args.count):
            (source / f"f{i:05d}.bin").write_bytes(os.urandom(args.size))
        marker = work / "marker.bin"
        marker.write_bytes(b"x")
        if args.callgrind:
            return callgrind_main(args, source, work)
        servers: list[Server] = []
        try:
            start_servers(servers, work, marker, args.skip)
            rows: dict[str, dict[str, tuple[float, float | None]]] = {
                server.name: {} for server in servers}
            # Operation by operation, each server in turn: the other work on
            # a shared machine drifts, and server by server the first one
            # measured a different machine from the last.
            for parallel in (1, args.parallel):
                up_dir = f"up{parallel}"
                for server in servers:
                    rows[server.name][f"STOR x{parallel}"] = measure(
                        server, f"mirror -R --parallel={parallel} {source} {up_dir}", args.count)
                    owned_by_bench(server.home / up_dir, server)
                for server in servers:
                    down_dir = work / f"down-{server.name}-{parallel}"
                    rows[server.name][f"RETR x{parallel}"] = measure(
                        server, f"mirror --parallel={parallel} {up_dir} {down_dir}", args.count)
                    got = sorted(p.name for p in down_dir.iterdir())
                    if len(got) != args.count:
                        print(f"{server.name}: downloaded {len(got)} of {args.count} files")
                    shutil.rmtree(down_dir)
                for server in servers:
                    print(f"{server.name:14s} x{parallel}: "
                          + "  ".join(f"{op} {fps:6.1f} files/s  {cpu or 0:5.2f} ms CPU"
                                      for op, (fps, cpu) in rows[server.name].items()
                                      if op.endswith(f"x{parallel}")), flush=True)
            print()
            print(f"{args.count} files of {args.size} bytes, lftp mirror, PROT P, "
                  f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
            ops = list(rows["rumpus-secure"])
            print(f"{'server':14s} " + " ".join(f"{op + ' f/s':>13s} {'ms CPU':>7s}" for op in ops))
            for name, row in rows.items():
                cells = []
                for op in ops:
                    fps, cpu = row[op]
                    cells.append(f"{fps:13.1f} {cpu:7.2f}" if cpu is not None
                                 else f"{fps:13.1f} {'n/a':>7s}")
                print(f"{name:14s} " + " ".join(cells))
            print()
            print("rumpus-secure files/s and CPU per file as a multiple of each server's")
            base = rows["rumpus-secure"]

            def cpu_ratio(mine: float | None, theirs: float | None) -> str:
                if mine is None or not theirs:
                    return f"{'n/a':>7s}"
                return f"{mine / theirs:7.2f}"

            for name, row in rows.items():
                if name == "rumpus-secure":
                    continue
                print(f"{'vs ' + name:14s} " + " ".join(
                    f"{base[op][0] / row[op][0]:13.2f} {cpu_ratio(base[op][1], row[op][1])}"
                    for op in ops))
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
