"""
What every web resource shares: sessions, cookies, the CSRF and origin
checks, and running a jailed filesystem call for the logged-in account.

L{WebApp} holds no Twisted resources; L{rumpus_secure.web.site} assembles
those around it.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from rumpus_secure.vfs import (
    AccessDenied,
    AlreadyExists,
    DiskFull,
    InvalidOffset,
    InvalidPath,
    IsADirectory,
    JailedFS,
    NotADirectory,
    NotARegularFile,
    NotEmpty,
    NotFound,
    PermissionDenied,
    SymlinkNotFollowed,
    VFSError,
)
from rumpus_secure.web.origin import https_origin
from rumpus_secure.web.sessions import Session, SessionStore, SQLiteSessions

_log = Logger()

T = TypeVar("T")


class AccountGone(Exception):
    """The session's account was deleted or locked since it logged in."""


class PasswordChanged(Exception):
    """
    The account's password was set after this session logged in: the
    session ends (a session opened with an exposed password must not
    outlive the reset), the account's newer sessions stay.
    """


#: HTTP status for each filesystem error (see rumpus_secure.vfs.errors).
_STATUS: list[tuple[type[VFSError], int]] = [
    (PermissionDenied, 403),
    (AccessDenied, 403),
    (NotFound, 404),
    (NotADirectory, 404),
    (IsADirectory, 409),
    (SymlinkNotFollowed, 409),
    (NotARegularFile, 409),
    (NotEmpty, 409),
    (AlreadyExists, 409),
    (InvalidPath, 400),
    (DiskFull, 507),
    (InvalidOffset, 416),
]


def status_for(error: VFSError) -> int:
    """The HTTP status that matches a filesystem error."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def friendly(error: VFSError) -> str:
    """A sentence a person understands, for a filesystem error."""
    message = error.message
    return message[:1].upper() + message[1:] + "."


class WebApp:
    """
    The web file manager's state, shared by its resources.

    @param server: the assembled L{rumpus_secure.tap.Server}.
    @param reactor: provides the clock for sessions.
    @param secure: whether pages are served over HTTPS (cookie flags).
    """

    def __init__(self, server: Any, reactor: Any, *, secure: bool = True,
                 sessions_db: Path | None = None) -> None:
        self.server = server
        self.reactor = reactor
        self.config = server.config
        self.secure = secure
        persistence: Any = None
        if isinstance(sessions_db, (str, Path)):
            persistence = SQLiteSessions(sessions_db)
        elif sessions_db is not None:
            # A shared store (rumpus_secure.accounts.pg.PGSessions).
            persistence = sessions_db
        self.sessions = SessionStore(reactor, persistence=persistence,
                                     run_in_thread=server.run_in_thread)
        restored = self.sessions.load()  # blocks: runs before the reactor
        if restored:
            _log.info("{count} web session(s) restored", count=restored)
        self.origin = https_origin(self.config).decode("ascii")
        self.cookie_name = b"__Host-rumpus-session" if secure else b"rumpus-session"

    # -- sessions -----------------------------------------------------------

    def session_id(self, request: IRequest) -> str | None:
        raw = request.getCookie(self.cookie_name)
        if not raw:
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return None

    def session(self, request: IRequest) -> Session | None:
        """The live session of this request, or L{None}."""
        return self.sessions.get(self.session_id(request))

    def start_session(self, request: IRequest, user: str) -> Session:
        """Log C{user} in: a fresh id (never one the client chose) in a cookie."""
        self.sessions.end(self.session_id(request))
        session_id, session = self.sessions.create(user)
        self._set_cookie(request, session_id.encode("ascii"))
        return session

    def end_session(self, request: IRequest) -> None:
        self.sessions.end(self.session_id(request))
        self._set_cookie(request, b"", expire=True)

    def _set_cookie(self, request: IRequest, value: bytes, expire: bool = False) -> None:
        parts = [self.cookie_name + b"=" + value, b"Path=/", b"HttpOnly",
                 b"SameSite=Strict"]
        if self.secure:
            parts.append(b"Secure")
        if expire:
            parts.append(b"Max-Age=0")
        request.responseHeaders.addRawHeader(b"set-cookie", b"; ".join(parts))

    # -- request checks -------------------------------------------------------

    def same_origin(self, request: IRequest) -> bool:
        """
        Did this request come from one of our own pages?

        The C{Origin} header (or, failing that, C{Referer}) must name the
        configured public origin or the origin the browser addressed (the
        C{Host} header with our scheme; a forged Host cannot carry the
        session cookie, which is bound to the real host).  Requests with
        neither header are refused.
        """
        allowed = {self.origin}
        host = request.getHeader(b"host")
        if host:
            scheme = "https" if self.secure else "http"
            allowed.add(f"{scheme}://{host.decode('latin-1').lower()}")
        origin = request.getHeader(b"origin")
        if origin is not None:
            return origin.decode("latin-1").lower() in allowed
        referer = request.getHeader(b"referer")
        if referer is not None:
            parts = urlsplit(referer.decode("latin-1"))
            return f"{parts.scheme}://{parts.netloc}".lower() in allowed
        return False

    @staticmethod
    def csrf_ok(session: Session, token: bytes | str | None) -> bool:
        """Constant-time comparison of a submitted token with the session's."""
        if token is None:
            return False
        if isinstance(token, str):
            token = token.encode("utf-8", "replace")
        return hmac.compare_digest(token, session.csrf.encode("ascii"))

    def post_allowed(self, request: IRequest, session: Session) -> bool:
        """
        Origin check plus CSRF token (form field C{csrf} or header).

        A token in the query string is refused, and the whole request with
        it: a URL ends up in access logs, proxies and browser history, so a
        token there is as good as published.  (twisted.web merges query and
        form arguments into C{request.args}; with no C{csrf} in the query,
        the value there came from the body.)
        """
        if not self.same_origin(request):
            return False
        if b"csrf" in query_args(request):
            return False
        token = request.getHeader(b"x-csrf-token")
        if token is None:
            values = request.args.get(b"csrf")
            token = values[0] if values else None
        return self.csrf_ok(session, token)

    # -- the filesystem ------------------------------------------------------

    def open_fs(self, user: str, logged_in: float | None = None) -> JailedFS:
        """
        In a thread: the account's jailed filesystem, read fresh from the
        store so a lock, password or permission change applies at once.

        @param logged_in: when the session began; a password set after it
            raises L{PasswordChanged}.
        """
        account = self.server.store.get(user)
        if account is None or account.locked:
            raise AccountGone(user)
        if logged_in is not None and account.password_changed > logged_in:
            raise PasswordChanged(user)
        return JailedFS(account.home, account.perms)

    def with_fs(self, session: Session, function: Callable[[JailedFS], T]) -> Deferred[T]:
        """Run C{function(fs)} in a thread for the session's account."""
        user, logged_in = session.user, session.created

        def work() -> T:
            return function(self.open_fs(user, logged_in))

        return self.server.run_in_thread(work)

    def audit(self, request: IRequest, event: str, **fields: Any) -> None:
        self.server.audit.record(event, client=client_ip(request), **fields)


def query_args(request: IRequest) -> set[bytes]:
    """The argument names in the query string alone (not those of the body)."""
    _, _, query = (request.uri or b"").partition(b"?")
    names = set()
    for pair in query.split(b"&"):
        name = pair.split(b"=", 1)[0].replace(b"+", b" ")
        names.add(unquote_to_bytes(name))
    return names


def client_ip(request: IRequest) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "?"))
