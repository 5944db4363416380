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
* credentials on plain HTTP are never acted on and never redirected (a 308
  would make the browser send the password a second time, a 301 would echo
  a password in the query back in its ``Location``): the request gets
  ``403`` with an explanation, sent once the password has been checked
  off-thread by the exposure guard, which quarantines the account if it was
  real.  Each such request is an offence for the guard (a flood ends in a
  ban; a banned address's passwords are not checked).

B{What counts as credentials, whatever the path and method.}  Round 3 found
that only an exact ``POST /login`` with a ``Content-Length`` was looked at:
``POST /login/``, ``//login``, ``/%6cogin``, a chunked body and
``GET /login?password=...`` were all redirected, and the HTTPS side took
them as its login.  Now every request on this port is searched for an
``Authorization`` or ``Proxy-Authorization`` header, and for a field named
in L{PASSWORD_FIELDS} in the query string or in a form body (urlencoded or
multipart, with a ``Content-Length`` or chunked).

Request bodies are not kept: of a form body (urlencoded, multipart or of no
stated type) the first L{MAX_LOGIN_BODY} (64 KiB) bytes are read to find an
exposed password, and the rest is dropped as it arrives, as is every other
body.  A login form is a few hundred bytes.
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
from rumpus_secure.web.multipart import (
    MultipartError,
    MultipartParser,
    boundary_from_content_type,
)
from rumpus_secure.web.origin import https_origin

_log = Logger()

LOGIN_PATH = b"/login"
MAX_LOGIN_BODY = 64 * 1024

#: Form fields whose presence makes a request carry a password.
PASSWORD_FIELDS = (b"password", b"pass", b"passwd")
#: Form fields that name the account, tried in this order.
USER_FIELDS = (b"username", b"user", b"login")
#: Longest field value kept from a multipart body (a password is far shorter).
_MAX_FIELD = 4096
_URLENCODED = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"

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


class _CappedBody:
    """
    A request body of which the first C{cap} bytes are kept and the rest is
    dropped as it arrives.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0

    def write(self, data: bytes) -> None:
        room = self._cap - self._kept
        if room > 0:
            data = data[:room]
            self._chunks.append(data)
            self._kept += len(data)

    def value(self) -> bytes:
        return b"".join(self._chunks)

    def tell(self) -> int:
        return 0  # twisted.web then never parses the body itself

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        self._chunks = []


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
        """
        Keep the first L{MAX_LOGIN_BODY} bytes of a form body, whatever the
        method, path and framing (a chunked body has no C{length}), so that
        L{exposed_credentials} can look for a password in it; drop the rest
        and every other body.  twisted.web never parses it: the form is read
        here, for POST and any other method alike.
        """
        self._parsePOSTFormSubmission = False
        if length != 0 and _form_type(self) is not None:
            self.content = _CappedBody(MAX_LOGIN_BODY)
        else:
            self.content = _Discard()


def _form_type(request: IRequest) -> bytes | None:
    """
    C{urlencoded} or C{multipart} for a body that may be a form (one of
    no stated type is read as urlencoded, as curl and old clients send
    them), else L{None}.
    """
    content_type = request.requestHeaders.getRawHeaders(b"content-type")
    if not content_type:
        return _URLENCODED
    main = content_type[0].split(b";", 1)[0].strip().lower()
    if main in (_URLENCODED, _MULTIPART):
        return main
    return None


class _FieldSink:
    """Collects the credential fields of a multipart body (see L{MultipartParser})."""

    def __init__(self) -> None:
        self.fields: dict[bytes, bytes] = {}
        self._name: bytes | None = None
        self._value = b""

    def part_begin(self, headers: dict[str, str]) -> None:
        from rumpus_secure.web.multipart import parse_header_params

        _, params = parse_header_params(headers.get("content-disposition", ""))
        name = params.get("name", "").encode("utf-8", "replace").lower()
        wanted = name in PASSWORD_FIELDS or name in USER_FIELDS
        self._name = name if wanted and name not in self.fields else None
        self._value = b""

    def part_data(self, data: bytes) -> None:
        if self._name is not None and len(self._value) < _MAX_FIELD:
            self._value += data[: _MAX_FIELD - len(self._value)]

    def part_end(self) -> None:
        if self._name is not None:
            self.fields[self._name] = self._value
        self._name = None


def _body_fields(request: IRequest) -> dict[bytes, list[bytes]]:
    """The fields of a kept form body (see L{PlainRequest.gotLength})."""
    content = getattr(request, "content", None)
    if not isinstance(content, _CappedBody):
        return {}
    body = content.value()
    if not body:
        return {}
    kind = _form_type(request)
    if kind == _MULTIPART:
        boundary = boundary_from_content_type(request.getHeader(b"content-type") or b"")
        if boundary is None:
            return {}
        sink = _FieldSink()
        try:
            MultipartParser(boundary, sink).feed(body)
        except MultipartError:
            pass  # what was parsed before the damage still counts
        return {name: [value] for name, value in sink.fields.items()}
    from urllib.parse import parse_qs

    parsed = parse_qs(body, keep_blank_values=True)
    return {name.lower(): values for name, values in parsed.items()}


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _header_credentials(value: bytes, proxy: bool) -> tuple[str, str | None, str | None]:
    """An C{Authorization} (or C{Proxy-Authorization}) header's credentials."""
    scheme, _, rest = value.strip().partition(b" ")
    prefix = "proxy-" if proxy else ""
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError):
            return prefix + "basic-malformed", None, None
        user, _, password = decoded.partition(b":")
        return prefix + "basic", _text(user), _text(password)
    return prefix + "authorization-" + _text(scheme.lower())[:20], None, None


def _field_credentials(fields: dict[bytes, list[bytes]], kind: str
                       ) -> tuple[str, str | None, str | None] | None:
    for name in PASSWORD_FIELDS:
        passwords = fields.get(name)
        if passwords:
            user = b""
            for user_field in USER_FIELDS:
                if fields.get(user_field):
                    user = fields[user_field][0]
                    break
            return kind, _text(user), _text(passwords[0])
    return None


def _share_password(request: IRequest) -> bool:
    """Whether a request to a share link's form carries a password (query or body)."""
    query_fields = {name.lower(): values for name, values in (request.args or {}).items()}
    return (_field_credentials(query_fields, "query") is not None
            or _field_credentials(_body_fields(request), "form") is not None)


def _share_password_value(request: IRequest) -> str:
    """The password posted to a share link's form (query or body), or ""."""
    query_fields = {name.lower(): values for name, values in (request.args or {}).items()}
    found = (_field_credentials(query_fields, "query")
             or _field_credentials(_body_fields(request), "form"))
    return (found[2] or "") if found is not None else ""


def exposed_credentials(request: IRequest) -> tuple[str, str | None, str | None] | None:
    """
    The credentials this plain-HTTP request carries, as C{(kind, user,
    password)}, or L{None}; on any path, with any method.

    C{kind} is ``basic`` (an C{Authorization} header), ``proxy-basic``
    (C{Proxy-Authorization}), ``query`` (a password field in the URL) or
    ``form`` (in the body); any other authorization scheme counts too, with
    no password to check.  Field names are matched without regard to case.
    """
    authorization = request.getHeader(b"authorization")
    if authorization is not None and authorization.strip():
        return _header_credentials(authorization, proxy=False)
    proxy = request.getHeader(b"proxy-authorization")
    if proxy is not None and proxy.strip():
        return _header_credentials(proxy, proxy=True)
    query_fields = {name.lower(): values for name, values in (request.args or {}).items()}
    found = _field_credentials(query_fields, "query")
    if found is None:
        found = _field_credentials(_body_fields(request), "form")
    return found


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
        headers = request.responseHeaders
        headers.setRawHeaders(b"cache-control", _NO_STORE)
        # Before anything else: a request with credentials is never
        # redirected or answered with its own target (see the module docstring).
        # A share link's password ends that link instead (it is no account's).
        if is_share_form(request.path) and _share_password(request):
            return self._refuse_share_password(request)
        credentials = exposed_credentials(request)
        if credentials is not None:
            return self._refuse_credentials(request, *credentials)
        if _ORIGIN_FORM_MATCH(target) is None:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Bad request: the request target must be a path such as /files.\n"
        method = request.method
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
        password = _share_password_value(request)

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
    #: seconds to finish a request's head (L{LimitedChannel}), --line-timeout
    site.head_timeout = config.line_timeout
    return site
