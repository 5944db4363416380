"""
The incremental multipart parser and the session store, without a site.
"""

from __future__ import annotations

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
