"""
Two-factor state and app passwords, as tables beside the accounts.

L{ITwoFactorStore} is what L{rumpus_secure.accounts.totp} and the checker
use; L{TwoFactorTables} implements it for the SQLite account store (a mixin
of L{rumpus_secure.accounts.store.SQLiteAccountStore}, sharing its
connections and its change log), so another store (PostgreSQL) can mirror
these methods one by one.  The tables hold only sealed secrets
(L{rumpus_secure.accounts.secretbox}), SHA-256 digests of recovery codes and
argon2id hashes of app passwords, keyed by the exact account name; the
account store removes the rows with the account (L{forget_credentials}).

Every write is logged in the change log in its own transaction.  Changes
of what the account's credentials are (two-factor login turned on,
required or reset, an app password revoked) are logged as ``password`` and
move the account's version on, so open FTP sessions end and cached
verifications go stale; ``required`` and ``reset`` also move
``password_changed``, so the account's web sessions end.  The rest
(enrolment started, a code or recovery code used, an app password added)
are logged as ``2fa`` or ``app-password``, which no session acts on.
Only an app password's "last used" time is written without a log row,
like a re-hashed password: nothing depends on it.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from zope.interface import Interface

#: Two-factor login (rumpus_secure.accounts.totp): the secrets are sealed
#: (rumpus_secure.accounts.secretbox), recovery codes are SHA-256 digests,
#: app passwords argon2id hashes.  Rows are keyed by the exact account
#: name and removed with the account.
TWO_FACTOR_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS account_2fa (
    name TEXT PRIMARY KEY,
    required INTEGER NOT NULL DEFAULT 0,
    secret BLOB,
    pending BLOB,
    enabled REAL,
    last_step INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS recovery_codes (
    name TEXT NOT NULL,
    digest BLOB NOT NULL,
    used REAL,
    PRIMARY KEY (name, digest)
)""",
    """CREATE TABLE IF NOT EXISTS app_passwords (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
)""",
    "CREATE INDEX IF NOT EXISTS app_passwords_name ON app_passwords (name)",
)


@dataclass(frozen=True)
class TwoFactorRow:
    """
    An account's two-factor state as stored (sealed secrets, never codes).

    @ivar secret: the confirmed secret, sealed; L{None} when not enrolled.
    @ivar pending: a secret shown for enrolment, not yet confirmed.
    @ivar last_step: the last TOTP step accepted (replays are refused).
    """

    required: bool
    secret: bytes | None
    pending: bytes | None
    enabled: float | None
    last_step: int
    recovery_left: int


@dataclass(frozen=True)
class AppPassword:
    """One app password as listed (never its hash)."""

    id: str
    name: str
    label: str
    created: float
    last_used: float | None


class ITwoFactorStore(Interface):
    """
    Two-factor state and app passwords, beside the accounts.  Every write
    is logged in the change log, in the same transaction.
    """

    def two_factor(name: str) -> TwoFactorRow | None:
        """The account's two-factor row, or L{None} if it has none."""

    def set_two_factor_required(name: str, required: bool) -> None:
        """Require (or stop requiring) two-factor login for the account."""

    def set_pending_secret(name: str, sealed: bytes) -> None:
        """Keep a sealed secret being enrolled (not yet in force)."""

    def enable_two_factor(name: str, sealed: bytes, step: int,
                          recovery: list[bytes]) -> bool:
        """
        Put the pending secret C{sealed} in force (if it is still the
        pending one), with C{step} used and new recovery code digests.
        """

    def reset_two_factor(name: str) -> None:
        """Forget the secret and codes; the next web login must enrol."""

    def use_totp_step(name: str, step: int) -> bool:
        """Record C{step} as used if it is later than the last one used."""

    def use_recovery_code(name: str, digest: bytes) -> bool:
        """Use up an unused recovery code; whether there was one."""

    def add_app_password(name: str, ident: str, label: str, hashed: str) -> AppPassword:
        """Store an app password's argon2id hash."""

    def app_passwords(name: str) -> list[AppPassword]:
        """The account's app passwords, newest first."""

    def app_password_hash(name: str, ident: str) -> str | None:
        """The hash of the account's app password C{ident}, or L{None}."""

    def app_password_used(ident: str) -> None:
        """Note when an app password was last used."""

    def revoke_app_password(name: str, ident: str) -> bool:
        """Delete an app password; whether it existed."""

class TwoFactorTables:
    """
    L{ITwoFactorStore} over the account store's SQLite connections.

    Expects C{_connections}, C{_writing()}, C{_clock}, C{_exists(db, name)}
    (raises for an unknown account) and C{_log_change(db, name, kind,
    detail, when)} from the class it is mixed into.
    """

    _connections: Any
    _clock: Callable[[], float]
    _writing: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _exists: Callable[[sqlite3.Connection, str], None]
    _log_change: Callable[..., None]

    def _two_factor_row(self, db: sqlite3.Connection, name: str) -> None:
        self._exists(db, name)
        db.execute("INSERT OR IGNORE INTO account_2fa (name) VALUES (?)", (name,))

    def _credentials_changed(self, db: sqlite3.Connection, name: str,
                             detail: str, now: float, sessions_end: bool = False) -> None:
        """
        Log a change of what the account's credentials are, as ``password``
        (open FTP sessions end) and move its version on (cached password
        verifications go stale).

        @param sessions_end: move ``password_changed`` too, so the account's
            web sessions end (they compare it with their start): two-factor
            login required or reset.  A password-only session, or a thief's
            after a "lost phone" reset, must not keep minting app passwords.
        """
        if sessions_end:
            db.execute("UPDATE accounts SET changed = ?, password_changed = ?, "
                       "version = version + 1 WHERE name = ? COLLATE BINARY",
                       (now, now, name))
        else:
            db.execute("UPDATE accounts SET changed = ?, version = version + 1 "
                       "WHERE name = ? COLLATE BINARY", (now, name))
        self._log_change(db, name, "password", detail, now)

    def two_factor(self, name: str) -> TwoFactorRow | None:
        with self._connections.connection() as db:
            row = db.execute(
                "SELECT required, secret, pending, enabled, last_step FROM account_2fa "
                "WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            left = db.execute("SELECT count(*) FROM recovery_codes WHERE name = ? "
                              "AND used IS NULL", (name,)).fetchone()[0]
        required, secret, pending, enabled, last_step = row
        return TwoFactorRow(
            required=bool(required),
            secret=None if secret is None else bytes(secret),
            pending=None if pending is None else bytes(pending),
            enabled=enabled, last_step=int(last_step), recovery_left=int(left))

    def set_two_factor_required(self, name: str, required: bool) -> None:
        now = self._clock()
        with self._writing() as db:
            self._two_factor_row(db, name)
            db.execute("UPDATE account_2fa SET required = ? WHERE name = ?",
                       (int(required), name))
            self._credentials_changed(
                db, name, "two-factor login required" if required
                else "two-factor login no longer required", now,
                sessions_end=required)

    def set_pending_secret(self, name: str, sealed: bytes) -> None:
        with self._writing() as db:
            self._two_factor_row(db, name)
            db.execute("UPDATE account_2fa SET pending = ? WHERE name = ?",
                       (sealed, name))
            self._log_change(db, name, "2fa", "enrolment started", self._clock())

    def enable_two_factor(self, name: str, sealed: bytes, step: int,
                          recovery: list[bytes]) -> bool:
        now = self._clock()
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE account_2fa SET secret = pending, pending = NULL, enabled = ?, "
                "last_step = ? WHERE name = ? AND pending = ?",
                (now, step, name, sealed))
            if cursor.rowcount != 1:
                return False
            db.execute("DELETE FROM recovery_codes WHERE name = ?", (name,))
            db.executemany("INSERT INTO recovery_codes (name, digest) VALUES (?, ?)",
                           [(name, digest) for digest in recovery])
            self._credentials_changed(db, name, "two-factor login turned on", now)
        return True

    def reset_two_factor(self, name: str) -> None:
        now = self._clock()
        with self._writing() as db:
            self._two_factor_row(db, name)
            db.execute("UPDATE account_2fa SET required = 1, secret = NULL, "
                       "pending = NULL, enabled = NULL, last_step = 0 WHERE name = ?",
                       (name,))
            db.execute("DELETE FROM recovery_codes WHERE name = ?", (name,))
            self._credentials_changed(db, name, "two-factor login reset", now,
                                      sessions_end=True)

    def use_totp_step(self, name: str, step: int) -> bool:
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE account_2fa SET last_step = ? WHERE name = ? "
                "AND secret IS NOT NULL AND last_step < ?", (step, name, step))
            if cursor.rowcount != 1:
                return False
            self._log_change(db, name, "2fa", "code used", self._clock())
        return True

    def use_recovery_code(self, name: str, digest: bytes) -> bool:
        now = self._clock()
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE recovery_codes SET used = ? WHERE name = ? AND digest = ? "
                "AND used IS NULL", (now, name, digest))
            if cursor.rowcount != 1:
                return False
            self._log_change(db, name, "2fa", "recovery code used", now)
        return True

    def add_app_password(self, name: str, ident: str, label: str,
                         hashed: str) -> AppPassword:
        now = self._clock()
        with self._writing() as db:
            self._exists(db, name)
            db.execute("INSERT INTO app_passwords (id, name, label, hash, created) "
                       "VALUES (?, ?, ?, ?, ?)", (ident, name, label, hashed, now))
            self._log_change(db, name, "app-password", f"added {ident}", now)
        return AppPassword(id=ident, name=name, label=label, created=now, last_used=None)

    def app_passwords(self, name: str) -> list[AppPassword]:
        with self._connections.connection() as db:
            rows = db.execute(
                "SELECT id, name, label, created, last_used FROM app_passwords "
                "WHERE name = ? ORDER BY created DESC", (name,)).fetchall()
        return [AppPassword(*row) for row in rows]

    def app_password_hash(self, name: str, ident: str) -> str | None:
        with self._connections.connection() as db:
            row = db.execute("SELECT hash FROM app_passwords WHERE id = ? AND name = ?",
                             (ident, name)).fetchone()
        return None if row is None else str(row[0])

    def app_password_used(self, ident: str) -> None:
        # Not an account change: no session depends on it.
        with self._writing() as db:
            db.execute("UPDATE app_passwords SET last_used = ? WHERE id = ?",
                       (self._clock(), ident))

    def revoke_app_password(self, name: str, ident: str) -> bool:
        now = self._clock()
        with self._writing() as db:
            cursor = db.execute("DELETE FROM app_passwords WHERE id = ? AND name = ?",
                                (ident, name))
            if cursor.rowcount != 1:
                return False
            self._credentials_changed(db, name, f"app password {ident} revoked", now)
        return True


def forget_credentials(db: sqlite3.Connection, name: str) -> None:
    """
    Remove an account's second factors and app passwords (with the account,
    or left by an earlier account of the same name).
    """
    for table in ("account_2fa", "recovery_codes", "app_passwords"):
        db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
