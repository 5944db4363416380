"""
The plain HTTP listener: redirects, ACME challenges, credentials refused.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from rumpus_secure.web.redirect import build_http_site, https_origin
from rumpus_secure.config import ServerConfig
from tests.test_web_support import HTTPDriver, make_server


@pytest.fixture
def server(tmp_path: Path):
    return make_server(tmp_path)


@pytest.fixture
def http(server) -> HTTPDriver:
    return HTTPDriver(build_http_site(server, server.reactor),
                      host=b"evil.example:80", origin=None)


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_get_and_head_get_301(http, method):
    response = http.request(method, b"/files/a?x=1&y=%20z")
    assert response.status == 301
    assert response.header(b"location") == b"https://files.example.org:8443/files/a?x=1&y=%20z"


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"PROPFIND"])
def test_other_methods_get_308(http, method):
    response = http.request(method, b"/upload?dir=/", body=b"x" * 10)
    assert response.status == 308
    assert response.header(b"location") == b"https://files.example.org:8443/upload?dir=/"


@pytest.mark.parametrize("target", [
    b"/%2e%2e/%2e%2e/etc/passwd", b"//evil.example/x", b"/%C3%A9t%C3%A9?q=%E2%82%AC",
    b"/a/../b", b"/?", b"/x?redirect=https://evil", b"/a%2Fb", b"/\\evil",
])
def test_odd_paths_travel_byte_for_byte(http, target):
    response = http.get(target)
    assert response.status == 301
    assert response.header(b"location") == b"https://files.example.org:8443" + target


def test_host_header_is_ignored(http):
    response = http.get(b"/", headers={b"host": b"attacker.example", b"x-forwarded-host": b"x.example"})
    assert response.header(b"location") == b"https://files.example.org:8443/"


@pytest.mark.parametrize("target", [
    b"http://evil.example/x", b"https://files.example.org/", b"evil.example:443",
    b"/a#frag", b"/%zz", b"/%4", b"/caf\xc3\xa9",
])
def test_malformed_and_absolute_targets_get_400(http, target):
    response = http.get(target)
    assert response.status == 400
    assert response.header(b"location") is None


@pytest.mark.parametrize("method", [b"GET", b"OPTIONS"])
def test_asterisk_form_is_not_redirected(http, method):
    # twisted.web answers "*" itself: 405 for GET, an Allow list for OPTIONS.
    response = http.request(method, b"*")
    assert response.status in (200, 400, 405)
    assert response.header(b"location") is None


def test_port_omitted_for_443_and_public_port_used(tmp_path):
    assert https_origin(ServerConfig(https="tcp:443", public_host="h.example")) == b"https://h.example"
    assert https_origin(ServerConfig(https="tcp:8443", public_https_port=443,
                                     public_host="h.example")) == b"https://h.example"
    assert https_origin(ServerConfig(https="tcp:8443", public_https_port=9443,
                                     public_host="::1")) == b"https://[::1]:9443"


def test_large_bodies_are_not_kept(http):
    response = http.request(b"PUT", b"/big", body=b"x" * 300_000, chunks=30)
    assert response.status == 308


# -- ACME -------------------------------------------------------------------

@pytest.fixture
def acme(tmp_path: Path):
    webroot = tmp_path / "acme"
    webroot.mkdir()
    (webroot / "tok_en-1").write_bytes(b"tok_en-1.keyauth")
    (webroot / "sub").mkdir()
    (webroot / "sub" / "inner").write_bytes(b"no")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", webroot / "link")
    os.mkfifo(webroot / "fifo")
    server = make_server(tmp_path, acme_webroot=webroot)
    return HTTPDriver(build_http_site(server, server.reactor), origin=None)


def test_acme_challenge_served(acme):
    response = acme.get(b"/.well-known/acme-challenge/tok_en-1")
    assert response.status == 200
    assert response.body == b"tok_en-1.keyauth"
    assert response.header(b"location") is None


@pytest.mark.parametrize("token", [
    b"missing", b"", b"sub", b"sub/inner", b"link", b"fifo", b"..%2Fsecret",
    b"%2e%2e/secret", b"tok_en-1/", b"tok.en",
])
def test_acme_refuses_everything_else(acme, token):
    response = acme.get(b"/.well-known/acme-challenge/" + token)
    assert response.status == 404
    assert b"secret" not in response.body and b"no" != response.body


def test_acme_other_methods(acme):
    assert acme.request(b"POST", b"/.well-known/acme-challenge/tok_en-1", body=b"").status == 405


def test_acme_off_redirects(http):
    response = http.get(b"/.well-known/acme-challenge/x")
    assert response.status == 301


# -- credentials on plain HTTP ---------------------------------------------

def test_basic_auth_refused_and_quarantined(server, http):
    server.store.add("alice", "s3cret")
    token = base64.b64encode(b"alice:s3cret")
    response = http.get(b"/files/", headers={b"authorization": b"Basic " + token})
    assert response.status == 403
    assert response.header(b"location") is None
    assert b"unencrypted" in response.body
    assert server.store.get("alice").locked
    assert server.checker.checked == [("alice", "s3cret")]
    assert [e["kind"] for e in server.audit.named("web.cleartext_credentials")] == ["basic"]
    assert server.audit.named("account.quarantined")[0]["account"] == "alice"
    assert "s3cret" not in repr(server.audit.events)


def test_wrong_password_on_http_not_quarantined(server, http):
    server.store.add("alice", "s3cret")
    response = http.post_form(b"/login", {"username": "alice", "password": "guess"}, origin=False)
    assert response.status == 403
    assert not server.store.get("alice").locked
    assert server.audit.named("http.cleartext_password")[0]["outcome"] == "not-the-password"


def test_login_form_on_http_refused_and_quarantined(server, http):
    server.store.add("bob", "hunter2")
    response = http.post_form(b"/login", {"username": "bob", "password": "hunter2"}, origin=False)
    assert response.status == 403
    assert server.store.get("bob").locked
    assert "password sent unencrypted" in server.store.get("bob").lock_reason


def test_alert_mode_only_records(tmp_path):
    server = make_server(tmp_path, exposed_password="alert")
    server.store.add("bob", "hunter2")
    http = HTTPDriver(build_http_site(server, server.reactor), origin=None)
    http.post_form(b"/login", {"username": "bob", "password": "hunter2"}, origin=False)
    assert not server.store.get("bob").locked
    assert server.audit.named("account.password_exposed")


def test_other_authorization_refused(server, http):
    response = http.get(b"/", headers={b"authorization": b"Bearer abc"})
    assert response.status == 403
    assert server.checker.checked == []


def test_login_post_without_password_is_redirected(http):
    response = http.post_form(b"/login", {"username": "x"}, origin=False)
    assert response.status == 308


def test_redirect_off_serves_manager_over_http(tmp_path):
    server = make_server(tmp_path, http_redirect=False)
    site = build_http_site(server, server.reactor)
    http = HTTPDriver(site, host=b"files.example.org:8080", origin=b"http://files.example.org:8080")
    response = http.get(b"/login")
    assert response.status == 200
    assert response.header(b"strict-transport-security") is None
    server.store.add("alice", "pw")
    response = http.post_form(b"/login", {"username": "alice", "password": "pw"})
    assert response.status == 303
    cookie = response.header(b"set-cookie")
    assert b"Secure" not in cookie and b"HttpOnly" in cookie


# -- the fast path ------------------------------------------------------------

def test_redirect_headers_and_body(http):
    response = http.get(b"/files/a?x=1")
    location = b"https://files.example.org:8443/files/a?x=1"
    assert response.status == 301
    assert response.header(b"cache-control") == b"no-store"
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert response.header(b"server") is not None
    assert response.header(b"date") is not None
    assert response.body == b"This server only answers over HTTPS: " + location + b"\n"
    assert response.header(b"content-length") == b"%d" % len(response.body)


def test_head_redirect_has_no_body(http):
    response = http.request(b"HEAD", b"/x")
    assert response.status == 301
    assert response.header(b"cache-control") == b"no-store"
    assert response.body == b""


def test_date_header_is_current():
    import time

    from twisted.web.http import datetimeToString

    from rumpus_secure.web.redirect import _http_date

    before = datetimeToString(int(time.time()))
    value = _http_date()
    after = datetimeToString(int(time.time()))
    assert value in (before, after)


def test_request_paths_match_stock_traversal(server):
    from rumpus_secure.web.redirect import RedirectToHTTPS

    seen = {}

    class Spy(RedirectToHTTPS):
        def render(self, request):
            seen.update(prepath=request.prepath, postpath=request.postpath,
                        sitepath=request.sitepath)
            return super().render(request)

    site = build_http_site(server, server.reactor)
    site.resource = Spy(server.config, server)
    HTTPDriver(site, origin=None).get(b"/a%20b/c?q=1")
    assert seen == {"prepath": [], "postpath": [b"a b", b"c"], "sitepath": []}


def test_other_root_resource_takes_the_stock_path(server):
    from twisted.web.resource import Resource

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"hi " + b",".join(request.postpath)

    site = build_http_site(server, server.reactor)
    site.resource = Hello()
    http = HTTPDriver(site, origin=None)
    response = http.get(b"/a/b")
    assert (response.status, response.body) == (200, b"hi a,b")
    assert response.header(b"location") is None


def test_errors_in_render_become_500(server):
    from rumpus_secure.web.redirect import RedirectToHTTPS

    class Broken(RedirectToHTTPS):
        def render(self, request):
            raise RuntimeError("boom")

    site = build_http_site(server, server.reactor)
    site.resource = Broken(server.config, server)
    response = HTTPDriver(site, origin=None).get(b"/")
    assert response.status == 500
    assert b"boom" not in response.body


def test_authorization_checked_for_every_method(server, http):
    server.store.add("alice", "s3cret")
    token = base64.b64encode(b"alice:s3cret")
    response = http.request(b"PUT", b"/x", body=b"", headers={b"authorization": b"Basic " + token})
    assert response.status == 403
    assert server.checker.checked == [("alice", "s3cret")]


def test_no_access_log_line_per_request(server):
    """
    The redirect listener deliberately writes no access log (see
    L{rumpus_secure.web.redirect.PlainSite}); the stock site would.
    """
    import io

    from twisted.web import server as web_server

    site = build_http_site(server, server.reactor)
    site._logFile = io.StringIO()
    HTTPDriver(site, origin=None).get(b"/x")
    assert site._logFile.getvalue() == ""

    stock = web_server.Site(site.resource, reactor=server.reactor)
    stock._logFile = io.StringIO()
    HTTPDriver(stock, origin=None).get(b"/x")
    assert b"/x" in stock._logFile.getvalue().encode()


def test_redirect_off_site_keeps_access_log(tmp_path):
    from rumpus_secure.web.redirect import PlainSite

    server = make_server(tmp_path, http_redirect=False)
    assert not isinstance(build_http_site(server, server.reactor), PlainSite)
