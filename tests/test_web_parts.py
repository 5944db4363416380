"""
The incremental multipart parser and the session store, without a site.
"""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from rumpus_secure.web.download import Unsatisfiable, content_disposition, parse_range
from rumpus_secure.web.multipart import (
    MultipartError,
    MultipartParser,
    boundary_from_content_type,
    parse_header_params,
)
from rumpus_secure.web.sessions import SessionStore
from tests.manual_thread import ManualThread
from tests.test_web_support import multipart


class Collect:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytes]] = []

    def part_begin(self, headers):
        self.parts.append((headers, b""))

    def part_data(self, data):
        headers, body = self.parts[-1]
        self.parts[-1] = (headers, body + data)

    def part_end(self):
        pass


@settings(max_examples=200, deadline=None)
@given(files=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=30))
def test_any_split_gives_the_same_parts(files, cuts):
    body, ctype = multipart([("file", f"f{i}", data) for i, data in enumerate(files)])
    sink = Collect()
    parser = MultipartParser(boundary_from_content_type(ctype), sink)
    position = 0
    for cut in cuts:
        parser.feed(body[position:position + cut])
        position += cut
    parser.feed(body[position:])
    parser.close()
    assert [data for _, data in sink.parts] == files


def test_truncated_body_is_an_error():
    body, ctype = multipart([("file", "f", b"abc")])
    parser = MultipartParser(boundary_from_content_type(ctype), Collect())
    parser.feed(body[:-10])
    with pytest.raises(MultipartError):
        parser.close()


def test_header_too_long():
    parser = MultipartParser(b"b", Collect())
    with pytest.raises(MultipartError):
        parser.feed(b"--b\r\nX: " + b"a" * 20000)


def test_params():
    assert parse_header_params('form-data; name="file"; filename="a;b.txt"') == (
        "form-data", {"name": "file", "filename": "a;b.txt"})
    assert parse_header_params("form-data; filename*=UTF-8''%C3%A9.txt; filename=\"e.txt\"")[1][
        "filename"] == "\u00e9.txt"
    assert boundary_from_content_type(b"text/plain; boundary=x") is None
    assert boundary_from_content_type(b'multipart/form-data; boundary="a b"') == b"a b"


@pytest.mark.parametrize("header,expected", [
    (b"bytes=0-9", (0, 9)), (b"bytes=5-", (5, 99)), (b"bytes=-5", (95, 99)),
    (b"bytes=90-500", (90, 99)), (b"bytes=0-1,5-6", None), (b"items=0-1", None),
    (b"bytes=9-2", None), (b"bytes=x-", None), (None, None),
])
def test_ranges(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", [b"bytes=100-", b"bytes=-0", b"bytes=200-300"])
def test_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


def test_disposition_never_breaks_the_header():
    value = content_disposition('evil"\r\nSet-Cookie: x.txt')
    assert b"\r" not in value and b"\n" not in value
    assert value.count(b'"') == 2


def test_sessions_expire_by_clock():
    clock = Clock()
    store = SessionStore(clock, idle=10, absolute=25)
    sid, session = store.create("alice")
    assert store.get(sid) is session
    clock.advance(9)
    assert store.get(sid) is session
    clock.advance(9)
    assert store.get(sid) is session
    clock.advance(9)  # 27 s since creation
    assert store.get(sid) is None
    assert len(store) == 0
    assert not clock.getDelayedCalls()


def test_session_ids_are_random_and_unguessable():
    store = SessionStore(Clock())
    ids = {store.create("a")[0] for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 43 for i in ids)
    assert store.get("x" * 43) is None and store.get("") is None and store.get("y" * 500) is None


def test_end_user():
    store = SessionStore(Clock())
    a, _ = store.create("alice")
    b, _ = store.create("bob")
    store.end_user("alice")
    assert store.get(a) is None and store.get(b) is not None


# -- sessions kept across a restart -------------------------------------------


def restarted(db, clock):
    """
    A new store on the same database, as after a restart.
    """
    from rumpus_secure.web.sessions import SQLiteSessions

    store = SessionStore(clock, idle=100, absolute=1000, persistence=SQLiteSessions(db))
    store.load()
    return store


def test_sessions_survive_a_restart(tmp_path):
    import sqlite3

    db = tmp_path / "accounts.sqlite3"
    clock = Clock()
    clock.advance(1_800_000_000)
    first = restarted(db, clock)
    alice, session = first.create("alice")
    bob, _ = first.create("bob")
    carol, _ = first.create("carol")
    first.end(bob)  # logged out
    clock.advance(90)
    first.get(alice)  # seen again: the idle timer restarts
    first.flush()
    clock.advance(50)  # carol idle 140 s > 100, alice 50 s
    second = restarted(db, clock)
    back = second.get(alice)
    assert back is not None and (back.user, back.csrf) == ("alice", session.csrf)
    assert second.get(bob) is None and second.get(carol) is None
    # Only hashes of the ids are stored, never an id itself.
    keys = [bytes(k) for (k,) in sqlite3.connect(db).execute("SELECT key FROM web_sessions")]
    assert len(keys) == 1 and alice.encode() not in keys[0] and len(keys[0]) == 32
    second.end_user("alice")
    assert restarted(db, clock).get(alice) is None


def test_sessions_are_written_in_a_thread_in_order(tmp_path):
    from twisted.internet import defer

    from rumpus_secure.web.sessions import SQLiteSessions

    calls = []

    def run(function, *args):
        calls.append(function.__name__)
        return defer.maybeDeferred(function, *args)

    store = SessionStore(Clock(), persistence=SQLiteSessions(tmp_path / "s.db"),
                         run_in_thread=run)
    sid, _ = store.create("alice")
    store.get(sid)
    store.flush()
    store.end(sid)
    assert calls == ["save", "touch", "delete"]


def test_the_keeper_flushes_every_minute_and_at_stop(tmp_path):
    from rumpus_secure.web.sessions import FLUSH_INTERVAL, SessionKeeper, SQLiteSessions

    db = tmp_path / "accounts.sqlite3"
    clock = Clock()
    clock.advance(1_800_000_000)
    store = SessionStore(clock, idle=1000, persistence=SQLiteSessions(db))
    keeper = SessionKeeper(store, clock)
    keeper.startService()
    sid, _ = store.create("alice")
    clock.advance(FLUSH_INTERVAL)
    store.get(sid)
    seen = clock.seconds()
    clock.advance(FLUSH_INTERVAL)  # the timer writes it
    assert SQLiteSessions(db).load(0, 0)[0][1].last_seen == seen
    clock.advance(10)
    store.get(sid)
    stopped = keeper.stopService()
    assert stopped.called and not clock.getDelayedCalls()
    assert SQLiteSessions(db).load(0, 0)[0][1].last_seen == clock.seconds()


# -- FileProducer: the file is read in a thread, one chunk ahead -----------


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeRequest:
    """
    Just what L{FileProducer} uses of a request.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer = None
        self.finished = False
        self.channel = type("Channel", (), {})()
        self.channel.transport = FakeTransport()

    def registerProducer(self, producer, streaming) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True


def producer_for(data: bytes):
    from rumpus_secure.web.download import FileProducer

    request, thread, handle = FakeRequest(), ManualThread(), io.BytesIO(data)
    producer = FileProducer(request, handle, len(data), thread)
    return producer, request, thread, handle


def test_file_is_read_only_through_the_thread_and_one_chunk_ahead():
    from rumpus_secure.web.download import CHUNK

    data = os.urandom(2 * CHUNK + 5)
    producer, request, thread, handle = producer_for(data)
    producer.start()
    # Nothing is read on the calling (reactor) thread.
    assert request.written == [] and len(thread.calls) == 1
    assert thread.calls[0][0] == handle.read
    thread.run_next()
    # The first chunk went out and the second read is already under way.
    assert len(request.written) == 1 and len(thread.calls) == 1
    thread.run_next()
    thread.run_next()
    assert b"".join(request.written) == data
    assert request.finished and request.producer is None and handle.closed


def test_a_read_that_lands_while_paused_waits_for_resume():
    from rumpus_secure.web.download import CHUNK

    data = os.urandom(CHUNK + 1)
    producer, request, thread, handle = producer_for(data)
    producer.start()
    producer.pauseProducing()
    thread.run_next()
    assert request.written == [] and thread.calls == []  # held, nothing more read
    producer.resumeProducing()
    assert request.written == [data[:CHUNK]] and len(thread.calls) == 1
    thread.run_next()
    assert b"".join(request.written) == data and request.finished


def test_a_file_that_shrinks_cuts_the_connection():
    data = b"x" * 1000
    producer, request, thread, handle = producer_for(data)
    handle.truncate(0)
    producer.start()
    thread.run_next()
    assert request.channel.transport.aborted and not request.finished
    assert handle.closed


def test_stopped_while_reading_closes_the_file_when_the_read_returns():
    producer, request, thread, handle = producer_for(b"y" * 100)
    producer.start()
    producer.stopProducing()
    assert not handle.closed  # the thread is still reading it
    thread.run_next()
    assert handle.closed and request.written == []
