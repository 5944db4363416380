"""
The plain HTTP listener: send every visitor to HTTPS.

The target host comes from configuration (``--public-host``), never from the
client's ``Host`` header, so a forged header cannot turn the server into an
open redirector.  The path and query travel byte for byte.  GET and HEAD get
``301``; every other method gets ``308`` so a client repeats the same method
and body against HTTPS (RFC 9110 section 15.4.9).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.web import resource, server
from twisted.web.iweb import IRequest

from rumpus_secure.config import ServerConfig


def https_origin(config: ServerConfig) -> bytes:
    """
    The HTTPS origin clients are sent to, e.g. ``https://files.example.com:8443``.
    """
    host = config.public_host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    port = config.https_port
    suffix = "" if port in (None, 443) else f":{port}"
    return f"https://{host}{suffix}".encode("ascii")


def _valid_origin_form(target: bytes) -> bool:
    """
    Is C{target} an origin-form request target (``/path?query``)?

    Absolute-form (``http://host/...``), authority-form, asterisk-form and
    targets with bytes that may not appear in a URI are refused.
    """
    if not target.startswith(b"/"):
        return False
    return all(0x21 <= byte <= 0x7E for byte in target)


class RedirectToHTTPS(resource.Resource):
    """
    Answers every request with a redirect to the same path on HTTPS.
    """

    isLeaf = True

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        self._origin = https_origin(config)

    def render(self, request: IRequest) -> bytes:
        target = request.uri
        if not _valid_origin_form(target):
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Bad request: the request target must be a path such as /files.\n"
        location = self._origin + target
        method = request.method
        request.setResponseCode(301 if method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if method == b"HEAD":
            return b""
        return b"This server only answers over HTTPS: " + location + b"\n"


def build_http_site(server_state: Any, reactor: Any) -> server.Site:
    """
    The site behind the plain HTTP listener.
    """
    site = server.Site(RedirectToHTTPS(server_state.config), reactor=reactor)
    site.displayTracebacks = False
    return site
