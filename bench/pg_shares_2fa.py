#!/usr/bin/env python3
"""
What a share-link visit and a TOTP login cost in the shared PostgreSQL
database, beside the SQLite store (issue: PostgreSQL for 2FA and links).

Prints the median and 99th percentile, on a throwaway PostgreSQL on
loopback (fsync off, like the tests) and a SQLite file, of:

1. a visitor's link lookup (SHA-256 of the token + one indexed query) with
   LINKS links stored;
2. taking a use (one conditional UPDATE);
3. accepting a TOTP step (one conditional UPDATE + a change-log row under
   the account-log lock + NOTIFY on PostgreSQL);
4. reading the two-factor row (what every web login with 2FA does).

    python bench/pg_shares_2fa.py
    python bench/pg_shares_2fa.py --links 20000 --rounds 2000

Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argon2 import PasswordHasher  # noqa: E402

from rumpus_secure.accounts.store import SQLiteAccountStore  # noqa: E402
from rumpus_secure.shares import SQLiteShareStore  # noqa: E402

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def timed(function: Callable[[int], Any], rounds: int) -> tuple[float, float]:
    """Median and 99th percentile of C{function(i)}, in microseconds."""
    took = []
    for i in range(rounds):
        started = time.perf_counter()
        function(i)
        took.append(time.perf_counter() - started)
    took.sort()
    return statistics.median(took) * 1e6, took[int(len(took) * 0.99)] * 1e6


def run(label: str, accounts: Any, shares: Any, links: int, rounds: int) -> None:
    accounts.add("alice", "pw")
    accounts.set_pending_secret("alice", b"sealed")
    accounts.enable_two_factor("alice", b"sealed", 1, [])
    later = time.time() + 3600
    for i in range(links):
        shares.create(f"user{i % 50}", "download", "/a", later, None, None, None, "")
    share, token = shares.create("alice", "download", "/a", later, None, None, None, "")
    for name, function in (
        ("link lookup", lambda i: shares.find(token)),
        ("take a use", lambda i: shares.take_use(share.id)),
        ("TOTP step used", lambda i: accounts.use_totp_step("alice", 10 + i)),
        ("two-factor row", lambda i: accounts.two_factor("alice")),
    ):
        median, p99 = timed(function, rounds)
        print(f"  {label:10} {name:15} median {median:7.0f} us   p99 {p99:7.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()

    from rumpus_secure.accounts.pg import PGAccountStore, PGShareStore
    from rumpus_secure.db import Database
    from tests.pg_cluster import PostgresCluster, _bin_dir

    bin_dir = _bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL (initdb, pg_ctl) is not installed")
    cluster = PostgresCluster(bin_dir)
    cluster.init()
    cluster.start()
    try:
        database = Database(cluster.create_database())
        database.migrate()
        print(f"{args.links} links stored, {args.rounds} rounds each")
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = SQLiteAccountStore(Path(tmp) / "a.sqlite3", Path(tmp) / "f",
                                        hasher=FAST)
            run("sqlite", sqlite, SQLiteShareStore(sqlite.path), args.links, args.rounds)
            run("postgresql", PGAccountStore(database, Path(tmp) / "g", hasher=FAST),
                PGShareStore(database), args.links, args.rounds)
        database.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
