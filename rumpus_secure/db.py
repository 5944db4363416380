"""
The shared PostgreSQL database: URLs, connections, schema migrations, copy.

One node keeps its state in SQLite (``DATA-DIR/accounts.sqlite3``); several
nodes behind one address need one database they all write, and SQLite's WAL
does not work over a network file system.  ``--database postgresql://...``
moves accounts, bans and web sessions (and what later issues add) into
PostgreSQL; without it nothing here is imported and psycopg need not be
installed (it is the optional extra ``rumpus-secure[postgres]``).

Connections come from one C{psycopg_pool.ConnectionPool} per process
(L{Database}), used only from threads: every call blocks, and the server
makes them from a thread pool of its own (L{db_thread_pool}), so a slow or
absent database never holds up the reactor, nor the file work of the shared
pool.  Each connection is checked as it is taken from the pool (one round
trip, about 50 microseconds on loopback), so after an outage the first
request gets a fresh connection instead of a dead one; a database that does
not answer within L{CONNECT_TIMEOUT} seconds raises L{StoreUnavailable},
which the protocols turn into ``421 try again later`` -- never into "wrong
password", and never into an offence against the client.

The schema is versioned (L{MIGRATIONS}): ``rumpus-secure db migrate``
applies the missing steps, each in a transaction of its own, under an
advisory lock so two nodes migrating at once apply each step once; a server
whose database is behind (or ahead: an older release) refuses to start and
says which command to run.

Every write that other nodes must hear of is recorded in a change log in
the same transaction (C{account_changes} for accounts, C{state_changes} for
bans and web sessions), and announced with C{NOTIFY} on commit.  The writers
of a log take an advisory transaction lock first: a sequence in PostgreSQL
hands out numbers in call order, not commit order, and a reader that saw
number 6 before number 5 committed would never read 5.  The lock makes the
two orders the same (account and ban writes are rare; their cost is one
lock round trip).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

#: Seconds to wait for a connection (new or from the pool) before the
#: database counts as unavailable: a login waits at most this long for its
#: ``421 try again later``.
CONNECT_TIMEOUT = 3.0

#: Seconds after a failure during which the database is not asked again:
#: requests fail at once.  After an outage of 10 s, the pool had a working
#: connection 10 ms after the server was back (measured on loopback).
RETRY_AFTER = 1.0

#: Connections per process; logins, the change-log reader and the shared
#: state feed each hold one for a few hundred microseconds at a time.
POOL_SIZE = 8

#: Channels of C{NOTIFY}: account changes, and bans/web sessions.
ACCOUNTS_CHANNEL = "rumpus_accounts"
STATE_CHANNEL = "rumpus_state"

#: Advisory lock keys (any 64-bit numbers; these spell "rumpus" + a digit).
LOCK_MIGRATE = 0x72756D707573_01
LOCK_ACCOUNT_LOG = 0x72756D707573_02
LOCK_STATE_LOG = 0x72756D707573_03
LOCK_BOOTSTRAP = 0x72756D707573_04
LOCK_SHARES = 0x72756D707573_05

INSTALL_HINT = "install the PostgreSQL support: pip install 'rumpus-secure[postgres]'"


class StoreUnavailable(Exception):
    """
    The database cannot be reached (or failed mid-way); try again later.

    Never means "wrong password": the protocols answer ``421`` and count no
    offence.
    """


class DatabaseError(Exception):
    """
    A database problem a person must fix (bad URL, schema behind, copy
    refused); the message is one line.
    """


def is_postgres_url(value: str | None) -> bool:
    return bool(value) and str(value).split(":", 1)[0].lower() in ("postgresql", "postgres")


def parse_database(value: Any) -> str | None:
    """
    The C{--database} option: a C{postgresql://} URL, or L{None} for the
    embedded SQLite (the words ``sqlite`` or ``none``, or nothing).
    """
    if value is None or value is False:
        return None
    text = str(value).strip()
    if text.lower() in ("", "sqlite", "none", "embedded"):
        return None
    if not is_postgres_url(text):
        raise ValueError("expected a postgresql://USER@HOST:PORT/DBNAME URL, or sqlite")
    parts = urlsplit(text)
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError("the URL names no database: postgresql://HOST/DBNAME")
    return text


def redact(url: str | None) -> str:
    """
    The URL without its password, for messages and logs.
    """
    if not url:
        return "sqlite"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path,
                       parts.query, parts.fragment))


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseError(f"--database is PostgreSQL but psycopg is missing: "
                            f"{INSTALL_HINT}") from None
    return psycopg


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    from psycopg_pool import PoolTimeout

    return (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


# -- schema -----------------------------------------------------------------

@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "accounts, change logs, bans, web sessions", """
CREATE TABLE accounts (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    home TEXT NOT NULL,
    perms TEXT NOT NULL,
    locked BOOLEAN NOT NULL DEFAULT false,
    lock_reason TEXT,
    created DOUBLE PRECISION NOT NULL,
    changed DOUBLE PRECISION NOT NULL,
    password_changed DOUBLE PRECISION NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
-- Names that differ only in case cannot both exist (as in SQLite's NOCASE;
-- names are ASCII).
CREATE UNIQUE INDEX accounts_name_nocase ON accounts (lower(name));
CREATE TABLE account_changes (
    seq BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE bans (
    address TEXT PRIMARY KEY,
    until DOUBLE PRECISION NOT NULL,
    level INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE web_sessions (
    key BYTEA PRIMARY KEY,
    "user" TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);
-- What changed in bans and web_sessions, in commit order: TOPIC is 'ban'
-- or 'session', KEY the address or the hex of the session key.
CREATE TABLE state_changes (
    seq BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""),
    # As in SQLite (rumpus_secure.accounts.two_factor_store, rumpus_secure.shares);
    # SEQ of shares stands in for SQLite's rowid (newest first among equal times).
    Migration(2, "two-factor login, app passwords, share links", """
CREATE TABLE account_2fa (
    name TEXT PRIMARY KEY,
    required BOOLEAN NOT NULL DEFAULT false,
    secret BYTEA,
    pending BYTEA,
    enabled DOUBLE PRECISION,
    last_step BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE recovery_codes (
    name TEXT NOT NULL,
    digest BYTEA NOT NULL,
    used DOUBLE PRECISION,
    PRIMARY KEY (name, digest)
);
CREATE TABLE app_passwords (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    hash TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION
);
CREATE INDEX app_passwords_name ON app_passwords (name);
CREATE TABLE shares (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    password_hash TEXT,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    max_size BIGINT,
    note TEXT NOT NULL DEFAULT '',
    revoked TEXT,
    last_used DOUBLE PRECISION
);
CREATE INDEX shares_owner ON shares (owner);
CREATE TABLE share_events (
    seq BIGSERIAL PRIMARY KEY,
    share_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    client TEXT,
    name TEXT,
    size BIGINT
);
CREATE INDEX share_events_share ON share_events (share_id, seq);
"""),
    # As in SQLite (rumpus_secure.accounts.client_certs).  The foreign keys do
    # what SQLite's trigger does there: deleting an account deletes its
    # bindings and login method in the same transaction, so a namesake made
    # later inherits no certificate (and no binding can name a missing account).
    Migration(3, "client certificates and login methods", """
CREATE TABLE client_certs (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    not_after DOUBLE PRECISION NOT NULL,
    added DOUBLE PRECISION NOT NULL
);
CREATE INDEX client_certs_name ON client_certs (name);
CREATE TABLE account_auth (
    name TEXT PRIMARY KEY REFERENCES accounts (name) ON DELETE CASCADE,
    mode TEXT NOT NULL CHECK (mode IN ('password', 'cert', 'cert+password'))
);
"""),
)

LATEST_VERSION = MIGRATIONS[-1].version

_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied DOUBLE PRECISION NOT NULL
)
"""


class Database:
    """
    One pool of connections to C{url}, for use from threads.

    @param url: a C{postgresql://} URL (libpq's URI form; C{PGPASSWORD} and
        C{~/.pgpass} work as with psql).
    """

    def __init__(self, url: str, size: int = POOL_SIZE,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        _psycopg()
        import logging

        # The pool warns on every reconnection attempt during an outage;
        # the stores say it once (and again when it is over).
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

        self.url = url
        self.timeout = timeout
        self._size = size
        self._pool = self._new_pool()
        self._opened = False
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _new_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        return ConnectionPool(
            self.url, min_size=1, max_size=self._size, timeout=self.timeout, open=False,
            kwargs=self._connect_options(), check=ConnectionPool.check_connection,
            name="rumpus-db",
        )

    def _connect_options(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(1, int(self.timeout))}

    def __repr__(self) -> str:
        return f"<Database {redact(self.url)}>"

    def _open(self) -> None:
        with self._lock:
            if not self._opened:
                # Do not wait for the first connection: an absent database at
                # start is reported by the first query, clearly.
                self._pool.open(wait=False)
                self._opened = True

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """
        A connection in autocommit mode; L{StoreUnavailable} if there is none.
        """
        self._open()
        down = self._down_until > 0
        if down and time.monotonic() < self._down_until:
            # It failed a moment ago: answer at once instead of making every
            # login wait CONNECT_TIMEOUT in a verify thread (where the logins
            # behind it would queue); after RETRY_AFTER, one short try.
            raise StoreUnavailable(f"database {redact(self.url)} is unavailable")
        errors = _unavailable_errors()
        if down:
            yield from self._retry(errors)
            return
        try:
            with self._pool.connection() as conn:
                yield conn
        except errors as e:
            self._down_until = time.monotonic() + RETRY_AFTER
            raise StoreUnavailable(f"database {redact(self.url)}: "
                                   f"{str(e).strip() or type(e).__name__}") from e

    def _retry(self, errors: tuple[type[BaseException], ...]) -> Iterator[Any]:
        """
        After an outage: one connection of its own, briefly; if it works,
        the database is back and a fresh pool takes over.

        The old pool would deliver again only after its reconnection
        back-off, which grows with the outage (seconds to minutes); the
        first request after the database returns rebuilds it instead.
        """
        import psycopg

        self._down_until = time.monotonic() + RETRY_AFTER  # others: at once
        options = self._connect_options()
        options["connect_timeout"] = max(1, int(RETRY_AFTER))
        try:
            conn = psycopg.connect(self.url, **options)
        except errors as e:
            self._down_until = time.monotonic() + RETRY_AFTER
            raise StoreUnavailable(f"database {redact(self.url)}: "
                                   f"{str(e).strip() or type(e).__name__}") from e
        with self._lock:
            old, self._pool = self._pool, self._new_pool()
            self._pool.open(wait=False)
            self._down_until = 0.0
        threading.Thread(target=old.close, name="rumpus-db-old-pool",
                         daemon=True).start()
        try:
            with conn:
                yield conn
        except errors as e:
            raise StoreUnavailable(f"database {redact(self.url)}: "
                                   f"{str(e).strip() or type(e).__name__}") from e

    @contextmanager
    def transaction(self, lock: int | None = None) -> Iterator[Any]:
        """
        A connection inside a transaction, committed at the end; with
        C{lock}, that advisory transaction lock is taken first.
        """
        with self.connection() as conn, conn.transaction():
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield conn

    def call(self, function: Callable[[Any], T]) -> T:
        with self.connection() as conn:
            return function(conn)

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False

    # -- schema -------------------------------------------------------------

    def schema_version(self) -> int:
        """
        The version of the schema in the database, 0 for an empty one.
        """
        with self.connection() as conn:
            exists = conn.execute(
                "SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
            if not exists:
                return 0
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)

    def migrate(self) -> list[Migration]:
        """
        Apply the missing migrations, each in a transaction; returns them.
        """
        applied = []
        with self.connection() as conn:
            # A session lock: two nodes migrating at once apply each step once.
            conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_MIGRATE,))
            try:
                conn.execute(_VERSIONS_TABLE)
                have = int(conn.execute(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations"
                ).fetchone()[0])
                if have > LATEST_VERSION:
                    raise DatabaseError(
                        f"the database schema is version {have}, newer than this "
                        f"release knows ({LATEST_VERSION}): upgrade rumpus-secure")
                for step in MIGRATIONS:
                    if step.version <= have:
                        continue
                    with conn.transaction():
                        conn.execute(step.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, description, "
                            "applied) VALUES (%s, %s, %s)",
                            (step.version, step.description, time.time()))
                    applied.append(step)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_MIGRATE,))
        return applied

    def check_schema(self) -> None:
        """
        Raise L{DatabaseError} unless the schema is exactly the latest.
        """
        have = self.schema_version()
        if have < LATEST_VERSION:
            raise DatabaseError(
                f"the database {redact(self.url)} has schema version {have}, this "
                f"release needs {LATEST_VERSION}: run 'rumpus-secure --database URL "
                "db migrate' once (from any node), then start the servers")
        if have > LATEST_VERSION:
            raise DatabaseError(
                f"the database schema is version {have}, newer than this release "
                f"knows ({LATEST_VERSION}): upgrade rumpus-secure on this node")


def db_thread_pool(reactor: Any, max_threads: int = POOL_SIZE) -> Any:
    """
    The threads that talk to the database, started and stopped with C{reactor}.

    Their own pool: a database that hangs must not fill the reactor's
    shared pool, which does the file work of every transfer.
    """
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=max_threads, name="rumpus-db")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool


# -- copy -------------------------------------------------------------------

@dataclass
class CopyResult:
    accounts: int = 0
    bans: int = 0
    sessions: int = 0
    two_factor: int = 0
    app_passwords: int = 0
    shares: int = 0
    client_certs: int = 0


def parse_sqlite_source(text: str) -> Path:
    """
    ``sqlite:PATH`` (a data directory or the database file) as the file.
    """
    if not text.lower().startswith("sqlite:"):
        raise DatabaseError(f"--from must be sqlite:PATH, got {text!r}")
    path = Path(text[len("sqlite:"):]).expanduser()
    if path.is_dir():
        path = path / "accounts.sqlite3"
    if not path.is_file():
        raise DatabaseError(f"no SQLite accounts database at {path}")
    return path


def copy_sqlite(source: Path, database: Database, now: float) -> CopyResult:
    """
    Copy accounts, bans, live web sessions, two-factor state, app passwords,
    client-certificate bindings with login methods, and share links (with
    their events) from a SQLite store into an empty,
    migrated PostgreSQL database, in one transaction.

    The two-factor secrets stay sealed under the source's
    C{DATA-DIR/secret.key}: every node needs a copy of that file (like the
    certificate), or enrolled accounts cannot log in on the web.

    Refuses a database that already holds accounts: a copy never merges two
    installations by accident.  Every account gets an ``add`` entry in the
    change log, and the bootstrap is marked done (no node will make an
    ``admin`` in a database that was copied).
    """
    result = CopyResult()
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src:
        tables = {row[0] for row in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        accounts = src.execute(
            "SELECT name, password_hash, home, perms, locked, lock_reason, created, "
            "changed, password_changed, version FROM accounts").fetchall() \
            if "accounts" in tables else []
        bans = src.execute(
            "SELECT address, until, level, reason, created FROM bans WHERE until > ?",
            (now,)).fetchall() if "bans" in tables else []
        sessions = src.execute(
            "SELECT key, user, csrf, created, last_seen FROM web_sessions"
        ).fetchall() if "web_sessions" in tables else []
        # Only the rows of accounts that exist: rows an earlier account of
        # the same name left behind open nothing, and are not copied.
        two_factor = src.execute(
            "SELECT name, required, secret, pending, enabled, last_step FROM account_2fa "
            "WHERE name IN (SELECT name FROM accounts)"
        ).fetchall() if {"account_2fa", "accounts"} <= tables else []
        recovery = src.execute(
            "SELECT name, digest, used FROM recovery_codes "
            "WHERE name IN (SELECT name FROM accounts)"
        ).fetchall() if {"recovery_codes", "accounts"} <= tables else []
        app_passwords = src.execute(
            "SELECT id, name, label, hash, created, last_used FROM app_passwords "
            "WHERE name IN (SELECT name FROM accounts)"
        ).fetchall() if {"app_passwords", "accounts"} <= tables else []
        # Every link (also ended ones: the owner's page lists them), oldest
        # first so that SEQ keeps their order.
        shares = src.execute(
            "SELECT id, token_hash, owner, kind, path, created, expires, password_hash, "
            "max_uses, uses, max_size, note, revoked, last_used FROM shares "
            "ORDER BY rowid").fetchall() if "shares" in tables else []
        client_certs = src.execute(
            "SELECT fingerprint, name, subject, not_after, added FROM client_certs "
            "WHERE name IN (SELECT name FROM accounts)"
        ).fetchall() if {"client_certs", "accounts"} <= tables else []
        account_auth = src.execute(
            "SELECT name, mode FROM account_auth WHERE name IN (SELECT name FROM accounts)"
        ).fetchall() if {"account_auth", "accounts"} <= tables else []
        share_events = src.execute(
            "SELECT share_id, at, action, client, name, size FROM share_events "
            "ORDER BY seq").fetchall() if "share_events" in tables else []
    with database.transaction(lock=LOCK_ACCOUNT_LOG) as conn:
        if conn.execute("SELECT count(*) FROM accounts").fetchone()[0]:
            raise DatabaseError(
                f"{redact(database.url)} already holds accounts: copy only into "
                "an empty database")
        for row in accounts:
            values = list(row)
            values[4] = bool(values[4])
            conn.execute(
                "INSERT INTO accounts (name, password_hash, home, perms, locked, "
                "lock_reason, created, changed, password_changed, version) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", values)
            conn.execute(
                "INSERT INTO account_changes (name, kind, detail, at) "
                "VALUES (%s, 'add', NULL, %s)", (row[0], now))
            result.accounts += 1
        for row in bans:
            conn.execute(
                "INSERT INTO bans (address, until, level, reason, created) VALUES "
                "(%s, %s, %s, %s, %s) ON CONFLICT (address) DO NOTHING", row)
            result.bans += 1
        for key, user, csrf, created, last_seen in sessions:
            conn.execute(
                'INSERT INTO web_sessions (key, "user", csrf, created, last_seen) '
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                (bytes(key), user, csrf, created, last_seen))
            result.sessions += 1
        for name, required, secret, pending, enabled, last_step in two_factor:
            conn.execute(
                "INSERT INTO account_2fa (name, required, secret, pending, enabled, "
                "last_step) VALUES (%s, %s, %s, %s, %s, %s)",
                (name, bool(required), _blob(secret), _blob(pending), enabled,
                 int(last_step)))
            result.two_factor += 1
        for name, digest, used in recovery:
            conn.execute("INSERT INTO recovery_codes (name, digest, used) "
                         "VALUES (%s, %s, %s)", (name, bytes(digest), used))
        for row in app_passwords:
            conn.execute(
                "INSERT INTO app_passwords (id, name, label, hash, created, last_used) "
                "VALUES (%s, %s, %s, %s, %s, %s)", row)
            result.app_passwords += 1
        for row in shares:
            values = list(row)
            values[1] = bytes(values[1])
            conn.execute(
                "INSERT INTO shares (id, token_hash, owner, kind, path, created, "
                "expires, password_hash, max_uses, uses, max_size, note, revoked, "
                "last_used) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s)", values)
            result.shares += 1
        for row in share_events:
            conn.execute(
                "INSERT INTO share_events (share_id, at, action, client, name, size) "
                "VALUES (%s, %s, %s, %s, %s, %s)", row)
        for row in client_certs:
            conn.execute(
                "INSERT INTO client_certs (fingerprint, name, subject, not_after, added) "
                "VALUES (%s, %s, %s, %s, %s)", row)
            result.client_certs += 1
        for row in account_auth:
            conn.execute("INSERT INTO account_auth (name, mode) VALUES (%s, %s)", row)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('bootstrapped', 'copied') "
            "ON CONFLICT (key) DO NOTHING")
    return result


def _blob(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
