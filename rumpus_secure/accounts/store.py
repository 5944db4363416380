"""
The account store: names, password hashes, homes, permissions, locks.

L{IAccountStore} is the interface the rest of the server uses; the only
implementation today is L{SQLiteAccountStore}, one SQLite file at
``DATA-DIR/accounts.sqlite3``.  A shared PostgreSQL store for several nodes
can implement the same interface later.

The SQLite store is written for two processes at once: the running server
and the ``rumpus-secure user ...`` admin command.  The database is in WAL
mode (readers never block the writer), every connection waits up to
L{BUSY_TIMEOUT_MS} for a lock instead of failing with "database is locked",
and writes take the write lock up front (C{BEGIN IMMEDIATE}) so two writers
cannot deadlock upgrading a read lock.  Each thread keeps its own connection
(L{rumpus_secure.accounts.connections}), so a store object can be shared by
threads (SQLite connections must not be) and nothing is cached above SQLite:
a change made by the CLI is seen by the server's next login.

Every change (add, password, lock, unlock, permissions, delete) also writes
one row to the C{account_changes} log in the same transaction, so no writer
(the CLI, the server's quarantine, a future tool) can change an account
without the running server hearing of it.  The log's C{seq} is the store's
global account version: one indexed query on a kept-open connection
(L{ChangeReader}: 4-16 microseconds, against 150-750 for opening a
connection, C{bench/account_watch.py}) tells the server's L{rumpus_secure.accounts.watch} what changed
since the last look, including deletions, which leave no row to version.
The log keeps the last L{CHANGES_KEPT} rows.

The same file holds each account's second factors and app passwords
(L{rumpus_secure.accounts.two_factor_store}, mixed into the SQLite store:
created and deleted with the account, in the same transactions).

All methods block on disk I/O; the server calls them from a thread (see
L{rumpus_secure.accounts.checker}).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from argon2 import PasswordHasher
from zope.interface import Interface, implementer

from rumpus_secure.accounts.connections import ThreadConnections
from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.accounts.two_factor_store import (
    TWO_FACTOR_SCHEMA,
    ITwoFactorStore,
    TwoFactorTables,
    forget_credentials,
)

ALL_PERMISSIONS: frozenset[str] = frozenset(
    {"list", "download", "upload", "overwrite", "delete", "rename", "mkdir"}
)

# The order permissions are shown and stored in.
PERMISSION_ORDER: tuple[str, ...] = (
    "list", "download", "upload", "overwrite", "delete", "rename", "mkdir",
)

DATABASE_NAME = "accounts.sqlite3"
BUSY_TIMEOUT_MS = 10_000
MAX_REASON_LENGTH = 200
HOME_MODE = 0o750
#: Rows of the change log kept; a server more than this many changes behind
#: (it cannot be: it reads the log every second) treats every session as stale.
CHANGES_KEPT = 10_000

#: The kinds of change in the log.  ``password`` also covers every change
#: of what the account's credentials are (two-factor login turned on,
#: required or reset, an app password revoked): open FTP sessions end on
#: it.  ``2fa`` and ``app-password`` are writes that change nothing a
#: session relies on (a code used up, an app password added).  The
#: ``cert-*`` and ``auth`` kinds are client-certificate bindings and the
#: login method (L{rumpus_secure.accounts.client_certs}).
CHANGE_KINDS = ("add", "password", "lock", "unlock", "perms", "delete", "2fa",
                "app-password", "cert-add", "cert-del", "auth")

_NAME_RE = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9._@-]{0,63}\Z")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    home TEXT NOT NULL,
    perms TEXT NOT NULL,
    locked INTEGER NOT NULL DEFAULT 0,
    lock_reason TEXT,
    created REAL NOT NULL,
    changed REAL NOT NULL,
    password_changed REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)
"""
_CHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT,
    at REAL NOT NULL
)
"""
_COLUMNS = (
    "name, home, perms, locked, lock_reason, created, changed, "
    "password_changed, version"
)


class AccountError(Exception):
    """
    An account operation was refused; the message is one line for a person.
    """


@dataclass(frozen=True)
class Account:
    """
    One account as stored; never holds the password or its hash.

    C{version} goes up by one on every change to the account (password,
    lock, permissions), so a cache keyed on C{(name, version)} can tell it
    is stale; C{password_changed} is when the password was last set.
    """

    name: str
    home: Path
    perms: frozenset[str]
    locked: bool
    lock_reason: str | None
    created: float
    changed: float
    password_changed: float
    version: int


@dataclass(frozen=True)
class AccountChange:
    """
    One row of the change log: what happened to which account, in order.

    @ivar seq: the store's account version after this change; it only grows.
    @ivar kind: one of L{CHANGE_KINDS}.
    @ivar detail: the lock reason for ``lock``, the new permissions
        (comma-separated) for ``perms``, else L{None}.
    """

    seq: int
    name: str
    kind: str
    detail: str | None
    at: float


@dataclass(frozen=True)
class ChangeBatch:
    """
    What L{ChangeReader.since} found.

    @ivar changes: in order, at most the limit asked for.
    @ivar oldest: the oldest C{seq} still in the log (0 if it is empty); a
        reader whose last C{seq} is below C{oldest - 1} has missed changes.
    """

    changes: list[AccountChange]
    oldest: int


class IAccountStore(Interface):
    """
    Where accounts live.  Every method may block; call them off the reactor.

    Lookups by name are exact (case-sensitive); names that differ only in
    case cannot both exist, so two accounts never share a home on a
    case-insensitive file system.
    """

    def add(
        name: str,
        password: str,
        home: Path | None = None,
        perms: Iterable[str] | None = None,
        require_2fa: bool = False,
    ) -> Account:
        """
        Create an account and its home directory.

        @param home: L{None} for C{ROOT/NAME}; an absolute path; or a path
            relative to the root.
        @param perms: permission names, L{None} for all of them.
        @param require_2fa: the first web login must set up two-factor
            login (L{ITwoFactorStore}), in the same transaction.
        @raises AccountError: bad name, empty password, unknown permission,
            duplicate account, or a home that cannot be created.
        """

    def get(name: str) -> Account | None:
        """
        The account called C{name}, or L{None}.
        """

    def list() -> list[Account]:
        """
        Every account, sorted by name.
        """

    def password_hash(name: str) -> str | None:
        """
        The stored hash for C{name}, or L{None}; for the checker only.
        """

    def replace_hash(name: str, old_hash: str, new_hash: str) -> bool:
        """
        Swap in a re-hashed form of the same password, if C{old_hash} is
        still the stored one.  Does not count as a change (C{version} and
        C{password_changed} stay): the password is the same.
        """

    def set_password(name: str, password: str) -> None:
        """
        Set a new password and clear any lock.

        An administrator's password reset is how a quarantined account (one
        locked because its password was seen in cleartext) comes back.
        """

    def set_perms(name: str, perms: Iterable[str]) -> None:
        """
        Replace the account's permissions.
        """

    def lock(name: str, reason: str) -> None:
        """
        Lock the account: its password stops working until unlocked or reset.
        """

    def unlock(name: str) -> None:
        """
        Unlock the account; its password works again.
        """

    def delete(name: str) -> None:
        """
        Delete the account (and its second factors and app passwords, in the
        same transaction); its home directory is left on disk.
        """

    def change_reader() -> "ChangeReader":
        """
        A reader of the change log; see L{ChangeReader}.
        """


def check_name(name: str) -> str:
    """
    Return C{name} if it is a valid account name, else raise L{AccountError}.

    1 to 64 ASCII letters, digits and ``. _ - @``, not starting with ``.``
    or ``-`` (so it is never a hidden file, ``..``, or an option).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise AccountError(
            f"invalid account name {name!r}: use 1 to 64 letters, digits and "
            "'._-@', not starting with '.' or '-'"
        )
    return name


def parse_permissions(perms: Iterable[str] | str) -> frozenset[str]:
    """
    Turn permission names (or one comma-separated string) into a set.

    @raises AccountError: a name is not one of L{ALL_PERMISSIONS}.
    """
    if isinstance(perms, str):
        perms = perms.split(",")
    wanted = {p.strip().lower() for p in perms if p.strip()}
    unknown = sorted(wanted - ALL_PERMISSIONS)
    if unknown:
        raise AccountError(
            f"unknown permission {', '.join(unknown)}: choose from "
            + ", ".join(PERMISSION_ORDER)
        )
    return frozenset(wanted)


def format_permissions(perms: Iterable[str]) -> str:
    """
    Permission names comma-separated in the canonical order.
    """
    have = set(perms)
    return ",".join(p for p in PERMISSION_ORDER if p in have)


def _clean_reason(reason: str) -> str:
    """
    One line of at most L{MAX_REASON_LENGTH} characters.

    The reason is shown in FTP replies, so it must never carry a line break.
    """
    text = " ".join(str(reason).split())
    if not text:
        raise AccountError("a lock needs a reason")
    return text[:MAX_REASON_LENGTH]


@implementer(IAccountStore, ITwoFactorStore)
class SQLiteAccountStore(TwoFactorTables):
    """
    Accounts in one SQLite file, safe for several threads and processes.

    @param path: the database file; its directory is created (mode 0o700)
        if missing.
    @param root: the file root; default homes are C{ROOT/NAME}.
    @param hasher: argon2 parameters; leave out in production.
    @param clock: seconds since the epoch, for timestamps.
    @raises AccountError: the directory or database cannot be created or
        opened.
    """

    def __init__(
        self,
        path: Path,
        root: Path,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._hasher = hasher
        self._clock = clock
        self._connections = ThreadConnections(self._connect)
        self._initialise()

    @classmethod
    def in_data_dir(
        cls, data_dir: Path, root: Path, hasher: PasswordHasher | None = None
    ) -> SQLiteAccountStore:
        """
        The store at C{DATA-DIR/accounts.sqlite3}.
        """
        return cls(Path(data_dir) / DATABASE_NAME, root, hasher=hasher)

    def _initialise(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise AccountError(
                f"cannot create data directory {self.path.parent}: {e.strerror}"
            ) from None
        try:
            # Create the file ourselves so password hashes are never
            # world-readable; SQLite gives the -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as e:
            raise AccountError(
                f"cannot create accounts database {self.path}: {e.strerror}"
            ) from None
        try:
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                with self._write(db):
                    db.execute(_SCHEMA)
                    db.execute(_CHANGES_SCHEMA)
                    for statement in TWO_FACTOR_SCHEMA:
                        db.execute(statement)
                    if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise AccountError(f"cannot open accounts database {self.path}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def _write(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._connections.connection() as db, self._write(db):
            yield db

    def _update(
        self, name: str, change: tuple[str, str | None], assignments: str,
        *values: object, now: float | None = None,
    ) -> None:
        when = self._clock() if now is None else now
        with self._writing() as db:
            cursor = db.execute(
                f"UPDATE accounts SET {assignments}, changed = ?, "
                "version = version + 1 WHERE name = ? COLLATE BINARY",
                (*values, when, name),
            )
            if cursor.rowcount == 0:
                raise AccountError(f"no account named {name!r}")
            _record(db, name, *change, when)

    def _home_for(self, name: str, home: Path | str | None) -> Path:
        if home is None or str(home) == "":
            return self.root / name
        given = Path(home).expanduser()
        if given.is_absolute():
            return Path(os.path.normpath(given))
        if ".." in given.parts:
            raise AccountError(f"home {str(home)!r} must not contain '..'")
        return Path(os.path.normpath(self.root / given))

    def add(
        self,
        name: str,
        password: str,
        home: Path | None = None,
        perms: Iterable[str] | None = None,
        require_2fa: bool = False,
    ) -> Account:
        check_name(name)
        if not password:
            raise AccountError("empty password: an account needs a password")
        granted = ALL_PERMISSIONS if perms is None else parse_permissions(perms)
        home_path = self._home_for(name, home)
        hashed = hash_password(password, self._hasher)
        now = self._clock()
        with self._writing() as db:
            try:
                db.execute(
                    "INSERT INTO accounts (name, password_hash, home, perms, "
                    "locked, lock_reason, created, changed, password_changed, "
                    "version) VALUES (?, ?, ?, ?, 0, NULL, ?, ?, ?, 1)",
                    (name, hashed, stored_home(self.root, home_path),
                     format_permissions(granted),
                     now, now, now),
                )
            except sqlite3.IntegrityError:
                row = db.execute(
                    "SELECT name FROM accounts WHERE name = ?", (name,)
                ).fetchone()
                existing = name if row is None else row[0]
                raise AccountError(
                    f"an account named {existing!r} already exists"
                ) from None
            _record(db, name, "add", None, now)
            forget_credentials(db, name)  # of an earlier account of this name
            if require_2fa:
                db.execute("INSERT INTO account_2fa (name, required) VALUES (?, 1)",
                           (name,))
            # Inside the transaction: if the home cannot be made, no account.
            try:
                home_path.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
            except OSError as e:
                raise AccountError(
                    f"cannot create home directory {home_path}: {e.strerror}"
                ) from None
        return Account(
            name=name, home=home_path, perms=granted, locked=False,
            lock_reason=None, created=now, changed=now, password_changed=now,
            version=1,
        )

    def get(self, name: str) -> Account | None:
        with self._connections.connection() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM accounts WHERE name = ? COLLATE BINARY",
                (name,),
            ).fetchone()
        return None if row is None else _account(row, self.root)

    def list(self) -> list[Account]:
        with self._connections.connection() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM accounts ORDER BY name COLLATE BINARY"
            ).fetchall()
        return [_account(row, self.root) for row in rows]

    def password_hash(self, name: str) -> str | None:
        with self._connections.connection() as db:
            row = db.execute(
                "SELECT password_hash FROM accounts WHERE name = ? COLLATE BINARY",
                (name,),
            ).fetchone()
        return None if row is None else str(row[0])

    def replace_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE accounts SET password_hash = ? "
                "WHERE name = ? COLLATE BINARY AND password_hash = ?",
                (new_hash, name, old_hash),
            )
            return cursor.rowcount == 1

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise AccountError("empty password: an account needs a password")
        hashed = hash_password(password, self._hasher)
        now = self._clock()
        self._update(
            name, ("password", None),
            "password_hash = ?, password_changed = ?, locked = 0, lock_reason = NULL",
            hashed, now, now=now,
        )

    def set_perms(self, name: str, perms: Iterable[str]) -> None:
        text = format_permissions(parse_permissions(perms))
        self._update(name, ("perms", text), "perms = ?", text)

    def lock(self, name: str, reason: str) -> None:
        reason = _clean_reason(reason)
        self._update(name, ("lock", reason), "locked = 1, lock_reason = ?", reason)

    def unlock(self, name: str) -> None:
        self._update(name, ("unlock", None), "locked = 0, lock_reason = NULL")

    def delete(self, name: str) -> None:
        with self._writing() as db:
            cursor = db.execute(
                "DELETE FROM accounts WHERE name = ? COLLATE BINARY", (name,)
            )
            if cursor.rowcount == 0:
                raise AccountError(f"no account named {name!r}")
            forget_credentials(db, name)
            _record(db, name, "delete", None, self._clock())

    def change_reader(self) -> ChangeReader:
        return ChangeReader(self.path)

    # -- for TwoFactorTables ----------------------------------------------------

    def _exists(self, db: sqlite3.Connection, name: str) -> None:
        row = db.execute("SELECT 1 FROM accounts WHERE name = ? COLLATE BINARY",
                         (name,)).fetchone()
        if row is None:
            raise AccountError(f"no account named {name!r}")

    def _log_change(self, db: sqlite3.Connection, name: str, kind: str,
                    detail: str | None, when: float) -> None:
        _record(db, name, kind, detail, when)

class ChangeReader:
    """
    Reads the change log over one connection that stays open.

    Opening a SQLite connection costs far more than the query (see the
    module docstring), and the server asks many times a second.  The
    connection is in autocommit mode, so it holds no read transaction
    between queries and never keeps WAL checkpoints from finishing.  Use it
    from one thread at a time (L{rumpus_secure.accounts.watch} does).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db = db
        return self._db

    def latest(self) -> int:
        """
        The C{seq} of the newest change, 0 if there was none.
        """
        row = self._connection().execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'account_changes'"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def settle(self) -> None:
        """
        Wait until no write transaction is in progress: take the write lock
        and give it back at once (C{BEGIN IMMEDIATE; ROLLBACK}; it writes
        nothing, so it makes no file event).

        A writer holds the lock from before its first C{write()} until its
        commit is visible, so every commit whose write was seen (an inotify
        event, L{rumpus_secure.accounts.change_signal}) before this call is
        visible to the queries after it.
        """
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    def since(self, seq: int, limit: int = 1000) -> ChangeBatch:
        """
        The changes after C{seq}, oldest first, at most C{limit} of them.
        """
        db = self._connection()
        rows = db.execute(
            "SELECT seq, name, kind, detail, at FROM account_changes "
            "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit),
        ).fetchall()
        oldest = db.execute("SELECT min(seq) FROM account_changes").fetchone()[0]
        return ChangeBatch(
            [AccountChange(int(s), n, k, d, float(a)) for s, n, k, d, a in rows],
            int(oldest or 0),
        )

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _record(db: sqlite3.Connection, name: str, kind: str, detail: str | None,
            when: float) -> None:
    """
    Log a change inside the writer's transaction and drop the oldest rows.
    """
    cursor = db.execute(
        "INSERT INTO account_changes (name, kind, detail, at) VALUES (?, ?, ?, ?)",
        (name, kind, detail, when),
    )
    if cursor.lastrowid is not None and cursor.lastrowid > CHANGES_KEPT:
        db.execute("DELETE FROM account_changes WHERE seq <= ?",
                   (cursor.lastrowid - CHANGES_KEPT,))


def stored_home(root: Path, home: Path) -> str:
    """
    How a home is written in the database: relative to the file root when
    it is inside it, else absolute.

    Several nodes share the files over NFS or GlusterFS and each mounts
    them at its own path (C{--root}); an absolute home would point into
    the mount of the node that created the account.
    """
    try:
        relative = Path(home).relative_to(root)
    except ValueError:
        return str(home)
    return str(relative) if relative.parts else "."


def resolved_home(root: Path | None, stored: str) -> Path:
    """
    The home directory of a database value, on this node (its C{--root}).

    Absolute values (accounts made before homes were relative, or homes
    outside the root) are kept as they are.
    """
    path = Path(stored)
    if path.is_absolute() or root is None:
        return path
    return Path(os.path.normpath(root / path))


def _account(row: tuple, root: Path | None = None) -> Account:  # type: ignore[type-arg]
    name, home, perms, locked, reason, created, changed, pw_changed, version = row
    return Account(
        name=name,
        home=resolved_home(root, home),
        perms=frozenset(p for p in perms.split(",") if p),
        locked=bool(locked),
        lock_reason=reason,
        created=created,
        changed=changed,
        password_changed=pw_changed,
        version=version,
    )
