#!/usr/bin/env python3
"""
Logins per second on one node: the embedded SQLite vs. PostgreSQL (issue #17).

A login is the checker's whole decision (L{ArgonChecker._login}) run by
THREADS threads at once, as the server's verify pool does:

1. cold: every login verifies argon2id (the server's real parameters), so
   the hash dominates and the store hardly matters;
2. cached: repeat logins that the verifier cache answers (the account's
   C{version} is still read from the store every time, on the primary), so
   this is the store's cost: two indexed reads per login;
3. the ban/lift path: one ban saved on node A until node B's feed applied
   it, through C{LISTEN}/C{NOTIFY} (median and max of ROUNDS).

PostgreSQL is a throwaway cluster (initdb + pg_ctl from Debian's
``postgresql``) on loopback, fsync off, like the tests; a real one on its
own disk and across a network adds the round trip to every read.

    python bench/scale_db.py
    python bench/scale_db.py --threads 8 --seconds 5

Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rumpus_secure.accounts.checker import ArgonChecker  # noqa: E402
from rumpus_secure.accounts.store import SQLiteAccountStore  # noqa: E402
from rumpus_secure.accounts.verifier_cache import VerifierCache  # noqa: E402

ACCOUNTS = 50


def logins_per_second(store: Any, threads: int, seconds: float, cached: bool) -> float:
    checker = ArgonChecker(store, None,  # type: ignore[arg-type]
                           cache=VerifierCache(ttl=3600) if cached else None)
    if cached:
        for n in range(ACCOUNTS):
            checker._login(f"user{n}", f"password-{n}")
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        n = index
        while time.monotonic() < stop:
            name = f"user{n % ACCOUNTS}"
            assert checker._login(name, f"password-{n % ACCOUNTS}") == name.encode()
            done[index] += 1
            n += threads

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.monotonic() - started)


def fill(store: Any) -> None:
    from argon2 import PasswordHasher

    hasher = PasswordHasher()  # the server's real parameters
    for n in range(ACCOUNTS):
        store._hasher = hasher
        store.add(f"user{n}", f"password-{n}")


def ban_propagation(url: str, rounds: int) -> list[float]:
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from rumpus_secure.accounts.bans import Ban
    from rumpus_secure.accounts.pg import PGBanStore
    from rumpus_secure.db import STATE_CHANNEL, Database
    from rumpus_secure.guard import Guard, GuardSettings
    from rumpus_secure.shared import Notifications, StateFeed

    database = Database(url)
    clock = Clock()
    clock.advance(time.time())
    guard = Guard(GuardSettings(), clock)
    lock = threading.Lock()

    def inline(function: Any, *args: Any) -> Any:
        return defer.succeed(function(*args))

    feed = StateFeed(database, guard, None, inline)
    feed.poll()
    arrived = threading.Event()

    def heard() -> None:
        with lock:
            feed.poll()
        arrived.set()

    listener = Notifications(url, {STATE_CHANNEL: heard}, lambda f, *a, **k: f(*a, **k))
    listener.start()
    listener.connected.wait(5)
    time.sleep(0.2)
    store = PGBanStore(Database(url))
    delays = []
    for n in range(rounds):
        address = f"192.0.2.{n % 250}"
        arrived.clear()
        sent = time.monotonic()
        store.save(Ban(address, time.time() + 60, 0, "bench", time.time()))
        while guard.is_banned(address) is None:
            arrived.wait(2)
            arrived.clear()
        delays.append((time.monotonic() - sent) * 1000)
        store.delete(address)
        time.sleep(0.01)
    listener.stop()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    from rumpus_secure.accounts.pg import PGAccountStore
    from rumpus_secure.db import Database
    from tests.pg_cluster import PostgresCluster, _bin_dir

    bin_dir = _bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL (initdb, pg_ctl) is not installed")
    cluster = PostgresCluster(bin_dir)
    cluster.init()
    cluster.start()
    try:
        url = cluster.create_database()
        database = Database(url)
        database.migrate()
        with tempfile.TemporaryDirectory() as tmp:
            stores = {
                "sqlite": SQLiteAccountStore(Path(tmp) / "a.sqlite3", Path(tmp) / "f"),
                "postgresql": PGAccountStore(database, Path(tmp) / "g"),
            }
            print(f"{ACCOUNTS} accounts, {args.threads} threads, {args.seconds:.0f} s each")
            for name, store in stores.items():
                fill(store)
                cold = logins_per_second(store, args.threads, args.seconds, cached=False)
                warm = logins_per_second(store, args.threads, args.seconds, cached=True)
                print(f"  {name:10} cold (argon2id): {cold:8.1f} logins/s   "
                      f"cached (store reads only): {warm:8.0f} logins/s")
        delays = ban_propagation(url, args.rounds)
        print(f"ban saved on one node -> applied by another node's guard, "
              f"{len(delays)} rounds: median {statistics.median(delays):.1f} ms, "
              f"max {max(delays):.1f} ms")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
