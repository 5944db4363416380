"""
Web transfers end with their account: an upload, a download or a ZIP that
is running when the account is locked, quarantined, deleted or its password
is set is cut (an upload discards what it has not committed), and audited.

Every test has a second client: bob, from the same address, transferring
at the same time, who must be unaffected.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from rumpus_secure.accounts.store import AccountChange, ChangeBatch
from rumpus_secure.accounts.watch import AccountWatcher
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server, multipart, parse_response


class ChangeLog:
    """The store's change log, in memory (an L{AccountWatcher} source)."""

    def __init__(self) -> None:
        self.changes: list[AccountChange] = []

    def latest(self) -> int:
        return self.changes[-1].seq if self.changes else 0

    def since(self, seq: int, limit: int = 1000) -> ChangeBatch:
        return ChangeBatch([c for c in self.changes if c.seq > seq][:limit],
                           self.changes[0].seq if self.changes else 0)

    def close(self) -> None:
        pass

    def add(self, name: str, kind: str, detail: str | None = None) -> None:
        self.changes.append(AccountChange(self.latest() + 1, name, kind, detail, 0.0))


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "alice-pw")
    server.store.add("bob", "bob-pw")
    server.changes = ChangeLog()
    server.account_watcher = AccountWatcher(
        server.changes, lambda f, *a: defer.maybeDeferred(f, *a))
    server.account_watcher.poll()  # the first read: seq known
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


def login(site: Any, user: str) -> HTTPDriver:
    web = HTTPDriver(site)
    assert web.post_form(b"/login", {"username": user, "password": f"{user}-pw"}).status == 303
    return web


def csrf_of(web: HTTPDriver) -> bytes:
    page = web.get(b"/files/").body.decode()
    return re.search(r"name=csrf value='([^']+)'", page).group(1).encode()


def change(server: Any, name: str, kind: str) -> None:
    """What ``rumpus-secure user lock|del|passwd`` does, then the watcher's timer."""
    if kind == "lock":
        server.store.lock(name, "stolen laptop")
    elif kind == "delete":
        del server.store.accounts[name]
    elif kind == "password":
        account = server.store.accounts[name]
        server.store.accounts[name] = replace(account, password="new",
                                              password_changed=10.0 ** 12)
    server.changes.add(name, kind, "stolen laptop" if kind == "lock" else None)
    server.account_watcher.poll()


class Connection:
    """One raw connection left open between steps."""

    def __init__(self, site: Any, web: HTTPDriver) -> None:
        self.protocol = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1))
        self.protocol.makeConnection(self.transport)
        self.cookie = b"; ".join(k + b"=" + v for k, v in web.cookies.items())

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def head(self, method: bytes, target: bytes, extra: bytes = b"") -> None:
        self.send(method + b" " + target + b" HTTP/1.1\r\nHost: files.example.org:8443\r\n"
                  b"Origin: https://files.example.org:8443\r\nCookie: " + self.cookie
                  + b"\r\n" + extra + b"\r\n")


def upload_parts(token: bytes, name: str, data: bytes) -> tuple[bytes, bytes]:
    return multipart([("csrf", None, token), ("file", name, data)])


@pytest.mark.parametrize("kind", ["lock", "delete", "password"])
def test_upload_in_progress_is_discarded(server, site, kind):
    alice, bob = login(site, "alice"), login(site, "bob")
    alice_token, bob_token = csrf_of(alice), csrf_of(bob)
    body, ctype = upload_parts(alice_token, "a.bin", b"a" * 200_000)
    connection = Connection(site, alice)
    connection.head(b"POST", b"/upload?dir=/", b"Content-Type: " + ctype
                    + b"\r\nContent-Length: %d\r\n" % len(body))
    # A first file whole (committed before the change), then a second begun.
    connection.send(body[:150_000])
    # Bob, same address, uploads in between; and after the change.
    bob_body, bob_type = upload_parts(bob_token, "b.bin", b"b" * 1000)
    assert bob.request(b"POST", b"/upload?dir=/", body=bob_body,
                       headers={b"content-type": bob_type}).status == 303
    change(server, "alice", kind)
    response = parse_response(connection.transport.value())
    assert response.status == 403
    assert connection.transport.disconnecting
    connection.send(body[150_000:])
    home = server.store.root / "alice"
    assert not (home / "a.bin").exists()
    assert [p.name for p in home.iterdir()] == []  # no temporary left either
    ended = server.audit.named("web.transfer_ended")
    assert [(e["account"], e["transfer"], e["reason"]) for e in ended] == [
        ("alice", "upload", kind)]
    connection.protocol.connectionLost(None)
    assert (server.store.root / "bob" / "b.bin").read_bytes() == b"b" * 1000
    bob_body, bob_type = upload_parts(bob_token, "c.bin", b"c")
    assert bob.request(b"POST", b"/upload?dir=/", body=bob_body,
                       headers={b"content-type": bob_type}).status == 303
    assert server.account_watcher.sessions("alice") == 0


class HeldReads:
    """run_in_thread whose file reads wait until released."""

    def __init__(self, server: Any) -> None:
        self.direct = server.run_in_thread
        self.held: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        if getattr(function, "__name__", "") == "read":
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((function, args, d))
            return d
        return self.direct(function, *args)

    def release(self) -> None:
        function, args, d = self.held.pop(0)
        d.callback(function(*args))


@pytest.mark.parametrize("kind", ["lock", "delete", "password"])
def test_download_in_progress_is_cut(server, site, kind):
    alice, bob = login(site, "alice"), login(site, "bob")
    big = b"x" * (3 * 1024 * 1024)
    (server.store.root / "alice" / "big.bin").write_bytes(big)
    (server.store.root / "bob" / "big.bin").write_bytes(big)
    reads = HeldReads(server)
    server.run_in_thread = reads
    connection = Connection(site, alice)
    connection.head(b"GET", b"/files/big.bin")
    bob_connection = Connection(site, bob)
    bob_connection.head(b"GET", b"/files/big.bin")
    reads.release()  # alice: 1 MiB
    reads.release()  # bob: 1 MiB
    sent = len(connection.transport.value())
    change(server, "alice", kind)
    assert connection.transport.disconnected  # aborted: a cut, not a whole file
    while reads.held:
        reads.release()
    assert len(connection.transport.value()) == sent
    assert len(bob_connection.transport.value()) > len(big)
    assert parse_response(bob_connection.transport.value()).body == big
    assert not bob_connection.transport.disconnected
    ended = server.audit.named("web.transfer_ended")
    assert [(e["account"], e["transfer"], e["reason"]) for e in ended] == [
        ("alice", "download", kind)]
    assert server.account_watcher.sessions("alice") == 0
    assert server.account_watcher.sessions("bob") == 0  # done: unregistered


def test_perms_change_does_not_cut_a_download(server, site):
    alice = login(site, "alice")
    (server.store.root / "alice" / "big.bin").write_bytes(b"y" * (2 * 1024 * 1024))
    reads = HeldReads(server)
    server.run_in_thread = reads
    connection = Connection(site, alice)
    connection.head(b"GET", b"/files/big.bin")
    server.changes.add("alice", "perms", "list")
    server.account_watcher.poll()
    while reads.held:
        reads.release()
    assert not connection.transport.disconnected
    assert server.audit.named("web.transfer_ended") == []


def test_zip_in_progress_is_cut(server, site, monkeypatch):
    from rumpus_secure.web import manager

    started: list[Any] = []

    class HeldZip(manager.ZipProducer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["start_thread"] = started.append
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(manager, "ZipProducer", HeldZip)
    server.reactor.callFromThread = lambda f, *a: f(*a)  # "threads" run inline here
    alice, bob = login(site, "alice"), login(site, "bob")
    for name in ("alice", "bob"):
        (server.store.root / name / "f.txt").write_bytes(b"z" * 1000)
    connection = Connection(site, alice)
    connection.head(b"GET", b"/zip?path=/f.txt")
    bob_connection = Connection(site, bob)
    bob_connection.head(b"GET", b"/zip?path=/f.txt")
    assert len(started) == 2
    zips = site.resource.children[b"zip"]
    assert zips.running == {"alice": 1, "bob": 1}
    change(server, "alice", "lock")
    assert connection.transport.disconnected
    started[0]()  # the builder thread notices and stops: the slot is free
    assert zips.running == {"bob": 1}
    started[1]()
    assert zips.running == {}
    assert bob_connection.transport.value().startswith(b"HTTP/1.1 200")
    assert not bob_connection.transport.disconnected
    ended = server.audit.named("web.transfer_ended")
    assert [(e["account"], e["transfer"]) for e in ended] == [("alice", "zip")]


# -- clients that read nothing; the same name listed many times ------------------

def _held_zip(monkeypatch: Any, server: Any) -> list[Any]:
    from rumpus_secure.web import manager

    started: list[Any] = []

    class HeldZip(manager.ZipProducer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["start_thread"] = started.append
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(manager, "ZipProducer", HeldZip)
    server.reactor.callFromThread = lambda f, *a: f(*a)
    return started


def test_download_whose_client_reads_nothing_is_cut(server, site):
    alice, bob = login(site, "alice"), login(site, "bob")
    for name in ("alice", "bob"):
        (server.store.root / name / "big.bin").write_bytes(b"x" * (4 * 1024 * 1024))
    reads = HeldReads(server)
    server.run_in_thread = reads
    stalled, reading = Connection(site, alice), Connection(site, bob)
    stalled.head(b"GET", b"/files/big.bin")
    reading.head(b"GET", b"/files/big.bin")
    reads.release()
    reads.release()
    # Both transports' buffers fill; bob's client takes something every 50 s.
    stalled.protocol.pauseProducing()
    for _ in range(3):
        reading.protocol.pauseProducing()
        server.reactor.advance(50)
        reading.protocol.resumeProducing()
    assert stalled.transport.disconnected  # 150 s > --http-timeout (60 s)
    assert not reading.transport.disconnected
    while reads.held:
        reads.release()
    assert parse_response(reading.transport.value()).body == b"x" * (4 * 1024 * 1024)


def test_download_paused_less_than_the_timeout_is_not_cut(server, site):
    alice = login(site, "alice")
    (server.store.root / "alice" / "big.bin").write_bytes(b"x" * (2 * 1024 * 1024))
    reads = HeldReads(server)
    server.run_in_thread = reads
    connection = Connection(site, alice)
    connection.head(b"GET", b"/files/big.bin")
    reads.release()
    connection.protocol.pauseProducing()
    server.reactor.advance(59)
    assert not connection.transport.disconnected
    connection.protocol.resumeProducing()
    server.reactor.advance(120)
    while reads.held:
        reads.release()
    assert not connection.transport.disconnected
    assert parse_response(connection.transport.value()).body == b"x" * (2 * 1024 * 1024)


def test_zip_whose_client_reads_nothing_frees_its_slot(server, site, monkeypatch):
    started = _held_zip(monkeypatch, server)
    alice, bob = login(site, "alice"), login(site, "bob")
    for name in ("alice", "bob"):
        (server.store.root / name / "f.txt").write_bytes(b"z" * 1000)
    stalled, other = Connection(site, alice), Connection(site, bob)
    stalled.head(b"GET", b"/zip?path=/f.txt")
    other.head(b"GET", b"/zip?path=/f.txt")
    zips = site.resource.children[b"zip"]
    assert zips.running == {"alice": 1, "bob": 1}
    stalled.protocol.pauseProducing()
    server.reactor.advance(61)
    assert stalled.transport.disconnected
    started[0]()  # the builder notices at its next chunk and gives the slot back
    assert zips.running == {"bob": 1}
    started[1]()
    assert zips.running == {} and not other.transport.disconnected


def test_zip_names_are_deduplicated_and_capped(server, site, monkeypatch):
    import io
    import zipfile

    started = _held_zip(monkeypatch, server)
    alice, bob = login(site, "alice"), login(site, "bob")
    (server.store.root / "alice" / "f.txt").write_bytes(b"z" * 1000)
    (server.store.root / "bob" / "g.txt").write_bytes(b"g" * 10)
    connection = Connection(site, alice)
    connection.head(b"GET", b"/zip?dir=/" + b"&name=f.txt" * 40)
    bob_connection = Connection(site, bob)
    bob_connection.head(b"GET", b"/zip?dir=/&name=g.txt")
    for start in started:
        start()
    archive = zipfile.ZipFile(io.BytesIO(parse_response(connection.transport.value()).body))
    assert archive.namelist() == ["f.txt"]
    archive = zipfile.ZipFile(io.BytesIO(parse_response(bob_connection.transport.value()).body))
    assert archive.namelist() == ["g.txt"]
    too_many = b"".join(b"&name=n%d" % i for i in range(1001))
    response = alice.get(b"/zip?dir=/" + too_many, headers={b"accept": b"application/json"})
    assert response.status == 400
    assert [e["names"] for e in server.audit.named("web.zip")] == [["f.txt"], ["g.txt"]]
