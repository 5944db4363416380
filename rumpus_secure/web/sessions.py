"""
Server-side web sessions with idle and absolute expiry.

A session id is 256 random bits, sent only in a ``Secure; HttpOnly;
SameSite=Strict`` cookie.  The store keeps only a SHA-256 of each id, so a
lookup never compares secrets byte by byte and a memory dump holds no usable
cookie.  Time comes from an injected L{IReactorTime}; expired sessions are
swept lazily, so the store schedules no timers of its own.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

IDLE_TIMEOUT = 30 * 60.0
ABSOLUTE_TIMEOUT = 12 * 3600.0
MAX_SESSIONS = 10_000


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


class SessionStore:
    """
    Sessions in memory, keyed by a hash of their id.

    @param clock: an L{IReactorTime}; only C{seconds()} is used.
    """

    def __init__(self, clock: Any, idle: float = IDLE_TIMEOUT,
                 absolute: float = ABSOLUTE_TIMEOUT) -> None:
        self._clock = clock
        self.idle = idle
        self.absolute = absolute
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return (now - session.last_seen >= self.idle
                or now - session.created >= self.absolute)

    def sweep(self) -> None:
        """Forget every expired session."""
        now = self._clock.seconds()
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]

    def create(self, user: str) -> tuple[str, Session]:
        """
        A new session for C{user}; returns its id (for the cookie) and itself.
        """
        self.sweep()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
            del self._sessions[oldest]
        now = self._clock.seconds()
        session_id = secrets.token_urlsafe(32)
        session = Session(user=user, csrf=secrets.token_urlsafe(32),
                          created=now, last_seen=now)
        self._sessions[_key(session_id)] = session
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
            del self._sessions[key]
            return None
        if touch:
            session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        """Log out: forget the session."""
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def end_user(self, user: str) -> None:
        """Forget every session of C{user} (account locked or deleted)."""
        for key in [k for k, s in self._sessions.items() if s.user == user]:
            del self._sessions[key]
