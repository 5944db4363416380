#!/usr/bin/env python3
"""
What the client-certificate bindings cost in the shared PostgreSQL
database, beside the SQLite store (issue: client certificates on
PostgreSQL).

Prints the median and 99th percentile, on a throwaway PostgreSQL on
loopback (fsync off, like the tests) and a SQLite file, of:

1. the database reads of the certificate half of a login
   (C{auth_mode} + C{owner}, what L{CertificateLogin.check} asks), with
   BINDINGS bindings stored over 50 accounts;
2. setting a login method (an upsert, the account's version and
   C{password_changed} moved, a change-log row; on PostgreSQL under the
   account-log lock, with NOTIFY).

    python bench/pg_client_certs.py
    python bench/pg_client_certs.py --bindings 20000 --rounds 2000

Bindings are inserted directly (fingerprints need no real certificate to
be looked up).  Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argon2 import PasswordHasher  # noqa: E402

from rumpus_secure.accounts.client_certs import client_cert_store  # noqa: E402
from rumpus_secure.accounts.store import SQLiteAccountStore  # noqa: E402

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


def fingerprint(i: int) -> str:
    return hashlib.sha256(str(i).encode()).digest().hex(":").upper()


def fill(label: str, store: Any, count: int) -> None:
    rows = [(fingerprint(i), f"user{i % 50}", f"CN=c{i}", 2e9, 1e9) for i in range(count)]
    if label == "sqlite":
        with store._writing() as db:
            db.executemany("INSERT INTO client_certs VALUES (?, ?, ?, ?, ?)", rows)
    else:
        with store.database.transaction() as conn, conn.cursor() as cursor:
            cursor.executemany("INSERT INTO client_certs VALUES (%s, %s, %s, %s, %s)",
                               rows)


def run(label: str, store: Any, bindings: int, rounds: int) -> None:
    for i in range(50):
        store.add(f"user{i}", "pw")
    certs = client_cert_store(store)
    fill(label, store, bindings)
    wanted = fingerprint(bindings // 2)
    modes = ("cert", "cert+password")
    for name, function in (
        ("login reads", lambda i: (certs.auth_mode("user7"), certs.owner(wanted))),
        ("set login method", lambda i: certs.set_auth_mode("user7", modes[i % 2])),
    ):
        median, p99 = timed(function, rounds)
        print(f"  {label:10} {name:17} median {median:7.0f} us   p99 {p99:7.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=500)
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
        database = Database(cluster.create_database())
        database.migrate()
        print(f"{args.bindings} bindings stored, {args.rounds} rounds each")
        with tempfile.TemporaryDirectory() as tmp:
            run("sqlite", SQLiteAccountStore(Path(tmp) / "a.sqlite3", Path(tmp) / "f",
                                             hasher=FAST), args.bindings, args.rounds)
            run("postgresql", PGAccountStore(database, Path(tmp) / "g", hasher=FAST),
                args.bindings, args.rounds)
        database.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
