"""
Where address bans are kept so they survive a restart.

L{IBanStore} is the small interface the guard (L{rumpus_secure.guard}) talks
to; L{SQLiteBanStore} keeps the C{bans} table in the account database
(``DATA-DIR/accounts.sqlite3``), next to the accounts, so one file holds the
server's state and a later shared store (PostgreSQL, several nodes) can
implement the same four methods.  L{MemoryBanStore} is for tests.

Every method may block: the guard loads once at start-up, before the
reactor runs, and writes from a thread.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from zope.interface import Interface, implementer

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    address TEXT PRIMARY KEY,
    until REAL NOT NULL,
    level INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Ban:
    """
    One address's ban.

    @ivar address: the client address, normalised (IPv4-mapped IPv6 as IPv4).
    @ivar until: when the ban ends, seconds since the epoch.
    @ivar level: how many bans came before this one while the address kept
        offending; the ban time doubles with each level.
    @ivar reason: what tipped the score over, e.g. ``login_failed``.
    @ivar created: when the ban started.
    """

    address: str
    until: float
    level: int
    reason: str
    created: float

    def active(self, now: float) -> bool:
        return now < self.until

    def minutes_left(self, now: float) -> int:
        """
        Whole minutes until the ban ends, at least 1 while it lasts.
        """
        return max(1, int((self.until - now + 59) // 60))


class IBanStore(Interface):
    """
    Persistent bans; every method may block.
    """

    def load(since: float) -> list[Ban]:
        """
        Every ban that ended after C{since} (active ones and recent ones,
        whose level still counts towards escalation).
        """

    def save(ban: Ban) -> None:
        """
        Insert or replace the ban for C{ban.address}.
        """

    def delete(address: str) -> bool:
        """
        Forget the address's ban (an administrator lifted it).

        @returns: whether there was one.
        """

    def prune(before: float) -> int:
        """
        Delete bans that ended before C{before}; return how many.
        """


@implementer(IBanStore)
class MemoryBanStore:
    """
    Bans in a dict; for tests.
    """

    def __init__(self) -> None:
        self.bans: dict[str, Ban] = {}

    def load(self, since: float) -> list[Ban]:
        return [b for b in self.bans.values() if b.until > since]

    def save(self, ban: Ban) -> None:
        self.bans[ban.address] = ban

    def delete(self, address: str) -> bool:
        return self.bans.pop(address, None) is not None

    def prune(self, before: float) -> int:
        old = [a for a, b in self.bans.items() if b.until < before]
        for address in old:
            del self.bans[address]
        return len(old)


@implementer(IBanStore)
class SQLiteBanStore:
    """
    The C{bans} table of the account database.

    Opens a connection per call, like the account store, so one object can
    be used from any thread and the admin command sees the server's bans.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with closing(self._connect()) as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return db

    def load(self, since: float) -> list[Ban]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT address, until, level, reason, created FROM bans "
                "WHERE until > ? ORDER BY address",
                (since,),
            ).fetchall()
        return [Ban(a, float(u), int(lv), r, float(c)) for a, u, lv, r, c in rows]

    def save(self, ban: Ban) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO bans (address, until, level, reason, "
                "created) VALUES (?, ?, ?, ?, ?)",
                (ban.address, ban.until, ban.level, ban.reason, ban.created),
            )

    def delete(self, address: str) -> bool:
        with closing(self._connect()) as db:
            return db.execute("DELETE FROM bans WHERE address = ?", (address,)).rowcount > 0

    def prune(self, before: float) -> int:
        with closing(self._connect()) as db:
            return db.execute("DELETE FROM bans WHERE until < ?", (before,)).rowcount
