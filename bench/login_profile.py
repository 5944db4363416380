#!/usr/bin/env python3
"""
Where a repeat login's server CPU goes: user and system time per login,
system calls per login, and (with py-spy) the reactor thread's hot functions.

Starts rumpus-secure (and pyftpdlib, unless skipped) as ``bench/logins.py``
does, warms the verifier cache, then for each server:

1. runs LOGINS logins (connect, AUTH TLS, USER, PASS, QUIT) from WORKERS
   client processes and prints the server's CPU per login from /proc, user
   and system apart;
2. with ``--strace`` (strace must be installed), runs STRACE_LOGINS more
   under ``strace -c -f`` and prints the system calls per login, the top
   ones by count (strace slows the server down: its CPU is not counted);
3. with ``--py-spy`` (``pip install py-spy``), samples rumpus-secure during
   another run and prints the hottest functions of the reactor thread
   (``MainThread``), self and inclusive time, as a share of its samples and
   as microseconds per login.

With ``--callgrind`` it instead starts each server under valgrind's
callgrind (instrumentation off until warmed) and prints the instructions
executed per login, all threads: on a shared two-core machine CPU time per
login swings by 20% from run to run, instruction counts repeat to within
0.5%, so a change of a few percent shows.  System calls and the kernel's
work are not in them (use ``--strace``).

    python bench/login_profile.py [--logins 800] [--workers 8] [--strace] [--py-spy]
    python bench/login_profile.py --callgrind [--logins 100]
    python bench/login_profile.py --aggregate FILE.txt   # py-spy raw output

Not a test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ftps_throughput  # noqa: E402
from ftps_throughput import Server, start_servers  # noqa: E402
from logins import _logins  # noqa: E402


def run_logins(server: Server, logins: int, workers: int) -> float:
    per = max(1, logins // workers)
    start = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        pool.map(_logins, [(server.port, per)] * workers)
    return time.perf_counter() - start


def cpu_per_login(server: Server, logins: int, workers: int) -> tuple[float, float, float]:
    """
    (user ms, system ms, logins/s) per login for one run.
    """
    before = server.cpu_split()
    elapsed = run_logins(server, logins, workers)
    after = server.cpu_split()
    done = (logins // workers) * workers
    if before is None or after is None:
        return float("nan"), float("nan"), done / elapsed
    return ((after[0] - before[0]) * 1000 / done, (after[1] - before[1]) * 1000 / done,
            done / elapsed)


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def syscalls_per_login(server: Server, logins: int, workers: int) -> dict[str, float]:
    """
    System calls per login, by name, counted by C{strace -c -f}.
    """
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p",
                               str(server.proc.pid)],  # type: ignore[attr-defined]
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    run_logins(server, logins, workers)
    tracer.terminate()
    tracer.wait(10)
    done = (logins // workers) * workers
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        match = _STRACE_ROW.match(line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = int(match.group(1)) / done
    out.unlink()
    return counts


def aggregate(raw: str, thread: str = "MainThread") -> tuple[int, dict[str, int], dict[str, int]]:
    """
    Self and inclusive sample counts per function in C{py-spy record -f raw
    -t} output, for one thread.

    :returns: (samples of the thread, self counts, inclusive counts).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if thread and not (frames and thread in frames[0]):
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in frames[1:]] or ["(idle)"]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, self_counts, inclusive


def _short(frame: str) -> str:
    # "dataReceived (twisted/protocols/basic.py:549)" -> without the line
    # number, so one function's lines add up; the path from site-packages on.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", "rumpus_secure/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "rumpus_secure/":
                path = "rumpus_secure/" + path
            break
    return f"{name} ({path})"


def print_profile(raw: str, logins: int | None, rate_hz: int, top: int) -> None:
    total, self_counts, inclusive = aggregate(raw)
    if not total:
        print("no MainThread samples")
        return
    per = (1e6 / rate_hz / logins) if logins else None

    def row(name: str, count: int) -> str:
        share = 100 * count / total
        cost = f"{count * per:8.1f} us/login" if per else ""
        return f"{share:6.1f}% {cost}  {name}"

    print(f"MainThread: {total} samples"
          + (f", {total * per / 1000:.2f} ms/login wall" if per else ""))
    print("-- self --")
    for name, count in self_counts.most_common(top):
        print(row(name, count))
    print("-- inclusive --")
    for name, count in inclusive.most_common(top):
        print(row(name, count))


def py_spy_profile(server: Server, logins: int, workers: int, rate_hz: int,
                   top: int) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(tempfile.mkstemp(prefix="py-spy-", suffix=".txt")[1])
    spy = subprocess.Popen([py_spy, "record", "-p", str(server.proc.pid),  # type: ignore[attr-defined]
                            "-r", str(rate_hz), "-f", "raw", "-t", "-o", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    run_logins(server, logins, workers)
    spy.send_signal(2)  # SIGINT: py-spy writes what it has
    spy.wait(30)
    done = (logins // workers) * workers
    print_profile(out.read_text(), done, rate_hz, top)
    print(f"(raw samples kept in {out})")


@contextlib.contextmanager
def _under_callgrind(out: Path) -> Any:
    """
    Start the benches' Python servers under callgrind, instrumentation off
    (``callgrind_control -i on`` starts it), with a longer wait for the port.
    """
    real_popen, real_wait = subprocess.Popen, ftps_throughput.wait_port

    def popen(argv: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(argv, list) and argv[:2] == [sys.executable, "-c"]:  # the servers
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}.%p", *argv]
        return real_popen(argv, *args, **kwargs)

    ftps_throughput.subprocess.Popen = popen  # type: ignore[misc]
    ftps_throughput.wait_port = lambda port, timeout=20.0: real_wait(port, 300.0)
    try:
        yield
    finally:
        ftps_throughput.subprocess.Popen = real_popen  # type: ignore[misc]
        ftps_throughput.wait_port = real_wait


def callgrind_count(server: Server, out: Path, work: Callable[[], Any]) -> tuple[int, list[str]]:
    """
    Instructions (all threads) that C{server}, started L{_under_callgrind}
    with output C{out}, spends while C{work()} runs: instrumentation on,
    C{work()}, off, dump.  Also returns the dump files read.
    """
    pid = str(server.proc.pid)  # type: ignore[attr-defined]
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
    work()
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    time.sleep(2)  # the dump is written by the server's next turn
    total = 0
    files = glob.glob(f"{out}.{pid}*")
    for name in files:
        # "totals:" closes each dump (its "summary:" line may say 0).
        totals = [line for line in Path(name).read_text(errors="replace").splitlines()
                  if line.startswith("totals:")]
        if totals:
            total += int(totals[-1].split()[1])
    return total, files


def callgrind_per_login(server: Server, out: Path, logins: int, workers: int) -> float:
    """
    Instructions per login, all threads, counted by callgrind.
    """
    run_logins(server, 8, 1)  # warm, uncounted
    total, _ = callgrind_count(server, out, lambda: run_logins(server, logins, workers))
    return total / ((logins // workers) * workers)


def callgrind_main(args: argparse.Namespace) -> int:
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind (callgrind) is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rumpus-login-callgrind-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        marker = work / "marker.bin"
        marker.write_bytes(b"x")
        out = work / "callgrind.out"
        servers: list[Server] = []
        try:
            with _under_callgrind(out):
                start_servers(servers, work, marker, sorted(set(args.skip) | {"vsftpd"}))
            counts = {}
            for server in servers:
                counts[server.name] = callgrind_per_login(server, out, args.logins,
                                                          min(args.workers, 2))
                print(f"{server.name:14s} {counts[server.name] / 1e6:6.2f} M instructions "
                      f"per login (callgrind, all threads)", flush=True)
            if "pyftpdlib" in counts:
                print(f"rumpus-secure / pyftpdlib: "
                      f"{counts['rumpus-secure'] / counts['pyftpdlib']:.2f}x the instructions")
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                for name in glob.glob(f"{out}.*"):
                    shutil.copy(name, keep)
                print(f"(callgrind files kept in {keep}: callgrind_annotate --inclusive=yes)")
        finally:
            for server in servers:
                server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=800)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--strace-logins", type=int, default=200)
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples/s")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--skip", action="append", default=["vsftpd"],
                        help="server to skip: pyftpdlib (vsftpd is always skipped)")
    parser.add_argument("--aggregate", metavar="FILE",
                        help="only aggregate a py-spy raw file (-f raw -t)")
    parser.add_argument("--per-logins", type=int, default=None,
                        help="with --aggregate: logins the file covers, for us/login")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per login under callgrind instead (slow start)")
    parser.add_argument("--keep", metavar="DIR",
                        help="with --callgrind: copy the callgrind output files to DIR")
    args = parser.parse_args()
    if args.callgrind:
        return callgrind_main(args)
    if args.aggregate:
        print_profile(Path(args.aggregate).read_text(), args.per_logins, args.rate, args.top)
        return 0
    with tempfile.TemporaryDirectory(prefix="rumpus-login-profile-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        marker = work / "marker.bin"
        marker.write_bytes(b"x")
        servers: list[Server] = []
        try:
            start_servers(servers, work, marker, sorted(set(args.skip) | {"vsftpd"}))
            for server in servers:
                _logins((server.port, 3))  # warm: TLS, the verifier cache
            results: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in servers}
            for round_ in range(args.rounds):
                for server in servers:
                    user, system, rate = cpu_per_login(server, args.logins, args.workers)
                    results[server.name].append((user, system, rate))
                    print(f"round {round_ + 1} {server.name:14s} {rate:6.0f} logins/s  "
                          f"server CPU {user + system:5.2f} ms/login "
                          f"(user {user:4.2f}, system {system:4.2f})", flush=True)
            print()
            print(f"server CPU per repeat login, {args.workers} client processes, "
                  f"best of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
            for name, rows in results.items():
                user, system, rate = min(rows, key=lambda r: r[0] + r[1])
                print(f"{name:14s} {user + system:5.2f} ms (user {user:4.2f}, system "
                      f"{system:4.2f})  {max(r[2] for r in rows):6.0f} logins/s")
            if args.strace and shutil.which("strace"):
                for server in servers:
                    counts = syscalls_per_login(server, args.strace_logins, args.workers)
                    top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
                    print(f"{server.name}: {sum(counts.values()):.0f} system calls per login: "
                          + ", ".join(f"{name} {n:.1f}" for name, n in top))
            if args.py_spy:
                rumpus = next(s for s in servers if s.name == "rumpus-secure")
                py_spy_profile(rumpus, args.logins, args.workers, args.rate, args.top)
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
