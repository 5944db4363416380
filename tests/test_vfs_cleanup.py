"""
Removing the temporary files of uploads that a crashed run left behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from rumpus_secure.accounts.store import ALL_PERMISSIONS
from rumpus_secure.vfs import JailedFS
from rumpus_secure.vfs.cleanup import remove_stale_uploads
from rumpus_secure.vfs.upload import active_temp_names

OLD = 1_000_000_000.0  # 2001: long before any test runs


def leftover(directory: Path, name: str = "0" * 32, size: int = 10, mtime: float = OLD) -> Path:
    path = directory / f".rumpus-upload-{name}.part"
    path.write_bytes(b"p" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_old_leftovers_go_and_everything_else_stays(tmp_path: Path) -> None:
    root = tmp_path / "files"
    deep = root / "alice" / "a" / "b"
    deep.mkdir(parents=True)
    stale = [leftover(root / "alice", "1" * 32, 100), leftover(deep, "2" * 32, 23)]
    fresh = leftover(deep, "3" * 32, mtime=time.time() + 60)  # written after start
    keep = [deep / "report.part", deep / ".rumpus-upload-notes.txt", fresh]
    for path in keep[:2]:
        path.write_bytes(b"user data")
    named_dir = deep / (".rumpus-upload-" + "4" * 32 + ".part")
    named_dir.mkdir()
    result = remove_stale_uploads([root, root / "alice"], started=time.time())
    assert (result.files, result.bytes, result.errors) == (2, 123, 0)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in keep) and named_dir.is_dir()


def test_links_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = leftover(outside, "5" * 32)
    root = tmp_path / "files"
    root.mkdir()
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / (".rumpus-upload-" + "6" * 32 + ".part")).symlink_to(victim)
    result = remove_stale_uploads([root], started=time.time())
    assert result.files == 0
    assert victim.exists()


def test_an_upload_of_this_process_is_never_taken_for_a_leftover(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "f.bin").write_bytes(b"old")  # an overwrite goes through a temp file
    fs = JailedFS(home, ALL_PERMISSIONS)
    upload = fs.open_upload("/f.bin")
    upload.write(b"new data")
    [temp] = [p for p in home.iterdir() if p.name.startswith(".rumpus-upload-")]
    assert temp.name in active_temp_names
    os.utime(temp, (OLD, OLD))  # even with a clock that went backwards
    assert remove_stale_uploads([home], started=time.time()).files == 0
    upload.commit()
    assert temp.name not in active_temp_names
    assert (home / "f.bin").read_bytes() == b"new data"


def test_missing_roots_are_skipped(tmp_path: Path) -> None:
    assert remove_stale_uploads([tmp_path / "nope"], started=time.time()).files == 0


def test_the_service_cleans_in_a_thread_after_start(tmp_path: Path) -> None:
    from rumpus_secure.tap import StaleUploadCleanup

    root = tmp_path / "files"
    (root / "alice").mkdir(parents=True)
    elsewhere = tmp_path / "custom-home"
    elsewhere.mkdir()
    stale = [leftover(root / "alice", "7" * 32), leftover(elsewhere, "8" * 32)]
    threads: list[Any] = []

    class Reactor:
        def callWhenRunning(self, f: Any, *args: Any) -> None:
            f(*args)

    class Server:
        reactor = Reactor()
        config = type("Config", (), {"file_root": root})()
        store = type("Store", (), {"list": staticmethod(
            lambda: [type("Account", (), {"home": elsewhere})()])})()

        def run_in_thread(self, f: Any, *args: Any) -> defer.Deferred[Any]:
            threads.append(f)
            return defer.maybeDeferred(f, *args)

    cleanup = StaleUploadCleanup(Server())  # type: ignore[arg-type]
    cleanup.startService()
    assert len(threads) == 1  # the walk and the account list ran off the reactor
    result = cleanup.done.result
    assert result.files == 2 and not any(p.exists() for p in stale)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_directories_are_counted_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "files"
    locked = root / "locked"
    locked.mkdir(parents=True)
    leftover(root)
    locked.chmod(0)
    try:
        result = remove_stale_uploads([root], started=time.time())
    finally:
        locked.chmod(0o755)
    assert result.files == 1 and result.errors == 1
