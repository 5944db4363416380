#!/usr/bin/env python3
"""
What binding sessions to their account costs (issue #11, part 2).

Every FTP command of a logged-in session waits for a read of the account
change log (L{rumpus_secure.accounts.watch.AccountWatcher.fresh}).  This
prints, on a real SQLite store with CHANGES rows in its log:

1. one change-log query on the kept-open connection vs. opening a
   connection per query (why L{ChangeReader} keeps one open);
2. the latency one command pays: C{fresh()} round trips, one after the
   other, through the watcher's own thread on a running reactor;
3. coalescing: WAITERS commands arriving at once, and how many reads
   served them;
4. the delay from a write by another connection (the admin command) to the
   listener being told, with the timer alone (an idle session).

    python bench/account_watch.py
    python bench/account_watch.py --changes 10000 --rounds 5000

Not a test.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argon2 import PasswordHasher  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from rumpus_secure.accounts.store import SQLiteAccountStore  # noqa: E402
from rumpus_secure.accounts.watch import POLL_INTERVAL, build_watcher  # noqa: E402

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def query_costs(store: SQLiteAccountStore, rounds: int) -> None:
    reader = store.change_reader()
    latest = reader.latest()
    start = time.perf_counter()
    for _ in range(rounds):
        reader.since(latest)
    kept = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds // 10):
        db = sqlite3.connect(store.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("SELECT seq FROM account_changes WHERE seq > ?", (latest,)).fetchall()
        db.close()
    fresh_conn = (time.perf_counter() - start) / (rounds // 10)
    print(f"change-log query, kept-open connection: {us(kept)}")
    print(f"change-log query, new connection:       {us(fresh_conn)}")


async def run(store: SQLiteAccountStore, rounds: int, waiters: int) -> None:
    watcher = build_watcher(store, reactor)
    timer = task.LoopingCall(watcher.poll)
    timer.clock = reactor
    timer.start(POLL_INTERVAL)
    await watcher.fresh()

    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await watcher.fresh()
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(f"fresh() per command, {rounds} in a row: median {us(statistics.median(samples))}"
          f", p99 {us(samples[int(len(samples) * 0.99)])}")

    reads = watcher.reads
    start = time.perf_counter()
    await defer.gatherResults([watcher.fresh() for _ in range(waiters)])
    took = time.perf_counter() - start
    print(f"{waiters} commands at once: {us(took)} in all, "
          f"{watcher.reads - reads} read(s)")

    class Listener:
        told = 0.0

        def account_changed(self, change: object) -> None:
            self.told = time.perf_counter()

    delays = []
    admin = SQLiteAccountStore(store.path, store.root, hasher=CHEAP)
    for n in range(5):
        listener = Listener()
        assert watcher.seq is not None
        watch = watcher.watch("alice", listener, watcher.seq)
        written = time.perf_counter()
        admin.set_perms("alice", ["list"] if n % 2 else ["list", "download"])
        while not listener.told:
            await task.deferLater(reactor, 0.01, lambda: None)
        delays.append(listener.told - written)
        watch.cancel()
    print(f"idle session told after a write (timer only, every {POLL_INTERVAL:.0f} s): "
          f"median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms")
    timer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=5000,
                        help="rows already in the change log")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--waiters", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteAccountStore(Path(tmp) / "accounts.sqlite3", Path(tmp) / "files",
                                   hasher=CHEAP)
        store.add("alice", "pw")
        for n in range(args.changes):
            store.lock("alice", f"r{n}") if n % 2 else store.unlock("alice")
        query_costs(store, args.rounds)

        def go() -> defer.Deferred[None]:
            d = defer.Deferred.fromCoroutine(run(store, args.rounds, args.waiters))
            d.addErrback(lambda f: (f.printTraceback(), None)[1])
            d.addBoth(lambda _: reactor.stop())
            return d

        reactor.callWhenRunning(go)
        reactor.run()


if __name__ == "__main__":
    main()
