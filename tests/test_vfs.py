"""Tests for the jailed filesystem layer (rumpus_secure.vfs)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from rumpus_secure.vfs import (
    ALL_PERMISSIONS,
    TEMP_PREFIX,
    AbortOutcome,
    AlreadyExists,
    DiskFull,
    HomeUnavailable,
    InvalidOffset,
    InvalidPath,
    IsADirectory,
    JailedFS,
    NotADirectory,
    NotARegularFile,
    NotEmpty,
    NotFound,
    PermissionDenied,
    SymlinkNotFollowed,
    VFSError,
    join_path,
    normalize,
    split_path,
    wire_name,
)

from .test_vfs_support import Tree, build_tree, open_fd_count, snapshot


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(tmp_path)


@pytest.fixture
def fs(tree: Tree) -> JailedFS:
    return JailedFS(tree.home, ALL_PERMISSIONS)


def read(fs: JailedFS, path: str, offset: int = 0) -> bytes:
    with fs.open_read(path, offset) as handle:
        return handle.read()


def temp_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]


# -- paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        (".", "/"),
        ("..", "/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("a/b/c", "/a/b/c"),
        ("/a//b///c/", "/a/b/c"),
        ("/a/./b/./", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/../../../b", "/b"),
        ("a/b/../../..", "/"),
        ("/.../x", "/.../x"),
        ("..a/b..", "/..a/b.."),
        ("/a\\..\\b", "/a\\..\\b"),
        ("/caf\u00e9/\u65e5\u672c", "/caf\u00e9/\u65e5\u672c"),
    ],
)
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize(raw) == expected
    assert split_path(raw) == tuple(p for p in expected.split("/") if p)


@pytest.mark.parametrize(
    ("cwd", "arg", "expected"),
    [
        ("/a/b", "c", "/a/b/c"),
        ("/a/b", "/c", "/c"),
        ("/a/b", "../../../..", "/"),
        ("/", "x/../y", "/y"),
    ],
)
def test_join_path(cwd: str, arg: str, expected: str) -> None:
    assert join_path(cwd, arg) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("/a\x00b", "NUL byte"),
        ("\x00", "NUL byte"),
        ("/a\nb", "line break"),
        ("/a\rb", "line break"),
        ("/" + "x" * 256, "longer than 255 bytes"),
        ("/" + "\u00e9" * 128, "longer than 255 bytes"),
        ("/" + "a/" * 2049, "longer than 4096 bytes"),
        ("/a/\ud800", "lone surrogate"),
        ("/d/" + TEMP_PREFIX + "abc.part", "reserved"),
    ],
)
def test_invalid_paths(fs: JailedFS, raw: str, fragment: str) -> None:
    with pytest.raises(InvalidPath, match=fragment):
        split_path(raw)
    with pytest.raises(InvalidPath, match=fragment):
        fs.stat(raw)


def test_longest_names_accepted() -> None:
    assert split_path("/" + "\u00e9" * 127) == ("\u00e9" * 127,)
    assert split_path("/" + "x" * 255) == ("x" * 255,)


def test_wire_name() -> None:
    on_disk = os.fsdecode(b"caf\xe9.txt")
    assert wire_name(on_disk) == "caf\ufffd.txt"
    assert wire_name("caf\u00e9.txt") == "caf\u00e9.txt"
    assert wire_name("evil\r\n226 fake") == "evil\ufffd\ufffd226 fake"
    assert wire_name("\ud800x") == "?x"
    wire_name(on_disk).encode("utf-8")


# -- construction ------------------------------------------------------------


def test_missing_home(tmp_path: Path) -> None:
    with pytest.raises(HomeUnavailable, match="home directory is missing"):
        JailedFS(tmp_path / "nope", ALL_PERMISSIONS)
    assert not (tmp_path / "nope").exists()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(HomeUnavailable):
        JailedFS(tmp_path / "file", ALL_PERMISSIONS)


def test_home_removed_later(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    fs = JailedFS(tmp_path / "h", ALL_PERMISSIONS)
    (tmp_path / "h").rmdir()
    with pytest.raises(HomeUnavailable):
        fs.list_dir("/")


def test_unknown_permission(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown permissions"):
        JailedFS(tmp_path, frozenset({"list", "chmod"}))


# -- escapes -------------------------------------------------------------------


def test_dotdot_and_absolute_paths_stay_home(fs: JailedFS, tree: Tree) -> None:
    for path in ["../outside/secret.txt", "/../../outside/secret.txt",
                 "/../../etc/passwd", str(tree.outside / "secret.txt"),
                 "/etc/passwd", "docs/../../outside/secret.txt"]:
        with pytest.raises(NotFound):
            read(fs, path)
    assert [e.name for e in fs.list_dir("/../..")] == [
        "docs", "empty", "link_dir", "link_file", "top.txt"]


def test_symlinks_are_listed_but_never_followed(fs: JailedFS, tree: Tree) -> None:
    before = snapshot(tree.outside)
    kinds = {e.name: e.kind for e in fs.list_dir("/")}
    assert kinds["link_dir"] == "symlink" and kinds["link_file"] == "symlink"
    assert fs.stat("/link_file").kind == "symlink"
    not_followed = "is a symbolic link; not followed"
    attempts: list[Callable[[], object]] = [
        lambda: read(fs, "/link_file"),
        lambda: read(fs, "/link_dir/secret.txt"),
        lambda: read(fs, "/docs/rel_link/secret.txt"),
        lambda: fs.list_dir("/link_dir"),
        lambda: fs.list_dir("/docs/rel_link"),
        lambda: fs.stat("/link_dir/secret.txt"),
        lambda: fs.hash_file("/link_file"),
        lambda: fs.open_upload("/link_file"),
        lambda: fs.open_upload("/link_dir/new.txt"),
        lambda: fs.open_append("/link_file"),
        lambda: fs.open_write_at("/link_file", 0),
        lambda: fs.mkdir("/link_dir/new"),
        lambda: fs.rmdir("/link_dir/sub"),
        lambda: fs.remove("/link_dir/secret.txt"),
        lambda: fs.remove_tree("/link_dir/sub"),
        lambda: fs.rename("/top.txt", "/link_dir/top.txt"),
        lambda: fs.rename("/link_dir/secret.txt", "/stolen.txt"),
        lambda: fs.set_mtime("/link_file", 0),
        lambda: fs.set_mtime("/link_dir/secret.txt", 0),
        lambda: fs.unique_name("/link_dir", "x"),
    ]
    for attempt in attempts:
        with pytest.raises(SymlinkNotFollowed, match=not_followed):
            attempt()
    assert snapshot(tree.outside) == before
    assert not fs.is_dir("/link_dir")


def test_removing_symlinks_removes_only_the_link(fs: JailedFS, tree: Tree) -> None:
    before = snapshot(tree.outside)
    fs.remove("/link_file")
    fs.remove_tree("/link_dir")
    fs.remove_tree("/docs")  # holds rel_link -> ../../outside
    assert snapshot(tree.outside) == before
    assert sorted(os.listdir(tree.home)) == ["empty", "top.txt"]


def test_renaming_a_symlink_moves_the_link(fs: JailedFS, tree: Tree) -> None:
    fs.rename("/link_dir", "/docs/moved")
    assert os.readlink(tree.home / "docs" / "moved") == str(tree.outside)
    with pytest.raises(SymlinkNotFollowed):
        fs.list_dir("/docs/moved")


def test_symlink_swapped_in_between_calls(fs: JailedFS, tree: Tree) -> None:
    (tree.home / "sub").mkdir()
    (tree.home / "sub" / "a.txt").write_bytes(b"mine")
    assert fs.stat("/sub/a.txt").size == 4
    os.rename(tree.home / "sub", tree.home / "sub.old")
    os.symlink(tree.outside, tree.home / "sub")
    with pytest.raises(SymlinkNotFollowed, match="'/sub' is a symbolic link"):
        read(fs, "/sub/a.txt")
    with pytest.raises(SymlinkNotFollowed):
        fs.list_dir("/sub")


def test_symlink_swapped_in_during_the_walk(
    fs: JailedFS, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: 'sub' is a directory when the walk starts, a symlink when opened."""
    (tree.home / "sub").mkdir()
    (tree.home / "sub" / "a.txt").write_bytes(b"mine")
    real_open = os.open
    swapped = []

    def racing_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if path == "sub" and dir_fd is not None and not swapped:
            os.rename(tree.home / "sub", tree.home / "sub.old")
            os.symlink(tree.outside, tree.home / "sub")
            swapped.append(True)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)
    with pytest.raises(SymlinkNotFollowed):
        read(fs, "/sub/a.txt")
    assert swapped


def test_upload_lands_in_original_directory_after_swap(fs: JailedFS, tree: Tree) -> None:
    (tree.home / "sub").mkdir()
    before = snapshot(tree.outside)
    upload = fs.open_upload("/sub/new.txt")
    os.rename(tree.home / "sub", tree.home / "sub.old")
    os.symlink(tree.outside, tree.home / "sub")
    upload.write(b"data")
    upload.commit()
    assert snapshot(tree.outside) == before
    assert (tree.home / "sub.old" / "new.txt").read_bytes() == b"data"


def test_special_files_refused(fs: JailedFS, tree: Tree) -> None:
    os.mkfifo(tree.home / "fifo")
    assert fs.stat("/fifo").kind == "other"
    with pytest.raises(NotARegularFile):
        read(fs, "/fifo")
    with pytest.raises(NotARegularFile):
        fs.open_append("/fifo")


# -- queries -------------------------------------------------------------------


def test_stat_and_list(fs: JailedFS, tree: Tree) -> None:
    entry = fs.stat("/docs/a.txt")
    st = os.lstat(tree.home / "docs" / "a.txt")
    assert (entry.name, entry.kind, entry.size) == ("a.txt", "file", 5)
    assert entry.mtime == st.st_mtime and entry.mode == st.st_mode
    assert entry.unique == f"{st.st_dev:x}g{st.st_ino:x}"
    assert fs.stat("/").kind == "dir"
    assert [e.name for e in fs.list_dir("/docs")] == ["a.txt", "rel_link"]
    with pytest.raises(NotADirectory):
        fs.list_dir("/top.txt")
    with pytest.raises(NotADirectory, match="'/top.txt'"):
        fs.stat("/top.txt/x")
    with pytest.raises(NotFound, match="'/nope'"):
        fs.list_dir("/nope/deeper")
    assert fs.exists("/docs/a.txt") and fs.exists("/link_dir") and fs.exists("/")
    assert not fs.exists("/nope") and not fs.exists("/link_dir/secret.txt")
    assert fs.is_dir("/docs") and not fs.is_dir("/top.txt")


def test_non_utf8_name_on_disk(fs: JailedFS, tree: Tree) -> None:
    raw = os.fsencode(tree.home) + b"/caf\xe9-\xff.txt"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"latin")
    os.close(fd)
    names = [e.name for e in fs.list_dir("/")]
    odd = [n for n in names if n.startswith("caf")]
    assert len(odd) == 1
    assert wire_name(odd[0]) == "caf\ufffd-\ufffd.txt"
    assert read(fs, "/" + odd[0]) == b"latin"
    fs.rename("/" + odd[0], "/cafe.txt")
    assert read(fs, "/cafe.txt") == b"latin"


def test_read_with_offset(fs: JailedFS) -> None:
    assert read(fs, "/docs/a.txt", 2) == b"llo"
    assert read(fs, "/docs/a.txt", 5) == b""
    with pytest.raises(InvalidOffset, match="invalid offset 6"):
        read(fs, "/docs/a.txt", 6)
    with pytest.raises(InvalidOffset):
        read(fs, "/docs/a.txt", -1)
    with pytest.raises(IsADirectory):
        read(fs, "/docs")
    with pytest.raises(InvalidPath):
        read(fs, "/")


def test_hash_file(fs: JailedFS) -> None:
    assert fs.hash_file("/docs/a.txt") == hashlib.sha256(b"hello").hexdigest()
    assert fs.hash_file("/docs/a.txt", "md5", 1, 4) == hashlib.md5(b"ell").hexdigest()
    assert fs.hash_file("/docs/a.txt", "sha1", 2, 99) == hashlib.sha1(b"llo").hexdigest()
    with pytest.raises(InvalidOffset):
        fs.hash_file("/docs/a.txt", start=6)
    with pytest.raises(ValueError, match="unsupported hash"):
        fs.hash_file("/docs/a.txt", "shake_128")


# -- changes -------------------------------------------------------------------


def test_mkdir_rmdir_remove(fs: JailedFS, tree: Tree) -> None:
    fs.mkdir("/new")
    assert (tree.home / "new").is_dir()
    with pytest.raises(AlreadyExists):
        fs.mkdir("/new")
    with pytest.raises(AlreadyExists):
        fs.mkdir("/")
    with pytest.raises(NotFound):
        fs.mkdir("/a/b")
    with pytest.raises(NotEmpty, match="directory not empty: '/docs'"):
        fs.rmdir("/docs")
    with pytest.raises(NotADirectory):
        fs.rmdir("/top.txt")
    with pytest.raises(IsADirectory):
        fs.remove("/new")
    fs.rmdir("/new")
    fs.remove("/top.txt")
    with pytest.raises(NotFound):
        fs.remove("/top.txt")
    for action in (fs.rmdir, fs.remove, fs.remove_tree):
        with pytest.raises(InvalidPath, match="home directory"):
            action("/..")
    assert tree.home.is_dir()


def test_remove_tree(fs: JailedFS, tree: Tree) -> None:
    (tree.home / "docs" / "deep" / "deeper").mkdir(parents=True)
    (tree.home / "docs" / "deep" / "deeper" / "f").write_bytes(b"x")
    fs.remove_tree("/docs")
    fs.remove_tree("/top.txt")
    assert not (tree.home / "docs").exists() and not (tree.home / "top.txt").exists()
    with pytest.raises(NotFound):
        fs.remove_tree("/docs")


def test_rename(fs: JailedFS, tree: Tree) -> None:
    fs.rename("/top.txt", "/docs/moved.txt")
    assert (tree.home / "docs" / "moved.txt").read_bytes() == b"top"
    fs.rename("/docs/moved.txt", "/docs/a.txt")  # overwrite
    assert (tree.home / "docs" / "a.txt").read_bytes() == b"top"
    with pytest.raises(AlreadyExists):
        fs.rename("/docs/a.txt", "/empty")
    with pytest.raises(InvalidPath, match="into itself"):
        fs.rename("/docs", "/docs/inner")
    with pytest.raises(NotFound):
        fs.rename("/nope", "/x")
    with pytest.raises(InvalidPath):
        fs.rename("/", "/x")
    fs.rename("/docs", "/docs")


def test_set_mtime(fs: JailedFS, tree: Tree) -> None:
    fs.set_mtime("/docs/a.txt", 1_000_000_000.5)
    assert os.stat(tree.home / "docs" / "a.txt").st_mtime == 1_000_000_000.5
    fs.set_mtime("/", 1_000_000_000)
    assert os.stat(tree.home).st_mtime == 1_000_000_000
    with pytest.raises(NotFound):
        fs.set_mtime("/nope", 0)


def test_unique_name(fs: JailedFS) -> None:
    assert fs.unique_name("/docs", "b.txt") == "/docs/b.txt"
    assert fs.unique_name("/docs", "a.txt") == "/docs/a.txt.1"
    with pytest.raises(InvalidPath):
        fs.unique_name("/docs", "x/y")


# -- uploads -------------------------------------------------------------------


def test_commit_replaces_atomically(fs: JailedFS, tree: Tree) -> None:
    target = tree.home / "docs" / "a.txt"
    os.chmod(target, 0o604)
    upload = fs.open_upload("/docs/a.txt")
    upload.write(b"new ")
    upload.write(b"content")
    assert upload.bytes_written == 11
    assert target.read_bytes() == b"hello"  # readers still see the old file
    assert len(temp_files(tree.home / "docs")) == 1
    assert all(not e.name.startswith(TEMP_PREFIX) for e in fs.list_dir("/docs"))
    upload.commit()
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o604
    assert temp_files(tree.home / "docs") == []
    with pytest.raises(ValueError):
        upload.commit()


def test_new_upload_mode_and_fsync(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_upload("/fresh.bin", fsync=True)
    upload.write(b"x" * 1000)
    upload.commit()
    assert (tree.home / "fresh.bin").read_bytes() == b"x" * 1000
    assert stat.S_IMODE(os.stat(tree.home / "fresh.bin").st_mode) & 0o137 == 0


def test_abort_overwrite_keeps_old_file(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_upload("/docs/a.txt")
    upload.write(b"partial")
    assert upload.abort() is AbortOutcome.DISCARDED
    assert (tree.home / "docs" / "a.txt").read_bytes() == b"hello"
    assert temp_files(tree.home / "docs") == []


def test_abort_new_file_keeps_partial(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_upload("/docs/new.bin")
    upload.write(b"first half")
    assert upload.abort() is AbortOutcome.KEPT_PARTIAL
    assert (tree.home / "docs" / "new.bin").read_bytes() == b"first half"
    assert temp_files(tree.home / "docs") == []
    # and the client resumes it
    resume = fs.open_write_at("/docs/new.bin", 10)
    resume.write(b", second half")
    resume.commit()
    assert read(fs, "/docs/new.bin") == b"first half, second half"


def test_abort_new_file_without_data_leaves_nothing(fs: JailedFS, tree: Tree) -> None:
    with fs.open_upload("/docs/empty.bin"):
        pass
    assert not (tree.home / "docs" / "empty.bin").exists()
    assert temp_files(tree.home / "docs") == []


def test_context_manager_aborts_on_error(fs: JailedFS, tree: Tree) -> None:
    with pytest.raises(RuntimeError), fs.open_upload("/docs/a.txt") as upload:
        upload.write(b"junk")
        raise RuntimeError("connection lost")
    assert (tree.home / "docs" / "a.txt").read_bytes() == b"hello"
    assert temp_files(tree.home / "docs") == []


def test_upload_targets(fs: JailedFS) -> None:
    with pytest.raises(IsADirectory):
        fs.open_upload("/docs")
    with pytest.raises(InvalidPath):
        fs.open_upload("/")
    with pytest.raises(NotFound):
        fs.open_upload("/nope/x")
    with pytest.raises(AlreadyExists):
        fs.open_upload("/top.txt", exclusive=True)


def test_exclusive_upload_never_replaces(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_upload("/later.txt", exclusive=True)
    (tree.home / "later.txt").write_bytes(b"someone else")
    upload.write(b"mine")
    with pytest.raises(AlreadyExists):
        upload.commit()
    assert (tree.home / "later.txt").read_bytes() == b"someone else"
    assert temp_files(tree.home) == []


def test_upload_without_overwrite_never_replaces(tree: Tree) -> None:
    fs = JailedFS(tree.home, ALL_PERMISSIONS - {"overwrite"})
    upload = fs.open_upload("/later.txt")
    (tree.home / "later.txt").write_bytes(b"someone else")
    upload.write(b"mine")
    with pytest.raises(PermissionDenied, match="'overwrite'"):
        upload.commit()
    assert (tree.home / "later.txt").read_bytes() == b"someone else"
    assert temp_files(tree.home) == []


def test_abort_new_file_when_name_taken_meanwhile(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_upload("/later.txt")
    upload.write(b"mine")
    (tree.home / "later.txt").write_bytes(b"someone else")
    assert upload.abort() is AbortOutcome.DISCARDED
    assert (tree.home / "later.txt").read_bytes() == b"someone else"
    assert temp_files(tree.home) == []


def test_append(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_append("/docs/a.txt")
    upload.write(b" world")
    upload.commit()
    assert read(fs, "/docs/a.txt") == b"hello world"
    upload = fs.open_append("/docs/created.txt")
    upload.write(b"abc")
    assert upload.abort() is AbortOutcome.KEPT_PARTIAL
    assert read(fs, "/docs/created.txt") == b"abc"


def test_write_at(fs: JailedFS, tree: Tree) -> None:
    upload = fs.open_write_at("/docs/a.txt", 1)
    upload.write(b"EL")
    upload.commit()
    assert read(fs, "/docs/a.txt") == b"hELlo"
    upload = fs.open_write_at("/docs/a.txt", 2, truncate=True)
    upload.write(b"!")
    upload.commit()
    assert read(fs, "/docs/a.txt") == b"hE!"
    with pytest.raises(InvalidOffset, match="invalid offset 4 for '/docs/a.txt'"):
        fs.open_write_at("/docs/a.txt", 4)
    with pytest.raises(InvalidOffset):
        fs.open_write_at("/docs/new.txt", 1)
    upload = fs.open_write_at("/docs/new.txt", 0)
    upload.write(b"n")
    upload.commit()
    assert read(fs, "/docs/new.txt") == b"n"
    with pytest.raises(IsADirectory):
        fs.open_write_at("/docs", 0)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full(
    fs: JailedFS, tree: Tree, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    upload = fs.open_upload("/docs/a.txt")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFull, match="no space left.*'/docs/a.txt'") as info:
        upload.write(b"data")
    assert isinstance(info.value, VFSError)
    monkeypatch.undo()
    assert upload.abort() is AbortOutcome.DISCARDED
    assert (tree.home / "docs" / "a.txt").read_bytes() == b"hello"
    assert temp_files(tree.home / "docs") == []


def test_disk_full_on_commit(
    fs: JailedFS, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    upload = fs.open_upload("/docs/a.txt", fsync=True)
    upload.write(b"data")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull):
        upload.commit()
    assert (tree.home / "docs" / "a.txt").read_bytes() == b"hello"
    assert temp_files(tree.home / "docs") == []


# -- permissions ---------------------------------------------------------------

# (operation, the permission it needs, a call that succeeds with all permissions)
MATRIX: list[tuple[str, str, Callable[[JailedFS], object]]] = [
    ("list_dir", "list", lambda fs: fs.list_dir("/docs")),
    ("open_read", "download", lambda fs: read(fs, "/docs/a.txt")),
    ("hash_file", "download", lambda fs: fs.hash_file("/docs/a.txt")),
    ("upload new", "upload", lambda fs: fs.open_upload("/docs/n.txt").commit()),
    ("upload over", "overwrite", lambda fs: fs.open_upload("/docs/a.txt").commit()),
    ("append existing", "overwrite", lambda fs: fs.open_append("/docs/a.txt").commit()),
    ("append new", "upload", lambda fs: fs.open_append("/docs/n.txt").commit()),
    ("write_at existing", "overwrite",
     lambda fs: fs.open_write_at("/docs/a.txt", 5).commit()),
    ("write_at new", "upload", lambda fs: fs.open_write_at("/docs/n.txt", 0).commit()),
    ("unique_name", "upload", lambda fs: fs.unique_name("/docs", "a.txt")),
    ("mkdir", "mkdir", lambda fs: fs.mkdir("/docs/d")),
    ("rmdir", "delete", lambda fs: fs.rmdir("/empty")),
    ("remove", "delete", lambda fs: fs.remove("/docs/a.txt")),
    ("remove_tree", "delete", lambda fs: fs.remove_tree("/docs")),
    ("rename", "rename", lambda fs: fs.rename("/top.txt", "/t2.txt")),
    ("rename over file", "overwrite", lambda fs: fs.rename("/top.txt", "/docs/a.txt")),
    ("set_mtime", "overwrite", lambda fs: fs.set_mtime("/docs/a.txt", 1.0)),
]


@pytest.mark.parametrize(("name", "permission", "call"), MATRIX, ids=[m[0] for m in MATRIX])
def test_permission_matrix(
    tree: Tree, name: str, permission: str, call: Callable[[JailedFS], object]
) -> None:
    before = snapshot(tree.root)
    denied = JailedFS(tree.home, ALL_PERMISSIONS - {permission})
    with pytest.raises(PermissionDenied) as info:
        call(denied)
    assert info.value.permission == permission
    assert f"(missing permission '{permission}')" in str(info.value)
    assert str(info.value).startswith("permission denied: this account may not ")
    assert snapshot(tree.root) == before
    call(JailedFS(tree.home, ALL_PERMISSIONS))  # and it is allowed with it


def test_stat_needs_list_or_download(tree: Tree) -> None:
    assert JailedFS(tree.home, frozenset({"download"})).stat("/top.txt").size == 3
    assert JailedFS(tree.home, frozenset({"list"})).stat("/top.txt").size == 3
    with pytest.raises(PermissionDenied, match="missing permission 'list'"):
        JailedFS(tree.home, frozenset({"upload"})).stat("/top.txt")


def test_permission_message(tree: Tree) -> None:
    fs = JailedFS(tree.home, frozenset())
    with pytest.raises(PermissionDenied) as info:
        fs.remove("/top.txt")
    assert str(info.value) == (
        "permission denied: this account may not delete (missing permission 'delete')"
    )


def test_permission_checked_before_existence(tree: Tree) -> None:
    fs = JailedFS(tree.home, frozenset())
    for call in (lambda: fs.remove("/nope"), lambda: fs.list_dir("/nope"),
                 lambda: fs.mkdir("/nope/x"), lambda: fs.rename("/nope", "/x")):
        with pytest.raises(PermissionDenied):
            call()


# -- descriptors ---------------------------------------------------------------


def test_no_descriptor_leaks(fs: JailedFS, tree: Tree) -> None:
    def attempt(call: Callable[[], object]) -> None:
        try:
            call()
        except VFSError:
            pass

    denied = JailedFS(tree.home, frozenset())
    os.mkfifo(tree.home / "fifo")
    before = open_fd_count()
    for i in range(30):
        fs.list_dir("/docs")
        fs.stat("/docs/a.txt")
        read(fs, "/docs/a.txt", 1)
        fs.hash_file("/docs/a.txt")
        fs.mkdir(f"/d{i}")
        fs.rename(f"/d{i}", f"/e{i}")
        fs.rmdir(f"/e{i}")
        upload = fs.open_upload(f"/u{i}")
        upload.write(b"x")
        upload.commit()
        upload = fs.open_upload(f"/u{i}")
        upload.abort()
        upload = fs.open_append(f"/u{i}")
        upload.commit()
        with fs.open_upload(f"/v{i}") as upload:
            upload.write(b"partial")
        fs.remove(f"/u{i}")
        fs.remove_tree(f"/v{i}")
        fs.exists("/link_dir/secret.txt")
        fs.is_dir("/docs/a.txt")
        for failing in (
            lambda: fs.list_dir("/link_dir"),
            lambda: fs.list_dir("/nope/x"),
            lambda: read(fs, "/docs/rel_link/secret.txt"),
            lambda: read(fs, "/docs/a.txt", 99),
            lambda: read(fs, "/fifo"),
            lambda: read(fs, "/docs"),
            lambda: fs.open_upload("/docs"),
            lambda: fs.open_upload("/link_file"),
            lambda: fs.open_write_at("/docs/a.txt", 99),
            lambda: fs.open_append("/fifo"),
            lambda: fs.open_upload("/top.txt", exclusive=True),
            lambda: fs.rmdir("/docs"),
            lambda: fs.rename("/docs", "/docs/x"),
            lambda: fs.remove_tree("/nope"),
            lambda: denied.open_upload("/new"),
            lambda: denied.open_append("/top.txt"),
            lambda: fs.stat("/a\x00"),
        ):
            attempt(failing)
    assert open_fd_count() == before
