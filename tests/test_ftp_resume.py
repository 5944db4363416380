"""
REST n + STOR: the file is cut only when the new data is committed, so a
resume that fails leaves the file byte for byte as it was (issue #12).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rumpus_secure.vfs import ALL_PERMISSIONS, TEMP_PREFIX, AbortOutcome, JailedFS

from .test_ftp_files import Session, codes

ORIGINAL = bytes(range(256)) * 40  # 10240 bytes, every byte value


@pytest.fixture
def fs(tmp_path: Path) -> JailedFS:
    home = tmp_path / "home"
    home.mkdir()
    (home / "f").write_bytes(ORIGINAL)
    return JailedFS(home, ALL_PERMISSIONS)


def temp_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]


def test_rewrite_is_invisible_until_commit(fs: JailedFS, tmp_path: Path) -> None:
    home = tmp_path / "home"
    upload = fs.open_write_at("/f", 100, truncate=True)
    upload.write(b"new" * 10)
    # In the window between two writes, any reader (another session) sees
    # the whole old file, not one cut at 100 bytes.
    assert (home / "f").read_bytes() == ORIGINAL
    upload.write(b"!")
    upload.commit()
    assert (home / "f").read_bytes() == ORIGINAL[:100] + b"new" * 10 + b"!"
    assert temp_files(home) == []


def test_failed_rewrite_leaves_the_file_as_it_was(fs: JailedFS, tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = os.stat(home / "f")
    upload = fs.open_write_at("/f", 7, truncate=True)
    upload.write(b"x" * 50_000)  # longer than the old tail
    assert upload.abort() is AbortOutcome.DISCARDED
    assert (home / "f").read_bytes() == ORIGINAL
    assert os.stat(home / "f").st_ino == before.st_ino
    assert temp_files(home) == []


def test_rewrite_longer_than_the_file(fs: JailedFS, tmp_path: Path) -> None:
    upload = fs.open_write_at("/f", 10, truncate=True)
    payload = os.urandom(3 * (1 << 20) + 5)  # more than one copy round
    upload.write(payload)
    upload.commit()
    assert (tmp_path / "home" / "f").read_bytes() == ORIGINAL[:10] + payload


def test_resume_at_the_end_writes_in_place_and_keeps_a_partial(
        fs: JailedFS, tmp_path: Path) -> None:
    upload = fs.open_write_at("/f", len(ORIGINAL), truncate=True)
    assert not upload.atomic  # nothing to lose: no temporary copy
    upload.write(b"more")
    assert upload.abort() is AbortOutcome.KEPT_PARTIAL
    assert (tmp_path / "home" / "f").read_bytes() == ORIGINAL + b"more"


def test_rest_zero_rewrites_the_whole_file_only_on_commit(
        fs: JailedFS, tmp_path: Path) -> None:
    upload = fs.open_write_at("/f", 0, truncate=True)
    upload.write(b"short")
    assert (tmp_path / "home" / "f").read_bytes() == ORIGINAL
    upload.commit()
    assert (tmp_path / "home" / "f").read_bytes() == b"short"


# -- over FTP ----------------------------------------------------------------


def test_failed_rest_stor_keeps_the_tail(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"0123456789")
    assert s.send("REST 4") == ["350 Restarting at 4. Send RETR, STOR or APPE."]
    replies = s.stor("STOR f", b"the new data, cut short", clean=False)
    assert codes(replies) == ["150", "426"]
    assert "discarded" in replies[-1] and "unchanged" in replies[-1]
    assert s.disk() == {"f": b"0123456789"}
    assert s.send("SIZE f") == ["213 10"]
    # The resume is simply tried again, and this time it lands.
    s.send("REST 4")
    assert codes(s.stor("STOR f", b"ab")) == ["150", "226"]
    assert s.disk() == {"f": b"0123ab"}


def test_failed_resume_at_the_end_keeps_what_arrived(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"first half")
    s.send("REST 10")
    replies = s.stor("STOR f", b", second", clean=False)
    assert codes(replies) == ["150", "426"]
    assert "kept" in replies[-1]
    assert s.disk() == {"f": b"first half, second"}
