"""
The xferlog line (wu-ftpd xferlog(5), as vsftpd writes it), the file writer
and the console line per transfer, fed from the audit stream.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from twisted.logger import Logger, eventAsText

from rumpus_secure.audit import JSONLinesAuditLog, MemoryAuditLog
from rumpus_secure.xferlog import (
    TransferConsole,
    XferLog,
    install,
    safe_field,
    xferlog_line,
)

#: 2026-03-04 05:06:07 UTC.
MOMENT = 1772600767.0


def upload(**fields: Any) -> dict[str, Any]:
    log = MemoryAuditLog(clock=lambda: MOMENT)
    values = {"client": "192.0.2.7", "protocol": "ftps-explicit", "account": "alice",
              "path": "/docs/report.pdf", "bytes": 1048576, "seconds": 2.6,
              "type": "binary", "outcome": "complete"}
    values.update(fields)
    log.record("ftp.upload", **values)
    return log.events[0]


def test_line_has_the_fourteen_fields() -> None:
    line = xferlog_line(upload())
    assert line is not None
    # ctime(3) in local time, the day padded with a space: what wu-ftpd writes.
    date = time.ctime(MOMENT)
    assert line.startswith(date + " ")
    rest = line[len(date) + 1:].split(" ")
    assert rest == ["3", "192.0.2.7", "1048576", "/docs/report.pdf", "b", "_", "i",
                    "r", "alice", "ftp", "0", "*", "c"]


def test_download_ascii_incomplete_and_short_transfer() -> None:
    entry = upload(path="/a.txt", bytes=10, seconds=0.01, type="ascii",
                   outcome="truncated")
    entry["event"] = "ftp.download"
    rest = xferlog_line(entry).split(" ")[-13:]  # type: ignore[union-attr]
    assert rest[0] == "1"  # at least one second, as wu-ftpd
    assert rest[4:7] == ["a", "_", "o"]
    assert rest[-1] == "i"


def test_names_can_never_break_a_line() -> None:
    nasty = "/new\r\nFri Jan  1 00:00:00 2027 1 6.6.6.6 1 /forged b _ i r root ftp 0 * c"
    line = xferlog_line(upload(path=nasty, account="bad user"))
    assert line is not None
    assert "\n" not in line and "\r" not in line
    rest = line.split(" ")[-13:]
    assert rest[3].startswith("/new??Fri_Jan__1")
    assert rest[8] == "bad_user"
    assert len(line.split(" ")) == len(xferlog_line(upload()).split(" "))  # type: ignore[union-attr]
    assert safe_field("tab\there\x7f") == "tab?here?"
    assert safe_field("") == "-"


def test_only_ftp_transfers_are_lines() -> None:
    log = MemoryAuditLog()
    log.record("ftp.delete", account="alice", path="/x")
    log.record("web.upload", account="alice", path="/x", size=3)
    assert [xferlog_line(e) for e in log.events] == [None, None]


def test_writer_appends_from_the_audit_stream(tmp_path: Path) -> None:
    audit = JSONLinesAuditLog(tmp_path / "audit.log", clock=lambda: MOMENT)
    path = tmp_path / "xferlog"
    install(audit, path)
    audit.record("ftp.upload", client="192.0.2.7", account="alice", path="/a",
                 bytes=5, seconds=0.2, type="binary", outcome="complete")
    audit.record("ftp.login", client="192.0.2.7", account="alice", outcome="ok")
    audit.record("ftp.download", client="192.0.2.8", account="bob", path="/b",
                 bytes=7, seconds=0.2, type="binary", outcome="aborted")
    lines = path.read_text().splitlines()
    assert [line.split(" ")[-13:][1:4] for line in lines] == [
        ["192.0.2.7", "5", "/a"], ["192.0.2.8", "7", "/b"]]
    assert [line[-1] for line in lines] == ["c", "i"]
    # The audit log still has every event.
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 3
    # Moved away (logrotate): the next line starts a new file.
    path.rename(tmp_path / "xferlog.1")
    audit.record("ftp.upload", client="192.0.2.7", account="alice", path="/c",
                 bytes=1, seconds=1, type="binary", outcome="complete")
    assert len(path.read_text().splitlines()) == 1


def test_unwritable_xferlog_never_stops_the_audit(tmp_path: Path) -> None:
    audit = MemoryAuditLog()
    audit.add_observer(XferLog(tmp_path / "no-such-dir" / "xferlog"))
    audit.record("ftp.upload", account="alice", path="/a", bytes=1, seconds=1,
                 outcome="complete")
    assert len(audit.named("ftp.upload")) == 1


def test_broken_observer_does_not_stop_others() -> None:
    audit = MemoryAuditLog()
    seen: list[str] = []

    def broken(entry: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    audit.add_observer(broken)
    audit.add_observer(lambda entry: seen.append(entry["event"]))
    audit.record("ftp.login", account="alice", outcome="ok")
    assert seen == ["ftp.login"] and len(audit.events) == 1


def test_console_line_names_the_account() -> None:
    logged: list[dict[str, Any]] = []
    console = TransferConsole(Logger(observer=logged.append))
    console(upload())
    console({"event": "ftp.login", "account": "alice"})
    console({"event": "web.upload", "account": "bob", "path": "/w.txt", "size": 9,
             "client": "192.0.2.9"})
    texts = [eventAsText(e, includeTimestamp=False) for e in logged]
    assert len(texts) == 2
    assert "alice" in texts[0] and "/docs/report.pdf" in texts[0]
    assert "upload complete" in texts[0] and "1048576 bytes" in texts[0]
    assert "web upload" in texts[1] and "bob" in texts[1] and "9 bytes" in texts[1]


def test_unwritable_xferlog_stops_start_up_with_one_line(tmp_path: Path) -> None:
    import pytest
    from twisted.internet.testing import MemoryReactorClock

    from rumpus_secure import tap

    with pytest.raises(SystemExit) as e:
        tap.makeService({"data-dir": str(tmp_path / "data"),
                         "xferlog": str(tmp_path / "missing" / "xferlog")},
                        reactor=MemoryReactorClock())
    message = str(e.value.code)
    assert message.startswith("rumpus-secure: error: --xferlog ")
    assert "No such file or directory" in message and "\n" not in message


def test_audit_log_stays_open_and_follows_logrotate(tmp_path: Path) -> None:
    """
    The audit file is held open between records; once the path names
    another file (moved by logrotate, or deleted), the records after the
    next check go to a new one, and none is lost on the way.
    """
    now = [100.0]
    path = tmp_path / "audit.log"
    audit = JSONLinesAuditLog(path, clock=lambda: MOMENT, monotonic=lambda: now[0])
    before = len(os.listdir("/proc/self/fd"))
    for index in range(50):
        audit.record("ftp.login", account="alice", n=index)
    assert len(os.listdir("/proc/self/fd")) == before + 1  # one file, held
    path.rename(tmp_path / "audit.log.1")
    audit.record("ftp.login", account="alice", n=50)  # this second: the moved file
    now[0] += 1.0
    audit.record("ftp.login", account="alice", n=51)
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [51]
    moved = (tmp_path / "audit.log.1").read_text().splitlines()
    assert [json.loads(line)["n"] for line in moved] == list(range(51))
    path.unlink()
    now[0] += 1.0
    audit.record("ftp.login", account="alice", n=52)
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [52]
    audit.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_audit_log_rotates_by_size_while_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = JSONLinesAuditLog(path, max_bytes=1000, keep=3, clock=lambda: MOMENT)
    for index in range(40):
        audit.record("ftp.login", account="alice", n=index)
    assert path.stat().st_size <= 1000
    names = ("audit.log.3", "audit.log.2", "audit.log.1", "audit.log")
    numbers = [json.loads(line)["n"] for name in names
               for line in (tmp_path / name).read_text().splitlines()]
    # Oldest first, none missing from the files kept, the newest last.
    assert numbers == list(range(numbers[0], 40))
    assert not (tmp_path / "audit.log.4").exists()
    audit.close()


def test_a_dropped_audit_log_closes_its_file(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    audit = JSONLinesAuditLog(tmp_path / "audit.log")
    audit.record("ftp.login", account="alice")
    assert len(os.listdir("/proc/self/fd")) == before + 1
    del audit
    assert len(os.listdir("/proc/self/fd")) == before


def _slow_safe_field(text: str) -> str:
    """The character loop of L{safe_field}, for comparing its fast path."""
    out = []
    for ch in text:
        if ch == " ":
            out.append("_")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "\u0085\u2028\u2029":
            out.append("?")
        else:
            out.append(ch)
    return "".join(out) or "-"


def test_safe_field_fast_path_gives_the_loops_answer() -> None:
    """
    The fast path for printable names changes nothing the loop would
    change: every replaced character, and names near them, agree.
    """
    samples = ["", "a", "/docs/report.pdf", "a b", "a\tb", "x\r\ny", "del\x7f",
               "nel\x85", "ls\u2028ps\u2029", "nbsp\u00a0", "é/ü/日本.txt",
               "zw\u200bsp", "\x00", "bidi\u202e", "\U0001f600.png", " "]
    samples += [chr(c) for c in range(0, 0x3000)]
    for text in samples:
        assert safe_field(text) == _slow_safe_field(text), repr(text)


def test_console_line_is_the_eight_field_text_with_the_fields_kept() -> None:
    """
    The line is formatted once by us: the text is what the eight-field
    format gave through Twisted's formatter, and each field is still in the
    event for structured observers.
    """
    logged: list[dict[str, Any]] = []
    TransferConsole(Logger(observer=logged.append))(upload(path="/a b/r\x07.pdf"))
    [event] = logged
    fields = ("protocol", "direction", "outcome", "account", "path", "bytes",
              "seconds", "client")
    as_before = dict(event, log_format=TransferConsole.FORMAT)
    assert eventAsText(event, includeTimestamp=False) == eventAsText(
        as_before, includeTimestamp=False)
    text = ("ftps-explicit upload complete: alice /a_b/r?.pdf (1048576 bytes, 2.6 s) "
            "from 192.0.2.7")
    assert eventAsText(event, includeTimestamp=False, includeSystem=False) == text
    # Formatted once, before the logger: the observers format one field.
    assert event["line"] == text and event["log_format"] == "{line}"
    assert {name: event[name] for name in fields} == {
        "protocol": "ftps-explicit", "direction": "upload", "outcome": "complete",
        "account": "alice", "path": "/a_b/r?.pdf", "bytes": 1048576, "seconds": 2.6,
        "client": "192.0.2.7"}
