"""Shared fixtures for the jailed filesystem tests: a home beside a sentinel."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

SENTINEL = b"SENTINEL: must never be read, listed or changed"


@dataclass(frozen=True)
class Tree:
    root: Path
    home: Path
    outside: Path


def build_tree(root: Path) -> Tree:
    """
    Create ``root/outside`` (the sentinel) and ``root/home``:

    home/top.txt, home/docs/a.txt, home/empty/, home/docs/rel_link -> ../../outside,
    home/link_dir -> outside, home/link_file -> outside/secret.txt.
    """
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SENTINEL)
    (outside / "sub").mkdir()
    (outside / "a.txt").write_bytes(SENTINEL)
    home = root / "home"
    home.mkdir()
    (home / "top.txt").write_bytes(b"top")
    (home / "docs").mkdir()
    (home / "docs" / "a.txt").write_bytes(b"hello")
    (home / "empty").mkdir()
    os.symlink(outside, home / "link_dir")
    os.symlink(outside / "secret.txt", home / "link_file")
    os.symlink("../../outside", home / "docs" / "rel_link")
    return Tree(root=root, home=home, outside=outside)


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``top`` except access times; symlinks not followed."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if path.is_symlink():
                result[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                result[rel] = ("dir", st.st_mtime_ns, st.st_mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                result[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return result


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))
