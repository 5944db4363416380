"""
The web folder page streams (issue #18, target 4): its top is written
before the folder is read, its rows follow in pieces made one at a time in
a thread and never while the client is not reading, the entries held stay
bounded whatever the folder's size, the walk stops when the client goes
away, and an error or an account change ends the sent part as a page.

The limits are made small here (``small``) so that a folder of a few
hundred entries shows what 100,000 do with the real ones.
"""

from __future__ import annotations

import os
import re
import weakref
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet import defer
from twisted.web.test.requesthelper import DummyRequest

from rumpus_secure.vfs import DirScan, Entry, JailedFS, PermissionDenied
from rumpus_secure.web import folder_page as listing
from rumpus_secure.web.folder_page import FolderView, ListingPage, page_number
from rumpus_secure.web.pagestream import PageProducer
from rumpus_secure.web.site import build_https_site
from tests.manual_thread import ManualThread
from tests.test_web_support import HTTPDriver, make_server, parse_response
from tests.test_web_transfer_bound import ChangeLog, Connection, change, login

ALL = frozenset({"list", "download", "upload", "overwrite", "rename", "delete", "mkdir"})
END = "</main></body></html>"


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "SORT_LIMIT", 20)
    monkeypatch.setattr(listing, "PAGE_SIZE", 25)
    monkeypatch.setattr(listing, "PIECE", 2048)


def fill(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"file {index:04d}.txt" for index in range(count)]
    for name in names:
        (folder / name).write_bytes(b"x")
    return names


class StreamRequest(DummyRequest):
    """A DummyRequest that keeps a push producer instead of looping on it."""

    def __init__(self) -> None:
        super().__init__([b""])
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def text(self) -> str:
        return b"".join(self.written).decode("utf-8")


class WatchedScan:
    """
    A L{DirScan} stand-in that counts the entries read and the entries
    still alive (held by someone), and can fail after C{fail_after}.
    """

    def __init__(self, scan: DirScan, fail_after: int | None = None) -> None:
        self._scan = scan
        self.read = 0
        self.alive = 0
        self.alive_most = 0
        self.closed = False
        self._fail_after = fail_after

    def _gone(self) -> None:
        self.alive -= 1

    def entries(self, keep: Any = None) -> Iterator[Entry]:
        for entry in self._scan.entries(keep):
            if self._fail_after is not None and self.read >= self._fail_after:
                raise PermissionDenied("list", self._scan.path)
            self.read += 1
            self.alive += 1
            self.alive_most = max(self.alive_most, self.alive)
            weakref.finalize(entry, self._gone)
            yield entry

    def names(self) -> Iterator[str]:
        return self._scan.names()

    def close(self) -> None:
        self.closed = True
        self._scan.close()

    def __enter__(self) -> WatchedScan:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def streamed(tmp_path: Path, count: int, page: int | None = 1, fail_after: int | None = None
             ) -> tuple[StreamRequest, ManualThread, PageProducer, ListingPage, WatchedScan]:
    home = tmp_path / "home"
    fill(home / "big", count)
    fs = JailedFS(home, ALL)
    scan = WatchedScan(fs.scan_dir("/big"), fail_after)
    request = StreamRequest()
    threads = ManualThread()
    page_ = ListingPage(FolderView("/big", ALL, "token", page=page), scan,  # type: ignore[arg-type]
                        lambda: fs.scan_dir("/big"), "<top>", END)
    producer = PageProducer(request, page_.pieces(), threads, page_.closing,
                            close=page_.close)
    producer.start()
    return request, threads, producer, page_, scan


def run_all(threads: ManualThread, request: StreamRequest) -> None:
    while threads.calls:
        threads.run_next()
        assert len(threads.calls) <= 1  # one piece in the making at a time


# -- streaming -------------------------------------------------------------------

def test_top_goes_out_before_the_folder_is_read_and_rows_in_pieces(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 300)
    assert request.written == [] and len(threads.calls) == 1
    threads.run_next()
    assert len(request.written) == 1 and scan.read == 0  # the first byte: no entry read
    assert request.written[0].startswith(b"<top>") and b"id=filter" in request.written[0]
    threads.run_next()  # the first 21 entries decide: a big folder
    assert scan.read == 21
    pieces_before_all_read = 0
    while threads.calls:
        threads.run_next()
        if scan.read < 300:
            pieces_before_all_read += 1
    assert request.finished == 1
    text = request.text()
    assert text.endswith(END) and text.count("<td class=pick>") == 25  # page 1: 25 rows
    # page 1 stopped reading after its rows (then the names were counted)
    assert scan.read == 25 and pieces_before_all_read >= 3
    assert "of 300 (page 1 of 12)" in text and "href='?page=2' rel=next" in text


def test_no_piece_is_made_while_the_client_is_not_reading(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 300, page=None)
    threads.run_next()
    threads.run_next()
    producer.pauseProducing()  # the transport's buffer is full
    threads.run_next()  # the piece that was in the making arrives: kept
    written, read = len(request.written), scan.read
    assert threads.calls == []  # nothing more is made
    producer.resumeProducing()
    assert len(request.written) == written + 1  # the kept piece
    assert len(threads.calls) == 1 and scan.read == read
    run_all(threads, request)
    assert request.finished == 1 and request.text().count("<td class=pick>") == 300


def test_entries_held_stay_bounded_whatever_the_folder(tmp_path, small):
    request, threads, _, page_, scan = streamed(tmp_path, 600, page=None)
    pieces = []
    while threads.calls:
        threads.run_next()
        pieces.append(len(request.written[-1]) if request.written else 0)
    assert scan.read == 600 and request.text().count("<td class=pick>") == 600
    # the 21 entries that decide sorted/unsorted, plus the one being written
    assert scan.alive_most <= listing.SORT_LIMIT + 2
    assert page_.held_most == listing.SORT_LIMIT + 1
    assert max(pieces) < listing.PIECE + 2048  # a piece: PIECE plus at most a row


def test_a_small_folder_is_sorted_and_held_whole_only_up_to_the_limit(tmp_path, small):
    home = tmp_path / "home"
    folder = home / "big"
    for name in ["b.txt", "C.txt", "a.txt", "sub"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if name == "sub":
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(b"x" * len(name))
    fs = JailedFS(home, ALL)
    request, threads = StreamRequest(), ManualThread()
    page_ = ListingPage(FolderView("/big", ALL, "t", sort="name", descending=True),
                        fs.scan_dir("/big"), lambda: fs.scan_dir("/big"), "<top>", END)
    PageProducer(request, page_.pieces(), threads, page_.closing, close=page_.close).start()
    run_all(threads, request)
    names = re.findall(r"<td class=name>.*?>([^<>]+)</a>", request.text())
    assert names == ["sub/", "C.txt", "b.txt", "a.txt"]  # folders first, then Z-A
    assert "aria-sort=descending" in request.text() and "id=big-folder" not in request.text()


def test_client_going_away_stops_the_walk(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 600, page=None)
    for _ in range(3):
        threads.run_next()
    assert len(threads.calls) == 1  # a piece in the making
    request.processingFailed(Exception("connection lost"))  # notifyFinish errback
    read = scan.read
    threads.run_next()  # the piece in the making returns: the walk is closed
    assert scan.closed and threads.calls == [] and scan.read <= read + 100
    assert scan.read < 600 and request.finished == 0


def test_client_going_away_between_pieces_closes_at_once(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 600, page=None)
    threads.run_next()
    threads.run_next()
    producer.pauseProducing()
    threads.run_next()
    producer.stopProducing()  # the transport lost the connection
    assert scan.closed and threads.calls == []
    producer.resumeProducing()
    assert threads.calls == []


def test_an_error_mid_way_ends_the_page_with_a_visible_row(tmp_path, small):
    request, threads, _, _, scan = streamed(tmp_path, 300, page=None, fail_after=100)
    run_all(threads, request)
    text = request.text()
    assert request.finished == 1 and scan.closed
    assert text.count("<tr class=stopped>") == 1
    assert re.search(r"<tr class=stopped><td colspan=5><p class='flash error' role=alert>"
                     r"The listing stopped here: [^<]*</p></td></tr></tbody></table>"
                     + re.escape(END) + "$", text)
    assert text.count("<td class=pick>") == 100  # the rows sent, then the error


def test_the_folder_deleted_while_listed_ends_the_page(tmp_path, small):
    request, threads, _, _, _ = streamed(tmp_path, 60)
    for _ in range(3):
        threads.run_next()
    folder = tmp_path / "home" / "big"
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()
    run_all(threads, request)
    text = request.text()
    assert request.finished == 1 and text.endswith(END)
    assert "role=alert>The listing stopped here: " in text and "</table>" in text


def test_a_cut_ends_the_sent_part_as_a_page(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 300, page=None)
    for _ in range(4):
        threads.run_next()
    producer.cut("account locked")  # a piece is in the making
    assert request.finished == 0
    threads.run_next()
    assert request.finished == 1 and scan.closed and threads.calls == []
    assert request.text().endswith("The listing stopped here: account locked.</p>"
                                   "</td></tr></tbody></table>" + END)
    request2, threads2, producer2, _, scan2 = streamed(tmp_path / "2", 300, page=None)
    threads2.run_next()  # the top; the table's head is in the making
    producer2.cut("account locked")
    threads2.run_next()
    text = request2.text()
    assert text.count("<table") == 1 and text.count("</table>") == 1
    assert text.endswith("account locked.</p></td></tr></tbody></table>" + END)
    assert scan2.closed and request2.finished == 1


def test_an_end_before_the_table_closes_no_table(tmp_path, small):
    home = tmp_path / "home"
    fill(home / "big", 30)
    fs = JailedFS(home, ALL)
    page_ = ListingPage(FolderView("/big", ALL, "t"), fs.scan_dir("/big"),
                        lambda: fs.scan_dir("/big"), "<top>", END)
    top = next(page_.pieces())
    assert b"<table" not in top
    assert page_.closing("gone") == (
        "<p class='flash error' role=alert>gone</p>" + END).encode()
    page_.close()
    assert list(page_.pieces()) == []


def test_a_failure_of_the_making_ends_the_page(tmp_path, small):
    request = StreamRequest()
    threads = ManualThread()

    def pieces() -> Iterator[bytes]:
        yield b"<top><table><tbody><tr>"
        raise RuntimeError("a bug")

    closing = lambda message: f"<p>{message}</p>".encode()  # noqa: E731
    PageProducer(request, pieces(), threads, closing).start()
    run_all(threads, request)
    assert request.finished == 1
    assert b"could not finish this page" in request.written[-1]


def test_page_numbers():
    assert page_number(None) == 1 and page_number("all") is None
    assert page_number("3") == 3 and page_number("0") == 1
    for bad in ("-2", "x", "1e9", "99999999999", " 2"):
        assert page_number(bad) == 1


# -- through the site ------------------------------------------------------------

@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "alice-pw")
    server.store.add("bob", "bob-pw")
    server.changes = ChangeLog()
    from rumpus_secure.accounts.watch import AccountWatcher

    server.account_watcher = AccountWatcher(
        server.changes, lambda f, *a: defer.maybeDeferred(f, *a))
    server.account_watcher.poll()
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


def rows(body: bytes) -> list[str]:
    return re.findall(r"<input type=checkbox form=bulk name=name value='([^']*)'",
                      body.decode("utf-8"))


def test_pages_of_a_big_folder_cover_it_once(server, site, small):
    names = fill(server.store.root / "alice" / "big", 60)
    web = login(site, "alice")
    seen: list[str] = []
    for number in (1, 2, 3):
        body = web.get(b"/files/big/?page=%d" % number).body
        assert body.endswith(END.encode()) and b"id=big-folder" in body
        seen += rows(body)
    assert sorted(seen) == names  # every entry once, over the pages
    last = web.get(b"/files/big/?page=3").body
    assert b"rel=next" not in last and b"href='?page=2' rel=prev" in last
    whole = web.get(b"/files/big/?page=all").body
    assert sorted(rows(whole)) == names and b"All 60 entries are shown." in whole
    beyond = web.get(b"/files/big/?page=9").body
    assert rows(beyond) == [] and b"There is no page 9" in beyond
    # the column heads do not offer a sort that is not done
    assert b"?sort=" not in whole and b"aria-sort" not in whole


def test_hostile_names_are_escaped_in_a_streamed_page(server, site, small):
    folder = server.store.root / "alice" / "big"
    fill(folder, 30)
    hostile = ["<img src=x onerror=alert(1)>.txt", "a'b\"c&d.txt", "cr\rlf\n.txt",
               "\u202egnp.exe", "x' onmouseover='alert(1).txt", os.fsdecode(b"caf\xe9.txt")]
    for name in hostile:
        (folder / name).write_bytes(b"x")
    web = login(site, "alice")
    body = web.get(b"/files/big/?page=all").body.decode("utf-8")
    assert "<img src=x" not in body and "onmouseover='alert" not in body
    assert "\r" not in body and "lf\n" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in body
    assert len(rows(body.encode())) == 36
    # a right-to-left override shows as text, not as "exe.png"
    assert "\u202e" not in body.replace("value='\u202egnp.exe'", "")
    assert ">[U+202E]gnp.exe</a>" in body
    assert "href='caf%E9.txt'>caf\ufffd.txt</a>" in body  # not UTF-8 on disk
    # a folder whose own name carries the override: its title and path too
    (folder / "\u202eslaicnanif").mkdir()
    inside = web.get(b"/files/big/%E2%80%AEslaicnanif/").body.decode("utf-8")
    assert "\u202e" not in re.sub(r"value='[^']*'", "", inside)  # only in form values
    assert "<h1>[U+202E]slaicnanif</h1>" in inside and ">[U+202E]slaicnanif</a>" in inside


def test_head_of_a_folder_reads_nothing(server, site, small):
    fill(server.store.root / "alice" / "big", 60)
    web = login(site, "alice")
    server.threaded.clear()
    response = web.request(b"HEAD", b"/files/big/")
    assert response.status == 200 and response.body == b""
    assert response.header(b"content-type") == b"text/html; charset=utf-8"
    assert response.header(b"content-security-policy") is not None
    assert "_next_piece" not in server.threaded


def test_a_refused_folder_is_a_whole_error_page(server, site, small):
    server.store.add("looker", "looker-pw", frozenset({"download"}))
    fill(server.store.root / "looker" / "big", 30)
    web = login(site, "looker")
    response = web.get(b"/files/big/")
    assert response.status == 403 and response.body.endswith(END.encode())
    assert web.get(b"/files/nothing-here/").status == 404


class HeldPieces:
    """run_in_thread whose page pieces wait until released."""

    def __init__(self, server: Any) -> None:
        self.direct = server.run_in_thread
        self.held: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        if getattr(function, "__name__", "") == "_next_piece":
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((function, args, d))
            return d
        return self.direct(function, *args)

    def release(self, index: int = 0) -> None:
        function, args, d = self.held.pop(index)
        d.callback(function(*args))


def test_locked_account_ends_its_listing_and_not_another(server, site, small):
    """
    alice's listing, half sent, ends with a visible row when her account is
    locked; bob, same address, listing at the same time, is unaffected and
    is served while alice's listing waits.
    """
    fill(server.store.root / "alice" / "big", 200)
    bob_names = fill(server.store.root / "bob" / "big", 200)
    alice, bob = login(site, "alice"), login(site, "bob")
    pieces = HeldPieces(server)
    server.run_in_thread = pieces
    alice_connection = Connection(site, alice)
    alice_connection.head(b"GET", b"/files/big/?page=all")
    bob_connection = Connection(site, bob)
    bob_connection.head(b"GET", b"/files/big/?page=all")
    pieces.release(0)  # alice: the top
    pieces.release(0)  # bob: the top
    pieces.release(0)  # alice: the table's head
    pieces.release(1)  # alice: the first rows (bob's head waits)
    alice_sent = parse_response(alice_connection.transport.value() + b"0\r\n\r\n").body
    assert b"file 0" in alice_sent and not alice_sent.endswith(END.encode())
    change(server, "alice", "lock")
    # bob's piece was asked for before; alice's is in the making
    while pieces.held:
        pieces.release(0)
    alice_page = parse_response(alice_connection.transport.value()).body.decode()
    assert alice_page.endswith("</tbody></table>" + END)
    assert "The listing stopped here: " in alice_page and "locked" in alice_page
    bob_page = parse_response(bob_connection.transport.value()).body
    assert sorted(rows(bob_page)) == bob_names and bob_page.endswith(END.encode())
    assert b"stopped here" not in bob_page
    ended = server.audit.named("web.transfer_ended")
    assert [(e["account"], e["transfer"], e["reason"]) for e in ended] == [
        ("alice", "listing", "lock")]
    assert server.account_watcher.sessions("alice") == 0
    assert server.account_watcher.sessions("bob") == 0  # done: unregistered
    assert alice.get(b"/files/").status == 303  # logged out


def test_listing_waits_for_its_pieces_not_the_reactor(server, site, small):
    """
    While alice's listing has a piece in the making, the reactor serves bob
    at once: the listing holds no thread and no reactor time between pieces.
    """
    fill(server.store.root / "alice" / "big", 200)
    (server.store.root / "bob" / "mine.txt").write_bytes(b"bob")
    alice = login(site, "alice")
    bob = HTTPDriver(site)
    assert bob.post_form(b"/login", {"username": "bob", "password": "bob-pw"}).status == 303
    pieces = HeldPieces(server)
    server.run_in_thread = pieces
    connection = Connection(site, alice)
    connection.head(b"GET", b"/files/big/?page=all")
    pieces.release()
    assert len(pieces.held) == 1  # alice's next piece: waiting
    server.run_in_thread = pieces.direct
    assert bob.get(b"/files/mine.txt").body == b"bob"
    server.run_in_thread = pieces
    while pieces.held:
        pieces.release()
    assert len(rows(parse_response(connection.transport.value()).body)) == 200


def test_a_client_that_reads_nothing_is_cut_and_the_walk_closed(tmp_path, small):
    from twisted.internet.task import Clock

    home = tmp_path / "home"
    fill(home / "big", 300)
    fs = JailedFS(home, ALL)
    scan = WatchedScan(fs.scan_dir("/big"))
    request, threads, clock = StreamRequest(), ManualThread(), Clock()
    aborted: list[bool] = []
    request.channel = type("Channel", (), {"transport": type(
        "Transport", (), {"abortConnection": lambda self: aborted.append(True)})()})()
    page_ = ListingPage(FolderView("/big", ALL, "t", page=None), scan,  # type: ignore[arg-type]
                        lambda: fs.scan_dir("/big"), "<top>", END)
    producer = PageProducer(request, page_.pieces(), threads, page_.closing,
                            close=page_.close, clock=clock, stall_timeout=30)
    producer.start()
    threads.run_next()
    producer.pauseProducing()
    threads.run_next()  # kept, not written
    clock.advance(29)
    producer.resumeProducing()  # a slow reader that reads is never cut
    threads.run_next()
    producer.pauseProducing()
    clock.advance(30)
    assert aborted == [True] and request.finished == 0
    assert len(threads.calls) == 1  # the piece in the making closes the walk
    threads.run_next()
    assert scan.closed and threads.calls == [] and not clock.getDelayedCalls()


def test_a_cut_while_paused_writes_the_kept_piece_then_the_end(tmp_path, small):
    request, threads, producer, _, scan = streamed(tmp_path, 300, page=None)
    threads.run_next()  # the top, written
    producer.pauseProducing()
    threads.run_next()  # the table's head: kept
    assert len(request.written) == 1
    producer.cut("account deleted")
    text = request.text()
    assert text.count("<table") == 1 and text.endswith("</tbody></table>" + END)
    assert "account deleted" in text and scan.closed and request.finished == 1


def test_find_searches_every_entry_of_a_big_folder(server, site, small):
    folder = server.store.root / "alice" / "big"
    fill(folder, 60)
    for index in range(30):
        (folder / f"Holiday {index:02d}.JPG").write_bytes(b"x")
    web = login(site, "alice")
    page1 = web.get(b"/files/big/").body.decode()
    assert "<form class=find method=get role=search>" in page1  # offered in a big folder
    # 30 matches, anywhere in the folder: more than the sort limit, so pages
    found = web.get(b"/files/big/?q=holiday").body.decode()
    assert len(rows(found.encode())) == 25 and all("Holiday" in n for n in rows(found.encode()))
    assert "of 30 matching (page 1 of 2)" in found
    assert "href='?page=2&amp;q=holiday' rel=next" in found
    rest = web.get(b"/files/big/?page=2&q=holiday").body
    assert len(rows(rest)) == 5
    assert sorted(rows(found.encode()) + rows(rest)) == sorted(
        f"Holiday {i:02d}.JPG" for i in range(30))
    # few matches: sorted as asked, the search kept in the sort links
    few = web.get(b"/files/big/?q=DAY%200&sort=name&order=desc").body.decode()
    assert rows(few.encode()) == [f"Holiday {i:02d}.JPG" for i in range(9, -1, -1)]
    assert "href='?sort=name&amp;order=asc&amp;q=DAY%200'" in few
    assert "id=found>Entries whose name contains \u201cDAY 0\u201d." in few
    none = web.get(b"/files/big/?q=%3Cb%3Enothing").body.decode()
    assert rows(none.encode()) == [] and "No entry's name contains that." in none
    assert "<b>nothing" not in none and "&lt;b&gt;nothing" in none  # the search, escaped


def test_find_stays_in_the_account_and_its_permissions(server, site, small):
    fill(server.store.root / "bob" / "big", 30)
    (server.store.root / "bob" / "big" / "secret plan.txt").write_bytes(b"x")
    fill(server.store.root / "alice" / "big", 30)
    alice, bob = login(site, "alice"), login(site, "bob")
    assert rows(alice.get(b"/files/big/?q=secret").body) == []
    assert rows(bob.get(b"/files/big/?q=secret").body) == ["secret plan.txt"]
    server.store.add("looker", "looker-pw", frozenset({"download"}))
    fill(server.store.root / "looker" / "big", 30)
    looker = login(site, "looker")
    assert looker.get(b"/files/big/?q=file").status == 403


def test_a_scan_stats_only_the_names_it_keeps(tmp_path, monkeypatch):
    folder = tmp_path / "home" / "d"
    fill(folder, 50)
    fs = JailedFS(tmp_path / "home", ALL)
    stats: list[str] = []

    class Item:
        def __init__(self, item: Any) -> None:
            self.name, self._item = item.name, item

        def stat(self, follow_symlinks: bool = True) -> Any:
            stats.append(self.name)
            return self._item.stat(follow_symlinks=follow_symlinks)

    real = DirScan._scan
    monkeypatch.setattr(DirScan, "_scan", lambda self: (Item(i) for i in real(self)))
    with fs.scan_dir("/d") as scan:
        kept = [e.name for e in scan.entries(lambda name: name.endswith("7.txt"))]
    assert sorted(kept) == ["file 0007.txt", "file 0017.txt", "file 0027.txt",
                            "file 0037.txt", "file 0047.txt"]
    assert sorted(stats) == sorted(kept)


def test_a_folder_swapped_for_a_link_between_pieces_is_not_followed(tmp_path, small):
    """
    The count of a big folder opens it again (after its rows): through the
    jail, so a folder replaced meanwhile by a link to another account's
    folder is refused, never counted or listed.
    """
    request, threads, _, _, _ = streamed(tmp_path, 60)
    other = tmp_path / "other"
    fill(other, 500)
    while threads.calls and b"</table>" not in b"".join(request.written):
        threads.run_next()
    assert threads.calls  # the count is next
    big = tmp_path / "home" / "big"
    big.rename(tmp_path / "home" / "big.old")
    big.symlink_to(other)
    run_all(threads, request)
    text = request.text()
    assert request.finished == 1 and text.endswith(END)
    assert "role=alert>The listing stopped here: " in text
    assert "500" not in text and "of 60" not in text


def test_a_later_page_lstats_only_what_it_shows(tmp_path, small):
    """
    Page 3 of a big folder: the 21 entries that tell it is big, then the
    names before the page are passed over unread, then the page's 25.  The
    pages in a row are the folder in the order of ``?page=all``.
    """
    request, threads, _, _, scan = streamed(tmp_path, 100, page=3)
    run_all(threads, request)
    assert scan.read == 21 + 25
    page3 = rows(request.text().encode())
    assert len(page3) == 25
    fs = JailedFS(tmp_path / "home", ALL)
    whole, threads2 = StreamRequest(), ManualThread()
    page_ = ListingPage(FolderView("/big", ALL, "t", page=None), fs.scan_dir("/big"),
                        lambda: fs.scan_dir("/big"), "<top>", END)
    PageProducer(whole, page_.pieces(), threads2, page_.closing, close=page_.close).start()
    run_all(threads2, whole)
    assert rows(whole.text().encode())[50:75] == page3
