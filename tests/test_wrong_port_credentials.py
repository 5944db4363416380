"""
Credentials a careless client sent in the clear to a TLS port are found in
the bytes the wrong-port sniffer holds.
"""

from __future__ import annotations

import base64

from rumpus_secure.wrong_port_credentials import (
    ftp_credentials,
    http_credentials,
    watch_wrong_port,
)


def test_pipelined_user_and_pass() -> None:
    assert ftp_credentials(b"USER erin\r\nPASS s3cret pw\r\n") == ("erin", "s3cret pw")
    assert ftp_credentials(b"user erin\npass x\n") == ("erin", "x")
    assert ftp_credentials(b"PASS alone\r\n") == (None, "alone")
    assert ftp_credentials(b"USER erin\r\n") is None
    assert ftp_credentials(b"FEAT\r\n") is None


def test_http_basic_form_and_query() -> None:
    token = base64.b64encode(b"alice:app pw").decode()
    assert http_credentials(
        f"GET /files/ HTTP/1.1\r\nAuthorization: Basic {token}\r\n\r\n".encode()
    ) == ("alice", "app pw")
    assert http_credentials(
        f"GET / HTTP/1.1\r\nProxy-Authorization: basic {token}\r\n\r\n".encode()
    ) == ("alice", "app pw")
    body = b"username=dave&password=real%20one"
    assert http_credentials(
        b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body) == ("dave", "real one")
    assert http_credentials(b"GET /login?username=x&passwd=y HTTP/1.1\r\n\r\n") == ("x", "y")
    # Nothing there: a plain page, a bad token, a multipart body not parsed.
    assert http_credentials(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") is None
    assert http_credentials(b"GET / HTTP/1.1\r\nAuthorization: Basic !!\r\n\r\n") is None
    assert http_credentials(b"") is None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def offence(self, client: str, kind: str, **fields: object) -> None:
        self.calls.append(("offence", client, kind))

    def check(self, **fields: object) -> None:
        self.calls.append(("check", str(fields["client"]), str(fields["user"]),
                           str(fields["password"]), str(fields["protocol"])))


def test_the_observer_checks_and_scores_only_when_credentials_are_there() -> None:
    recorder = Recorder()

    class Server:
        guard = recorder
        exposure = recorder

    observe = watch_wrong_port(Server(), "ftp", ftp_credentials)
    observe(b"", "192.0.2.1")  # silence: nothing
    observe(b"FEAT\r\n", "192.0.2.1")  # a command, no password
    assert recorder.calls == []
    observe(b"USER erin\r\nPASS pw\r\n", "192.0.2.2")
    assert recorder.calls == [("offence", "192.0.2.2", "cleartext_login"),
                              ("check", "192.0.2.2", "erin", "pw", "ftp")]
