"""
Server-side web sessions with idle and absolute expiry.

A session id is 256 random bits, sent only in a ``Secure; HttpOnly;
SameSite=Strict`` cookie.  The store keeps only a SHA-256 of each id, so a
lookup never compares secrets byte by byte and a memory dump holds no usable
cookie.  Time comes from an injected L{IReactorTime}; expired sessions are
swept lazily, so the store schedules no timers of its own.

With a L{SQLiteSessions} behind it, the sessions of the HTTPS site survive a
restart: a new session, a logout and an expiry are written at once (in a
thread, in order), and the idle timers (touched on every request) are
written in batches by L{SessionKeeper}, every minute and at shutdown.  The
table holds the same SHA-256 of each id, never the id itself.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall

from rumpus_secure.serial import RunInThread, SerialCalls

IDLE_TIMEOUT = 30 * 60.0
ABSOLUTE_TIMEOUT = 12 * 3600.0
MAX_SESSIONS = 10_000
#: Seconds between writes of the idle timers to the database.
FLUSH_INTERVAL = 60.0


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("ascii", "replace")).digest()


@dataclass
class Session:
    """
    One logged-in browser.

    @ivar csrf: the per-session token every POST must carry.
    @ivar flash: messages to show once on the next page.
    """

    user: str
    csrf: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)

    def add_flash(self, kind: str, message: str) -> None:
        """Queue a message (C{kind} is ``ok`` or ``error``) for the next page."""
        self.flash = (self.flash + [(kind, message)])[-5:]

    def take_flash(self) -> list[tuple[str, str]]:
        """The queued messages, removed from the session."""
        messages, self.flash = self.flash, []
        return messages


class SQLiteSessions:
    """
    The C{web_sessions} table of the account database.

    Opens a connection per call, so it can be used from any thread.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS web_sessions ("
        "key BLOB PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL, "
        "created REAL NOT NULL, last_seen REAL NOT NULL)"
    )

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with closing(self._connect()) as db:
            db.execute(self._SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def load(self, seen_after: float, created_after: float) -> list[tuple[bytes, Session]]:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM web_sessions WHERE last_seen <= ? OR created <= ?",
                       (seen_after, created_after))
            rows = db.execute(
                "SELECT key, user, csrf, created, last_seen FROM web_sessions"
            ).fetchall()
        return [(bytes(k), Session(user=u, csrf=c, created=float(cr), last_seen=float(ls)))
                for k, u, c, cr, ls in rows]

    def save(self, key: bytes, session: Session) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO web_sessions (key, user, csrf, created, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, session.user, session.csrf, session.created, session.last_seen),
            )

    def touch(self, seen: list[tuple[float, bytes]]) -> None:
        with closing(self._connect()) as db:
            db.execute("BEGIN")
            db.executemany("UPDATE web_sessions SET last_seen = ? WHERE key = ?", seen)
            db.execute("COMMIT")

    def delete(self, keys: list[bytes]) -> None:
        with closing(self._connect()) as db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM web_sessions WHERE key = ?", [(k,) for k in keys])
            db.execute("COMMIT")


class SessionStore:
    """
    Sessions in memory, keyed by a hash of their id, optionally kept in a
    database as well (see the module docstring).

    @param clock: an L{IReactorTime}; only C{seconds()} is used.
    @param persistence: a L{SQLiteSessions}, or L{None} for memory only.
    @param run_in_thread: C{f(function, *args) -> Deferred} for database
        writes; L{None} runs them inline (tests, tools).
    """

    def __init__(self, clock: Any, idle: float = IDLE_TIMEOUT,
                 absolute: float = ABSOLUTE_TIMEOUT, *,
                 persistence: Any = None,
                 run_in_thread: RunInThread | None = None) -> None:
        self._clock = clock
        self.idle = idle
        self.absolute = absolute
        self._sessions: dict[bytes, Session] = {}
        self._persistence = persistence
        # In order, one at a time: a logout never loses to its own login.
        self._writes = SerialCalls(run_in_thread, "store web sessions")
        self._touched: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    # -- persistence ----------------------------------------------------

    def load(self) -> int:
        """
        Read the stored sessions that are still live; call once, before the
        reactor runs (it blocks).  Returns how many.
        """
        if self._persistence is None:
            return 0
        now = self._clock.seconds()
        for key, session in self._persistence.load(now - self.idle, now - self.absolute):
            self._sessions[key] = session
        return len(self._sessions)

    def _write(self, function: Callable[..., Any], *args: Any) -> None:
        self._writes.call(function, *args)

    def _forget(self, keys: list[bytes]) -> None:
        for key in keys:
            self._sessions.pop(key, None)
            self._touched.discard(key)
        if keys and self._persistence is not None:
            self._write(self._persistence.delete, keys)

    def flush(self) -> defer.Deferred[None]:
        """
        Write the idle timers touched since the last flush; fires when every
        write issued so far is done.  Never fails.
        """
        if self._persistence is not None and self._touched:
            seen = [(self._sessions[k].last_seen, k) for k in self._touched
                    if k in self._sessions]
            self._touched = set()
            self._write(self._persistence.touch, seen)
        return self._writes.flushed()

    # -- sessions -------------------------------------------------------

    def _expired(self, session: Session, now: float) -> bool:
        return (now - session.last_seen >= self.idle
                or now - session.created >= self.absolute)

    def sweep(self) -> None:
        """Forget every expired session."""
        now = self._clock.seconds()
        self._forget([k for k, s in self._sessions.items() if self._expired(s, now)])

    def create(self, user: str) -> tuple[str, Session]:
        """
        A new session for C{user}; returns its id (for the cookie) and itself.
        """
        self.sweep()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
            self._forget([oldest])
        now = self._clock.seconds()
        session_id = secrets.token_urlsafe(32)
        session = Session(user=user, csrf=secrets.token_urlsafe(32),
                          created=now, last_seen=now)
        key = _key(session_id)
        self._sessions[key] = session
        if self._persistence is not None:
            self._write(self._persistence.save, key, session)
        return session_id, session

    def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """
        The live session with this id, or L{None}; refreshes its idle timer.
        """
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock.seconds()
        if self._expired(session, now):
            self._forget([key])
            return None
        if touch:
            session.last_seen = now
            self._touched.add(key)
        return session

    def end(self, session_id: str | None) -> None:
        """Log out: forget the session."""
        if session_id:
            key = _key(session_id)
            if key in self._sessions:
                self._forget([key])

    def discard(self, session: Session) -> None:
        """Forget this one session (found by a request)."""
        self._forget([k for k, s in self._sessions.items() if s is session])

    def end_user(self, user: str) -> None:
        """Forget every session of C{user} (account locked or deleted)."""
        self._forget([k for k, s in self._sessions.items() if s.user == user])


    def adopt(self, key: bytes, session: Session) -> None:
        """
        Take in a session started or refreshed on another node (the shared
        database's feed); nothing is written back.  A session known here
        keeps its flash messages and only moves its idle timer forward.
        """
        mine = self._sessions.get(key)
        if mine is None:
            if len(self._sessions) < MAX_SESSIONS:
                self._sessions[key] = session
        elif mine.user == session.user:
            mine.last_seen = max(mine.last_seen, session.last_seen)

    def drop(self, key: bytes) -> None:
        """
        Forget a session that ended on another node; nothing is written back.
        """
        self._sessions.pop(key, None)
        self._touched.discard(key)


class SessionKeeper(service.Service):
    """
    Writes the sessions' idle timers every L{FLUSH_INTERVAL} seconds and
    once more when the server stops.
    """

    name = "web-sessions"

    def __init__(self, sessions: SessionStore, clock: Any) -> None:
        self.sessions = sessions
        self._loop = LoopingCall(sessions.flush)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self.sessions.flush()
