"""
Share links: download links and upload-only drop boxes for outsiders.

Without them people mail attachments or hand out their account's password,
which defeats every rule this server enforces.  A link is
``https://PUBLIC-HOST/s/<token>``: the token is 192 random bits
(L{TOKEN_BYTES}; the issue asks for at least 128), and only its SHA-256 is
stored, so a copy of the database opens no link.  Each link has an expiry
(7 days unless its owner picks another, at most ``--share-max-days``), and
optionally a password (argon2id), a maximum number of uses (downloads, or
files received), a maximum upload size and a note for the visitor.

A visitor acts with the owner's jailed filesystem and at most the owner's
permissions *at the time of the visit*: a link is live only while its owner
exists, is not locked, and is the account that made it (an account deleted
and re-created under the same name does not inherit links).  That is one
cheap read per visit, so "deleting or locking the owner ends their links"
holds even when the account was changed by another process.

Uses are taken with one conditional UPDATE (L{SQLiteShareStore.take_use}),
so two visitors racing for the last download cannot both get it.  A drop
box takes a use when a file starts (so a used-up box refuses before the
body is read) and gives it back with another single UPDATE
(L{SQLiteShareStore.refund_use}) when nothing was stored.  Every
use is recorded in C{share_events} with the link's id, for the owner's
page and ``rumpus-share share list``.

The store is one more set of tables in the account database, like the
bans and the web sessions; every method blocks (call from a thread).  With
10,000 links a visit's lookup (a connection, the token's SHA-256, one
indexed query) takes about 90 microseconds median, the owner check 8, and
taking a use 0.4 ms (``python bench/share_links.py``, 2 shared cores,
while the test suite ran).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from zope.interface import Interface, implementer

TOKEN_BYTES = 24
DEFAULT_DAYS = 7
KINDS = ("download", "dropbox")
MAX_NOTE = 1000
#: Live links (not revoked, not expired) one account may have.
MAX_PER_ACCOUNT = 200
#: Events kept per link (the oldest go).
EVENTS_KEPT = 1000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shares (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    password_hash TEXT,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    max_size INTEGER,
    note TEXT NOT NULL DEFAULT '',
    revoked TEXT,
    last_used REAL
)""",
    "CREATE INDEX IF NOT EXISTS shares_owner ON shares (owner)",
    """CREATE TABLE IF NOT EXISTS share_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    share_id TEXT NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    client TEXT,
    name TEXT,
    size INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS share_events_share ON share_events (share_id, seq)",
)

_COLUMNS = ("id, owner, kind, path, created, expires, password_hash IS NOT NULL, "
            "max_uses, uses, max_size, note, revoked, last_used")


class ShareError(Exception):
    """A link could not be made or changed; the message is for a person."""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def valid_token(token: str) -> bool:
    """Whether C{token} could be one of ours (URL-safe base64, 32 chars)."""
    return (len(token) == 32
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in token))


# Paths, also read before a body is (web.bodies, web.site, web.redirect).
def share_target(path: bytes) -> tuple[str, str] | None:
    """
    ``/s/<token>`` -> C{(token, "")}, ``/s/<token>/get`` -> C{(token, "get")},
    ``/s/<token>/upload`` -> C{(token, "upload")}; anything else L{None}.
    """
    parts = path.split(b"/")
    if len(parts) < 3 or parts[0] != b"" or parts[1] != b"s" or len(parts) > 4:
        return None
    try:
        token = parts[2].decode("ascii")
    except UnicodeDecodeError:
        return None
    action = parts[3].decode("ascii", "replace") if len(parts) == 4 else ""
    if action not in ("", "get", "upload"):
        return None
    return token, action


def is_dropbox_upload(path: bytes) -> bool:
    target = share_target(path)
    return target is not None and target[1] == "upload"


def is_share_form(path: bytes) -> bool:
    """``POST /s/<token>``: the link password form (a small body)."""
    target = share_target(path)
    return target is not None and target[1] == ""


@dataclass(frozen=True)
class Share:
    """
    One link as stored (never its token or password).

    @ivar path: the file or folder in the owner's jail (a virtual path).
    @ivar uses: downloads (download link) or files received (drop box).
    @ivar revoked: why the link was ended early, or L{None}.
    """

    id: str
    owner: str
    kind: str
    path: str
    created: float
    expires: float
    has_password: bool
    max_uses: int | None
    uses: int
    max_size: int | None
    note: str
    revoked: str | None
    last_used: float | None

    def state(self, now: float) -> str:
        """``active``, ``revoked``, ``expired`` or ``used up``."""
        if self.revoked is not None:
            return "revoked"
        if now >= self.expires:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return "active"


@dataclass(frozen=True)
class ShareEvent:
    share_id: str
    at: float
    action: str
    client: str | None
    name: str | None
    size: int | None


def owner_allows(account: Any, share: Share) -> bool:
    """
    Whether the owner still vouches for the link: exists, not locked, and
    is the account that made it (not a later one of the same name).
    """
    return (account is not None and not account.locked
            and getattr(account, "created", 0.0) <= share.created)


class IShareStore(Interface):
    """Where share links live; every method may block."""

    def create(owner: str, kind: str, path: str, expires: float,
               password_hash: str | None, max_uses: int | None,
               max_size: int | None, note: str) -> tuple[Share, str]:
        """A new link and its token (shown once, never stored)."""

    def find(token: str) -> tuple[Share, str | None] | None:
        """The link of C{token} and its password hash, or L{None}."""

    def get(share_id: str) -> Share | None:
        """The link with this id."""

    def list(owner: str | None = None) -> list[Share]:
        """Links (of C{owner}, or all), newest first."""

    def revoke(share_id: str, reason: str, owner: str | None = None) -> bool:
        """End a live link (only C{owner}'s, if given)."""

    def take_use(share_id: str) -> bool:
        """Count one use if the link is live and not used up."""

    def refund_use(share_id: str) -> None:
        """
        Give back a use taken for a file that was not stored (too large,
        aborted, refused name); one conditional UPDATE, never below zero.
        """

    def record(share_id: str, action: str, client: str | None,
               name: str | None = None, size: int | None = None) -> None:
        """Note a visitor's download or upload."""

    def events(share_id: str, limit: int = 100) -> list[ShareEvent]:
        """The link's latest events, newest first."""


@implementer(IShareStore)
class SQLiteShareStore:
    """
    The C{shares} and C{share_events} tables of the account database.

    Opens a connection per call, so it can be used from any thread.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        with closing(self._connect()) as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def create(self, owner: str, kind: str, path: str, expires: float,
               password_hash: str | None, max_uses: int | None,
               max_size: int | None, note: str) -> tuple[Share, str]:
        if kind not in KINDS:
            raise ShareError(f"unknown kind of link {kind!r}")
        now = self._clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        share_id = secrets.token_hex(6)
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                count = db.execute(
                    "SELECT count(*) FROM shares WHERE owner = ? AND revoked IS NULL "
                    "AND expires > ?", (owner, now)).fetchone()[0]
                if count >= MAX_PER_ACCOUNT:
                    raise ShareError(f"an account may have at most {MAX_PER_ACCOUNT} "
                                     "live links; revoke some first")
                db.execute(
                    "INSERT INTO shares (id, token_hash, owner, kind, path, created, "
                    "expires, password_hash, max_uses, max_size, note) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (share_id, token_hash(token), owner, kind, path, now, expires,
                     password_hash, max_uses, max_size, note[:MAX_NOTE]))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        share = self.get(share_id)
        assert share is not None
        return share, token

    def find(self, token: str) -> tuple[Share, str | None] | None:
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {_COLUMNS}, password_hash FROM shares "
                             "WHERE token_hash = ?", (token_hash(token),)).fetchone()
        if row is None:
            return None
        return _share(row[:-1]), row[-1]

    def get(self, share_id: str) -> Share | None:
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM shares WHERE id = ?",
                             (share_id,)).fetchone()
        return None if row is None else _share(row)

    def list(self, owner: str | None = None) -> list[Share]:
        with closing(self._connect()) as db:
            if owner is None:
                rows = db.execute(f"SELECT {_COLUMNS} FROM shares "
                                  "ORDER BY created DESC, rowid DESC").fetchall()
            else:
                rows = db.execute(f"SELECT {_COLUMNS} FROM shares WHERE owner = ? "
                                  "ORDER BY created DESC, rowid DESC", (owner,)).fetchall()
        return [_share(row) for row in rows]

    def revoke(self, share_id: str, reason: str, owner: str | None = None) -> bool:
        reason = " ".join(reason.split())[:200] or "revoked"
        query = "UPDATE shares SET revoked = ? WHERE id = ? AND revoked IS NULL"
        values: tuple[Any, ...] = (reason, share_id)
        if owner is not None:
            query += " AND owner = ?"
            values += (owner,)
        with closing(self._connect()) as db:
            return db.execute(query, values).rowcount == 1

    def take_use(self, share_id: str) -> bool:
        now = self._clock()
        with closing(self._connect()) as db:
            cursor = db.execute(
                "UPDATE shares SET uses = uses + 1, last_used = ? WHERE id = ? "
                "AND revoked IS NULL AND expires > ? "
                "AND (max_uses IS NULL OR uses < max_uses)", (now, share_id, now))
            return cursor.rowcount == 1

    def refund_use(self, share_id: str) -> None:
        with closing(self._connect()) as db:
            db.execute("UPDATE shares SET uses = uses - 1 WHERE id = ? AND uses > 0",
                       (share_id,))

    def record(self, share_id: str, action: str, client: str | None,
               name: str | None = None, size: int | None = None) -> None:
        with closing(self._connect()) as db:
            cursor = db.execute(
                "INSERT INTO share_events (share_id, at, action, client, name, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (share_id, self._clock(), action, client, name, size))
            if cursor.lastrowid is not None and cursor.lastrowid % 100 == 0:
                db.execute(
                    "DELETE FROM share_events WHERE share_id = ? AND seq <= "
                    "(SELECT seq FROM share_events WHERE share_id = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (share_id, share_id, EVENTS_KEPT))

    def events(self, share_id: str, limit: int = 100) -> list[ShareEvent]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT share_id, at, action, client, name, size FROM share_events "
                "WHERE share_id = ? ORDER BY seq DESC LIMIT ?",
                (share_id, limit)).fetchall()
        return [ShareEvent(*row) for row in rows]


def store_of(server: Any) -> IShareStore:
    """
    The server's share store: C{server.share_store}, made on first use as
    the tables of its account database (the shared PostgreSQL database of
    C{--database}, L{rumpus_secure.accounts.pg.PGShareStore}, when it has
    one).
    """
    found = getattr(server, "share_store", None)
    if found is None:
        database = getattr(server, "database", None)
        if database is not None:
            from rumpus_secure.accounts.pg import PGShareStore

            found = PGShareStore(database, clock=server.reactor.seconds)
        else:
            found = SQLiteShareStore(server.store.path, clock=server.reactor.seconds)
        server.share_store = found
    return found


def _share(row: tuple) -> Share:  # type: ignore[type-arg]
    (share_id, owner, kind, path, created, expires, has_password, max_uses, uses,
     max_size, note, revoked, last_used) = row
    return Share(id=share_id, owner=owner, kind=kind, path=path, created=created,
                 expires=expires, has_password=bool(has_password), max_uses=max_uses,
                 uses=uses, max_size=max_size, note=note or "", revoked=revoked,
                 last_used=last_used)


def disable_exposed(store: IShareStore, token: str, password: str) -> str | None:
    """
    In a thread: a password was posted to a link over plain HTTP.  If it is
    the link's password, end the link (whoever saw the password may also
    have seen the URL) and return its id; otherwise change nothing.
    """
    share_id, outcome = disable_exposed_outcome(store, token, password)
    return share_id if outcome == "link-disabled" else None


def disable_exposed_outcome(store: IShareStore, token: str,
                            password: str) -> tuple[str | None, str]:
    """
    L{disable_exposed} with the outcome for the audit log: the link's id
    (or L{None}) and ``link-disabled``, ``not-the-password``, ``no-password``
    or ``unknown-link``.

    Only the link's own password ends it: anyone who knows the URL (or a
    third-party page posting a form to ``http://host/s/TOKEN``) could
    otherwise turn off any link, and its visitors would be told the owner
    did.  The password is verified like a cleartext account password
    (argon2id, so call this off the reactor thread).
    """
    from rumpus_secure.accounts.hashing import verify_password

    if not valid_token(token):
        return None, "unknown-link"
    found = store.find(token)
    if found is None:
        return None, "unknown-link"
    share, password_hash = found
    if not share.has_password or password_hash is None:
        return share.id, "no-password"
    if not password or not verify_password(password_hash, password):
        return share.id, "not-the-password"
    store.revoke(share.id, "its password was sent over an unencrypted connection")
    return share.id, "link-disabled"
