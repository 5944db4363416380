"""
The HTTPS site: security headers on every response, and the landing page.

Until the web file manager arrives, ``/`` tells a visitor how to reach the
files with an FTP client.  Every response, errors included, carries HSTS and
the other security headers through L{SecureSite}.
"""

from __future__ import annotations

import html
from typing import Any

from twisted.web import resource, server
from twisted.web.iweb import IRequest

from rumpus_secure.config import ServerConfig

CSP = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def security_headers(config: ServerConfig) -> list[tuple[bytes, bytes]]:
    """
    Headers every HTTPS response carries.
    """
    headers = [
        (b"content-security-policy", CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if config.hsts_max_age > 0:
        headers.append(
            (b"strict-transport-security", b"max-age=%d" % config.hsts_max_age)
        )
    return headers


class SecureRequest(server.Request):
    """
    A request that adds the site's security headers before writing headers.
    """

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            for name, value in self.site.security_headers:  # type: ignore[attr-defined]
                if not self.responseHeaders.hasHeader(name):
                    self.responseHeaders.setRawHeaders(name, [value])
        super().write(data)


class SecureSite(server.Site):
    """
    A site whose every response carries the security headers.
    """

    requestFactory = SecureRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, config: ServerConfig, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.security_headers = security_headers(config)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    ).encode("utf-8")


class ConnectInfo(resource.Resource):
    """
    Tells a visitor how to connect with an FTP client.
    """

    isLeaf = True

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        host = html.escape(config.public_host)
        items = []
        if config.ftp and config.ftp_security != "implicit-only":
            items.append(
                f"<li>Explicit FTPS (FTP with AUTH TLS): <code>{host}</code> "
                f"port <code>{config.ftp_port}</code></li>"
            )
        if config.ftps:
            items.append(
                f"<li>Implicit FTPS: <code>{host}</code> port "
                f"<code>{config.ftps_port}</code></li>"
            )
        self._body = _page(
            "rumpus-secure file server",
            "<p>Connect with an FTP client that supports TLS (FileZilla, "
            "WinSCP, lftp, curl):</p><ul>" + "".join(items) + "</ul>"
            "<p>Use the same user name and password as for this site.</p>",
        )

    def render_GET(self, request: IRequest) -> bytes:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return _page("Not found", "<p>There is nothing at this address. "
                         "<a href='/'>Start page</a></p>")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._body

    render_HEAD = render_GET


def build_https_site(server_state: Any, reactor: Any) -> server.Site:
    """
    The site behind the HTTPS listener.
    """
    config = server_state.config
    return SecureSite(ConnectInfo(config), config, reactor=reactor)
