#!/usr/bin/env python3
"""
Abuse benchmark, FTP rows: stalled TLS handshakes (attack 3) and HASH of a
big file (attack 5) of issue #12.  Not a test: it prints numbers.

``attack_handshakes(server)``
    Opens STALLS (500) connections that start a TLS handshake and never
    finish it, from 25 addresses (127.0.3.1-25): half on the implicit FTPS
    port (a partial ClientHello), half on the FTP port after ``AUTH TLS``.
    Meanwhile 4 honest clients log in again and again over implicit FTPS from
    127.0.0.1.  Prints honest login p50/p99 before and during the attack,
    how many honest logins were turned away, how many stalls the server
    had dropped after 3 s and after the handshake deadline, and the
    server's memory (VmRSS, peak VmHWM).

``attack_hash(server)``
    Puts a 768 MiB file in the first account's home, then sends ten ``HASH``
    of it at once (ten sessions of that account) and measures, meanwhile,
    another account's login plus ``NLST`` (target: under 0.5 s; before the
    long-work pool it took 8.9 s).

Both take a server started like ``bench/load.py`` starts one
(``load.ServerProcess``: ``.port`` implicit FTPS, ``.names``, ``.data``,
``.proc``); for the ``AUTH TLS`` half of attack 3 it also needs
``.ftp_port`` (skipped without).  Standalone:

    python bench/abuse_ftp.py                 # both rows
    python bench/abuse_ftp.py --only hash --hash-mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import (  # noqa: E402  (a sibling script, not a package)
    PASSWORD,
    Control,
    FTPError,
    ServerProcess,
    client_context,
    free_port,
    login_once,
    proc_status,
    raise_fd_limit,
)

STALLS = 500
STALL_SOURCES = [f"127.0.3.{n}" for n in range(1, 26)]
#: A TLS record header announcing a 512-byte ClientHello, and its first bytes.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _stall(port: int, source: str, after_auth: bool) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), 10,
                                        source_address=(source, 0))
    except OSError:
        return None
    try:
        if after_auth:
            stream = sock.makefile("rb")
            if not stream.readline().startswith(b"220"):
                sock.close()
                return None
            sock.sendall(b"AUTH TLS\r\n")
            if not stream.readline().startswith(b"234"):
                sock.close()
                return None
        sock.sendall(PARTIAL_HELLO)
    except OSError:
        sock.close()
        return None
    return sock


def _dropped(sockets: list[socket.socket]) -> int:
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                count += 1
        except BlockingIOError:
            pass
        except OSError:
            count += 1
    return count


async def _honest_logins(server: Any, seconds: float, clients: int = 4
                         ) -> tuple[list[float], int]:
    context = client_context()
    times: list[float] = []
    refused = 0
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal refused
        while time.monotonic() < stop:
            try:
                times.append(await asyncio.wait_for(
                    login_once(server.port, context, server.names[n % len(server.names)]),
                    20))
            except (FTPError, OSError, asyncio.TimeoutError):
                refused += 1
                await asyncio.sleep(0.1)

    await asyncio.gather(*(worker(n) for n in range(clients)))
    return times, refused


def attack_handshakes(server: Any, stalls: int = STALLS,
                      deadline: float = 15.0) -> dict[str, float]:
    """
    Attack 3: STALLS stalled handshakes; honest login latency meanwhile.
    """
    raise_fd_limit()
    pid = server.proc.pid
    ftp_port = getattr(server, "ftp_port", None)
    before, _ = asyncio.run(_honest_logins(server, 3.0))
    rss_before = proc_status(pid, "VmRSS")
    started = time.monotonic()
    held: list[socket.socket] = []
    for n in range(stalls):
        after_auth = ftp_port is not None and n % 2 == 1
        sock = _stall(ftp_port if after_auth else server.port,
                      STALL_SOURCES[n % len(STALL_SOURCES)], after_auth)
        if sock is not None:
            held.append(sock)
    opened = time.monotonic() - started
    rss_stalled = proc_status(pid, "VmRSS")
    during, refused = asyncio.run(_honest_logins(server, 5.0))
    dropped_early = _dropped(held)
    # The last stall was opened at started + opened.
    time.sleep(max(0.0, started + opened + deadline + 1.0 - time.monotonic()))
    dropped_late = _dropped(held)
    for sock in held:
        sock.close()
    results = {
        "stalls": len(held),
        "open_seconds": opened,
        "before_p50": percentile(before, 0.5), "before_p99": percentile(before, 0.99),
        "during_p50": percentile(during, 0.5), "during_p99": percentile(during, 0.99),
        "honest_logins": len(during), "honest_refused": refused,
        "dropped_after_8s": dropped_early, "dropped_after_deadline": dropped_late,
        "rss_before_mib": rss_before / 1024, "rss_stalled_mib": rss_stalled / 1024,
        "peak_mib": proc_status(pid, "VmHWM") / 1024,
    }
    print(f"attack 3: {len(held)} stalled TLS handshakes "
          f"({'implicit + AUTH TLS' if ftp_port else 'implicit only'}, "
          f"{len(STALL_SOURCES)} addresses) opened in {opened:.2f} s")
    print(f"  honest login p50/p99 before: {results['before_p50'] * 1000:7.1f} / "
          f"{results['before_p99'] * 1000:7.1f} ms")
    print(f"  honest login p50/p99 during: {results['during_p50'] * 1000:7.1f} / "
          f"{results['during_p99'] * 1000:7.1f} ms "
          f"({len(during)} logins, {refused} turned away)")
    print(f"  stalls dropped by the server: {dropped_early} within ~8 s "
          f"(pushed out), {dropped_late} after the {deadline:.0f} s deadline")
    print(f"  server memory: {results['rss_before_mib']:.1f} MiB before, "
          f"{results['rss_stalled_mib']:.1f} MiB with the stalls, "
          f"peak {results['peak_mib']:.1f} MiB")
    return results


async def _login_nlst(server: Any, name: str) -> float:
    context = client_context()
    started = time.perf_counter()
    control = Control(server.port, context)
    try:
        await control.connect()
        code, text = await control.login(name, PASSWORD)
        if code != 230:
            raise FTPError(text)
        await control.download("NLST")
        return time.perf_counter() - started
    finally:
        control.close()


async def _hash(server: Any, name: str, file: str) -> float:
    context = client_context()
    started = time.perf_counter()
    control = Control(server.port, context)
    try:
        await control.connect()
        await control.login(name, PASSWORD)
        await control.command(f"HASH {file}", 213)
        return time.perf_counter() - started
    finally:
        control.close()


async def _hash_row(server: Any, name: str, other: str, hashes: int
                    ) -> tuple[list[float], list[float], list[float]]:
    baseline = [await _login_nlst(server, other) for _ in range(5)]
    jobs = [asyncio.create_task(_hash(server, name, "big.bin")) for _ in range(hashes)]
    await asyncio.sleep(0.3)  # the HASHes are in
    during = []
    while not all(job.done() for job in jobs) and len(during) < 200:
        during.append(await _login_nlst(server, other))
        await asyncio.sleep(0.2)
    hash_times = await asyncio.gather(*jobs)
    return baseline, during, list(hash_times)


def attack_hash(server: Any, mib: int = 768, hashes: int = 10) -> dict[str, float]:
    """
    Attack 5: ten HASH of a big file; another user's login + NLST meanwhile.
    """
    name, other = server.names[0], server.names[1]
    path = Path(server.data) / "files" / name / "big.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    try:
        baseline, during, hash_times = asyncio.run(_hash_row(server, name, other, hashes))
    finally:
        path.unlink()
    results = {
        "baseline_median": statistics.median(baseline),
        "during_median": statistics.median(during) if during else float("nan"),
        "during_max": max(during) if during else float("nan"),
        "hash_last": max(hash_times),
    }
    print(f"attack 5: {hashes} x HASH of a {mib} MiB file by {name}; "
          f"all done after {results['hash_last']:.1f} s")
    print(f"  {other} login + NLST: {results['baseline_median']:.3f} s before; "
          f"during: median {results['during_median']:.3f} s, "
          f"max {results['during_max']:.3f} s ({len(during)} tries; target < 0.5 s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["handshakes", "hash"])
    parser.add_argument("--stalls", type=int, default=STALLS)
    parser.add_argument("--hash-mib", type=int, default=768)
    parser.add_argument("--handshake-timeout", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rumpus-abuse-ftp-"))
    ftp_port = free_port()
    extra = ["--ftp", f"tcp:{ftp_port}:interface=127.0.0.1",
             "--safe-list", "127.0.0.1/32", "--data-tls-reuse", "optional",
             "--handshake-timeout", str(args.handshake_timeout)]
    print(f"server flags: {' '.join(extra)} (defaults otherwise: "
          "--max-connections 500, --max-connections-per-ip 20)")
    server = None
    try:
        server = ServerProcess(work, 4, extra)
        server.ftp_port = ftp_port  # type: ignore[attr-defined]
        if args.only in (None, "handshakes"):
            attack_handshakes(server, args.stalls, args.handshake_timeout)
        if args.only in (None, "hash"):
            attack_hash(server, args.hash_mib)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
