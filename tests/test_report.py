"""
Tests for L{rumpus_secure.report} and ``rumpus-secure audit``, on synthetic
audit logs.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.cli import main
from rumpus_secure.report import (
    PROBE_ACCOUNT,
    PROBE_SOFTWARE,
    build_report,
    format_text,
    parse_since,
    printable,
)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def _at(hours_ago: float) -> str:
    moment = NOW - timedelta(hours=hours_ago)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write(path: Path, events: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(event) + "\n" for event in events)


def _events() -> list[dict[str, Any]]:
    return [
        # An old FileZilla without TLS, twice, sending PASS the second time.
        {"time": _at(200), "event": "ftp.cleartext_user", "client": "198.51.100.7",
         "account": "alice", "software": "FileZilla 3.1", "command": "USER",
         "protocol": "ftp", "outcome": "refused"},
        {"time": _at(2), "event": "ftp.cleartext_user", "client": "198.51.100.7",
         "account": "alice", "software": "FileZilla 3.1", "command": "USER",
         "protocol": "ftp", "outcome": "refused"},
        {"time": _at(2), "event": "ftp.cleartext_password", "client": "198.51.100.7",
         "account": "alice", "software": "FileZilla 3.1", "protocol": "ftp",
         "outcome": "real-password"},
        {"time": _at(2), "event": "account.password_exposed", "client": "198.51.100.7",
         "account": "alice", "software": "FileZilla 3.1", "action": "quarantine",
         "protocol": "ftp"},
        {"time": _at(2), "event": "account.quarantined", "client": "198.51.100.7",
         "account": "alice", "protocol": "ftp",
         "reason": "password sent unencrypted from 198.51.100.7"},
        # Exposed long ago; unlocked since.
        {"time": _at(100), "event": "account.password_exposed", "client": "192.0.2.9",
         "account": "bob", "action": "quarantine", "protocol": "ftp"},
        {"time": _at(100), "event": "account.quarantined", "client": "192.0.2.9",
         "account": "bob", "protocol": "ftp", "reason": "password sent unencrypted"},
        # A script without CLNT trying LIST before TLS.
        {"time": _at(1), "event": "ftp.refused_before_tls", "client": "203.0.113.5",
         "command": "LIST", "protocol": "ftp"},
        # Our own probe.
        {"time": _at(1), "event": "ftp.cleartext_user", "client": "127.0.0.1",
         "account": PROBE_ACCOUNT, "software": PROBE_SOFTWARE, "command": "USER"},
        # Failed logins.
        {"time": _at(3), "event": "ftp.login", "client": "203.0.113.5",
         "account": "carol", "outcome": "failed", "protocol": "ftp", "tls": "TLSv1.3"},
        {"time": _at(1), "event": "web.login", "client": "203.0.113.6",
         "account": "carol", "outcome": "failed"},
        {"time": _at(1), "event": "ftp.login", "client": "198.51.100.7",
         "account": "alice", "outcome": "locked", "protocol": "ftps-implicit"},
        {"time": _at(1), "event": "ftp.login", "client": "198.51.100.7",
         "account": "dave", "outcome": "ok", "protocol": "ftp"},
        {"time": _at(1), "event": "ftp.tls_failed", "client": "203.0.113.5",
         "outcome": "refused"},
    ]


def _locked(name: str) -> bool | None:
    return {"alice": True, "bob": False}.get(name)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    _write(path, _events())
    return path


def test_parse_since() -> None:
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert parse_since("2025-03-01", NOW) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_since("2025-03-01T08:30Z", NOW) == datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    assert parse_since("2025-03-01T08:30+02:00", NOW) == datetime(
        2025, 3, 1, 6, 30, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="24h"):
        parse_since("yesterday", NOW)


def test_sections(log: Path) -> None:
    report = build_report(log, account_locked=_locked)
    assert report.exists and report.events == len(_events())

    cleartext = {(r.client, r.account): r for r in report.cleartext}
    alice = cleartext[("198.51.100.7", "alice")]
    assert (alice.software, alice.attempts, alice.passwords_sent) == ("FileZilla 3.1", 2, 1)
    assert alice.last_seen == _at(2)
    script = cleartext[("203.0.113.5", "")]
    assert script.attempts == 1 and script.software == ""
    assert ("127.0.0.1", PROBE_ACCOUNT) not in cleartext
    assert report.self_check_probes == 1

    exposed = {r.account: r for r in report.exposed}
    assert exposed["alice"].quarantined and exposed["alice"].locked_now == "yes"
    assert exposed["alice"].clients == ["198.51.100.7"]
    assert exposed["bob"].quarantined and exposed["bob"].locked_now == "no"

    failed = {r.account: r for r in report.failed_logins}
    assert (failed["carol"].failed, failed["carol"].locked) == (2, 0)
    assert failed["carol"].clients == ["203.0.113.5", "203.0.113.6"]
    assert failed["carol"].protocols == ["ftp", "web"]
    assert (failed["alice"].failed, failed["alice"].locked) == (0, 1)
    assert "dave" not in failed
    assert report.bans == []
    assert report.event_counts["ftp.login"] == 3


def test_text(log: Path) -> None:
    text = format_text(build_report(log, account_locked=_locked))
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("198.51.100.7  alice"))
    assert row.split()[:4] == ["198.51.100.7", "alice", "FileZilla", "3.1"]
    assert "2025-03-10 10:00:00" in row
    assert "1 probe by 'rumpus-secure check' not shown" in text
    assert PROBE_ACCOUNT not in text
    banned = text.split("Banned addresses")[1].split("Failed logins")[0]
    assert "none" in banned
    assert "rumpus-secure user passwd NAME" in text


def test_since_filters(log: Path) -> None:
    report = build_report(log, since=parse_since("24h", NOW))
    assert report.events == len(_events()) - 3
    alice = next(r for r in report.cleartext if r.account == "alice")
    assert alice.attempts == 1
    assert [r.account for r in report.exposed] == ["alice"]
    # Without an accounts database the current lock state is unknown.
    assert report.exposed[0].locked_now == "unknown"
    empty = build_report(log, since=NOW + timedelta(hours=1))
    assert empty.events == 0
    assert "No events in this period." in format_text(empty)


def test_rotated_files_are_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    events = _events()
    _write(tmp_path / "audit.log.2", events[:3])
    _write(tmp_path / "audit.log.1", events[3:8])
    _write(log, events[8:])
    assert build_report(log).events == len(events)
    log.unlink()
    assert build_report(log).events == 8


def test_bans(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _write(log, [
        {"time": _at(5), "event": "guard.ban", "client": "203.0.113.5",
         "reason": "login_failed", "until": _at(4), "seconds": 900},
        {"time": _at(1), "event": "guard.ban", "client": "203.0.113.5",
         "reason": "cleartext_login", "until": _at(0.5), "seconds": 1800},
        {"time": _at(0.9), "event": "guard.refused", "client": "203.0.113.5",
         "protocol": "ftp"},
        {"time": _at(0.8), "event": "guard.refused", "client": "203.0.113.5",
         "protocol": "web"},
    ])
    report = build_report(log)
    [ban] = report.bans
    assert (ban.client, ban.bans, ban.refused) == ("203.0.113.5", 2, 2)
    assert (ban.reason, ban.until) == ("cleartext_login", _at(0.5))
    text = format_text(report)
    row = next(line for line in text.splitlines() if line.startswith("203.0.113.5"))
    assert row.split()[1] == "2" and "cleartext_login" in row


def test_ban_section_says_when_a_ban_was_lifted(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _write(log, [
        {"time": _at(5), "event": "guard.ban", "client": "203.0.113.5",
         "reason": "login_failed", "until": _at(4), "seconds": 900},
        {"time": _at(4.5), "event": "guard.lifted", "client": "203.0.113.5",
         "by": "admin"},
        {"time": _at(3), "event": "guard.ban", "client": "198.51.100.7",
         "reason": "garbage", "until": _at(2), "seconds": 900},
        {"time": _at(2.5), "event": "guard.lifted", "client": "198.51.100.7"},
        # Banned again after the lift: the new ban is not lifted.
        {"time": _at(1), "event": "guard.ban", "client": "198.51.100.7",
         "reason": "garbage", "until": _at(0.5), "seconds": 1800},
        # A lift with no ban in the period has no row.
        {"time": _at(0.2), "event": "guard.lifted", "client": "192.0.2.1"},
    ])
    report = build_report(log)
    by_client = {b.client: b for b in report.bans}
    assert set(by_client) == {"203.0.113.5", "198.51.100.7"}
    assert by_client["203.0.113.5"].lifted == _at(4.5)
    assert by_client["198.51.100.7"].lifted == ""
    text = format_text(report)
    assert "LIFTED (UTC)" in text
    row = next(line for line in text.splitlines() if line.startswith("203.0.113.5"))
    assert _at(4.5)[:19].replace("T", " ") in row
    from rumpus_secure.report import as_json

    lifted = {b["client"]: b["lifted"] for b in as_json(report)["bans"]}
    assert lifted["203.0.113.5"] == _at(4.5)


def test_no_log_yet(tmp_path: Path) -> None:
    report = build_report(tmp_path / "audit.log")
    assert not report.exists
    assert format_text(report).startswith("No audit log yet at ")


def test_hostile_fields_are_escaped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _write(log, [
        {"time": _at(1), "event": "ftp.cleartext_user", "client": "192.0.2.1",
         "account": "x\x1b]0;pwned\x07", "software": "evil\x1b[2J" + "A" * 200,
         "password": "hunter2"},
    ])
    text = format_text(build_report(log))
    assert "\x1b" not in text and "\x07" not in text
    assert "x\\x1b]0;pwned\\x07" in text
    assert "hunter2" not in text
    assert max(len(line) for line in text.splitlines()) < 250
    assert printable("") == "-"


# -- the command --------------------------------------------------------------


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdin=io.StringIO(), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_command_text_and_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SQLiteAccountStore.in_data_dir(data, data / "files")
    store.add("alice", "secret-one")
    store.lock("alice", "password sent unencrypted")
    store.add("bob", "secret-two")
    _write(data / "audit.log", _events())
    status, out, err = _run("--data-dir", str(data), "audit")
    assert (status, err) == (0, "")
    exposed = out.split("Exposed passwords")[1].split("Banned")[0]
    alice = next(line for line in exposed.splitlines() if line.startswith("alice"))
    bob = next(line for line in exposed.splitlines() if line.startswith("bob"))
    assert alice.split()[3:5] == ["yes", "yes"]  # quarantined, locked now
    assert bob.split()[3:5] == ["yes", "no"]
    assert "secret" not in out


def _init(data: Path) -> None:
    """
    An accounts database, as the server's first start leaves it.
    """
    SQLiteAccountStore.in_data_dir(data, data / "files")


def test_command_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(data)
    _write(data / "audit.log", _events())
    status, out, _ = _run("--data-dir", str(data), "audit", "--json")
    assert status == 0
    document = json.loads(out)
    assert set(document) == {
        "log", "exists", "since", "first_event", "last_event", "events",
        "cleartext", "exposed", "bans", "failed_logins", "transfers", "event_counts",
        "self_check_probes",
    }
    assert document["exists"] is True and document["since"] is None
    assert document["bans"] == []
    [alice] = [r for r in document["cleartext"] if r["account"] == "alice"]
    assert alice == {
        "client": "198.51.100.7", "account": "alice", "software": "FileZilla 3.1",
        "attempts": 2, "passwords_sent": 1, "last_seen": _at(2),
    }
    assert {r["account"] for r in document["failed_logins"]} == {"carol", "alice"}


def test_command_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _init(data)
    recent = datetime.now(UTC) - timedelta(minutes=5)
    _write(data / "audit.log", [
        {"time": "2020-01-01T00:00:00.000Z", "event": "ftp.login",
         "client": "192.0.2.1", "account": "old", "outcome": "failed"},
        {"time": recent.isoformat().replace("+00:00", "Z"), "event": "ftp.login",
         "client": "192.0.2.1", "account": "new", "outcome": "failed"},
    ])
    status, out, _ = _run("--data-dir", str(data), "audit", "--since", "1h", "--json")
    assert status == 0
    assert [r["account"] for r in json.loads(out)["failed_logins"]] == ["new"]
    status, out, _ = _run("--data-dir", str(data), "audit", "--since", "2019-12-31")
    assert status == 0 and "old" in out and "new" in out
    status, _, _ = _run("--data-dir", str(data), "audit", "--since", "soon")
    assert status == 2 and "24h" in capsys.readouterr().err  # argparse's own stderr


def test_command_no_log(tmp_path: Path) -> None:
    # A data directory that is not one is an error, not "No audit log yet".
    status, out, err = _run("--data-dir", str(tmp_path / "nothing"), "audit")
    assert status == 1 and "no accounts database at" in err and out == ""
    _init(tmp_path / "nothing")
    status, out, _ = _run("--data-dir", str(tmp_path / "nothing"), "audit")
    assert status == 0 and out.startswith("No audit log yet at ")
    status, out, _ = _run("--data-dir", str(tmp_path / "nothing"), "audit", "--json")
    assert status == 0
    document = json.loads(out)
    assert document["exists"] is False and document["events"] == 0


def _transfer_events() -> list[dict[str, Any]]:
    def ftp(event: str, account: str, size: int, outcome: str = "complete") -> dict[str, Any]:
        return {"time": _at(1), "event": event, "client": "192.0.2.7",
                "account": account, "protocol": "ftps-explicit", "path": "/f",
                "bytes": size, "seconds": 0.5, "outcome": outcome}

    return [
        ftp("ftp.upload", "alice", 1000),
        ftp("ftp.upload", "alice", 500),
        ftp("ftp.download", "alice", 200),
        ftp("ftp.upload", "alice", 300, outcome="truncated"),
        ftp("ftp.download", "bob", 7000, outcome="aborted"),
        {"time": _at(2), "event": "web.upload", "client": "192.0.2.8",
         "account": "bob", "path": "/w", "size": 40},
        {"time": _at(2), "event": "web.download", "client": "192.0.2.8",
         "account": "bob", "path": "/w"},
        {"time": _at(2), "event": "ftp.delete", "client": "192.0.2.8",
         "account": "bob", "path": "/w", "outcome": "ok"},
    ]


def test_transfers_per_account(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, _transfer_events())
    report = build_report(path)
    moved = {r.account: r for r in report.transfers}
    alice, bob = moved["alice"], moved["bob"]
    assert (alice.files_up, alice.bytes_up, alice.files_down, alice.bytes_down,
            alice.incomplete) == (2, 1500, 1, 200, 1)
    assert alice.protocols == ["ftps-explicit"]
    assert (bob.files_up, bob.bytes_up, bob.files_down, bob.bytes_down,
            bob.incomplete) == (1, 40, 1, 0, 1)
    assert sorted(bob.protocols) == ["ftps-explicit", "web"]
    assert [r.account for r in report.transfers] == ["alice", "bob"]

    text = format_text(report)
    section = text.split("Transfers\n")[1].split("All events")[0]
    row = next(line for line in section.splitlines() if line.startswith("alice"))
    assert row.split()[:6] == ["alice", "2", "1500", "1", "200", "1"]
    assert "web downloads count as files" in section

    _init(tmp_path)
    status, out, _ = _run("--data-dir", str(tmp_path), "audit", "--json")
    assert status == 0
    data = json.loads(out)
    assert {r["account"]: r["bytes_up"] for r in data["transfers"]} == {
        "alice": 1500, "bob": 40}


def test_no_transfers_says_none(log: Path) -> None:
    text = format_text(build_report(log, account_locked=_locked))
    assert text.split("Transfers\n")[1].split("All events")[0].strip("-\n ") == "none"
