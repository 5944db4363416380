"""
The HTTPS site: security headers on every response, the static assets and
the routes of the web file manager.

Every response, errors and tracebacks-that-never-are included, carries HSTS
(on HTTPS), a strict Content-Security-Policy (no inline script or style:
the page's CSS and JS are static files), ``nosniff``, a same-origin
Referrer-Policy and frame denial, through L{SecureRequest}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from rumpus_secure.config import ServerConfig
from rumpus_secure.shares import is_dropbox_upload, share_target
from rumpus_secure.web.app import WebApp, query_args
from rumpus_secure.web.auth import LoginResource, LogoutResource
from rumpus_secure.web.bodies import body_cap, early_refusal, too_large
from rumpus_secure.web.channel import Discard, LimitedChannel, answer_and_close
from rumpus_secure.web.manager import (
    DeleteResource,
    FilesResource,
    MkdirResource,
    RenameResource,
    UploadResource,
    ZipResource,
    arg,
)
from rumpus_secure.web.pages import message_page
from rumpus_secure.web.shares import SharesResource
from rumpus_secure.web.twofactor import AccountResource
from rumpus_secure.web.upload import UPLOAD_PATH, UploadSink
from rumpus_secure.web.visit import DropBoxSink, VisitorResource

_log = Logger()

CSP = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".css": b"text/css; charset=utf-8",
                ".js": b"text/javascript; charset=utf-8"}


def security_headers(config: ServerConfig, secure: bool = True) -> list[tuple[bytes, bytes]]:
    """
    Headers every response carries (HSTS only over HTTPS).
    """
    headers = [
        (b"content-security-policy", CSP),
        (b"x-content-type-options", b"nosniff"),
        # same-origin, not no-referrer: browsers then send a real Origin on
        # our own form posts, which the CSRF check relies on.
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]
    if secure and config.hsts_max_age > 0:
        headers.append(
            (b"strict-transport-security", b"max-age=%d" % config.hsts_max_age)
        )
    return headers


#: The login page's one address (see L{_login_target_refusal}).
LOGIN_PATH = b"/login"
#: Query fields that make a login request carry a password in its URL.
QUERY_PASSWORD_FIELDS = frozenset({b"password", b"pass", b"passwd"})


def _login_target_refusal(request: IRequest, login: Any = None) -> tuple[int, str, str] | None:
    """
    Whether a request that twisted.web routed to the login page must be
    refused instead.

    * The login page has exactly one address, ``/login`` (and each of its
      second-factor steps one, ``/login/code`` and ``/login/enrol``).  Resource
      traversal also maps ``/login/``, ``//login`` and ``/%6cogin`` there;
      round 3 found the plain-HTTP listener redirecting exactly such
      variants while only watching ``/login`` for passwords, so the HTTPS
      side now answers them ``404`` and a look-alike never logs anyone in.
    * A password in the query string (``/login?password=...``) is refused
      with ``400`` before it is checked: a URL is written to access logs,
      proxies and browser history, so a password there is as good as
      published.
    """
    # The second-factor steps (/login/code, /login/enrol) are exact too.
    steps = getattr(login, "steps", None) or {}
    exact = {LOGIN_PATH} | {LOGIN_PATH + b"/" + step for step in steps}
    if request.path not in exact:
        return 404, "Not found", "There is nothing at this address. The login page is /login."
    if {name.lower() for name in query_args(request)} & QUERY_PASSWORD_FIELDS:
        return (400, "Password not accepted in the address",
                "A password may not be part of the page address (it would be kept "
                "in logs and browser history). Nothing was checked. Use the login form.")
    return None


class SecureRequest(server.Request):
    """
    A request that adds the site's security headers before writing headers,
    streams uploads to disk (see L{UploadSink}), refuses bodies it will not
    use before reading them (see L{early_refusal}) and fails with a page a
    person can read.
    """

    #: Set when the request was answered before its body: nothing more runs.
    _refused = False
    #: Most body bytes this request may send (L{None}: streamed upload).
    _body_cap: int | None = None
    _body_received = 0

    def _ban(self, audit: bool = True) -> Any:
        """
        The guard's ban on this client's address, if any (audited unless not).
        """
        app = getattr(getattr(self.channel, "site", None), "app", None)
        guard = getattr(getattr(app, "server", None), "guard", None)
        if guard is None:
            return None
        host = str(getattr(self.getClientAddress(), "host", "?"))
        return guard.check(host, "web") if audit else guard.is_banned(host)

    def process(self) -> None:
        if self._refused:
            return  # answered from the headers; the connection is closing
        ban = self._ban()
        if ban is None and self.path.startswith(b"/"):
            super().process()
            return
        self.site = self.channel.site
        if ban is None:
            # Asterisk-form (OPTIONS *) and anything else that is not a path.
            status, body = 400, message_page(
                "Bad request", "The request target must be a path such as /files/.")
        else:
            # A banned address gets one page that says why and for how long,
            # whatever it asked for (the same guard answers 421 on FTP).
            guard = self.channel.site.app.server.guard  # type: ignore[attr-defined]
            status, body = 403, message_page("Access refused", guard.message(ban))
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        if self.method != b"HEAD":
            self.write(body)
        self.finish()

    def render(self, resrc: Any) -> None:
        """
        No page here takes a method other than GET, HEAD and POST: any other
        gets 405 with an Allow header (twisted.web answers OPTIONS, PUT or
        DELETE with a 501 "Huh?" page of its own).
        """
        if isinstance(resrc, LoginResource):
            refusal = _login_target_refusal(self, resrc)
            if refusal is not None:
                status, title, message = refusal
                body = message_page(title, message, link=("/login", "Log in"))
                self.setResponseCode(status)
                self.setHeader(b"content-type", b"text/html; charset=utf-8")
                self.setHeader(b"content-length", b"%d" % len(body))
                if self.method != b"HEAD":
                    self.write(body)
                self.finish()
                return
        if self.method in (b"GET", b"HEAD", b"POST"):
            super().render(resrc)
            return
        body = message_page("Method not allowed",
                            "This site answers GET, HEAD and POST requests only.")
        self.setResponseCode(405)
        self.setHeader(b"allow", b"GET, HEAD, POST")
        self.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def gotLength(self, length: int | None) -> None:
        app = getattr(getattr(self.channel, "site", None), "app", None)
        if app is None:
            super().gotLength(length)
            return
        channel = self.channel
        command = getattr(channel, "_command", None) or b""
        target = getattr(channel, "_path", b"") or b""
        path, _, query = target.partition(b"?")
        refusal = early_refusal(app, self, command, path, length)
        if refusal is not None:
            self.refuse_now(*refusal)
            return
        if command == b"POST" and is_dropbox_upload(path):
            token = (share_target(path) or ("", ""))[0]
            self._parsePOSTFormSubmission = False
            self.content = DropBoxSink(app, self, token)
            return
        if command == b"POST" and path == UPLOAD_PATH:
            from urllib.parse import parse_qs

            values = parse_qs(query.decode("latin-1"), encoding="utf-8",
                              errors="surrogateescape").get("dir", ["/"])
            self._parsePOSTFormSubmission = False
            self.content = UploadSink(app, self, values[0] or "/")
            return
        self._body_cap = body_cap(path)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self._body_cap is not None:
            self._body_received += len(data)
            if self._body_received > self._body_cap:  # a chunked body past its cap
                self.refuse_now(*too_large(self._body_cap))
                return
        super().handleContentChunk(data)

    def refuse_now(self, status: int, title: str, message: str) -> None:
        """
        Answer from the headers alone and close: the body (read so far or
        still to come) is dropped, never parsed, and no resource runs.
        """
        self._refused = True
        self._parsePOSTFormSubmission = False
        self.content = Discard()
        # No "100 Continue" after the answer (twisted.web sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        host = str(getattr(self.getClientAddress(), "host", "?"))
        _log.info("web: {status} before the body for {client} ({target})",
                  status=status, client=host,
                  target=(getattr(self.channel, "_path", b"") or b"")[:200])
        if b"application/json" in (self.getHeader(b"accept") or b""):
            body = json.dumps({"message": message}).encode("utf-8")
            content_type = b"application/json; charset=utf-8"
        else:
            body = message_page(title, message, link=("/login", "Log in") if status == 401
                                else ("/files/", "Your files"))
            content_type = b"text/html; charset=utf-8"
        site = self.channel.site
        answer_and_close(self.channel, status, body, content_type,
                         getattr(site, "security_headers", ()))

    def connectionLost(self, reason: Any) -> None:
        if isinstance(self.content, UploadSink):  # DropBoxSink too
            self.content.connection_lost()
        super().connectionLost(reason)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            for name, value in self.site.security_headers:  # type: ignore[attr-defined]
                if not self.responseHeaders.hasHeader(name):
                    self.responseHeaders.setRawHeaders(name, [value])
        super().write(data)

    def processingFailed(self, reason: Any) -> None:
        _log.failure("web request failed", reason)
        if self.finished or self._disconnected:
            return None
        body = message_page("Something went wrong",
                            "The server could not complete this request. It has been "
                            "logged; please try again.", link=("/", "Start page"))
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return None


#: The C{Server} header of every response (twisted.web's default names the
#: Twisted version, which tells an attacker which advisories apply).
SERVER_HEADER = b"rumpus-secure"


def hide_server_version() -> None:
    """
    Make twisted.web send L{SERVER_HEADER} instead of ``TwistedWeb/<version>``.

    twisted.web's C{Request.process} (and our redirect's fast path) read the
    module attribute C{twisted.web.server.version} for every response; it is
    public API (in the module's C{__all__}).  A test fails if a Twisted
    release stops honouring it.
    """
    server.version = SERVER_HEADER


def _log_text(value: bytes | str | None, spaces: bool = True) -> str:
    """
    A value for an access-log field: printable ASCII, the rest escaped
    (spaces too when not C{spaces}: for the unquoted user field).
    """
    if value is None:
        return "-"
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    out = []
    for byte in raw:
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 0x20 < byte < 0x7F or (spaces and byte == 0x20):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out) or "-"


#: Query fields whose values never reach the access log (see L{redact_query}).
SENSITIVE_QUERY_FIELDS = frozenset({b"password", b"pass", b"passwd", b"csrf", b"token"})
REDACTED = b"REDACTED"


def redact_query(uri: bytes | None) -> bytes | None:
    """
    C{uri} with the values of L{SENSITIVE_QUERY_FIELDS} replaced by
    ``REDACTED``.

    Round 3 found ``POST /login?username=alice&password=...`` logged with
    the password in the access log.  Such a login is now refused, but the
    request line is still logged, and a token or password in any other URL
    would be too.  Names are compared after percent- and plus-decoding and
    without regard to case, so ``%70assword`` and ``PASSWORD`` are caught;
    everything else of the query is kept for diagnosis.
    """
    if not uri or b"?" not in uri:
        return uri
    from urllib.parse import unquote_to_bytes

    path, _, query = uri.partition(b"?")
    pairs = []
    for pair in query.split(b"&"):
        name, equals, _ = pair.partition(b"=")
        decoded = unquote_to_bytes(name.replace(b"+", b" ")).strip().lower()
        if equals and decoded in SENSITIVE_QUERY_FIELDS:
            pair = name + b"=" + REDACTED
        pairs.append(pair)
    return path + b"?" + b"&".join(pairs)


def account_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined log format with the account in the user field.

    The account is that of the request's live web session (looked up
    without touching it), ``-`` when logged out.  Everything from the client
    is escaped, so a request can never write a line of its own, and secrets
    in the query string of the target and the Referer are redacted
    (L{redact_query}).
    """
    account = None
    app = getattr(getattr(request, "site", None), "app", None)
    if app is not None:
        session = app.sessions.get(app.session_id(request), touch=False)
        account = session.user if session is not None else None
    host = getattr(request.getClientAddress(), "host", None)
    return (
        f'"{_log_text(host)}" - {_log_text(account, spaces=False)} {timestamp} '
        f'"{_log_text(request.method)} {_log_text(redact_query(request.uri))} '
        f'{_log_text(request.clientproto)}" {request.code} '
        f'{request.sentLength or "-"} "{_log_text(redact_query(request.getHeader(b"referer")))}" '
        f'"{_log_text(request.getHeader(b"user-agent"))}"'
    )


#: Requests that are not written to the access log: the stylesheet and the
#: script every page loads (two lines per page view said nothing).
UNLOGGED_PREFIXES = (b"/static/",)


class GuardedChannel(LimitedChannel):
    """
    An HTTP(S) connection (with L{LimitedChannel}'s header limits) counted
    against the guard's connection limits,
    per address and in total, as FTP control connections are (the same
    counters: an address's FTP and web connections add up).  One over the
    limit gets ``503`` and is closed before it is read.

    The address is read in C{connectionMade}, which runs after a PROXY
    header (C{haproxy:} endpoints) has been parsed.

    B{Eviction.}  Until its first request head is complete, a counted
    connection is on the guard's eviction registry (L{Guard.not_logged_in},
    as an FTP connection is until it logs in): when the server is full, the
    oldest such connection (two seconds old or more) gets ``503`` and its
    slot goes to the newcomer at once.  Round 3 filled every slot with 500
    connections sending a header byte every 5 s; with the head deadline
    (L{LimitedChannel}) each lasts at most 30 s, and with eviction they
    cannot keep anyone out meanwhile.
    """

    _counted_host: str | None = None
    _refused = False
    _evictable = False

    def _guard(self) -> Any:
        app = getattr(self.site, "app", None)
        return getattr(getattr(app, "server", None), "guard", None)

    def connectionMade(self) -> None:
        super().connectionMade()
        guard = self._guard()
        if guard is None:
            return
        host = str(getattr(self.transport.getPeer(), "host", "?"))
        over = guard.connection_opened(host, "https")
        if over is None:
            self._counted_host = host
            self._evictable = True
            guard.not_logged_in(self, self.site.reactor.seconds(), self._evicted)
            return
        where = "from your address" if over.scope == "address" else "to this server"
        body = f"Too many connections {where} (limit {over.limit}); try again later.\n"
        self._refused = True
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode("ascii")))
        self.loseConnection()  # unregisters the channel as producer first

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._not_evictable()
        super().allHeadersReceived()

    def _not_evictable(self) -> None:
        if self._evictable:
            self._evictable = False
            guard = self._guard()
            if guard is not None:
                guard.logged_in_or_gone(self)

    def _evicted(self) -> None:
        """
        The server is full and this connection has not completed a request:
        its slot goes to a newcomer now, and it gets ``503`` and is closed.
        """
        self._evictable = False
        guard = self._guard()
        if self._counted_host is not None and guard is not None:
            guard.connection_closed(self._counted_host)
        host, self._counted_host = self._counted_host, None
        _log.info("web: evicted a connection from {client} that had not completed "
                  "a request (server full)", client=host)
        self._refused = True
        answer_and_close(
            self, 503,
            b"The server is full and this connection had not sent a request; "
            b"closing. Try again.\n",
            b"text/plain; charset=utf-8", getattr(self.site, "security_headers", ()))

    def connectionLost(self, reason: Any) -> None:
        self._not_evictable()
        if self._counted_host is not None:
            guard = self._guard()
            if guard is not None:
                guard.connection_closed(self._counted_host)
            self._counted_host = None
        super().connectionLost(reason)


class SecureSite(server.Site):
    """
    A site whose every response carries the security headers.
    """

    requestFactory = SecureRequest
    protocol = GuardedChannel
    displayTracebacks = False
    noisy = False

    def __init__(self, root: resource.Resource, config: ServerConfig, *,
                 secure: bool = True, app: WebApp | None = None, **kw: Any) -> None:
        kw.setdefault("logFormatter", account_log_formatter)
        super().__init__(root, **kw)
        self.app = app
        self.security_headers = security_headers(config, secure)
        #: seconds to finish a request's head (L{LimitedChannel}), --line-timeout
        self.head_timeout = config.line_timeout

    def log(self, request: Any) -> None:
        """
        The access log line, except for static assets answered with 200/304.
        """
        if request.path.startswith(UNLOGGED_PREFIXES) and request.code in (200, 304):
            return
        super().log(request)


class StaticAssets(resource.Resource):
    """The stylesheet and script, read once at start-up; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[bytes, tuple[bytes, bytes]] = {}
        for path in STATIC_DIR.iterdir():
            if path.suffix in STATIC_TYPES:
                self._files[path.name.encode()] = (path.read_bytes(),
                                                   STATIC_TYPES[path.suffix])

    def render(self, request: IRequest) -> bytes:
        """``/static`` itself is no file (HEAD here was a 500, found by fuzzing)."""
        return NotFoundPage().render(request)

    def getChild(self, name: bytes, request: IRequest) -> resource.Resource:
        found = self._files.get(name)
        if found is None or request.postpath:
            return NotFoundPage()
        return _Asset(*found)


class _Asset(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"cache-control", b"public, max-age=3600")
        return self._body

    render_HEAD = render_GET


class NotFoundPage(resource.Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return message_page("Not found", "There is nothing at this address.",
                            link=("/files/", "Your files"))


class Root(resource.Resource):
    """``/``: to the files when logged in, else to the login page."""

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app
        self.putChild(b"", self)
        self.putChild(b"static", StaticAssets())
        self.putChild(b"login", LoginResource(app))
        self.putChild(b"logout", LogoutResource(app))
        self.putChild(b"files", FilesResource(app))
        self.putChild(b"upload", UploadResource(app))
        self.putChild(b"mkdir", MkdirResource(app))
        self.putChild(b"rename", RenameResource(app))
        self.putChild(b"delete", DeleteResource(app))
        self.putChild(b"zip", ZipResource(app))
        self.putChild(b"account", AccountResource(app))
        self.putChild(b"shares", SharesResource(app))
        self.putChild(b"s", VisitorResource(app))

    def getChild(self, name: bytes, request: IRequest) -> resource.Resource:
        return NotFoundPage()

    def render_GET(self, request: IRequest) -> bytes:
        target = b"/files/" if self.app.session(request) else b"/login"
        request.setResponseCode(303)
        request.setHeader(b"location", target)
        return b""

    render_HEAD = render_GET


def build_web_site(server_state: Any, reactor: Any, *, secure: bool = True,
                   sessions_db: Path | None = None) -> SecureSite:
    """
    The web file manager as a site; C{secure=False} only for the legacy
    ``--http-redirect off`` plain-HTTP mode.

    @param sessions_db: the database that keeps the sessions across restarts
        (L{rumpus_secure.web.sessions.SQLiteSessions}); L{None}: memory only.
    """
    app = WebApp(server_state, reactor, secure=secure, sessions_db=sessions_db)
    return SecureSite(Root(app), server_state.config, secure=secure, app=app,
                      reactor=reactor)


def build_https_site(server_state: Any, reactor: Any,
                     sessions_db: Path | None = None) -> server.Site:
    """
    The site behind the HTTPS listener.
    """
    return build_web_site(server_state, reactor, secure=True, sessions_db=sessions_db)


__all__ = ["CSP", "SecureRequest", "SecureSite", "arg", "build_https_site",
           "build_web_site", "security_headers"]
