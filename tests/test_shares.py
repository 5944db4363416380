"""
Share links (issue #15, part 2): the token store, and the web pages of the
owner and the visitor driven in memory (the whole twisted.web path with our
request classes and the streamed drop-box upload).

Each security test has a second party: another account's links and homes,
or a second visitor without the first one's cookie.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.shares import (
    SQLiteShareStore,
    owner_allows,
    share_target,
    token_hash,
)
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.test_web_site import login
from tests.test_web_support import HTTPDriver, make_server, multipart

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# -- the token store ------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SQLiteShareStore:
    return SQLiteShareStore(tmp_path / "accounts.sqlite3", clock=clock)


def make(store: SQLiteShareStore, clock: Clock, owner: str = "alice", **kw):
    values = dict(kind="download", path="/a.txt", expires=clock.now + 7 * DAY,
                  password_hash=None, max_uses=None, max_size=None, note="")
    values.update(kw)
    return store.create(owner, **values)


def test_tokens_are_long_random_and_stored_only_as_hashes(store, clock, tmp_path):
    tokens = set()
    for _ in range(20):
        share, token = make(store, clock)
        tokens.add(token)
        assert len(token) == 32  # 24 bytes, URL-safe base64: 192 bits
        assert store.find(token)[0].id == share.id
    assert len(tokens) == 20
    raw = (tmp_path / "accounts.sqlite3").read_bytes()
    wal = tmp_path / "accounts.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert not any(t.encode() in raw for t in tokens)
    with sqlite3.connect(tmp_path / "accounts.sqlite3") as db:
        hashes = {bytes(r[0]) for r in db.execute("SELECT token_hash FROM shares")}
    assert hashes == {token_hash(t) for t in tokens}
    assert store.find("x" * 32) is None


def test_states_expiry_revocation_and_use_limit(store, clock):
    share, token = make(store, clock, max_uses=2)
    assert share.state(clock.now) == "active"
    assert store.take_use(share.id) and store.take_use(share.id)
    assert not store.take_use(share.id)
    assert store.get(share.id).state(clock.now) == "used up"
    other, _ = make(store, clock, expires=clock.now + 60)
    assert store.take_use(other.id)
    clock.now += 60
    assert store.get(other.id).state(clock.now) == "expired"
    assert not store.take_use(other.id)
    third, _ = make(store, clock)
    assert not store.revoke(third.id, "mine now", owner="mallory")  # not his link
    assert store.revoke(third.id, "done", owner="alice")
    assert not store.take_use(third.id)
    assert store.get(third.id).state(clock.now) == "revoked"


def test_last_uses_are_not_given_twice(store, clock):
    """Eight visitors race for three downloads: exactly three get one."""
    share, _ = make(store, clock, max_uses=3)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def visit() -> None:
        barrier.wait()
        results.append(store.take_use(share.id))

    threads = [threading.Thread(target=visit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True] * 3
    assert store.get(share.id).uses == 3


def test_events_per_link(store, clock):
    a, _ = make(store, clock)
    b, _ = make(store, clock, owner="bob")
    store.record(a.id, "download", "192.0.2.1", "a.txt")
    store.record(b.id, "upload", "192.0.2.2", "x.bin", 10)
    assert [(e.action, e.client) for e in store.events(a.id)] == [
        ("download", "192.0.2.1")]
    assert [s.id for s in store.list("bob")] == [b.id]


def test_owner_must_still_vouch(clock, store):
    from types import SimpleNamespace

    share, _ = make(store, clock)
    alive = SimpleNamespace(locked=False, created=share.created - 5)
    assert owner_allows(alive, share)
    assert not owner_allows(None, share)  # deleted
    assert not owner_allows(SimpleNamespace(locked=True, created=0.0), share)
    # Deleted and re-created under the same name after the link was made.
    assert not owner_allows(SimpleNamespace(locked=False, created=share.created + 1),
                            share)


def test_share_paths():
    assert share_target(b"/s/abc") == ("abc", "")
    assert share_target(b"/s/abc/get") == ("abc", "get")
    assert share_target(b"/s/abc/upload") == ("abc", "upload")
    for other in (b"/s", b"/s/", b"/s/abc/list", b"/files/s/abc", b"/s/a/b/c"):
        assert share_target(other) in (None, ("", "")), other


# -- the web pages, in memory -------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path, ban_threshold=4, login_failure_delay=0)
    server.store.add("alice", "correct horse")
    server.store.add("bob", "battery staple")
    server.share_store = SQLiteShareStore(tmp_path / "shares.sqlite3",
                                          clock=server.reactor.seconds)
    server.reactor.advance(1_000_000)
    server.guard = Guard(GuardSettings.from_config(server.config), server.reactor,
                         audit=server.audit)
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


def owner(site) -> tuple[HTTPDriver, str]:
    web = HTTPDriver(site)
    return web, login(web)


def create_link(web: HTTPDriver, csrf: str, **fields: str) -> str:
    values = {"csrf": csrf, "kind": "download", "path": "/notes.txt", "days": "7"}
    values.update(fields)
    response = web.post_form(b"/shares/new", values)
    assert response.status == 200, response.body
    found = re.search(rb"id=share-url class=secret>https://files\.example\.org:8443"
                      rb"(/s/[A-Za-z0-9_-]+)<", response.body)
    assert found, response.body
    return found.group(1).decode()


def visitor(site) -> HTTPDriver:
    return HTTPDriver(site)


def test_download_link_with_use_limit(server, site):
    home = server.store.get("alice").home
    (home / "notes.txt").write_bytes(b"hello, outsider")
    web, csrf = owner(site)
    link = create_link(web, csrf, max_uses="1", note="For the meeting")
    page = visitor(site).get(link.encode())
    assert page.status == 200
    assert b"For the meeting" in page.body and b"notes.txt" in page.body
    assert b"/files/" not in page.body and b"Log out" not in page.body  # no manager chrome
    got = visitor(site).get(link.encode() + b"/get")
    assert got.status == 200 and got.body == b"hello, outsider"
    again = visitor(site).get(link.encode() + b"/get")
    assert again.status == 410 and b"used as often" in again.body
    listing = web.get(b"/shares").body
    assert b"1 of 1" in listing and b"used up" in listing
    share_id = re.search(rb"data-share='([0-9a-f]+)'", listing).group(1)
    detail = web.get(b"/shares/" + share_id).body
    assert b"download" in detail and b"192.0.2.7" in detail
    assert [e["share"] for e in server.audit.events
            if e.get("event") == "share.download"] == [share_id.decode()]


def test_link_needs_the_owners_permission(server, site):
    server.store.accounts["alice"].perms = frozenset({"list", "upload"})
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    web, csrf = owner(site)
    response = web.post_form(b"/shares/new", {"csrf": csrf, "kind": "download",
                                              "path": "/notes.txt", "days": "7"})
    assert response.status == 400 and b"may not download" in response.body
    response = web.post_form(b"/shares/new", {"csrf": csrf, "kind": "download",
                                              "path": "/notes.txt", "days": "31"})
    assert response.status == 400 and b"from 1 to 30" in response.body


def test_revoke_and_owner_lock_end_links(server, site):
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    (server.store.get("bob").home / "notes.txt").write_bytes(b"y")
    web, csrf = owner(site)
    link = create_link(web, csrf)
    second = create_link(web, csrf)
    bob_web, bob_csrf = HTTPDriver(site), None
    bob_csrf = login(bob_web, "bob", "battery staple")
    bobs = create_link(bob_web, bob_csrf)
    share_id = re.search(rb"data-share='([0-9a-f]+)'", web.get(b"/shares").body).group(1)
    # Bob cannot revoke Alice's link.
    bob_web.post_form(b"/shares/revoke", {"csrf": bob_csrf, "id": share_id.decode()})
    assert [visitor(site).get(x.encode()).status for x in (link, second)] == [200, 200]
    # The newest link is listed first: Alice revokes it, the other stays.
    web.post_form(b"/shares/revoke", {"csrf": csrf, "id": share_id.decode()})
    assert [visitor(site).get(x.encode()).status for x in (link, second)] == [200, 410]
    server.store.lock("alice", "left")
    assert visitor(site).get(link.encode()).status == 410
    assert visitor(site).get(second.encode()).status == 410
    assert visitor(site).get(bobs.encode() + b"/get").body == b"y"  # bob's still work


def test_expiry(server, site):
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    web, csrf = owner(site)
    link = create_link(web, csrf, days="1")
    assert visitor(site).get(link.encode()).status == 200
    server.reactor.advance(DAY)
    gone = visitor(site).get(link.encode() + b"/get")
    assert gone.status == 410 and b"expired" in gone.body


def test_drop_box_keeps_both_and_never_lists(server, site):
    home = server.store.get("alice").home
    (home / "inbox").mkdir()
    (home / "inbox" / "secret.txt").write_bytes(b"owner only")
    web, csrf = owner(site)
    link = create_link(web, csrf, kind="dropbox", path="/inbox", max_size="1")
    guest = visitor(site)
    page = guest.get(link.encode())
    assert page.status == 200 and b"secret.txt" not in page.body
    for data in (b"first", b"second"):
        body, ctype = multipart([("file", "report.txt", data)])
        sent = guest.request(b"POST", link.encode() + b"/upload", body=body,
                             headers={b"content-type": ctype})
        assert sent.status == 200, sent.body
        assert b"secret.txt" not in sent.body and b"report (1)" not in sent.body
    assert (home / "inbox" / "report.txt").read_bytes() == b"first"
    assert (home / "inbox" / "report (1).txt").read_bytes() == b"second"
    # "replace" in the form changes nothing: a drop box never overwrites.
    body, ctype = multipart([("exists", None, b"replace"), ("file", "report.txt", b"3")])
    guest.request(b"POST", link.encode() + b"/upload", body=body,
                  headers={b"content-type": ctype})
    assert (home / "inbox" / "report.txt").read_bytes() == b"first"
    assert (home / "inbox" / "report (2).txt").read_bytes() == b"3"
    # No listing, no download.
    listing = guest.get(link.encode() + b"/get")
    assert listing.status == 303 and b"secret" not in listing.body
    # Over the size limit (1 MiB): refused, nothing left behind.
    body, ctype = multipart([("file", "big.bin", b"x" * (1024 * 1024 + 1))])
    big = guest.request(b"POST", link.encode() + b"/upload", body=body,
                        headers={b"content-type": ctype}, chunks=8)
    assert big.status == 413 and b"too large" in big.body
    assert not (home / "inbox" / "big.bin").exists()
    assert sorted(p.name for p in (home / "inbox").iterdir()) == [
        "report (1).txt", "report (2).txt", "report.txt", "secret.txt"]
    # Bob's home got nothing.
    assert list(server.store.get("bob").home.iterdir()) == []


def test_drop_box_upload_limit(server, site):
    home = server.store.get("alice").home
    (home / "inbox").mkdir()
    web, csrf = owner(site)
    link = create_link(web, csrf, kind="dropbox", path="/inbox", max_uses="1")
    body, ctype = multipart([("file", "a.txt", b"a"), ("file", "b.txt", b"b")])
    sent = visitor(site).request(b"POST", link.encode() + b"/upload", body=body,
                                 headers={b"content-type": ctype})
    assert sent.status == 207 and b"takes no more files" in sent.body
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["a.txt"]


def test_link_password_and_unknown_tokens_count_for_the_guard(server, site):
    (server.store.get("alice").home / "notes.txt").write_bytes(b"pw-protected")
    web, csrf = owner(site)
    link = create_link(web, csrf, password="open sesame 1")
    first, second = visitor(site), visitor(site)
    assert b"needs a password" in first.get(link.encode()).body
    assert first.get(link.encode() + b"/get").status == 303  # no file without it
    wrong = first.post_form(link.encode(), {"password": "guess"})
    assert wrong.status == 401
    right = first.post_form(link.encode(), {"password": "open sesame 1"})
    assert right.status == 303
    assert first.get(link.encode() + b"/get").body == b"pw-protected"
    # The grant is the first visitor's: the second still needs the password.
    assert b"needs a password" in second.get(link.encode()).body
    # Unknown tokens: 404, and with the wrong password above they reach the
    # threshold (4): the address is banned.
    for _ in range(2):
        assert second.get(b"/s/" + b"A" * 32).status == 404
    banned = second.get(b"/s/" + b"B" * 32)
    assert banned.status == 403
    assert server.guard.is_banned("192.0.2.7") is not None


def test_link_password_over_plain_http_ends_the_link(server, site):
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    web, csrf = owner(site)
    link = create_link(web, csrf, password="open sesame 1")
    other = create_link(web, csrf, password="open sesame 2")
    plain = HTTPDriver(build_http_site(server, server.reactor), origin=None)
    refused = plain.post_form(link.encode(), {"password": "open sesame 1"})
    assert refused.status == 403 and b"turned off" in refused.body
    assert visitor(site).get(link.encode()).status == 410
    assert visitor(site).get(other.encode()).status == 200  # the other link lives
    # A plain GET is redirected like every other path.
    moved = plain.get(link.encode())
    assert moved.status == 301
    assert moved.header(b"location").endswith(link.encode())


def test_listing_offers_links_by_permission(server, site):
    """
    The Share link must not be an ``a[data-act]``: app.js takes every such
    click that is not a rename for a delete.
    """
    home = server.store.get("alice").home
    (home / "notes.txt").write_bytes(b"x")
    web, _ = owner(site)
    page = web.get(b"/files/").body
    assert b"class=share-link" in page and b"data-act=share" not in page
    assert b"id=make-dropbox" in page and b"id=share-folder" in page
    server.store.accounts["alice"].perms = frozenset({"list"})
    page = web.get(b"/files/").body
    assert b"share-link" not in page and b"make-dropbox" not in page


def test_head_takes_no_use(server, site):
    (server.store.get("alice").home / "notes.txt").write_bytes(b"once")
    web, csrf = owner(site)
    link = create_link(web, csrf, max_uses="1")
    assert visitor(site).request(b"HEAD", link.encode() + b"/get").status == 200
    assert visitor(site).request(b"HEAD", link.encode()).status == 200
    assert visitor(site).get(link.encode() + b"/get").body == b"once"


def test_live_link_limit_counts_live_links_only(store, clock, monkeypatch):
    import rumpus_secure.shares as shares_module
    from rumpus_secure.shares import ShareError

    monkeypatch.setattr(shares_module, "MAX_PER_ACCOUNT", 2)
    first, _ = make(store, clock)
    make(store, clock)
    with pytest.raises(ShareError, match="revoke some"):
        make(store, clock)
    make(store, clock, owner="bob")  # another account's count is its own
    store.revoke(first.id, "done")
    make(store, clock)  # a revoked link no longer counts


def test_link_password_form_body_is_capped(server, site):
    """``POST /s/<token>`` is a small form (16 KiB), refused from its headers."""
    web, csrf = owner(site)
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    link = create_link(web, csrf, password="open sesame 1")
    body = b"password=" + b"x" * (17 * 1024)
    refused = visitor(site).request(b"POST", link.encode(), body=body, headers={
        b"content-type": b"application/x-www-form-urlencoded"})
    assert refused.status == 413


def _open_request(site, target: bytes):
    """A GET whose answer may stay open (a streamed ZIP): its transport."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    address = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + target + b" HTTP/1.1\r\nhost: files.example.org:8443"
                          b"\r\n\r\n")
    site.reactor.advance(0)
    return transport


def test_share_zips_are_capped_per_owner_and_in_all(server, site, monkeypatch):
    from rumpus_secure.web import visit

    started: list = []
    monkeypatch.setattr(visit, "start_zip_thread", started.append)
    server.reactor.callFromThread = lambda f, *a: f(*a)
    for name in ("alice", "bob"):
        (server.store.get(name).home / "dir").mkdir()
        (server.store.get(name).home / "dir" / "f.txt").write_bytes(name.encode())
    web, csrf = owner(site)
    link = create_link(web, csrf, path="/dir").encode() + b"/get"
    bob_web = HTTPDriver(site)
    bobs = create_link(bob_web, login(bob_web, "bob", "battery staple"),
                       path="/dir").encode() + b"/get"
    first, second = _open_request(site, link), _open_request(site, link)
    assert first.value() == second.value() == b""  # both streaming
    third = visitor(site).get(link)
    assert third.status == 503 and third.header(b"retry-after") == b"30"
    # Bob's link, meanwhile: his own slots (and the total has room).
    assert _open_request(site, bobs).value() == b""
    share_id = re.search(rb"data-share='([0-9a-f]+)'", web.get(b"/shares").body).group(1)
    assert server.share_store.get(share_id.decode()).uses == 2  # the 503 took none
    # One of Alice's ends: a slot is free again.
    started[0]()
    assert first.value().startswith(b"HTTP/1.1 200") and b"f.txt" in first.value()
    assert _open_request(site, link).value() == b""
    assert visitor(site).get(link).status == 503
    # Four in all: Bob's second fills the server; Carol's first waits.
    server.store.add("carol", "carol pw")
    (server.store.get("carol").home / "dir").mkdir()
    carol_web = HTTPDriver(site)
    carols = create_link(carol_web, login(carol_web, "carol", "carol pw"),
                         path="/dir").encode() + b"/get"
    assert _open_request(site, bobs).value() == b""
    assert visitor(site).get(carols).status == 503


def test_plain_http_posts_end_a_link_only_with_its_password(server, site):
    server.guard = None  # cleartext posts are offences; the ban is tested elsewhere
    (server.store.get("alice").home / "notes.txt").write_bytes(b"x")
    web, csrf = owner(site)
    guarded = create_link(web, csrf, password="open sesame 1")
    open_link = create_link(web, csrf)
    plain = HTTPDriver(build_http_site(server, server.reactor), origin=None)
    # A wrong password, and any password to a link that has none: 403, no change.
    for link, password in ((guarded, "guess"), (open_link, "anything")):
        refused = plain.post_form(link.encode(), {"password": password})
        assert refused.status == 403 and b"turned off" not in refused.body
    assert visitor(site).get(open_link.encode()).status == 200
    assert b"needs a password" in visitor(site).get(guarded.encode()).body
    outcomes = [e["outcome"] for e in server.audit.events
                if e.get("kind") == "share-password"]
    assert outcomes == ["not-the-password", "no-password"]
    # The right one ends that link only.
    ended = plain.post_form(guarded.encode(), {"password": "open sesame 1"})
    assert ended.status == 403 and b"turned off" in ended.body
    assert visitor(site).get(guarded.encode()).status == 410
    assert visitor(site).get(open_link.encode()).status == 200


def _share_uses(server, web) -> dict[str, int]:
    ids = re.findall(rb"data-share='([0-9a-f]+)'", web.get(b"/shares").body)
    return {i.decode(): server.share_store.get(i.decode()).uses for i in ids}


def _drop(guest, link: str, files, chunks: int = 1):
    body, ctype = multipart([("file", name, data) for name, data in files])
    return guest.request(b"POST", link.encode() + b"/upload", body=body,
                         headers={b"content-type": ctype}, chunks=chunks)


def test_drop_box_takes_a_use_only_for_a_stored_file(server, site):
    home = server.store.get("alice").home
    (home / "inbox").mkdir()
    (home / "elsewhere.txt").write_bytes(b"owner's")
    (home / "inbox" / "link.txt").symlink_to(home / "elsewhere.txt")
    web, csrf = owner(site)
    link = create_link(web, csrf, kind="dropbox", path="/inbox", max_uses="2",
                       max_size="1")
    guest = visitor(site)
    assert _drop(guest, link, [("big.bin", b"x" * (1024 * 1024 + 1))], 8).status == 413
    assert _drop(guest, link, [("link.txt", b"over the link")]).status == 400
    assert _drop(guest, link, [("bad\x1b[2J.txt", b"esc")]).status == 400
    assert list(_share_uses(server, web).values()) == [0]
    # Still two files' worth of uses left for real files.
    assert _drop(guest, link, [("a.txt", b"a"), ("b.txt", b"b")]).status == 200
    assert list(_share_uses(server, web).values()) == [2]
    assert (home / "elsewhere.txt").read_bytes() == b"owner's"
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["a.txt", "b.txt",
                                                                  "link.txt"]


def test_drop_box_errors_name_no_paths(server, site):
    alice_home = server.store.get("alice").home
    (alice_home / "swap").mkdir()
    (alice_home / "target.txt").write_bytes(b"t")
    (alice_home / "swap" / "link.txt").symlink_to(alice_home / "target.txt")
    web, csrf = owner(site)
    link = create_link(web, csrf, kind="dropbox", path="/swap")
    bob_web = HTTPDriver(site)
    (server.store.get("bob").home / "in").mkdir()
    bobs = create_link(bob_web, login(bob_web, "bob", "battery staple"),
                       kind="dropbox", path="/in")
    refused = _drop(visitor(site), link, [("link.txt", b"x")])
    assert refused.status == 400
    assert b"could not store this file" in refused.body
    assert b"/swap" not in refused.body and b"symbolic" not in refused.body
    failed = [e for e in server.audit.events
              if e.get("event") == "share.upload" and e.get("outcome") == "failed"]
    assert len(failed) == 1 and "link.txt" in failed[0]["reason"]
    # Bob's drop box, beside it, still takes files.
    assert _drop(visitor(site), bobs, [("ok.txt", b"fine")]).status == 200
    assert (server.store.get("bob").home / "in" / "ok.txt").read_bytes() == b"fine"


def test_an_aborted_drop_box_upload_gives_its_use_back(server, site):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionLost

    home = server.store.get("alice").home
    (home / "inbox").mkdir()
    web, csrf = owner(site)
    link = create_link(web, csrf, kind="dropbox", path="/inbox", max_uses="1")
    body, ctype = multipart([("file", "half.bin", b"y" * 5000)])
    address = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = site.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    protocol.dataReceived(
        b"POST " + link.encode() + b"/upload HTTP/1.1\r\nhost: files.example.org:8443\r\n"
        b"origin: https://files.example.org:8443\r\ncontent-type: " + ctype +
        b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
    server.reactor.advance(0)
    protocol.connectionLost(Failure(ConnectionLost()))
    server.reactor.advance(0)
    assert list(_share_uses(server, web).values()) == [0]
    assert not (home / "inbox" / "half.bin").exists()
    # The one use is still there for a whole file.
    assert _drop(visitor(site), link, [("whole.bin", b"z")]).status == 200
    assert list(_share_uses(server, web).values()) == [1]
