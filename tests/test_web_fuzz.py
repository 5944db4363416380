"""
Property-based fuzzing of the web listeners, in memory: whatever the path,
query, method or form fields, the answer is never a ``500`` and nothing is
logged at error or critical level (no traceback).

Each example is one whole request through twisted.web (our request
classes, resources and the jailed filesystem, for real) over a
L{StringTransport}.  CI runs a few dozen examples per test; set
``RUMPUS_FUZZ=long`` for the thorough run (thousands), e.g.::

    RUMPUS_FUZZ=long .venv/bin/python -m pytest -q tests/test_web_fuzz.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher

from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server

# twisted.web's own 405 page is built with a class it has deprecated.
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.web.resource._UnsafeErrorPage:DeprecationWarning")

settings.register_profile("rumpus-web-ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("rumpus-web-long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(
    "rumpus-web-long" if os.environ.get("RUMPUS_FUZZ") == "long" else "rumpus-web-ci")

#: Names that have broken paths before, mixed with arbitrary text.
TRICKY = ["", ".", "..", "...", "%00", "%0d%0a", "%0A", "%2F", "%2e%2e", "*", "~",
          ".rumpus-upload-x.part", ".rumpus-upload-", "a b", "%ff%fe", "%C3%A9",
          "%", "%zz", "con", "\\", "//", "?", "#", "%25"]
ROUTES = [b"", b"files", b"upload", b"mkdir", b"rename", b"delete", b"login",
          b"logout", b"static", b"nope", b"*"]

segment = st.one_of(
    st.sampled_from(TRICKY),
    st.text(min_size=0, max_size=12).map(lambda t: quote(t.encode("utf-8", "surrogatepass"),
                                                         safe="")),
    st.binary(max_size=8).map(lambda b: quote(b, safe="")),
)
query_value = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20), st.binary(max_size=8))
form_keys = st.sampled_from(["csrf", "dir", "name", "path", "username", "password",
                             "next", "sort", "order", "x"])


@st.composite
def targets(draw: Any) -> bytes:
    route = draw(st.sampled_from(ROUTES))
    parts = draw(st.lists(segment, max_size=4))
    path = b"/" + route + (b"/" + "/".join(parts).encode("ascii") if parts else b"")
    if route == b"*":
        path = b"*"
    args = draw(st.lists(st.tuples(form_keys, query_value), max_size=3))
    if args:
        path += b"?" + urlencode(args).encode("ascii")
    return path


@pytest.fixture(scope="module")
def errors():
    """Log events at error level or above (tracebacks are critical)."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def _world(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "correct horse")
    home = Path(server.store.get("alice").home)
    (home / "docs").mkdir()
    (home / "docs" / "a.txt").write_bytes(b"a")
    (home / "line\nbreak").write_bytes(b"x")
    (home / "not-utf8-\xff".encode("latin-1").decode("utf-8", "surrogateescape")).write_bytes(b"y")
    site = build_https_site(server, server.reactor)
    web = HTTPDriver(site)
    assert web.post_form(b"/login", {"username": "alice", "password": "correct horse"}
                         ).status == 303
    token = re.search(r"name=csrf value='([^']+)'", web.get(b"/files/").body.decode()).group(1)
    return server, site, web, token


def _check(response: Any, errors: list[dict[str, Any]], what: Any) -> None:
    assert response.status < 500 or response.status == 507, what  # 507: disk full
    assert not errors, (what, [e.get("log_format") for e in errors])


def _safe_request(web: HTTPDriver, *args: Any, **kw: Any) -> Any:
    from tests.test_web_support import Response

    try:
        return web.request(*args, **kw)
    except (IndexError, ValueError):
        # No parsable answer: twisted.web dropped a request it could not
        # parse (a bare close, never a 500).
        return Response(400, {}, b"")


def test_fuzz_https_paths(tmp_path_factory, errors):
    server, site, web, token = _world(tmp_path_factory.mktemp("paths"))
    stranger = HTTPDriver(site)

    @settings(PROFILE)
    @given(method=st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"PUT", b"DELETE"]),
           target=targets(), logged_in=st.booleans())
    def check(method: bytes, target: bytes, logged_in: bool) -> None:
        errors.clear()
        client = web if logged_in else stranger
        response = _safe_request(client, method, target,
                                 body=b"" if method in (b"POST", b"PUT") else None)
        _check(response, errors, (method, target))

    check()


def test_fuzz_https_forms(tmp_path_factory, errors):
    server, site, web, token = _world(tmp_path_factory.mktemp("forms"))

    @settings(PROFILE)
    @given(route=st.sampled_from([b"/mkdir", b"/rename", b"/delete", b"/login",
                                  b"/logout", b"/upload?dir=/", b"/files/", b"/nope"]),
           fields=st.lists(st.tuples(form_keys, query_value), max_size=5),
           with_token=st.booleans(),
           content_type=st.sampled_from([b"application/x-www-form-urlencoded",
                                         b"multipart/form-data; boundary=zz",
                                         b"multipart/form-data", b"text/plain",
                                         b"application/x-www-form-urlencoded; charset=x"]),
           raw=st.one_of(st.none(), st.binary(max_size=300)))
    def check(route: bytes, fields: list[tuple[str, Any]], with_token: bool,
              content_type: bytes, raw: bytes | None) -> None:
        errors.clear()
        if with_token:
            fields = [("csrf", token)] + fields
        body = raw if raw is not None else urlencode(fields).encode("ascii")
        response = _safe_request(web, b"POST", route, body=body,
                                 headers={b"content-type": content_type})
        _check(response, errors, (route, fields, content_type, raw))
        # The session survives whatever was posted (unless it logged out).
        if route == b"/logout" and response.status == 303:
            web.post_form(b"/login", {"username": "alice", "password": "correct horse"})

    check()


def test_fuzz_plain_http(tmp_path_factory, errors):
    server = make_server(tmp_path_factory.mktemp("plain"))
    web = HTTPDriver(build_http_site(server, server.reactor), origin=None)

    @settings(PROFILE)
    @given(method=st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"CONNECT"]),
           target=targets())
    def check(method: bytes, target: bytes) -> None:
        errors.clear()
        response = _safe_request(web, method, target)
        _check(response, errors, (method, target))

    check()
