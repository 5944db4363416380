"""
Every FTP file operation is audited: transfers (``ftp.upload``,
``ftp.download``) and changes (``ftp.mkdir``, ``ftp.rmdir``, ``ftp.delete``,
``ftp.rename``), with account, client, path, bytes, seconds and outcome.

Driven in memory with the harness of L{tests.test_ftp_files} (real loopback
data connections, a real jailed home).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rumpus_secure.xferlog import xferlog_line

from .ftp_fakes import connect
from .test_ftp_files import Session, codes


def events(s: Session, name: str) -> list[dict[str, Any]]:
    return s.server.audit.named(name)


def test_upload_and_download_are_audited(tmp_path: Path) -> None:
    s = Session(tmp_path)
    payload = b"x" * 70000
    assert codes(s.stor("STOR in.bin", payload)) == ["150", "226"]
    [up] = events(s, "ftp.upload")
    assert up["account"] == "alice"
    assert up["client"] == "192.0.2.7"
    assert up["path"] == "/in.bin"
    assert up["bytes"] == len(payload)
    assert up["outcome"] == "complete"
    assert up["command"] == "STOR"
    assert up["protocol"] == "ftp"  # allow-plain, no AUTH TLS in this session
    assert up["type"] == "binary"
    assert up["seconds"] >= 0

    replies, data = s.retr("RETR in.bin")
    assert data == payload and codes(replies) == ["150", "226"]
    [down] = events(s, "ftp.download")
    assert (down["account"], down["path"], down["bytes"], down["outcome"]) == (
        "alice", "/in.bin", len(payload), "complete")
    # A listing moves no file: not a transfer.
    s.retr("LIST")
    assert len(events(s, "ftp.download")) == 1


def test_cut_upload_is_audited_as_incomplete(tmp_path: Path) -> None:
    s = Session(tmp_path)
    replies = s.stor("STOR cut.bin", b"y" * 5000, clean=False)
    assert codes(replies)[-1] != "226"
    [up] = events(s, "ftp.upload")
    assert up["outcome"] not in ("complete", "ok")
    assert up["account"] == "alice"
    line = xferlog_line(up)
    assert line is not None and line.endswith(" i")  # incomplete


def test_refused_transfer_is_audited_as_failed(tmp_path: Path) -> None:
    s = Session(tmp_path)
    s.open_data()
    replies = s.send("RETR missing.bin")
    assert codes(replies) == ["550"]
    # Nothing was moved and nothing was prepared: no transfer event.
    assert events(s, "ftp.download") == []


def test_changes_are_audited(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "old.txt").write_text("old")
    assert codes(s.send("MKD docs")) == ["257"]
    assert codes(s.send("RNFR old.txt", "RNTO docs/new.txt")) == ["350", "250"]
    assert codes(s.send("DELE docs/new.txt")) == ["250"]
    assert codes(s.send("RMD docs")) == ["250"]
    assert codes(s.send("DELE nothing-here")) == ["550"]

    [mkdir] = events(s, "ftp.mkdir")
    assert (mkdir["path"], mkdir["outcome"], mkdir["account"]) == ("/docs", "ok", "alice")
    [rename] = events(s, "ftp.rename")
    assert (rename["path"], rename["to"], rename["outcome"]) == (
        "/old.txt", "/docs/new.txt", "ok")
    deletes = events(s, "ftp.delete")
    assert [(d["path"], d["outcome"]) for d in deletes] == [
        ("/docs/new.txt", "ok"), ("/nothing-here", "refused")]
    assert deletes[1]["reply"] == "550"
    [rmdir] = events(s, "ftp.rmdir")
    assert (rmdir["path"], rmdir["outcome"]) == ("/docs", "ok")
    for event in (mkdir, rename, rmdir, *deletes):
        assert event["client"] == "192.0.2.7" and event["protocol"] == "ftp"


def test_two_accounts_same_address_are_told_apart(tmp_path: Path) -> None:
    """
    Two sessions from one address, other accounts, interleaved: every event
    names the account of its own session.
    """
    s = Session(tmp_path)
    s.server.store.add("bob", "other")
    bob, bob_transport, _ = connect(s.server, reactor=s.reactor)
    bob_transport.clear()
    bob.dataReceived(b"USER bob\r\nPASS other\r\n")
    s.flush()
    assert bob_transport.lines()[-1].startswith("230 ")

    client = s.open_data(upload=b"alice's")
    bob.dataReceived(b"MKD bobs\r\n")  # between alice's PASV and her STOR
    s.send("STOR a.txt")
    client.data()
    s.flush()

    [mkdir] = events(s, "ftp.mkdir")
    assert (mkdir["account"], mkdir["path"]) == ("bob", "/bobs")
    [up] = events(s, "ftp.upload")
    assert (up["account"], up["path"], up["bytes"]) == ("alice", "/a.txt", 7)
    assert (s.server.store.get("bob").home / "bobs").is_dir()
    assert (s.home / "a.txt").read_bytes() == b"alice's"


def test_abor_is_audited_as_aborted(tmp_path: Path) -> None:
    import threading
    import time

    s = Session(tmp_path)
    hold = threading.Event()
    client = s.open_data(upload=b"partial", hold=hold)
    s.proto.dataReceived(b"STOR f\r\n")
    for _ in range(200):  # wait for the worker thread to have read the bytes
        if s.proto._transfer is not None and s.proto._transfer.bytes == 7:
            break
        time.sleep(0.01)
    s.proto.dataReceived(b"ABOR\r\n")
    hold.set()
    client.data()
    s.flush()
    [up] = events(s, "ftp.upload")
    assert (up["outcome"], up["bytes"], up["reply"]) == ("aborted", 7, "426")
