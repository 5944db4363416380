"""
The plain HTTP listener: send every visitor to HTTPS.

The target host comes from configuration (``--public-host``), never from the
client's ``Host`` header, so a forged header cannot turn the server into an
open redirector.  The path and query travel byte for byte.  GET and HEAD get
``301``; every other method gets ``308`` so a client repeats the same method
and body against HTTPS (RFC 9110 section 15.4.9).  Absolute-form,
authority-form, asterisk-form and malformed request targets get ``400``.

Two exceptions:

* ``/.well-known/acme-challenge/<token>`` is answered from ``--acme-webroot``
  when that is set (see L{rumpus_secure.web.acme});
* credentials on plain HTTP (an ``Authorization`` header, or a password
  posted to the login form) are never acted on and never redirected (a 308
  would make the browser send the password a second time): the request gets
  ``403`` with an explanation, sent once the password has been checked
  off-thread by the exposure guard, which quarantines the account if it was
  real.  Each such request is an offence for the guard (a flood ends in a
  ban; a banned address's passwords are not checked).

Request bodies are not kept: only a small ``POST /login`` body is read (to
find an exposed password); anything else is discarded as it arrives.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import resource, server
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from rumpus_secure.config import ServerConfig
from rumpus_secure.shares import is_share_form, share_target
from rumpus_secure.web.acme import acme_token, serve_challenge
from rumpus_secure.web.channel import LimitedChannel
from rumpus_secure.web.origin import https_origin

_log = Logger()

LOGIN_PATH = b"/login"
MAX_LOGIN_BODY = 64 * 1024

#: An origin-form target: printable ASCII, no fragment, valid %-escapes.
_ORIGIN_FORM = re.compile(rb"/(?:[!$&-;=?-Z\[\]^_a-z{|}~\\\"<>`]|%[0-9A-Fa-f]{2})*")


_ORIGIN_FORM_MATCH = _ORIGIN_FORM.fullmatch

#: Header values shared by every redirect (Headers copies the list it is given).
_NO_STORE = [b"no-store"]
_TEXT_PLAIN = [b"text/plain; charset=utf-8"]


def _valid_origin_form(target: bytes) -> bool:
    """
    Is C{target} an origin-form request target (``/path?query``)?

    Absolute-form (``http://host/...``), authority-form, asterisk-form,
    targets with a fragment, bytes that may not appear in a URI, and broken
    percent-escapes are refused.
    """
    return _ORIGIN_FORM.fullmatch(target) is not None


class _Discard:
    """A request body that is dropped as it arrives."""

    def write(self, data: bytes) -> None:
        pass

    def tell(self) -> int:
        return 0

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


_date_cache: list[Any] = [None, b""]


def _http_date() -> bytes:
    """
    The C{Date} header value, formatted at most once a second.
    """
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = datetimeToString(now)
    return _date_cache[1]


class PlainRequest(server.Request):
    """
    A request on the plain HTTP port: bodies are dropped unless it is a
    small login form.

    L{process} skips twisted.web's resource traversal when the site's root
    is a L{RedirectToHTTPS} (it is a leaf that answers every path): the
    request goes straight to its C{render}, which also refuses the ``*``
    target with ``400`` (twisted.web would answer ``OPTIONS *`` with
    ``200``).  Another root resource takes the stock path.
    """

    def process(self) -> None:
        self.site = site = self.channel.site
        root = site.resource
        if not isinstance(root, RedirectToHTTPS):
            super().process()
            return
        headers = self.responseHeaders
        headers.setRawHeaders(b"server", [server.version])
        headers.setRawHeaders(b"date", [_http_date()])
        # What Site.getResourceFor would leave for a leaf root.
        self.prepath = []
        self.sitepath = []
        self.postpath = list(map(server.unquote, self.path[1:].split(b"/")))
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(failure.Failure())

    def gotLength(self, length: int | None) -> None:
        command = getattr(self.channel, "_command", None)
        target = getattr(self.channel, "_path", b"") or b""
        path = target.split(b"?", 1)[0]
        if (command == b"POST" and (path == LOGIN_PATH or is_share_form(path))
                and length is not None and length <= MAX_LOGIN_BODY):
            super().gotLength(length)
            return
        self._parsePOSTFormSubmission = False
        self.content = _Discard()


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def exposed_credentials(request: IRequest) -> tuple[str, str | None, str | None] | None:
    """
    The credentials this plain-HTTP request carries, as C{(kind, user,
    password)}, or L{None}.
    """
    authorization = request.getHeader(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(b" ")
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return "basic-malformed", None, None
            user, _, password = decoded.partition(b":")
            return "basic", _text(user), _text(password)
        return "authorization-" + _text(scheme.lower())[:20], None, None
    if request.method == b"POST" and request.path == LOGIN_PATH:
        passwords = request.args.get(b"password")
        if passwords:
            users = request.args.get(b"username") or [b""]
            return "form", _text(users[0]), _text(passwords[0])
    return None


def _explanation(origin: bytes) -> bytes:
    from rumpus_secure.web.pages import message_page

    return message_page(
        "Password not accepted over an unencrypted connection",
        "This page was reached over plain HTTP, so the password you sent "
        "travelled unencrypted and may have been seen by others on the network. "
        "It was not used. As a precaution the account may be locked until an "
        "administrator sets a new password. Always use the secure address: "
        + origin.decode("ascii") + "/",
        link=(origin.decode("ascii") + "/", "Go to the secure site"),
    )


def _share_explanation(origin: bytes) -> bytes:
    from rumpus_secure.web.pages import message_page

    return message_page(
        "Password not accepted over an unencrypted connection",
        "This link's password was sent over plain HTTP, where others on the "
        "network may have seen it. It was not used, and the link has been turned "
        "off. Ask the person who shared it for a new link, and open it at the "
        "secure address (https).",
        link=(origin.decode("ascii") + "/", "Go to the secure site"),
    )


def _share_not_used(origin: bytes) -> bytes:
    """A password posted to a link over plain HTTP that is not its password."""
    from rumpus_secure.web.pages import message_page

    return message_page(
        "Password not accepted over an unencrypted connection",
        "This page was reached over plain HTTP. The password you sent was not "
        "used. Open the link at the secure address (https).",
        link=(origin.decode("ascii") + "/", "Go to the secure site"),
    )


def _close_after(request: IRequest) -> None:
    """
    Close the connection once this response is sent; requests pipelined
    behind it are dropped unread.
    """
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False


class RedirectToHTTPS(resource.Resource):
    """
    Answers every request with a redirect to the same path on HTTPS.
    """

    isLeaf = True

    def __init__(self, config: ServerConfig, server_state: Any = None) -> None:
        super().__init__()
        self._origin = https_origin(config)
        self._server = server_state
        self._acme = (config.acme_webroot is not None
                      or getattr(config, "acme_directory", None) is not None)

    def render(self, request: IRequest) -> bytes | int:
        target = request.uri
        if _ORIGIN_FORM_MATCH(target) is None:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Bad request: the request target must be a path such as /files.\n"
        headers = request.responseHeaders
        headers.setRawHeaders(b"cache-control", _NO_STORE)
        method = request.method
        if (method == b"POST" and is_share_form(request.path)
                and request.args.get(b"password")):
            return self._refuse_share_password(request)
        credentials = exposed_credentials(request)
        if credentials is not None:
            return self._refuse_credentials(request, *credentials)
        if self._acme and self._server is not None:
            token = acme_token(target)
            if token is not None:
                return self._challenge(request, token)
        location = self._origin + target
        request.setResponseCode(301 if method == b"GET" or method == b"HEAD" else 308)
        headers.setRawHeaders(b"location", [location])
        headers.setRawHeaders(b"content-type", _TEXT_PLAIN)
        if method == b"HEAD":
            return b""
        return b"This server only answers over HTTPS: " + location + b"\n"

    def _refuse_credentials(self, request: IRequest, kind: str, user: str | None,
                            password: str | None) -> bytes | int:
        """
        Refuse credentials sent in cleartext: score the offence, check the
        password, and send the ``403`` only once the check is done.

        Answering first would tell the client "refused" while the password
        still logs in over HTTPS (see L{rumpus_secure.exposure}).  Like a
        login attempted before TLS on FTP, it is an offence
        (C{cleartext_login}): a flood ends in a ban.  The request that
        causes the ban is still checked; a banned address's later
        credentials are not, but their HMAC is remembered (see
        L{rumpus_secure.exposure.ExposureGuard.not_checked}).
        """
        client = str(getattr(request.getClientAddress(), "host", "?"))
        software = _text(request.getHeader(b"user-agent") or b"")[:200] or None
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if self._server is None:
            return _explanation(self._origin)
        guard = getattr(self._server, "guard", None)
        if guard is not None and guard.check(client, "http") is not None:
            # Banned: one quiet audit record a minute (guard.refused), no
            # check, and the connection closes after this answer, dropping
            # whatever else was pipelined on it.  The password's HMAC is
            # remembered: a later login with it proves it exposed.
            _close_after(request)
            if password is not None and self._server.exposure is not None:
                self._server.exposure.not_checked(
                    protocol="http", client=client, user=user, password=password,
                    software=software, outcome="not-checked-banned", record=False)
            return _explanation(self._origin)
        self._server.audit.record(
            "web.cleartext_credentials", client=client, kind=kind, account=user,
            method=_text(request.method), path=_text(request.path)[:200],
        )
        if guard is not None and guard.offence(client, "cleartext_login", protocol="http",
                                               account=user) is not None:
            # This request banned the address, but its password was read
            # already: it is checked like the others (it may be a victim's
            # behind the same address), and the connection closes after it.
            _close_after(request)
        if password is None or self._server.exposure is None:
            return _explanation(self._origin)
        checked = self._server.exposure.check(protocol="http", client=client, user=user,
                                              password=password, software=software)

        def answer(ignored: Any) -> None:
            if request._disconnected or request.finished:
                return
            body = _explanation(self._origin)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        checked.addBoth(answer).addErrback(
            lambda f: _log.failure("answering cleartext credentials failed", f))
        return NOT_DONE_YET

    def _refuse_share_password(self, request: IRequest) -> bytes | int:
        """
        A share link's password posted over plain HTTP: refused like any
        cleartext password (an offence), and the link is ended if that was
        its password (checked in a thread), since whoever saw the password
        saw the link too (L{rumpus_secure.shares.disable_exposed}).  Any
        other post changes nothing: a link without a password, or a wrong
        one (a third-party page posting to the link), must not end it.
        """
        client = str(getattr(request.getClientAddress(), "host", "?"))
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        body = _share_explanation(self._origin)
        server_state = self._server
        if server_state is None:
            return body
        guard = getattr(server_state, "guard", None)
        if guard is not None and guard.check(client, "http") is not None:
            _close_after(request)
            return _share_not_used(self._origin)
        if guard is not None and guard.offence(client, "cleartext_login",
                                               protocol="http") is not None:
            _close_after(request)
        token = (share_target(request.path) or ("", ""))[0]
        password = _text((request.args.get(b"password") or [b""])[0])

        def disable() -> tuple[str | None, str]:
            from rumpus_secure.shares import disable_exposed_outcome, store_of

            return disable_exposed_outcome(store_of(server_state), token, password)

        def answer(result: Any) -> None:
            share_id, outcome = result if isinstance(result, tuple) else (None, "failed")
            server_state.audit.record(
                "web.cleartext_credentials", client=client, kind="share-password",
                share=share_id, outcome=outcome)
            if request._disconnected or request.finished:
                return
            nonlocal body
            if outcome != "link-disabled":
                body = _share_not_used(self._origin)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        d = server_state.run_in_thread(disable)
        d.addBoth(answer).addErrback(
            lambda f: _log.failure("disabling an exposed share link failed", f))
        return NOT_DONE_YET

    def _challenge(self, request: IRequest, token: bytes) -> int:
        d = Deferred.fromCoroutine(serve_challenge(self._server, request, token))

        def answer(result: tuple[int, bytes]) -> None:
            status, body = result
            if request._disconnected or request.finished:
                return
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"content-length", b"%d" % len(body))
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            _log.failure("serving an ACME challenge failed", failure)
            answer((500, b"The challenge could not be read.\n"))

        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


class PlainSite(server.Site):
    """
    The site on the plain HTTP port.

    B{No per-request access log.}  This listener only redirects to HTTPS
    (or refuses), so twisted.web's combined-log line for every request is
    deliberately not written: formatting and emitting it through the
    logging system cost about a third of the time spent on each redirect,
    and a redirect-only listener is an easy target for request floods that
    would otherwise also flood the log.  What matters is still recorded:
    credentials sent over plain HTTP go to the audit log
    (C{web.cleartext_credentials}) and to the exposure guard, and failures
    are logged.  The HTTPS site keeps its access log.  With
    ``--http-redirect off`` the legacy plain site is a different class and
    keeps logging too.
    """

    requestFactory = PlainRequest
    protocol = LimitedChannel
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """
        Write nothing: see the class docstring.
        """


def build_http_site(server_state: Any, reactor: Any) -> server.Site:
    """
    The site behind the plain HTTP listener: the redirect, or with
    ``--http-redirect off`` the whole web manager without TLS (legacy).
    """
    config = server_state.config
    if not config.http_redirect:
        from rumpus_secure.web.site import build_web_site

        _log.warn(
            "INSECURE: --http-redirect off serves the web file manager and its "
            "login over plain HTTP on {endpoint}; passwords and files cross the "
            "network unencrypted. Use it only behind a TLS-terminating proxy.",
            endpoint=config.http,
        )
        return build_web_site(server_state, reactor, secure=False)
    site = PlainSite(RedirectToHTTPS(config, server_state), reactor=reactor)
    return site
