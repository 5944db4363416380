"""
The HTTPS site: security headers on every response, the static assets and
the routes of the web file manager.

Every response, errors and tracebacks-that-never-are included, carries HSTS
(on HTTPS), a strict Content-Security-Policy (no inline script or style:
the page's CSS and JS are static files), ``nosniff``, a same-origin
Referrer-Policy and frame denial, through L{SecureRequest}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.web import resource, server
from twisted.web.iweb import IRequest

from rumpus_secure.config import ServerConfig
from rumpus_secure.web.app import WebApp
from rumpus_secure.web.auth import LoginResource, LogoutResource
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
from rumpus_secure.web.upload import UPLOAD_PATH, UploadSink

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


class SecureRequest(server.Request):
    """
    A request that adds the site's security headers before writing headers,
    streams uploads to disk (see L{UploadSink}) and fails with a page a
    person can read.
    """

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
        ban = self._ban()
        if ban is None:
            super().process()
            return
        # A banned address gets one page that says why and for how long,
        # whatever it asked for (the same guard answers 421 on FTP).
        guard = self.channel.site.app.server.guard  # type: ignore[attr-defined]
        self.site = self.channel.site
        body = message_page("Access refused", guard.message(ban))
        self.setResponseCode(403)
        self.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def gotLength(self, length: int | None) -> None:
        app = getattr(getattr(self.channel, "site", None), "app", None)
        if app is not None and self._ban(audit=False) is not None:
            super().gotLength(length)  # refused in process(); nothing reaches a file
            return
        channel = self.channel
        command = getattr(channel, "_command", None)
        target = getattr(channel, "_path", b"") or b""
        path, _, query = target.partition(b"?")
        if app is not None and command == b"POST" and path == UPLOAD_PATH:
            from urllib.parse import parse_qs

            values = parse_qs(query.decode("latin-1"), encoding="utf-8",
                              errors="surrogateescape").get("dir", ["/"])
            self._parsePOSTFormSubmission = False
            self.content = UploadSink(app, self, values[0] or "/")
            return
        super().gotLength(length)

    def connectionLost(self, reason: Any) -> None:
        if isinstance(self.content, UploadSink):
            self.content.connection_lost()
        super().connectionLost(reason)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            for name, value in self.site.security_headers:  # type: ignore[attr-defined]
                if not self.responseHeaders.hasHeader(name):
                    self.responseHeaders.setRawHeaders(name, [value])
        super().write(data)

    def processingFailed(self, reason: Any) -> None:
        from twisted.logger import Logger

        Logger().failure("web request failed", reason)
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


class SecureSite(server.Site):
    """
    A site whose every response carries the security headers.
    """

    requestFactory = SecureRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, config: ServerConfig, *,
                 secure: bool = True, app: WebApp | None = None, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.app = app
        self.security_headers = security_headers(config, secure)


class StaticAssets(resource.Resource):
    """The stylesheet and script, read once at start-up; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[bytes, tuple[bytes, bytes]] = {}
        for path in STATIC_DIR.iterdir():
            if path.suffix in STATIC_TYPES:
                self._files[path.name.encode()] = (path.read_bytes(),
                                                   STATIC_TYPES[path.suffix])

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
