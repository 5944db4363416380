"""
Issue #17, shared filesystems: the no-clobber rename stays atomic where
``renameat2(RENAME_NOREPLACE)`` is refused (GlusterFS FUSE: EINVAL; NFS).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure.vfs import _syscalls


@pytest.fixture(params=[errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def flag_refused(request: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """
    A renameat2 that refuses RENAME_NOREPLACE as a shared filesystem does.
    """
    code = request.param

    def refuse(*args: Any) -> int:
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(_syscalls, "_renameat2", refuse)
    return code


def _dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_fallback_moves_a_file(tmp_path: Path, flag_refused: int) -> None:
    (tmp_path / "part").write_bytes(b"new")
    fd = _dir(tmp_path)
    try:
        _syscalls.rename_noreplace(fd, "part", fd, "final")
    finally:
        os.close(fd)
    assert (tmp_path / "final").read_bytes() == b"new"
    assert not (tmp_path / "part").exists()


def test_fallback_never_clobbers_even_in_the_window(
        tmp_path: Path, flag_refused: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Another node creates the name between a check and a rename: the
    check-then-rename clobbered it; link() refuses atomically.
    """
    monkeypatch.setattr(_syscalls, "exists_at", lambda dir_fd, name: False)
    (tmp_path / "part").write_bytes(b"mine")
    (tmp_path / "final").write_bytes(b"theirs")
    fd = _dir(tmp_path)
    try:
        with pytest.raises(FileExistsError):
            _syscalls.rename_noreplace(fd, "part", fd, "final")
    finally:
        os.close(fd)
    assert (tmp_path / "final").read_bytes() == b"theirs"
    assert (tmp_path / "part").read_bytes() == b"mine"


def test_fallback_race_has_one_winner(tmp_path: Path, flag_refused: int) -> None:
    writers = 16
    for n in range(writers):
        (tmp_path / f"part{n}").write_bytes(b"%d" % n)
    fd = _dir(tmp_path)
    won: list[int] = []
    lost: list[int] = []
    start = threading.Barrier(writers)

    def commit(n: int) -> None:
        start.wait()
        try:
            _syscalls.rename_noreplace(fd, f"part{n}", fd, "final")
            won.append(n)
        except FileExistsError:
            lost.append(n)

    threads = [threading.Thread(target=commit, args=(n,)) for n in range(writers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert len(won) == 1 and len(lost) == writers - 1
    assert (tmp_path / "final").read_bytes() == b"%d" % won[0]
    for n in lost:
        assert (tmp_path / f"part{n}").exists()


def test_fallback_renames_a_directory(tmp_path: Path, flag_refused: int) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "taken").mkdir()
    fd = _dir(tmp_path)
    try:
        _syscalls.rename_noreplace(fd, "a", fd, "b")
        with pytest.raises(FileExistsError):
            _syscalls.rename_noreplace(fd, "b", fd, "taken")
    finally:
        os.close(fd)
    assert (tmp_path / "b").is_dir() and (tmp_path / "taken").is_dir()


def test_other_errors_are_not_swallowed(tmp_path: Path, flag_refused: int) -> None:
    fd = _dir(tmp_path)
    try:
        with pytest.raises(FileNotFoundError):
            _syscalls.rename_noreplace(fd, "missing", fd, "final")
    finally:
        os.close(fd)


def test_unique_fact_does_not_depend_on_the_device(tmp_path: Path) -> None:
    """
    Two nodes mount the same files with different device numbers: the
    MLSD unique fact must be the same on both.
    """
    from rumpus_secure.vfs._base import Entry

    (tmp_path / "f").write_bytes(b"x")
    st = os.lstat(tmp_path / "f")
    other = os.stat_result((st.st_mode, st.st_ino, st.st_dev + 7, *tuple(st)[3:]))
    assert Entry.from_stat("f", st).unique == Entry.from_stat("f", other).unique


def test_homes_are_stored_relative_to_the_root(tmp_path: Path) -> None:
    """
    Each node mounts the shared files at its own --root: an account made on
    one node finds its home under the other node's root.
    """
    import sqlite3

    from argon2 import PasswordHasher

    from rumpus_secure.accounts.store import SQLiteAccountStore

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    database = tmp_path / "data" / "accounts.sqlite3"
    node1 = SQLiteAccountStore(database, tmp_path / "mnt1", hasher=cheap)
    node1.add("alice", "correct horse battery")
    node1.add("bob", "correct horse battery", home=Path("team/bob"))
    node1.add("carol", "correct horse battery", home=tmp_path / "elsewhere" / "carol")
    with sqlite3.connect(database) as db:
        stored = dict(db.execute("SELECT name, home FROM accounts"))
    assert stored == {"alice": "alice", "bob": "team/bob",
                      "carol": str(tmp_path / "elsewhere" / "carol")}
    node2 = SQLiteAccountStore(database, tmp_path / "mnt2", hasher=cheap)
    assert node2.get("alice").home == tmp_path / "mnt2" / "alice"
    assert node2.get("bob").home == tmp_path / "mnt2" / "team" / "bob"
    assert node2.get("carol").home == tmp_path / "elsewhere" / "carol"
    assert node1.get("alice").home == tmp_path / "mnt1" / "alice"
    assert {a.name: a.home for a in node2.list()}["alice"] == tmp_path / "mnt2" / "alice"


def test_postgresql_homes_are_relative_too(pg_url: str, tmp_path: Path) -> None:
    """
    The shared store of several nodes: each node finds an account's home
    under its own --root.
    """
    from argon2 import PasswordHasher

    from rumpus_secure.accounts.pg import PGAccountStore
    from rumpus_secure.db import Database

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    database = Database(pg_url)
    try:
        database.migrate()
        node1 = PGAccountStore(database, tmp_path / "mnt1", hasher=cheap)
        node2 = PGAccountStore(database, tmp_path / "mnt2", hasher=cheap)
        made = node1.add("dave", "correct horse battery")
        assert made.home == tmp_path / "mnt1" / "dave"
        assert node2.get("dave").home == tmp_path / "mnt2" / "dave"
        assert [a.home for a in node2.list() if a.name == "dave"] == [
            tmp_path / "mnt2" / "dave"]
    finally:
        database.close()
