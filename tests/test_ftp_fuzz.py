"""
Fuzz the FTP control protocol in memory with arbitrary command lines.

Whatever a client sends, before TLS, after AUTH TLS, logged in, on the
implicit port or in allow-plain mode: every reply is a well-formed FTP reply,
none is 451 (a handler that failed), and nothing is logged at critical level.
Before issue #12, ``NOOP x``, ``PASV x`` and ``STOU /`` each gave 451 and a
critical traceback.

The number of examples is small by default (CI); ``RUMPUS_FUZZ=long`` selects
the ``rumpus-long`` hypothesis profile for a longer run.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher

from rumpus_secure.ftp.error_reports import ErrorReports

from .ftp_fakes import connect, make_server

settings.register_profile(
    "rumpus-ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "rumpus-long", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(
    "rumpus-long" if os.environ.get("RUMPUS_FUZZ") == "long" else "rumpus-ci")

VERBS = [
    "USER", "PASS", "ACCT", "CWD", "XCWD", "CDUP", "XCUP", "QUIT", "REIN", "PORT",
    "PASV", "TYPE", "STRU", "MODE", "RETR", "STOR", "STOU", "APPE", "ALLO",
    "REST", "RNFR", "RNTO", "ABOR", "DELE", "RMD", "XRMD", "MKD", "XMKD", "PWD",
    "XPWD", "LIST", "NLST", "SITE", "SYST", "STAT", "HELP", "NOOP", "FEAT",
    "OPTS", "AUTH", "PBSZ", "PROT", "CCC", "EPRT", "EPSV", "MLSD", "MLST",
    "SIZE", "MDTM", "MFMT", "HASH", "CLNT", "HOST", "LANG", "XYZ",
]
ARGUMENTS = ["", " ", "x", "/", "..", "../..", "a b", "0", "-1", "99999999999999999999",
             "TLS", "SSL", "P", "C", "I", "A N", "UTF8 ON", "HASH SHA-1", "MLST type;",
             "|1|127.0.0.1|2000|", "127,0,0,1,7,208", "20990101000000 f",
             "\x00", "\udcff", "-la", "f\tg", "%s%n"]

verb = st.one_of(st.sampled_from(VERBS), st.sampled_from(VERBS), st.text(max_size=6))
argument = st.one_of(st.sampled_from(ARGUMENTS), st.text(max_size=20))
command = st.one_of(
    st.tuples(verb, st.none()).map(lambda t: t[0]),
    st.tuples(verb, argument).map(lambda t: f"{t[0]} {t[1]}"),
)
line = st.one_of(command, command, command,
                 st.text(max_size=30).map(lambda t: t.replace("\n", " ")))
raw_line = st.one_of(
    line.map(lambda t: t.encode("utf-8", "surrogateescape")),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
)

START = ["plain", "tls", "login", "allow-plain", "implicit"]

_REPLY = re.compile(r"^[1-5][0-5]\d([ -])")


def check_replies(lines: list[str]) -> None:
    """
    Every line is a reply ("ddd text"), part of a multi-line reply
    ("ddd-", lines, "ddd "), and no reply is 451.
    """
    open_code: str | None = None
    for text in lines:
        if open_code is not None:
            if text.startswith(open_code + " "):
                open_code = None
            continue
        match = _REPLY.match(text)
        assert match, f"not an FTP reply: {text!r} in {lines!r}"
        assert not text.startswith("451"), lines
        if match.group(1) == "-":
            open_code = text[:3]
    assert open_code is None, f"unterminated multi-line reply in {lines!r}"


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def drive(start: str, lines: list[bytes]) -> list[str]:
    """One session from C{start}, fed C{lines} one by one; its replies."""
    with tempfile.TemporaryDirectory() as directory:
        config: dict[str, Any] = {}
        if start == "allow-plain":
            config = {"ftp_security": "allow-plain", "data_tls": "optional"}
        server = make_server(Path(directory), **config)
        proto, transport, reactor = connect(server, implicit=start == "implicit")
        (Path(directory) / "files" / "alice").mkdir(parents=True, exist_ok=True)
        (Path(directory) / "files" / "alice" / "f").write_bytes(b"data\n")
        if start == "implicit":
            proto.handshakeCompleted()
        if start in ("tls", "login"):
            proto.dataReceived(b"AUTH TLS\r\n")
        if start == "login":
            proto.dataReceived(b"USER alice\r\nPASS right\r\n")
            assert proto.account == "alice"
        for raw in lines:
            if transport.disconnecting:
                break
            proto.dataReceived(raw + b"\r\n")
            reactor.advance(1)
        reactor.advance(120)  # data-connection and cleartext-watch timers
        replies = transport.value().decode("utf-8", "surrogateescape").split("\r\n")
        proto.connectionLost()
        return [r for r in replies if r]


@settings(PROFILE)
@given(start=st.sampled_from(START), lines=st.lists(raw_line, max_size=12))
def test_any_input_gets_well_formed_replies(start: str, lines: list[bytes]) -> None:
    with captured_log() as events:
        replies = drive(start, lines)
    check_replies(replies)
    critical = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert not critical, critical


# -- the cases of issue #12, one by one ----------------------------------


def test_arguments_to_commands_that_take_none_get_501() -> None:
    before_tls = drive("plain", [b"NOOP x", b"SYST x", b"FEAT x", b"QUIT x"])
    assert [r[:3] for r in before_tls[1:5]] == ["501"] * 4
    allow_plain = drive("allow-plain", [b"CCC x"])
    assert allow_plain[1].startswith("501 ")
    logged_in = drive("login", [b"PASV x", b"NOOP ", b"PWD"])
    assert [r[:3] for r in logged_in[-3:]] == ["501", "200", "257"]


def test_stou_on_the_top_directory_gets_553() -> None:
    replies = drive("login", [b"PBSZ 0", b"PROT P", b"PASV", b"STOU /",
                              b"PASV", b"STOU .."])
    assert [r[:3] for r in replies[-4:]] == ["227", "553", "227", "553"]


def test_unexpected_errors_are_logged_once_per_verb_without_the_argument() -> None:
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    clock = Clock()
    reports = ErrorReports(clock, interval=60)
    with captured_log() as events:
        for _ in range(200):
            try:
                raise KeyError("the-secret-argument")
            except KeyError:
                reports.report("PASS", Failure(), authenticated=False)
        clock.advance(61)
        try:
            raise KeyError("x")
        except KeyError:
            reports.report("PASS", Failure(), authenticated=False)
    lines = [e for e in events if e.get("log_namespace", "").endswith("error_reports")]
    assert len(lines) == 2 and reports.count == 201
    assert all(e["log_level"] == LogLevel.error for e in lines)
    assert lines[1]["skipped"] == 199
    text = repr(lines)
    assert "the-secret-argument" not in text and "Traceback" not in text


def test_a_failing_handler_gives_a_short_451_and_no_critical_log(
        tmp_path: Path, monkeypatch: Any) -> None:
    from rumpus_secure.ftp.control import ControlProtocol

    def broken(self: Any) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(ControlProtocol, "ftp_SYST", broken, raising=True)
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    # A second client, same address, in the window: unaffected.
    other, other_transport, _ = connect(server)
    with captured_log() as events:
        for _ in range(50):
            proto.dataReceived(b"SYST\r\n")
        other.dataReceived(b"NOOP\r\n")
    replies = transport.lines()
    assert replies[1:] == ["451 Local error: the command could not be completed."] * 50
    assert other_transport.lines()[-1] == "200 OK."
    logged = [e for e in events if e.get("log_level", LogLevel.debug) >= LogLevel.error]
    assert len(logged) == 1
    assert logged[0]["log_level"] == LogLevel.error and logged[0]["verb"] == "SYST"


def test_a_type_error_inside_a_handler_is_not_a_missing_argument(
        tmp_path: Path, monkeypatch: Any) -> None:
    from rumpus_secure.ftp.control import ControlProtocol

    def broken(self: Any) -> str:
        raise TypeError("f() missing 1 required positional argument: 'x'")

    monkeypatch.setattr(ControlProtocol, "ftp_SYST", broken, raising=True)
    server = make_server(tmp_path)
    proto, transport, _ = connect(server)
    proto.dataReceived(b"SYST\r\nAUTH\r\n")
    assert [r[:3] for r in transport.lines()[1:]] == ["451", "501"]


def test_an_empty_eprt_argument_gets_501() -> None:
    """Found by the fuzz test: Twisted's parser raised IndexError (451)."""
    replies = drive("login", [b"EPRT ", b"EPRT |", b"NOOP"])
    assert [r[:3] for r in replies[-3:]] == ["501", "501", "200"]
