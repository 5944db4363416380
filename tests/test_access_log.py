"""
The HTTPS access log: the account in the user field, client values escaped.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from rumpus_secure.web.sessions import SessionStore
from rumpus_secure.web.site import account_log_formatter


def request(app: Any, session_id: str | None, uri: bytes,
            agent: bytes = b"curl/8") -> Any:
    headers = {b"user-agent": agent}
    return SimpleNamespace(
        site=SimpleNamespace(app=app), method=b"GET", uri=uri, clientproto=b"HTTP/1.1",
        code=200, sentLength=12,
        getClientAddress=lambda: IPv4Address("TCP", "192.0.2.7", 5000),
        getHeader=headers.get,
        session=session_id,
    )


def make_app() -> tuple[Any, str, str]:
    sessions = SessionStore(Clock())
    alice, _ = sessions.create("alice")
    bob, _ = sessions.create("bob smith")
    app = SimpleNamespace(sessions=sessions, session_id=lambda r: r.session)
    return app, alice, bob


def test_each_request_names_its_own_account() -> None:
    app, alice, bob = make_app()
    stamp = "[30/Nov/2026:13:00:00 +0000]"
    line_a = account_log_formatter(stamp, request(app, alice, b"/files/"))
    line_b = account_log_formatter(stamp, request(app, bob, b"/files/"))
    line_none = account_log_formatter(stamp, request(app, None, b"/login"))
    assert line_a.startswith('"192.0.2.7" - alice [30/Nov/2026')
    assert line_b.startswith('"192.0.2.7" - bob\\x20smith [')  # one field
    assert line_none.startswith('"192.0.2.7" - - [')
    assert '"GET /files/ HTTP/1.1" 200 12 "-" "curl/8"' in line_a


def test_client_values_cannot_forge_a_line() -> None:
    app, alice, _ = make_app()
    line = account_log_formatter(
        "[t]", request(app, alice, b'/x"\r\n"1.2.3.4" - root [t] "GET /',
                       agent=b"evil\"\n\x1b[31m"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.count('"') - line.count('\\"') == 8  # four quoted fields
