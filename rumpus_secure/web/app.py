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
        #: the origins a form may come from: the configured public HTTPS
        #: origin, and for the legacy plain-HTTP site its plain origin
        self.allowed_origins = frozenset(
            {self.origin.lower()} | ({http_origin(self.config).lower()} if not secure else set()))
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
        configured public origin (L{allowed_origins}).  Requests with
        neither header are refused.

        The client's C{Host} header is never trusted: round 3 passed a
        ``POST /mkdir`` and a login with ``Host: evil.com`` and ``Origin:
        https://evil.com``, because the origin the browser addressed (Host
        with our scheme) was allowed too.
        """
        allowed = self.allowed_origins
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

    # -- account changes -----------------------------------------------------

    @property
    def account_watcher(self) -> Any:
        """The server's account watcher (L{None} in tests without one)."""
        return getattr(self.server, "account_watcher", None)

    def watch_point(self) -> int | None:
        """
        The change-log C{seq} to bind a transfer from, taken before its
        account is read (see L{TransferBinding}); L{None} without a watcher
        or before its first read (the first second after start-up).
        """
        watcher = self.account_watcher
        return None if watcher is None else watcher.seq

    def bind_transfer(self, request: IRequest, user: str, what: str,
                      end: Callable[[str], None], since: int | None) -> TransferBinding:
        """Cut a transfer with C{end(reason)} when its account ends (L{TransferBinding})."""
        return TransferBinding(self, request, user, what, end).start(since)

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


#: Account changes that end a running transfer (as they end an FTP session).
ENDING_CHANGES = frozenset({"lock", "delete", "password", "unknown"})


class TransferBinding:
    """
    A running web transfer (upload, download, ZIP) bound to its account.

    Round 3 found web transfers outliving ``user lock`` and ``user del``: a
    slow download streamed for 11 minutes after the lock, an upload went on
    storing and committed its files.  A request checks its account once,
    when it starts; a transfer can last hours.  Like an FTP session
    (L{rumpus_secure.ftp.account_state}), the transfer registers with the
    server's L{rumpus_secure.accounts.watch.AccountWatcher}, which tells it
    of every later change of its account; a lock (or quarantine), deletion,
    password change or a lost change log calls C{end(reason)} once, and the
    transfer is cut (an upload discards what it has not committed).  Audited
    as ``web.transfer_ended`` with the change's kind.  The watcher reads the
    change log every second, so a transfer ends within about a second of the
    admin command.

    @param since: the watcher's C{seq} taken I{before} the account was read
        for this transfer (L{WebApp.watch_point}): a change after it is told
        even if it came before the registration.
    """

    def __init__(self, app: WebApp, request: IRequest, user: str, what: str,
                 end: Callable[[str], None]) -> None:
        self._app = app
        self._client = client_ip(request)
        self._user = user
        self._what = what
        self._end = end
        self._watch: Any = None
        self.ended: str | None = None

    def start(self, since: int | None) -> TransferBinding:
        watcher = self._app.account_watcher
        if watcher is not None and since is not None and self.ended is None:
            self._watch = watcher.watch(self._user, self, since)
        return self

    def cancel(self) -> None:
        """The transfer is over: stop hearing of the account."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    def account_changed(self, change: Any) -> None:
        if self.ended is not None or change.kind not in ENDING_CHANGES:
            return
        from rumpus_secure.ftp.account_state import end_reason

        self.ended = end_reason(change)
        self.cancel()
        if change.kind in ("lock", "delete", "unknown"):
            self._app.sessions.end_user(self._user)
        self._app.server.audit.record(
            "web.transfer_ended", client=self._client, account=self._user,
            transfer=self._what, reason=change.kind, detail=change.detail)
        _log.info("web: {what} for {account} cut: {reason}", what=self._what,
                  account=self._user, reason=self.ended)
        self._end(self.ended)


def http_origin(config: Any) -> str:
    """
    The plain-HTTP origin of the legacy ``--http-redirect off`` site, from
    configuration (``--public-host`` and the ``--http`` port), never from
    the client.
    """
    import ipaddress

    from rumpus_secure.config import endpoint_port

    host = config.public_host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    port = endpoint_port(config.http)
    return f"http://{host}" + ("" if port in (None, 80) else f":{port}")


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
