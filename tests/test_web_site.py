"""
The HTTPS site: security headers, login, sessions, CSRF and the file manager.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.web import resource

from rumpus_secure.web.site import build_https_site
from rumpus_secure.web.sessions import ABSOLUTE_TIMEOUT, IDLE_TIMEOUT
from tests.test_web_support import HTTPDriver, make_server, multipart

ALL = frozenset({"list", "download", "upload", "overwrite", "delete", "rename", "mkdir"})


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "correct horse")
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


@pytest.fixture
def web(site) -> HTTPDriver:
    return HTTPDriver(site)


def login(web: HTTPDriver, user: str = "alice", password: str = "correct horse") -> str:
    response = web.post_form(b"/login", {"username": user, "password": password})
    assert response.status == 303, response.body
    return csrf_of(web)


def csrf_of(web: HTTPDriver) -> str:
    page = web.get(b"/files/").body.decode()
    return re.search(r"name=csrf value='([^']+)'", page).group(1)


def assert_security_headers(response) -> None:
    assert response.header(b"strict-transport-security") == b"max-age=31536000"
    csp = response.header(b"content-security-policy")
    assert b"default-src 'none'" in csp and b"unsafe-inline" not in csp
    assert response.header(b"x-content-type-options") == b"nosniff"
    assert response.header(b"x-frame-options") == b"DENY"
    assert response.header(b"referrer-policy") == b"same-origin"


# -- headers ----------------------------------------------------------------

def test_headers_on_200_404_and_redirects(web):
    for target, status in [(b"/login", 200), (b"/nothing", 404), (b"/static/nope", 404),
                           (b"/", 303), (b"/files/", 303), (b"/static/app.css", 200)]:
        response = web.get(target)
        assert response.status == status, target
        assert_security_headers(response)


def test_headers_on_500(site, web):
    class Boom(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            raise RuntimeError("secret internals")

    site.resource.putChild(b"boom", Boom())
    response = web.get(b"/boom")
    assert response.status == 500
    assert_security_headers(response)
    assert b"secret internals" not in response.body and b"Traceback" not in response.body
    assert b"Something went wrong" in response.body


def test_no_inline_script_or_style(web):
    login(web)
    page = web.get(b"/files/").body.decode()
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert "<script src='/static/app.js' defer></script>" in page


def test_hsts_configurable(tmp_path):
    server = make_server(tmp_path, hsts_max_age=0)
    response = HTTPDriver(build_https_site(server, server.reactor)).get(b"/login")
    assert response.header(b"strict-transport-security") is None


# -- login and sessions ---------------------------------------------------

def test_login_sets_strict_cookie(server, web):
    response = web.post_form(b"/login", {"username": "alice", "password": "correct horse"})
    assert response.status == 303
    assert response.header(b"location") == b"/files/"
    cookie = response.header(b"set-cookie").decode()
    assert cookie.startswith("__Host-rumpus-session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) >= 43  # 32 bytes, base64url
    assert server.audit.named("web.login")[-1]["outcome"] == "ok"


def test_wrong_password(server, web):
    response = web.post_form(b"/login", {"username": "alice", "password": "nope"})
    assert response.status == 401
    assert b"Wrong user name or password" in response.body
    assert not web.cookies
    assert server.audit.named("web.login")[-1]["outcome"] == "failed"
    assert "nope" not in repr(server.audit.events)


def test_unknown_user_same_answer(web):
    response = web.post_form(b"/login", {"username": "mallory", "password": "nope"})
    assert response.status == 401
    assert b"Wrong user name or password" in response.body


def test_locked_account_only_after_right_password(server, web):
    server.store.lock("alice", "password sent unencrypted")
    wrong = web.post_form(b"/login", {"username": "alice", "password": "nope"})
    assert wrong.status == 401 and b"locked" not in wrong.body
    right = web.post_form(b"/login", {"username": "alice", "password": "correct horse"})
    assert right.status == 403
    assert b"locked" in right.body and b"password sent unencrypted" in right.body
    assert server.audit.named("web.login")[-1]["outcome"] == "locked"


def test_login_from_other_origin_refused(web):
    response = web.post_form(b"/login", {"username": "alice", "password": "correct horse"},
                             headers={b"origin": b"https://evil.example"})
    assert response.status == 403
    assert not web.cookies


def test_open_redirect_after_login_refused(web):
    response = web.post_form(b"/login", {"username": "alice", "password": "correct horse",
                                         "next": "//evil.example/"})
    assert response.header(b"location") == b"/files/"


def test_idle_expiry(server, web):
    login(web)
    server.reactor.advance(IDLE_TIMEOUT - 1)
    assert web.get(b"/files/").status == 200
    server.reactor.advance(IDLE_TIMEOUT - 1)  # activity refreshed the idle timer
    assert web.get(b"/files/").status == 200
    server.reactor.advance(IDLE_TIMEOUT)
    response = web.get(b"/files/")
    assert response.status == 303
    assert response.header(b"location").startswith(b"/login")


def test_absolute_expiry(server, web):
    login(web)
    for _ in range(int(ABSOLUTE_TIMEOUT // (IDLE_TIMEOUT / 2))):
        server.reactor.advance(IDLE_TIMEOUT / 2)
        web.get(b"/files/")
    assert web.get(b"/files/").status == 303
    assert not server.reactor.getDelayedCalls()


def test_logout(web):
    token = login(web)
    old = dict(web.cookies)
    response = web.post_form(b"/logout", {"csrf": token})
    assert response.status == 303
    assert not web.cookies
    web.cookies = old  # the old cookie no longer works
    assert web.get(b"/files/").status == 303


def test_login_rotates_session(web):
    login(web)
    first = dict(web.cookies)
    login(web)
    assert web.cookies != first
    web.cookies = first
    assert web.get(b"/files/").status == 303


def test_locked_while_logged_in(server, web):
    login(web)
    server.store.lock("alice", "admin")
    response = web.get(b"/files/")
    assert response.status == 403
    assert b"locked" in response.body


def test_password_set_after_login_ends_that_session_only(server, web, site):
    """
    A session opened before a password reset (say, by whoever read an
    exposed password) ends; one opened with the new password lives on.
    """
    login(web)
    old_session = web
    server.reactor.advance(10)
    account = server.store.get("alice")
    account.password_changed = server.reactor.seconds()  # `user passwd alice`
    server.reactor.advance(10)
    fresh = HTTPDriver(site)
    login(fresh)
    response = old_session.get(b"/files/")
    assert response.status == 403 and b"changed after you" in response.body
    assert old_session.get(b"/files/").status == 303  # back to the login page
    assert fresh.get(b"/files/").status == 200


# -- CSRF ---------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong", "x" * 43])
def test_post_without_valid_token_refused(server, web, token):
    login(web)
    fields = {"dir": "/", "name": "new"}
    if token is not None:
        fields["csrf"] = token
    response = web.post_form(b"/mkdir", fields)
    assert response.status == 403
    assert not (server.store.get("alice").home / "new").exists()


def test_post_from_other_origin_refused(server, web):
    token = login(web)
    response = web.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "new"},
                             headers={b"origin": b"https://evil.example"})
    assert response.status == 403
    response = web.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "new"}, origin=False)
    assert response.status == 403
    response = web.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "new"}, origin=False,
                             headers={b"referer": b"https://files.example.org:8443/files/"})
    assert response.status == 303
    assert (server.store.get("alice").home / "new").is_dir()


def test_token_header_accepted(server, web):
    token = login(web)
    response = web.post_form(b"/mkdir", {"dir": "/", "name": "viaheader"},
                             headers={b"x-csrf-token": token.encode()})
    assert response.status == 303


# -- the file manager ---------------------------------------------------------

def test_browse_sort_and_breadcrumbs(server, web):
    home = server.store.get("alice").home
    (home / "docs").mkdir()
    (home / "docs" / "b.txt").write_bytes(b"b" * 2000)
    (home / "docs" / "a <script>.txt").write_bytes(b"a")
    login(web)
    page = web.get(b"/files/docs/").body.decode()
    assert "<a href='/files/'>Home</a>" in page and "docs" in page
    assert "a &lt;script&gt;.txt" in page and "<script>.txt" not in page
    assert page.index("a &lt;script&gt;") < page.index("b.txt")
    page = web.get(b"/files/docs/?sort=size&order=desc").body.decode()
    assert page.index("b.txt") < page.index("a &lt;script&gt;")
    assert "2.0 KiB" in page


def test_download_whole_and_ranges(server, web):
    home = server.store.get("alice").home
    data = bytes(range(256)) * 40
    (home / "r\u00e9sum\u00e9 \"x\".bin").write_bytes(data)
    login(web)
    target = b"/files/r%C3%A9sum%C3%A9%20%22x%22.bin"
    whole = web.get(target)
    assert whole.status == 200 and whole.body == data
    disposition = whole.header(b"content-disposition").decode()
    assert disposition.startswith('attachment; filename="r_sum_ _x_.bin"')
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.bin" in disposition
    assert whole.header(b"content-type") == b"application/octet-stream"
    assert b"sandbox" in whole.header(b"content-security-policy")
    part = web.get(target, headers={b"range": b"bytes=100-"})
    assert part.status == 206 and part.body == data[100:]
    assert part.header(b"content-range") == b"bytes 100-10239/10240"
    tail = web.get(target, headers={b"range": b"bytes=-10"})
    assert tail.body == data[-10:]
    bad = web.get(target, headers={b"range": b"bytes=99999-"})
    assert bad.status == 416 and bad.header(b"content-range") == b"bytes */10240"
    stale = web.get(target, headers={b"range": b"bytes=5-9", b"if-range": b'"other"'})
    assert stale.status == 200 and stale.body == data
    assert server.audit.named("web.download")


def test_head_download(server, web):
    (server.store.get("alice").home / "f").write_bytes(b"12345")
    login(web)
    response = web.request(b"HEAD", b"/files/f")
    assert response.status == 200 and response.header(b"content-length") == b"5"


def test_jail_holds(server, web, tmp_path):
    (tmp_path / "outside").write_bytes(b"secret")
    import os

    os.symlink(tmp_path / "outside", server.store.get("alice").home / "link")
    login(web)
    for target in (b"/files/%2e%2e/%2e%2e/outside", b"/files/../../outside", b"/files/link"):
        response = web.get(target)
        assert response.status in (404, 409), target
        assert b"secret" not in response.body


def test_mkdir_rename_delete(server, web):
    home = server.store.get("alice").home
    token = login(web)
    assert web.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "folder"}).status == 303
    assert (home / "folder").is_dir()
    (home / "folder" / "f.txt").write_bytes(b"x")
    assert b"Rename" in web.get(b"/rename?path=%2Ffolder%2Ff.txt").body
    response = web.post_form(b"/rename", {"csrf": token, "path": "/folder/f.txt", "name": "g.txt"})
    assert response.status == 303 and (home / "folder" / "g.txt").exists()
    confirm = web.get(b"/delete?path=%2Ffolder")
    assert b"cannot be undone" in confirm.body
    assert (home / "folder").exists()
    response = web.post_form(b"/delete", {"csrf": token, "path": "/folder"})
    assert response.status == 303 and not (home / "folder").exists()
    assert b"Deleted folder." in web.get(b"/files/").body


def test_rename_refuses_slash_and_dotdot(server, web):
    (server.store.get("alice").home / "f").write_bytes(b"x")
    token = login(web)
    for name in ("../escape", "a/b", "..", ""):
        response = web.post_form(b"/rename", {"csrf": token, "path": "/f", "name": name},
                                 headers={b"accept": b"application/json"})
        assert response.status == 400, name
        # A form gets the error on the folder it came from, not on a page of its own.
        response = web.post_form(b"/rename", {"csrf": token, "path": "/f", "name": name})
        assert response.status == 303 and response.header(b"location") == b"/files/"
        assert b"flash error" in web.get(b"/files/").body
    assert (server.store.get("alice").home / "f").exists()


def test_permission_errors_are_friendly(server, web):
    account = server.store.add("viewer", "pw", frozenset({"list", "download"}))
    (account.home / "f").write_bytes(b"x")
    token = login(web, "viewer", "pw")
    response = web.post_form(b"/delete", {"csrf": token, "path": "/f"},
                             headers={b"accept": b"application/json"})
    assert response.status == 403
    assert b"may not delete" in response.body and b"Traceback" not in response.body
    response = web.post_form(b"/delete", {"csrf": token, "path": "/f"})
    assert response.status == 303
    assert b"may not delete" in web.get(b"/files/").body
    assert (account.home / "f").exists()
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "up.txt", b"data")])
    response = web.request(b"POST", b"/upload?dir=/", body=body, headers={b"content-type": ctype})
    assert response.status == 303
    assert not (account.home / "up.txt").exists()
    assert b"may not upload" in web.get(b"/files/").body


# -- uploads ------------------------------------------------------------------

def test_upload_several_files_streamed(server, web):
    home = server.store.get("alice").home
    (home / "in").mkdir()
    token = login(web)
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "one.bin", big),
                             ("file", "C:\\Users\\x\\two.txt", b"two\r\n--notboundary"),
                             ("file", "", b"")])
    response = web.request(b"POST", b"/upload?dir=%2Fin", body=body,
                           headers={b"content-type": ctype}, chunks=200)
    assert response.status == 303
    assert response.header(b"location") == b"/files/in/"
    assert (home / "in" / "one.bin").read_bytes() == big
    assert (home / "in" / "two.txt").read_bytes() == b"two\r\n--notboundary"
    assert [e["path"] for e in server.audit.named("web.upload")] == ["/in/one.bin", "/in/two.txt"]
    assert not [p for p in (home / "in").iterdir() if p.name.startswith(".rumpus")]


def test_upload_json_reply(server, web):
    token = login(web)
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "a.txt", b"a")])
    response = web.request(b"POST", b"/upload?dir=/", body=body,
                           headers={b"content-type": ctype, b"accept": b"application/json"})
    assert response.status == 200
    assert b'"stored": ["a.txt"]' in response.body


@pytest.mark.parametrize("fields", [
    [("file", "a.txt", b"a")],                                   # no token
    [("file", "a.txt", b"a"), ("csrf", None, b"TOKEN")],         # token after the file
    [("csrf", None, b"wrong"), ("file", "a.txt", b"a")],         # wrong token
])
def test_upload_needs_token_first(server, web, fields):
    token = login(web)
    fields = [(n, f, token.encode() if d == b"TOKEN" else d) for n, f, d in fields]
    body, ctype = multipart(fields)
    response = web.request(b"POST", b"/upload?dir=/", body=body, headers={b"content-type": ctype})
    assert response.status == 403
    assert not (server.store.get("alice").home / "a.txt").exists()


def test_upload_without_session_or_origin(server, web):
    token = login(web)
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "a.txt", b"a")])
    response = web.request(b"POST", b"/upload?dir=/", body=body,
                           headers={b"content-type": ctype, b"origin": b"https://evil.example"})
    assert response.status == 403
    web.cookies.clear()
    response = web.request(b"POST", b"/upload?dir=/", body=body, headers={b"content-type": ctype})
    assert response.status == 401
    assert not (server.store.get("alice").home / "a.txt").exists()


def test_upload_cut_short_leaves_nothing(server, web, site):
    token = login(web)
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "cut.bin", b"z" * 500_000)])
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    protocol.makeConnection(StringTransport())
    cookie = b"; ".join(k + b"=" + v for k, v in web.cookies.items())
    protocol.dataReceived(
        b"POST /upload?dir=/ HTTP/1.1\r\nHost: files.example.org:8443\r\n"
        b"Origin: https://files.example.org:8443\r\nCookie: " + cookie + b"\r\n"
        b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    protocol.dataReceived(body[:300_000])
    protocol.connectionLost(None)
    assert list(server.store.get("alice").home.iterdir()) == []


def test_upload_flow_control_pauses_transport(server, web, site, monkeypatch):
    from twisted.internet import defer

    token = login(web)
    pending: list[defer.Deferred] = []

    def slow(function, *args):
        d = defer.Deferred()
        d.addCallback(lambda _: function(*args))
        pending.append(d)
        return d

    server.run_in_thread = slow
    big = b"q" * (12 * 1024 * 1024)
    body, ctype = multipart([("csrf", None, token.encode()), ("file", "big.bin", big)])
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)
    cookie = b"; ".join(k + b"=" + v for k, v in web.cookies.items())
    protocol.dataReceived(
        b"POST /upload?dir=/ HTTP/1.1\r\nHost: files.example.org:8443\r\n"
        b"Origin: https://files.example.org:8443\r\nCookie: " + cookie + b"\r\n"
        b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    step = 64 * 1024
    sent = 0
    while sent < len(body):
        if transport.producerState == "paused":
            assert pending, "paused with nothing to wait for"
            pending.pop(0).callback(None)
            continue
        protocol.dataReceived(body[sent:sent + step])
        sent += step
        assert len(transport.value()) == 0 or sent >= len(body)
    while pending:
        pending.pop(0).callback(None)
    assert (server.store.get("alice").home / "big.bin").stat().st_size == len(big)
    assert b"303" in transport.value().split(b"\r\n", 1)[0]
