#!/usr/bin/env python3
"""
What the transfer logs and metrics cost: per audit event, and per scrape.

    python bench/observability.py [--events 20000] [--sessions 2000] [--bans 10000]

1. Records N ``ftp.upload`` events into a JSON-lines audit log, first alone,
   then with every observer attached (console line, ``--xferlog`` writer,
   metrics), and prints microseconds per event for each.
2. Renders the metrics page with S live FTP sessions tracked and B active
   bans in a real guard, and prints milliseconds per scrape and its size.

In process, no sockets: the numbers are the work added on the reactor
thread.  Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import Logger  # noqa: E402

from rumpus_secure.audit import JSONLinesAuditLog  # noqa: E402
from rumpus_secure.guard import Guard, GuardSettings  # noqa: E402
from rumpus_secure.metrics import Metrics, MetricsPage  # noqa: E402
from rumpus_secure.xferlog import TransferConsole, XferLog  # noqa: E402


def per_event(audit: JSONLinesAuditLog, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        audit.record("ftp.upload", client="192.0.2.7", protocol="ftps-explicit",
                     account=f"user{n % 50}", tls="TLSv1.3", command="STOR",
                     path=f"/dir/file {n}.bin", bytes=1048576, seconds=0.42,
                     type="binary", outcome="complete", reply="226")
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--bans", type=int, default=10000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = JSONLinesAuditLog(Path(tmp) / "a.log")
        alone = per_event(base, args.events)
        full = JSONLinesAuditLog(Path(tmp) / "b.log")
        full.add_observer(TransferConsole(Logger(observer=lambda event: None)))
        full.add_observer(XferLog(Path(tmp) / "xferlog"))
        metrics = Metrics(Clock())
        full.add_observer(metrics.observe)
        observed = per_event(full, args.events)
    print(f"audit event alone:                {alone:6.1f} us")
    print(f"with console + xferlog + metrics: {observed:6.1f} us "
          f"(+{observed - alone:.1f} us per finished transfer)")

    clock = Clock()
    clock.advance(1_000_000)
    metrics = Metrics(clock)
    guard = Guard(GuardSettings(threshold=1, ban_time=3600), clock)
    for n in range(args.bans):
        guard.offence(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "login_failed",
                      protocol="ftp")
    metrics.watch_guard(guard)

    class Session:
        connected, implicit, secure = 1, False, True

        def connectionLost(self, reason: object) -> None:
            pass

    class Factory:
        def buildProtocol(self, addr: object) -> object:
            return Session()

    factory = Factory()
    metrics.sessions.track_factory(factory)
    keep = [factory.buildProtocol(None) for _ in range(args.sessions)]  # noqa: F841
    metrics.watch_certificate(SimpleNamespace(info=SimpleNamespace(
        not_after=datetime(2030, 1, 1, tzinfo=timezone.utc))))
    page = MetricsPage(metrics.registry)
    request = SimpleNamespace(getHeader=lambda name: None, setHeader=lambda *a: None)
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        body = page.render_GET(request)
    scrape_ms = (time.perf_counter() - started) / rounds * 1000
    print(f"scrape with {args.sessions} sessions, {args.bans} bans: "
          f"{scrape_ms:.2f} ms, {len(body)} bytes")


if __name__ == "__main__":
    main()
