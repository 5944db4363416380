"""
Request bodies and headers on the web listeners (issue #12, items 2, 4, 7):
bodies refused from their headers, form bodies capped, long header lines
answered, bad paths and names answered without a 500.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from rumpus_secure.web.bodies import MAX_FORM_BODY, MAX_LOGIN_BODY
from rumpus_secure.web.channel import Discard
from rumpus_secure.web.multipart import MAX_HEADER_BYTES, MultipartError, MultipartParser
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server, multipart, parse_response

HOST = b"files.example.org:8443"
ORIGIN = b"https://files.example.org:8443"
GIB = 1 << 30


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "correct horse")
    server.store.add("bob", "battery staple")
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


def login(site: Any, user: str, password: str) -> HTTPDriver:
    web = HTTPDriver(site)
    assert web.post_form(b"/login", {"username": user, "password": password}).status == 303
    return web


def csrf_of(web: HTTPDriver) -> str:
    page = web.get(b"/files/").body.decode()
    return re.search(r"name=csrf value='([^']+)'", page).group(1)


class Connection:
    """One raw connection to a site, fed by hand (steps can interleave)."""

    def __init__(self, site: Any) -> None:
        address = IPv4Address("TCP", "192.0.2.7", 40001)
        self.protocol = site.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def head(self, method: bytes, target: bytes, headers: dict[bytes, bytes]) -> None:
        all_headers = {b"host": HOST}
        all_headers.update(headers)
        self.send(method + b" " + target + b" HTTP/1.1\r\n"
                  + b"".join(k + b": " + v + b"\r\n" for k, v in all_headers.items())
                  + b"\r\n")

    def response(self):
        return parse_response(self.transport.value())

    @property
    def request(self) -> Any:
        return self.protocol.requests[-1] if self.protocol.requests else None


def huge_post_head(conn: Connection, target: bytes, cookie: bytes | None = None,
                   length: int = GIB, **extra: bytes) -> None:
    headers = {b"content-type": b"multipart/form-data; boundary=x",
               b"content-length": b"%d" % length, b"origin": ORIGIN}
    if cookie is not None:
        headers[b"cookie"] = cookie
    headers.update({k.encode(): v for k, v in extra.items()})
    conn.head(b"POST", target, headers)


# -- bodies refused from the headers ---------------------------------------

@pytest.mark.parametrize("target", [b"/no/such/page", b"/login", b"/logout", b"/"])
def test_content_length_over_cap_is_413_before_the_body(site, target):
    conn = Connection(site)
    huge_post_head(conn, target)
    response = conn.response()
    assert response.status == 413
    assert response.header(b"content-security-policy") is not None
    assert conn.transport.disconnecting
    assert isinstance(conn.request.content, Discard)
    conn.send(b"x" * 65536)  # whatever still arrives is dropped
    assert conn.transport.value().count(b"HTTP/1.1") == 1


def test_form_page_cap_with_a_session(site):
    alice = login(site, "alice", "correct horse")
    cookie = b"; ".join(k + b"=" + v for k, v in alice.cookies.items())
    conn = Connection(site)
    huge_post_head(conn, b"/mkdir", cookie=cookie, length=MAX_FORM_BODY + 1)
    assert conn.response().status == 413
    assert conn.transport.disconnecting


@pytest.mark.parametrize("target", [b"/upload?dir=/", b"/mkdir", b"/delete", b"/files/x"])
def test_session_pages_refuse_without_a_session_before_the_body(site, server, target):
    conn = Connection(site)
    length = GIB if target.startswith(b"/upload") else MAX_FORM_BODY
    huge_post_head(conn, target, cookie=b"__Host-rumpus-session=forged",
                   length=length, expect=b"100-continue")
    response = conn.response()
    assert response.status == 401
    assert b"100 Continue" not in conn.transport.value()
    assert conn.transport.disconnecting
    assert server.threaded == []  # nothing touched the disk


def test_upload_refusal_answers_json_to_the_script(site):
    conn = Connection(site)
    huge_post_head(conn, b"/upload?dir=/", accept=b"application/json")
    response = conn.response()
    assert response.status == 401
    assert response.header(b"content-type").startswith(b"application/json")
    assert b"session has ended" in response.body


def test_foreign_origin_refused_before_the_body(site):
    alice = login(site, "alice", "correct horse")
    cookie = b"; ".join(k + b"=" + v for k, v in alice.cookies.items())
    conn = Connection(site)
    huge_post_head(conn, b"/upload?dir=/", cookie=cookie, origin=b"https://evil.example")
    assert conn.response().status == 403
    assert conn.transport.disconnecting


def test_chunked_body_refused_as_it_passes_the_cap(site):
    conn = Connection(site)
    conn.head(b"POST", b"/login", {b"transfer-encoding": b"chunked", b"origin": ORIGIN,
                                   b"content-type": b"application/x-www-form-urlencoded"})
    chunk = b"a" * 1024
    sent = 0
    while not conn.transport.disconnecting and sent < 10 * MAX_LOGIN_BODY:
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sent += len(chunk)
    assert conn.response().status == 413
    assert sent == MAX_LOGIN_BODY + 1024  # the first chunk past the cap


def test_chunked_flood_keeps_memory_flat(site):
    """32 MiB of chunked body to a form page: never more than the cap held."""
    conn = Connection(site)
    conn.head(b"POST", b"/no/such/page", {b"transfer-encoding": b"chunked"})
    chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    tracemalloc.start()
    try:
        for _ in range(512):
            conn.send(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert conn.response().status == 413
    assert peak < 4 * 1024 * 1024, peak


def test_small_forms_still_work(site, server):
    alice = login(site, "alice", "correct horse")
    token = csrf_of(alice)
    response = alice.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "new"})
    assert response.status == 303
    assert (Path(server.store.get("alice").home) / "new").is_dir()


def test_upload_still_streams_past_the_form_cap(site, server):
    alice = login(site, "alice", "correct horse")
    data = b"u" * (3 * MAX_FORM_BODY)
    body, content_type = multipart([("csrf", None, csrf_of(alice).encode()),
                                    ("file", "big.bin", data)])
    response = alice.request(b"POST", b"/upload?dir=/", body=body, chunks=16,
                             headers={b"content-type": content_type})
    assert response.status == 303
    assert (Path(server.store.get("alice").home) / "big.bin").read_bytes() == data


def test_refused_stranger_does_not_stop_another_account(site, server):
    """
    Same address: a stranger's 1 GiB POST is refused mid-way through its
    headers' aftermath while bob, logged in, creates a folder; alice's
    session is untouched by either.
    """
    alice = login(site, "alice", "correct horse")
    bob = login(site, "bob", "battery staple")
    stranger = Connection(site)
    huge_post_head(stranger, b"/upload?dir=/")
    token = csrf_of(bob)
    assert bob.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "b"}).status == 303
    stranger.send(b"--x\r\n" + b"y" * 65536)
    assert stranger.response().status == 401
    assert (Path(server.store.get("bob").home) / "b").is_dir()
    assert alice.get(b"/files/").status == 200


def test_channel_private_parts_still_there(site):
    """
    gotLength reads twisted.web's HTTPChannel._command and _path (the
    request line, before the body); fail loudly if twisted renames them.
    """
    seen = {}

    class Spy(site.requestFactory):  # type: ignore[misc, name-defined]
        def gotLength(self, length):
            seen["command"] = self.channel._command
            seen["path"] = self.channel._path
            super().gotLength(length)

    site.requestFactory = Spy
    conn = Connection(site)
    conn.head(b"POST", b"/x?y=1", {b"content-length": b"1"})
    assert seen == {"command": b"POST", "path": b"/x?y=1"}


# -- header lines ------------------------------------------------------------

@pytest.mark.parametrize("builder", [build_https_site, build_http_site])
def test_header_line_over_16k_gets_431(server, builder):
    conn = Connection(builder(server, server.reactor))
    conn.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (17 * 1024) + b"\r\n\r\n")
    assert conn.response().status == 431
    assert conn.transport.disconnecting


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
def test_header_line_over_16k_closes_over_tls(server, site):
    """
    Over TLS the stock close waited for the channel (a registered producer)
    and held the connection until the 60 s timeout; the 431 closes it now.
    """
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim
    import twisted.test

    pem = (Path(twisted.test.__file__).parent / "server.pem").read_bytes()
    from twisted.internet.task import Clock

    clock = Clock()
    server_tls = TLSMemoryBIOFactory(ssl.PrivateCertificate.loadPEM(pem).options(),
                                     False, site, clock=clock)

    class Client(Protocol):
        received = b""
        lost = False

        def connectionMade(self):
            self.transport.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "
                                 + b"a" * (17 * 1024) + b"\r\n\r\n")

        def dataReceived(self, data):
            self.received += data

        def connectionLost(self, reason):
            self.lost = True

    client_tls = TLSMemoryBIOFactory(ssl.CertificateOptions(), True,
                                     Factory.forProtocol(Client), clock=clock)
    client = client_tls.buildProtocol(None)
    app = client.wrappedProtocol
    _, _, pump = iosim.connectedServerAndClient(
        lambda: server_tls.buildProtocol(None), lambda: client, greet=False)
    for _ in range(10):
        pump.flush()
        clock.advance(0)
    assert app.received.startswith(b"HTTP/1.1 431 ")
    assert app.lost


# -- error hygiene ------------------------------------------------------------

@pytest.mark.parametrize("target", [b"/files/%00", b"/files/a%00b/",
                                    b"/files/.rumpus-upload-x.part",
                                    b"/delete?path=%00", b"/rename?path=/a%0d%0ab"])
def test_bad_paths_are_400_not_500(site, target):
    """
    A path no file can have is refused, never a 500: a page gets 400/404; a
    form's page (delete, rename) answers on the folder, with a notice (303).
    """
    alice = login(site, "alice", "correct horse")
    bob = login(site, "bob", "battery staple")
    response = alice.get(target)
    if target.startswith(b"/files/") or response.status != 303:
        assert response.status in (400, 404)
    else:
        notice = alice.get(response.headers[b"location"][0])
        assert notice.status == 200 and b"class='flash error'" in notice.body
    assert bob.get(b"/files/").status == 200


def test_name_with_line_break_is_listed_escaped(site, server):
    home = Path(server.store.get("alice").home)
    (home / "bad\r\nname").write_bytes(b"x")
    (home / "good").write_bytes(b"y")
    alice = login(site, "alice", "correct horse")
    response = alice.get(b"/files/")
    assert response.status == 200
    page = response.body.decode()
    assert "bad\ufffd\ufffdname" in page and "bad\r\n" not in page
    assert "href='good'" in page  # rows link relative to the folder


@pytest.mark.parametrize("method", [b"OPTIONS", b"GET", b"POST"])
@pytest.mark.parametrize("builder", [build_http_site, build_https_site])
def test_asterisk_form_is_400(server, builder, method):
    web = HTTPDriver(builder(server, server.reactor), origin=None)
    assert web.request(method, b"*").status == 400


def test_csrf_token_not_taken_from_the_query_string(site, server):
    alice = login(site, "alice", "correct horse")
    token = csrf_of(alice)
    response = alice.post_form(b"/mkdir?csrf=" + token.encode(), {"dir": "/", "name": "q"})
    assert response.status == 403
    # Even with the right token in the body too: the URL one is refused.
    response = alice.post_form(b"/mkdir?csrf=" + token.encode(),
                               {"csrf": token, "dir": "/", "name": "q"})
    assert response.status == 403
    assert not (Path(server.store.get("alice").home) / "q").exists()
    assert alice.post_form(b"/mkdir", {"csrf": token, "dir": "/", "name": "q"}).status == 303


class _Sink:
    def part_begin(self, headers): pass
    def part_data(self, data): pass
    def part_end(self): pass


def test_multipart_header_limit_in_one_chunk():
    body = (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: "
            + b"p" * MAX_HEADER_BYTES + b"\r\n\r\nvalue\r\n--b--\r\n")
    with pytest.raises(MultipartError, match="too long"):
        MultipartParser(b"b", _Sink()).feed(body)
    # Byte by byte, as before, too.
    parser = MultipartParser(b"b", _Sink())
    with pytest.raises(MultipartError, match="too long"):
        for start in range(0, len(body), 4096):
            parser.feed(body[start:start + 4096])


# -- found by tests/test_web_fuzz.py ---------------------------------------------

def test_head_static_folder_is_404(site):
    assert HTTPDriver(site).request(b"HEAD", b"/static").status == 404
    assert HTTPDriver(site).get(b"/static").status == 404


def test_double_slash_folder_lists_home(site):
    alice = login(site, "alice", "correct horse")
    response = alice.get(b"/files//")
    assert response.status == 200
    assert "<title>Files \u2013 rumpus-secure</title>".encode() in response.body


def test_options_and_put_get_405_not_501(site):
    for method in (b"OPTIONS", b"PUT", b"DELETE"):
        response = HTTPDriver(site).request(method, b"/login", body=b"")
        assert response.status == 405, method
        assert b"GET" in response.header(b"allow")


def test_banned_address_gets_its_page_before_the_body(site, server):
    """
    The ban page from the headers, audited once; a client from another
    address is served meanwhile.
    """
    from rumpus_secure.guard import Guard, GuardSettings

    server.guard = Guard(GuardSettings(threshold=1), server.reactor, audit=server.audit)
    server.guard.offence("192.0.2.7", "login_failed", protocol="web")
    assert server.guard.is_banned("192.0.2.7") is not None
    conn = Connection(site)
    huge_post_head(conn, b"/no/such/page", length=1000)
    response = conn.response()
    assert response.status == 403
    assert b"Too many failed attempts" in response.body
    assert conn.transport.disconnecting
    assert len(server.audit.named("guard.refused")) == 1
    elsewhere = IPv4Address("TCP", "198.51.100.9", 40000)
    protocol = site.buildProtocol(elsewhere)
    transport = StringTransport(peerAddress=elsewhere)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /login HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
    assert parse_response(transport.value()).status == 200


def test_login_with_a_long_return_path_fits_the_cap(site):
    deep = "/files/" + "/".join(["%C3%A9" * 20] * 40) + "/"  # about 5,000 characters
    web = HTTPDriver(site)
    response = web.post_form(b"/login", {"username": "alice", "password": "correct horse",
                                         "next": deep})
    assert response.status == 303
    assert response.header(b"location") == deep.encode()
