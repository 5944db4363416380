"""
Round 3 web findings: credentials on plain HTTP whatever their path, method
and framing; the HTTPS login page at exactly one address; no password in a
login URL or the access log.

Every test has a second client: another account, from the same address,
which must stay unaffected.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlencode

import pytest

from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server, multipart

SECRET = "s3cret-Alice"


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", SECRET)
    server.store.add("bob", "bobs-password")
    return server


@pytest.fixture
def http(server) -> HTTPDriver:
    return HTTPDriver(build_http_site(server, server.reactor),
                      host=b"files.example.org", origin=None)


@pytest.fixture
def https(server) -> HTTPDriver:
    return HTTPDriver(build_https_site(server, server.reactor))


def _form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode("ascii")


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])) + b"0\r\n\r\n"


def _head(method: bytes, target: bytes, headers: dict[bytes, bytes]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: files.example.org", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


_URLENC = {b"content-type": b"application/x-www-form-urlencoded"}
_ALICE_FORM = {"username": "alice", "password": SECRET}


def _variants() -> list[tuple[str, bytes, bytes, bytes | None, dict[bytes, bytes] | None]]:
    """C{(id, method, target, body, headers)}; C{headers} None: a chunked raw request."""
    body = _form(_ALICE_FORM)
    mp_body, mp_type = multipart([("username", None, b"alice"), ("password", None, SECRET.encode())])
    basic = base64.b64encode(b"alice:" + SECRET.encode())
    return [
        ("trailing-slash", b"POST", b"/login/", body, _URLENC),
        ("double-slash", b"POST", b"//login", body, _URLENC),
        ("escaped", b"POST", b"/%6cogin", body, _URLENC),
        ("other-path", b"POST", b"/anything", body, _URLENC),
        ("put", b"PUT", b"/login", body, _URLENC),
        ("no-content-type", b"POST", b"/login", body, {}),
        ("multipart", b"POST", b"/login", mp_body, {b"content-type": mp_type}),
        ("pass-field", b"POST", b"/login", _form({"user": "alice", "pass": SECRET}), _URLENC),
        ("passwd-field", b"POST", b"/login", _form({"username": "alice", "Passwd": SECRET}), _URLENC),
        ("query-get", b"GET", b"/login?" + body, None, {}),
        ("query-head", b"HEAD", b"/x?" + body, None, {}),
        ("proxy-basic", b"GET", b"/files/", None, {b"proxy-authorization": b"Basic " + basic}),
        ("chunked", b"POST", b"/login", body, None),
        ("chunked-multipart", b"POST", b"/login/", mp_body, None),
    ]


@pytest.mark.parametrize("case", _variants(), ids=lambda case: case[0])
def test_cleartext_credentials_refused_whatever_the_shape(server, http, https, case):
    name, method, target, body, headers = case
    if headers is None:  # chunked
        ctype = _URLENC[b"content-type"] if not name.endswith("multipart") else \
            multipart([("x", None, b"")])[1]
        head = _head(method, target, {b"content-type": ctype, b"transfer-encoding": b"chunked"})
        response = http.request(method, target, raw_head=head + _chunked(body))
    else:
        response = http.request(method, target, body=body, headers=headers)
    assert response.status == 403, name
    assert response.header(b"location") is None
    assert SECRET.encode() not in response.body
    assert SECRET.encode() not in b"".join(v for vs in response.headers.values() for v in vs)
    assert ("alice", SECRET) in server.checker.checked
    assert server.store.get("alice").locked
    assert server.audit.named("web.cleartext_credentials")
    assert SECRET not in repr(server.audit.events)
    # The second client: bob, from the same address, is untouched.
    assert not server.store.get("bob").locked
    assert https.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303


def test_chunked_multipart_boundary_is_parsed(server, http):
    # The chunked-multipart case above must use the body's own boundary.
    mp_body, mp_type = multipart([("username", None, b"alice"), ("password", None, SECRET.encode())])
    head = _head(b"POST", b"/login", {b"content-type": mp_type, b"transfer-encoding": b"chunked"})
    assert http.request(b"POST", b"/login", raw_head=head + _chunked(mp_body)).status == 403
    assert server.store.get("alice").locked


def test_credentials_counted_by_the_guard(server, http, monkeypatch):
    offences = []

    class Guard:
        def check(self, host, protocol):
            return None

        def offence(self, host, kind, **fields):
            offences.append((host, kind))

    server.guard = Guard()
    http.get(b"/login?username=alice&password=" + SECRET.encode())
    http.request(b"POST", b"//login", body=_form(_ALICE_FORM), headers=_URLENC)
    assert offences == [("192.0.2.7", "cleartext_login")] * 2


def test_password_past_the_cap_is_not_kept(server, http):
    # Only the first 64 KiB of a form body is read: the request is redirected.
    body = _form({"filler": "x" * (70 * 1024), "password": SECRET})
    response = http.request(b"POST", b"/login", body=body, headers=_URLENC, chunks=8)
    assert response.status == 308
    assert not server.store.get("alice").locked


@pytest.mark.parametrize("fields", [{"username": "x"}, {"passwordless": "1"}, {}])
def test_forms_without_password_still_redirect(http, fields):
    response = http.request(b"POST", b"/login", body=_form(fields), headers=_URLENC)
    assert response.status == 308
    assert response.header(b"location") == b"https://files.example.org:8443/login"


@pytest.mark.parametrize("target", [b"/login/", b"//login", b"/%6cogin", b"/%6Cogin",
                                    b"/login/x", b"//%6cogin/"])
def test_https_login_has_one_address(server, https, target):
    response = https.post_form(target, _ALICE_FORM)
    assert response.status == 404
    assert response.header(b"set-cookie") is None
    assert https.get(target).status == 404
    # Second client, same address: bob logs in at /login.
    bob = HTTPDriver(https.site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303
    assert bob.get(b"/files/").status == 200


# -- 4: no password in a login URL, nor in the access log ---------------------

class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


@pytest.mark.parametrize("query", [
    b"username=alice&password=" + SECRET.encode(),
    b"username=alice&PASS=" + SECRET.encode(),
    b"username=alice&%70asswd=" + SECRET.encode(),
])
def test_https_login_refuses_password_in_query(server, https, query):
    log = _Lines()
    https.site._logFile = log
    response = https.request(b"POST", b"/login?" + query, body=_form(_ALICE_FORM),
                             headers=_URLENC)
    assert response.status == 400
    assert response.header(b"set-cookie") is None
    assert server.audit.named("web.login") == []  # nothing was checked
    assert SECRET not in "".join(log.lines)
    assert "REDACTED" in "".join(log.lines)
    # Second client, same address: bob logs in normally, in between.
    bob = HTTPDriver(https.site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303
    assert https.get(b"/login?" + query).status == 400


def test_access_log_redacts_sensitive_query_values(server, https):
    from rumpus_secure.web.site import redact_query

    assert redact_query(b"/files/?csrf=abc&path=%2Fa&Token=t&x=1") == \
        b"/files/?csrf=REDACTED&path=%2Fa&Token=REDACTED&x=1"
    assert redact_query(b"/a?pass+=1&passwd=2&%50ASSWORD=3&password") == \
        b"/a?pass+=REDACTED&passwd=REDACTED&%50ASSWORD=REDACTED&password"
    assert redact_query(b"/plain") == b"/plain" and redact_query(None) is None
    log = _Lines()
    https.site._logFile = log
    https.get(b"/nothing?token=" + SECRET.encode(),
              headers={b"referer": b"https://files.example.org:8443/x?password=" + SECRET.encode()})
    assert len(log.lines) == 1 and SECRET not in log.lines[0]
    assert "/nothing?token=REDACTED" in log.lines[0]


# -- 5: the Origin check trusts configuration, never the Host header -------------

def _csrf(web: HTTPDriver) -> str:
    import re

    return re.search(r"name=csrf value='([^']+)'", web.get(b"/files/").body.decode()).group(1)


@pytest.mark.parametrize("header", [b"origin", b"referer"])
def test_origin_check_ignores_the_host_header(server, https, header):
    evil = {b"host": b"evil.example", header: b"https://evil.example"
            + (b"/page" if header == b"referer" else b"")}
    if header == b"referer":
        evil[b"origin"] = None
    response = https.post_form(b"/login", _ALICE_FORM, headers=evil)
    assert response.status == 403 and response.header(b"set-cookie") is None
    assert https.post_form(b"/login", _ALICE_FORM).status == 303
    token = _csrf(https)
    response = https.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "evil"},
                               headers=evil)
    assert response.status == 403
    assert not (server.store.root / "alice" / "evil").exists()
    # Second client, same address, the real origin: served.
    bob = HTTPDriver(https.site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303
    assert bob.post_form(b"/mkdir", {"csrf": _csrf(bob), "dir": "/", "name": "ok"}).status == 303
    assert (server.store.root / "bob" / "ok").is_dir()
    # And alice's own session, from the real origin, still works.
    assert https.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "fine"}).status == 303


def test_origin_compared_with_configured_origin_only(tmp_path):
    from rumpus_secure.web.app import WebApp

    server = make_server(tmp_path, public_host="Files.Example.ORG")
    app = WebApp(server, server.reactor)
    assert app.allowed_origins == {"https://files.example.org:8443"}
    legacy = WebApp(make_server(tmp_path, http="tcp:8080", http_redirect=False),
                    server.reactor, secure=False)
    assert legacy.allowed_origins == {"https://files.example.org:8443",
                                      "http://files.example.org:8080"}


# -- 7: forms only with the permission; security headers on Twisted's 400s;
#       parallel "keep both" uploads ---------------------------------------------

@pytest.mark.parametrize("form", [b"/rename?path=/f.txt", b"/delete?path=/f.txt",
                                  b"/delete?dir=/&name=f.txt"])
def test_read_only_account_gets_no_rename_or_delete_form(server, https, form):
    from tests.fake_accounts import FakeAccount

    server.store.accounts["alice"] = FakeAccount(
        "alice", server.store.root / "alice", SECRET, frozenset({"list", "download"}))
    for name in ("alice", "bob"):
        (server.store.root / name / "f.txt").write_bytes(b"f")
    assert https.post_form(b"/login", _ALICE_FORM).status == 303
    response = https.get(form)
    assert response.status == 303 and b"<form" not in response.body
    listing = https.get(b"/files/").body
    assert b"may not" in listing  # the notice says why
    response = https.get(form, headers={b"accept": b"application/json"})
    assert response.status == 403
    # Second client, same address, with the permissions: gets the form.
    bob = HTTPDriver(https.site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303
    response = bob.get(form)
    assert response.status == 200 and b"method=post" in response.body


def test_rename_form_for_a_missing_entry_is_refused(server, https):
    assert https.post_form(b"/login", _ALICE_FORM).status == 303
    assert https.get(b"/rename?path=/nothing").status == 303


def test_twisted_400_path_is_still_overridden():
    """We override a private twisted.web method: fail loudly if it goes."""
    from twisted.web import http

    from rumpus_secure.web.channel import LimitedChannel

    assert callable(getattr(http.HTTPChannel, "_respondToBadRequestAndDisconnect", None))
    assert "_respondToBadRequestAndDisconnect" in LimitedChannel.__dict__


@pytest.mark.parametrize("head", [
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /login HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
    b"GET /login HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(501)) + b"\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_twisted_own_400_carries_security_headers(server, https, head):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from tests.test_web_support import parse_response

    protocol = https.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(head)
    response = parse_response(transport.value())
    assert response.status == 400
    assert response.header(b"strict-transport-security") == b"max-age=31536000"
    assert b"default-src 'none'" in response.header(b"content-security-policy")
    assert response.header(b"x-content-type-options") == b"nosniff"
    assert response.header(b"x-frame-options") == b"DENY"
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 400") == 1
    protocol.connectionLost(None)
    # Second client, same address: served.
    bob = HTTPDriver(https.site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303


def test_parallel_keep_both_uploads_get_numbered_names(server, https):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from tests.test_web_support import parse_response

    bob = HTTPDriver(https.site)
    assert https.post_form(b"/login", _ALICE_FORM).status == 303
    assert bob.post_form(b"/login", {"username": "bob", "password": "bobs-password"}).status == 303
    uploads = []
    for number, web in enumerate([https] * 6 + [bob]):
        body, ctype = multipart([("csrf", None, _csrf(web).encode()), ("exists", None, b"keep"),
                                 ("file", "name.ext", b"%d" % number * 1000)])
        protocol = https.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", number))
        transport = StringTransport()
        protocol.makeConnection(transport)
        cookie = b"; ".join(k + b"=" + v for k, v in web.cookies.items())
        protocol.dataReceived(
            b"POST /upload?dir=/ HTTP/1.1\r\nHost: files.example.org:8443\r\n"
            b"Origin: https://files.example.org:8443\r\nAccept: application/json\r\n"
            b"Cookie: " + cookie + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:-100])
        uploads.append((protocol, transport, body))
    for protocol, transport, body in uploads:  # all six began before any ended
        protocol.dataReceived(body[-100:])
    statuses = [parse_response(t.value()).status for _, t, _ in uploads]
    assert statuses == [200] * 7
    home = server.store.root / "alice"
    assert sorted(p.name for p in home.iterdir()) == sorted(
        ["name.ext"] + [f"name ({n}).ext" for n in range(1, 6)])
    assert sorted(p.read_bytes()[:1] for p in home.iterdir()) == [b"%d" % n for n in range(6)]
    assert [p.name for p in (server.store.root / "bob").iterdir()] == ["name.ext"]
    from rumpus_secure.web.upload import NAME_CLAIMS

    assert NAME_CLAIMS._held == set()
