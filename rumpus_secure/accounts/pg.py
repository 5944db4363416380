"""
The PostgreSQL stores: accounts (with their two-factor state and app
passwords), bans, web sessions and share links, shared by all nodes
(client-certificate bindings: L{rumpus_secure.accounts.pg_client_certs}).

Each class implements the same interface as its SQLite twin
(L{IAccountStore} and L{ITwoFactorStore}, L{IBanStore}, the web session
persistence, L{IShareStore}), so the rest
of the server does not know which one it talks to.  They differ where
several nodes make a difference:

 - every account write records one row in C{account_changes} and every ban
   or web session write one row in C{state_changes}, in the same
   transaction, under an advisory lock (commit order = C{seq} order, see
   L{rumpus_secure.db}), and C{NOTIFY}s the other nodes on commit;
 - a lookup reads the primary every time (never a cache, never a replica):
   a login reads the account's C{version} there, so a verifier cache on any
   node cannot vouch for a password changed on another;
 - a database that cannot be reached raises L{StoreUnavailable}, never
   returns "no such account";
 - what must happen once across all nodes (a TOTP step, a recovery code,
   the last use of a link) is one conditional C{UPDATE}: a second node
   waits for the first's row lock, re-reads the row and updates nothing.

What it costs: a repeat login answered by the verifier cache still reads
the account twice; on loopback, 4 threads, that is about 6,300 logins/s
against about 40,000 with SQLite, and a login that verifies argon2id is the
same on both (the hash is the cost), C{bench/scale_db.py}.

Every method blocks; call them from a thread.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from argon2 import PasswordHasher
from twisted.logger import Logger
from zope.interface import implementer

from rumpus_secure.accounts.bans import Ban, IBanStore
from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.accounts.store import (
    ALL_PERMISSIONS,
    CHANGES_KEPT,
    HOME_MODE,
    Account,
    AccountChange,
    AccountError,
    ChangeBatch,
    IAccountStore,
    _clean_reason,
    check_name,
    format_permissions,
    parse_permissions,
    resolved_home,
    stored_home,
)
from rumpus_secure.accounts.two_factor_store import (
    AppPassword,
    ITwoFactorStore,
    TwoFactorRow,
)
from rumpus_secure.db import (
    ACCOUNTS_CHANNEL,
    LOCK_ACCOUNT_LOG,
    LOCK_BOOTSTRAP,
    LOCK_SHARES,
    LOCK_STATE_LOG,
    STATE_CHANNEL,
    Database,
    StoreUnavailable,
)
from rumpus_secure.shares import (
    _COLUMNS as _SHARE_COLUMNS,
    EVENTS_KEPT,
    KINDS,
    MAX_NOTE,
    MAX_PER_ACCOUNT,
    TOKEN_BYTES,
    IShareStore,
    Share,
    ShareError,
    ShareEvent,
    _share,
    token_hash,
)

_log = Logger()

_COLUMNS = (
    "name, home, perms, locked, lock_reason, created, changed, "
    "password_changed, version"
)

#: Rows of C{state_changes} kept (bans and session changes of the last
#: minutes; a node reads the log within a second, or within 5 s without
#: notifications).
STATE_CHANGES_KEPT = 50_000


def _record_account(conn: Any, name: str, kind: str, detail: str | None,
                    when: float) -> None:
    seq = conn.execute(
        "INSERT INTO account_changes (name, kind, detail, at) VALUES (%s, %s, %s, %s) "
        "RETURNING seq", (name, kind, detail, when)).fetchone()[0]
    if seq > CHANGES_KEPT:
        conn.execute("DELETE FROM account_changes WHERE seq <= %s", (seq - CHANGES_KEPT,))
    conn.execute("SELECT pg_notify(%s, %s)", (ACCOUNTS_CHANNEL, str(seq)))


def record_state(conn: Any, topic: str, key: str, when: float) -> int:
    """
    Log a change of a ban or web session and announce it (inside the
    writer's transaction, which holds L{LOCK_STATE_LOG}).
    """
    seq = int(conn.execute(
        "INSERT INTO state_changes (topic, key, at) VALUES (%s, %s, %s) RETURNING seq",
        (topic, key, when)).fetchone()[0])
    if seq > STATE_CHANGES_KEPT and seq % 1000 == 0:
        conn.execute("DELETE FROM state_changes WHERE seq <= %s",
                     (seq - STATE_CHANGES_KEPT,))
    conn.execute("SELECT pg_notify(%s, %s)", (STATE_CHANNEL, str(seq)))
    return seq


def _account(row: tuple, root: Path | None = None) -> Account:  # type: ignore[type-arg]
    name, home, perms, locked, reason, created, changed, pw_changed, version = row
    return Account(
        name=name, home=resolved_home(root, home), perms=frozenset(p for p in perms.split(",") if p),
        locked=bool(locked), lock_reason=reason, created=float(created),
        changed=float(changed), password_changed=float(pw_changed), version=int(version),
    )


def _forget_credentials(conn: Any, name: str) -> None:
    """
    Remove an account's second factors and app passwords (with the account,
    or left by an earlier account of the same name).
    """
    for table in ("account_2fa", "recovery_codes", "app_passwords"):
        conn.execute(f"DELETE FROM {table} WHERE name = %s", (name,))


@implementer(IAccountStore, ITwoFactorStore)
class PGAccountStore:
    """
    Accounts in PostgreSQL; the same behaviour as L{SQLiteAccountStore}.

    @param database: the process's L{Database}.
    @param root: the file root (shared by the nodes); default homes are
        C{ROOT/NAME}.
    """

    def __init__(self, database: Database, root: Path,
                 hasher: PasswordHasher | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._hasher = hasher
        self._clock = clock
        #: What the SQLite store calls C{path}: here, where the data lives.
        self.path = database.url

    def __repr__(self) -> str:
        return f"<PGAccountStore {self.database!r}>"

    def _home_for(self, name: str, home: Path | str | None) -> Path:
        if home is None or str(home) == "":
            return self.root / name
        given = Path(home).expanduser()
        if given.is_absolute():
            return Path(os.path.normpath(given))
        if ".." in given.parts:
            raise AccountError(f"home {str(home)!r} must not contain '..'")
        return Path(os.path.normpath(self.root / given))

    def _update(self, name: str, change: tuple[str, str | None], assignments: str,
                *values: object, now: float | None = None) -> None:
        when = self._clock() if now is None else now
        with self.database.transaction(lock=LOCK_ACCOUNT_LOG) as conn:
            cursor = conn.execute(
                f"UPDATE accounts SET {assignments}, changed = %s, "
                "version = version + 1 WHERE name = %s", (*values, when, name))
            if cursor.rowcount == 0:
                raise AccountError(f"no account named {name!r}")
            _record_account(conn, name, *change, when)

    def _insert(self, conn: Any, name: str, hashed: str, home: Path,
                granted: frozenset[str], now: float, require_2fa: bool = False) -> None:
        existing = conn.execute(
            "SELECT name FROM accounts WHERE lower(name) = lower(%s)", (name,)).fetchone()
        if existing is not None:
            raise AccountError(f"an account named {existing[0]!r} already exists")
        conn.execute(
            "INSERT INTO accounts (name, password_hash, home, perms, locked, "
            "lock_reason, created, changed, password_changed, version) "
            "VALUES (%s, %s, %s, %s, false, NULL, %s, %s, %s, 1)",
            (name, hashed, stored_home(self.root, home), format_permissions(granted),
             now, now, now))
        _record_account(conn, name, "add", None, now)
        _forget_credentials(conn, name)  # of an earlier account of this name
        if require_2fa:
            conn.execute("INSERT INTO account_2fa (name, required) VALUES (%s, true)",
                         (name,))
        # Inside the transaction: if the home cannot be made, no account.
        try:
            home.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
        except OSError as e:
            raise AccountError(f"cannot create home directory {home}: {e.strerror}") from None

    def add(self, name: str, password: str, home: Path | None = None,
            perms: Iterable[str] | None = None, require_2fa: bool = False) -> Account:
        check_name(name)
        if not password:
            raise AccountError("empty password: an account needs a password")
        granted = ALL_PERMISSIONS if perms is None else parse_permissions(perms)
        home_path = self._home_for(name, home)
        hashed = hash_password(password, self._hasher)
        now = self._clock()
        # The log lock also serialises adds: two nodes adding "Bob" and
        # "bob" at once cannot both pass the check.
        with self.database.transaction(lock=LOCK_ACCOUNT_LOG) as conn:
            self._insert(conn, name, hashed, home_path, granted, now, require_2fa)
        return Account(name=name, home=home_path, perms=granted, locked=False,
                       lock_reason=None, created=now, changed=now,
                       password_changed=now, version=1)

    def bootstrap(self, name: str, password: str) -> bool:
        """
        Create the first account if no node ever did; at most once per
        database, however many nodes start at the same moment.

        @returns: whether this call created it.
        """
        hashed = hash_password(password, self._hasher)
        now = self._clock()
        with self.database.transaction(lock=LOCK_BOOTSTRAP) as conn:
            done = conn.execute(
                "SELECT value FROM meta WHERE key = 'bootstrapped'").fetchone()
            if done is not None:
                return False
            conn.execute("INSERT INTO meta (key, value) VALUES ('bootstrapped', %s)",
                         (str(now),))
            if conn.execute("SELECT count(*) FROM accounts").fetchone()[0]:
                return False
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ACCOUNT_LOG,))
            self._insert(conn, name, hashed, self._home_for(name, None),
                         ALL_PERMISSIONS, now)
        return True

    def get(self, name: str) -> Account | None:
        with self.database.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM accounts WHERE name = %s",
                               (name,)).fetchone()
        return None if row is None else _account(row, self.root)

    def list(self) -> list[Account]:
        with self.database.connection() as conn:
            rows = conn.execute(
                f'SELECT {_COLUMNS} FROM accounts ORDER BY name COLLATE "C"').fetchall()
        return [_account(row, self.root) for row in rows]

    def password_hash(self, name: str) -> str | None:
        with self.database.connection() as conn:
            row = conn.execute("SELECT password_hash FROM accounts WHERE name = %s",
                               (name,)).fetchone()
        return None if row is None else str(row[0])

    def replace_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        with self.database.connection() as conn:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = %s WHERE name = %s "
                "AND password_hash = %s", (new_hash, name, old_hash))
            return cursor.rowcount == 1

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise AccountError("empty password: an account needs a password")
        hashed = hash_password(password, self._hasher)
        now = self._clock()
        self._update(name, ("password", None),
                     "password_hash = %s, password_changed = %s, locked = false, "
                     "lock_reason = NULL", hashed, now, now=now)

    def set_perms(self, name: str, perms: Iterable[str]) -> None:
        text = format_permissions(parse_permissions(perms))
        self._update(name, ("perms", text), "perms = %s", text)

    def lock(self, name: str, reason: str) -> None:
        reason = _clean_reason(reason)
        self._update(name, ("lock", reason), "locked = true, lock_reason = %s", reason)

    def unlock(self, name: str) -> None:
        self._update(name, ("unlock", None), "locked = false, lock_reason = NULL")

    def delete(self, name: str) -> None:
        with self.database.transaction(lock=LOCK_ACCOUNT_LOG) as conn:
            cursor = conn.execute("DELETE FROM accounts WHERE name = %s", (name,))
            if cursor.rowcount == 0:
                raise AccountError(f"no account named {name!r}")
            _forget_credentials(conn, name)
            _record_account(conn, name, "delete", None, self._clock())

    def change_reader(self) -> PGChangeReader:
        return PGChangeReader(self.database)

    # -- ITwoFactorStore (as rumpus_secure.accounts.two_factor_store.TwoFactorTables)

    def _writing(self) -> Any:
        # Every write below is logged: the log's lock also orders them
        # against a delete of the same account (no row outlives its account).
        return self.database.transaction(lock=LOCK_ACCOUNT_LOG)

    @staticmethod
    def _two_factor_row(conn: Any, name: str) -> None:
        if conn.execute("SELECT 1 FROM accounts WHERE name = %s",
                        (name,)).fetchone() is None:
            raise AccountError(f"no account named {name!r}")
        conn.execute("INSERT INTO account_2fa (name) VALUES (%s) "
                     "ON CONFLICT (name) DO NOTHING", (name,))

    @staticmethod
    def _credentials_changed(conn: Any, name: str, detail: str, now: float,
                             sessions_end: bool = False) -> None:
        """
        Log a change of what the account's credentials are, as ``password``
        (open FTP sessions end, on every node) and move its version on
        (cached password verifications go stale).

        @param sessions_end: move ``password_changed`` too, so the account's
            web sessions end (two-factor login required or reset), as in
            L{rumpus_secure.accounts.two_factor_store}.
        """
        if sessions_end:
            conn.execute("UPDATE accounts SET changed = %s, password_changed = %s, "
                         "version = version + 1 WHERE name = %s", (now, now, name))
        else:
            conn.execute("UPDATE accounts SET changed = %s, version = version + 1 "
                         "WHERE name = %s", (now, name))
        _record_account(conn, name, "password", detail, now)

    def two_factor(self, name: str) -> TwoFactorRow | None:
        with self.database.connection() as conn:
            row = conn.execute(
                "SELECT required, secret, pending, enabled, last_step, "
                "(SELECT count(*) FROM recovery_codes r WHERE r.name = t.name "
                "AND r.used IS NULL) FROM account_2fa t WHERE name = %s",
                (name,)).fetchone()
        if row is None:
            return None
        required, secret, pending, enabled, last_step, left = row
        return TwoFactorRow(
            required=bool(required),
            secret=None if secret is None else bytes(secret),
            pending=None if pending is None else bytes(pending),
            enabled=None if enabled is None else float(enabled),
            last_step=int(last_step), recovery_left=int(left))

    def set_two_factor_required(self, name: str, required: bool) -> None:
        now = self._clock()
        with self._writing() as conn:
            self._two_factor_row(conn, name)
            conn.execute("UPDATE account_2fa SET required = %s WHERE name = %s",
                         (bool(required), name))
            self._credentials_changed(
                conn, name, "two-factor login required" if required
                else "two-factor login no longer required", now,
                sessions_end=required)

    def set_pending_secret(self, name: str, sealed: bytes) -> None:
        with self._writing() as conn:
            self._two_factor_row(conn, name)
            conn.execute("UPDATE account_2fa SET pending = %s WHERE name = %s",
                         (bytes(sealed), name))
            _record_account(conn, name, "2fa", "enrolment started", self._clock())

    def enable_two_factor(self, name: str, sealed: bytes, step: int,
                          recovery: list[bytes]) -> bool:
        now = self._clock()
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE account_2fa SET secret = pending, pending = NULL, enabled = %s, "
                "last_step = %s WHERE name = %s AND pending = %s",
                (now, step, name, bytes(sealed)))
            if cursor.rowcount != 1:
                return False
            conn.execute("DELETE FROM recovery_codes WHERE name = %s", (name,))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO recovery_codes (name, digest) "
                                "VALUES (%s, %s)",
                                [(name, bytes(digest)) for digest in recovery])
            self._credentials_changed(conn, name, "two-factor login turned on", now)
        return True

    def reset_two_factor(self, name: str) -> None:
        now = self._clock()
        with self._writing() as conn:
            self._two_factor_row(conn, name)
            conn.execute("UPDATE account_2fa SET required = true, secret = NULL, "
                         "pending = NULL, enabled = NULL, last_step = 0 WHERE name = %s",
                         (name,))
            conn.execute("DELETE FROM recovery_codes WHERE name = %s", (name,))
            self._credentials_changed(conn, name, "two-factor login reset", now,
                                      sessions_end=True)

    def use_totp_step(self, name: str, step: int) -> bool:
        # One conditional UPDATE: of two nodes offered the same code at once,
        # the second waits for the first's row lock, re-reads LAST_STEP, and
        # finds nothing to update.
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE account_2fa SET last_step = %s WHERE name = %s "
                "AND secret IS NOT NULL AND last_step < %s", (step, name, step))
            if cursor.rowcount != 1:
                return False
            _record_account(conn, name, "2fa", "code used", self._clock())
        return True

    def use_recovery_code(self, name: str, digest: bytes) -> bool:
        now = self._clock()
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE recovery_codes SET used = %s WHERE name = %s AND digest = %s "
                "AND used IS NULL", (now, name, bytes(digest)))
            if cursor.rowcount != 1:
                return False
            _record_account(conn, name, "2fa", "recovery code used", now)
        return True

    def add_app_password(self, name: str, ident: str, label: str,
                         hashed: str) -> AppPassword:
        now = self._clock()
        with self._writing() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE name = %s",
                            (name,)).fetchone() is None:
                raise AccountError(f"no account named {name!r}")
            conn.execute("INSERT INTO app_passwords (id, name, label, hash, created) "
                         "VALUES (%s, %s, %s, %s, %s)", (ident, name, label, hashed, now))
            _record_account(conn, name, "app-password", f"added {ident}", now)
        return AppPassword(id=ident, name=name, label=label, created=now, last_used=None)

    def app_passwords(self, name: str) -> list[AppPassword]:
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT id, name, label, created, last_used FROM app_passwords "
                "WHERE name = %s ORDER BY created DESC", (name,)).fetchall()
        return [AppPassword(i, n, lb, float(c), None if u is None else float(u))
                for i, n, lb, c, u in rows]

    def app_password_hash(self, name: str, ident: str) -> str | None:
        with self.database.connection() as conn:
            row = conn.execute("SELECT hash FROM app_passwords WHERE id = %s "
                               "AND name = %s", (ident, name)).fetchone()
        return None if row is None else str(row[0])

    def app_password_used(self, ident: str) -> None:
        # Not an account change: no session depends on it, nothing is logged.
        with self.database.connection() as conn:
            conn.execute("UPDATE app_passwords SET last_used = %s WHERE id = %s",
                         (self._clock(), ident))

    def revoke_app_password(self, name: str, ident: str) -> bool:
        now = self._clock()
        with self._writing() as conn:
            cursor = conn.execute("DELETE FROM app_passwords WHERE id = %s "
                                  "AND name = %s", (ident, name))
            if cursor.rowcount != 1:
                return False
            self._credentials_changed(conn, name, f"app password {ident} revoked", now)
        return True


class PGChangeReader:
    """
    The L{rumpus_secure.accounts.watch.ChangeSource} of the PostgreSQL store.

    During an outage L{since} finds nothing new (and says so once in the
    log) instead of failing: the watcher asks every second and before every
    FTP command, and a traceback each time would bury the one line that
    matters.  Nothing is lost: the next read after the outage starts from
    the same C{seq}.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._failing = False

    def latest(self) -> int:
        with self.database.connection() as conn:
            return int(conn.execute(
                "SELECT coalesce(max(seq), 0) FROM account_changes").fetchone()[0])

    def since(self, seq: int, limit: int = 1000) -> ChangeBatch:
        try:
            with self.database.connection() as conn:
                rows = conn.execute(
                    "SELECT seq, name, kind, detail, at FROM account_changes "
                    "WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit)).fetchall()
                oldest = conn.execute(
                    "SELECT min(seq) FROM account_changes").fetchone()[0]
        except StoreUnavailable as e:
            if not self._failing:
                self._failing = True
                _log.warn("cannot read the account changes: {error}; open sessions "
                          "go on as they are until the database is back", error=str(e))
            return ChangeBatch([], 0)
        if self._failing:
            self._failing = False
            _log.info("reading the account changes again")
        return ChangeBatch(
            [AccountChange(int(s), n, k, d, float(a)) for s, n, k, d, a in rows],
            int(oldest or 0))

    def close(self) -> None:
        """Nothing to close: connections belong to the pool."""


def _ban(row: tuple) -> Ban:  # type: ignore[type-arg]
    a, u, lv, r, c = row
    return Ban(a, float(u), int(lv), r, float(c))


@implementer(IBanStore)
class PGBanStore:
    """
    The C{bans} table; every save and delete is logged in C{state_changes}
    and announced, so every node applies it within milliseconds.
    """

    def __init__(self, database: Database,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    def load(self, since: float) -> list[Ban]:
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT address, until, level, reason, created FROM bans "
                "WHERE until > %s ORDER BY address", (since,)).fetchall()
        return [_ban(row) for row in rows]

    def get(self, addresses: Iterable[str]) -> dict[str, Ban]:
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT address, until, level, reason, created FROM bans "
                "WHERE address = ANY(%s)", (list(addresses),)).fetchall()
        return {row[0]: _ban(row) for row in rows}

    def save(self, ban: Ban) -> None:
        with self.database.transaction(lock=LOCK_STATE_LOG) as conn:
            conn.execute(
                "INSERT INTO bans (address, until, level, reason, created) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (address) DO UPDATE SET "
                "until = EXCLUDED.until, level = EXCLUDED.level, "
                "reason = EXCLUDED.reason, created = EXCLUDED.created",
                (ban.address, ban.until, ban.level, ban.reason, ban.created))
            record_state(conn, "ban", ban.address, self._clock())

    def delete(self, address: str) -> bool:
        with self.database.transaction(lock=LOCK_STATE_LOG) as conn:
            found = conn.execute("DELETE FROM bans WHERE address = %s",
                                 (address,)).rowcount > 0
            if found:
                record_state(conn, "ban", address, self._clock())
            return found

    def prune(self, before: float) -> int:
        # Only bans long over: nobody needs to hear of them.
        with self.database.connection() as conn:
            return int(conn.execute("DELETE FROM bans WHERE until < %s",
                                    (before,)).rowcount)


class PGSessions:
    """
    The C{web_sessions} table (the persistence of
    L{rumpus_secure.web.sessions.SessionStore}), shared by the nodes: a
    session started on one node is valid on all, a logout ends it on all.
    """

    def __init__(self, database: Database,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    def load(self, seen_after: float, created_after: float) -> list[tuple[bytes, Any]]:
        with self.database.connection() as conn:
            conn.execute("DELETE FROM web_sessions WHERE last_seen <= %s OR created <= %s",
                         (seen_after, created_after))
            rows = conn.execute(
                'SELECT key, "user", csrf, created, last_seen FROM web_sessions'
            ).fetchall()
        return [(bytes(k), _session(u, c, cr, ls)) for k, u, c, cr, ls in rows]

    def get(self, keys: Iterable[bytes]) -> dict[bytes, Any]:
        with self.database.connection() as conn:
            rows = conn.execute(
                'SELECT key, "user", csrf, created, last_seen FROM web_sessions '
                "WHERE key = ANY(%s)", (list(keys),)).fetchall()
        return {bytes(k): _session(u, c, cr, ls) for k, u, c, cr, ls in rows}

    def save(self, key: bytes, session: Any) -> None:
        with self.database.transaction(lock=LOCK_STATE_LOG) as conn:
            conn.execute(
                'INSERT INTO web_sessions (key, "user", csrf, created, last_seen) '
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                'last_seen = EXCLUDED.last_seen',
                (key, session.user, session.csrf, session.created, session.last_seen))
            record_state(conn, "session", key.hex(), self._clock())

    def touch(self, seen: list[tuple[float, bytes]]) -> None:
        if not seen:
            return
        with self.database.transaction(lock=LOCK_STATE_LOG) as conn:
            now = self._clock()
            for last_seen, key in seen:
                # Never move another node's newer timer back.
                if conn.execute(
                        "UPDATE web_sessions SET last_seen = %s WHERE key = %s "
                        "AND last_seen < %s", (last_seen, key, last_seen)).rowcount:
                    record_state(conn, "session", key.hex(), now)

    def delete(self, keys: list[bytes]) -> None:
        with self.database.transaction(lock=LOCK_STATE_LOG) as conn:
            now = self._clock()
            for key in keys:
                if conn.execute("DELETE FROM web_sessions WHERE key = %s",
                                (key,)).rowcount:
                    record_state(conn, "session", key.hex(), now)


def _session(user: str, csrf: str, created: float, last_seen: float) -> Any:
    from rumpus_secure.web.sessions import Session

    return Session(user=user, csrf=csrf, created=float(created),
                   last_seen=float(last_seen))


@implementer(IShareStore)
class PGShareStore:
    """
    The C{shares} and C{share_events} tables of the shared database: a link
    made on one node opens on every node, and a revocation or a used-up
    link holds on all of them at once, because every visit reads the row
    (no cache, so nothing to announce).

    The same behaviour as L{rumpus_secure.shares.SQLiteShareStore}; a use is
    taken with one conditional UPDATE, so two visitors on two nodes racing
    for the last download cannot both get it (the second waits for the
    first's row lock and re-checks C{uses}).  On loopback with 2,000 links a
    lookup takes about 75 microseconds median and taking a use 86 (SQLite:
    97 and 406); accepting a TOTP step, with its change-log row and NOTIFY,
    232 (SQLite 20), C{python bench/pg_shares_2fa.py}.
    """

    def __init__(self, database: Database,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    def create(self, owner: str, kind: str, path: str, expires: float,
               password_hash: str | None, max_uses: int | None,
               max_size: int | None, note: str) -> tuple[Share, str]:
        if kind not in KINDS:
            raise ShareError(f"unknown kind of link {kind!r}")
        now = self._clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        share_id = secrets.token_hex(6)
        # The lock makes count-then-insert one step across nodes (links are
        # made rarely; visits never take it).
        with self.database.transaction(lock=LOCK_SHARES) as conn:
            count = conn.execute(
                "SELECT count(*) FROM shares WHERE owner = %s AND revoked IS NULL "
                "AND expires > %s", (owner, now)).fetchone()[0]
            if count >= MAX_PER_ACCOUNT:
                raise ShareError(f"an account may have at most {MAX_PER_ACCOUNT} "
                                 "live links; revoke some first")
            conn.execute(
                "INSERT INTO shares (id, token_hash, owner, kind, path, created, "
                "expires, password_hash, max_uses, max_size, note) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (share_id, token_hash(token), owner, kind, path, now, expires,
                 password_hash, max_uses, max_size, note[:MAX_NOTE]))
        share = self.get(share_id)
        assert share is not None
        return share, token

    def find(self, token: str) -> tuple[Share, str | None] | None:
        with self.database.connection() as conn:
            row = conn.execute(f"SELECT {_SHARE_COLUMNS}, password_hash FROM shares "
                               "WHERE token_hash = %s", (token_hash(token),)).fetchone()
        if row is None:
            return None
        return _pg_share(row[:-1]), row[-1]

    def get(self, share_id: str) -> Share | None:
        with self.database.connection() as conn:
            row = conn.execute(f"SELECT {_SHARE_COLUMNS} FROM shares WHERE id = %s",
                               (share_id,)).fetchone()
        return None if row is None else _pg_share(row)

    def list(self, owner: str | None = None) -> list[Share]:
        with self.database.connection() as conn:
            if owner is None:
                rows = conn.execute(f"SELECT {_SHARE_COLUMNS} FROM shares "
                                    "ORDER BY created DESC, seq DESC").fetchall()
            else:
                rows = conn.execute(f"SELECT {_SHARE_COLUMNS} FROM shares "
                                    "WHERE owner = %s ORDER BY created DESC, seq DESC",
                                    (owner,)).fetchall()
        return [_pg_share(row) for row in rows]

    def revoke(self, share_id: str, reason: str, owner: str | None = None) -> bool:
        reason = " ".join(reason.split())[:200] or "revoked"
        query = "UPDATE shares SET revoked = %s WHERE id = %s AND revoked IS NULL"
        values: tuple[Any, ...] = (reason, share_id)
        if owner is not None:
            query += " AND owner = %s"
            values += (owner,)
        with self.database.connection() as conn:
            return int(conn.execute(query, values).rowcount) == 1

    def take_use(self, share_id: str) -> bool:
        now = self._clock()
        with self.database.connection() as conn:
            cursor = conn.execute(
                "UPDATE shares SET uses = uses + 1, last_used = %s WHERE id = %s "
                "AND revoked IS NULL AND expires > %s "
                "AND (max_uses IS NULL OR uses < max_uses)", (now, share_id, now))
            return int(cursor.rowcount) == 1

    def refund_use(self, share_id: str) -> None:
        with self.database.connection() as conn:
            conn.execute("UPDATE shares SET uses = uses - 1 WHERE id = %s AND uses > 0",
                         (share_id,))

    def record(self, share_id: str, action: str, client: str | None,
               name: str | None = None, size: int | None = None) -> None:
        with self.database.connection() as conn:
            seq = conn.execute(
                "INSERT INTO share_events (share_id, at, action, client, name, size) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq",
                (share_id, self._clock(), action, client, name, size)).fetchone()[0]
            if int(seq) % 100 == 0:
                conn.execute(
                    "DELETE FROM share_events WHERE share_id = %s AND seq <= "
                    "(SELECT seq FROM share_events WHERE share_id = %s "
                    "ORDER BY seq DESC LIMIT 1 OFFSET %s)",
                    (share_id, share_id, EVENTS_KEPT))

    def events(self, share_id: str, limit: int = 100) -> list[ShareEvent]:
        with self.database.connection() as conn:
            rows = conn.execute(
                "SELECT share_id, at, action, client, name, size FROM share_events "
                "WHERE share_id = %s ORDER BY seq DESC LIMIT %s",
                (share_id, limit)).fetchall()
        return [ShareEvent(i, float(at), a, c, n, None if z is None else int(z))
                for i, at, a, c, n, z in rows]


def _pg_share(row: tuple) -> Share:  # type: ignore[type-arg]
    values = list(row)
    values[4], values[5] = float(values[4]), float(values[5])  # created, expires
    if values[12] is not None:
        values[12] = float(values[12])
    return _share(tuple(values))
