"""
Property tests: no path string, however built, reaches outside the home.

Each example builds a fresh home next to a sentinel directory (``outside``)
with symlinks to it, runs a few operations on generated paths, and checks
that nothing outside was revealed (listed, stat'ed, read, hashed) or changed,
and that every file opened for reading really lives under the home.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rumpus_secure.vfs import ALL_PERMISSIONS, JailedFS, VFSError, normalize, split_path

from .test_vfs_support import SENTINEL, build_tree, snapshot

NAMES = ["..", ".", "", "...", "docs", "a.txt", "top.txt", "empty", "outside",
         "secret.txt", "home", "sub", "new", "etc", "passwd", "\\..", "..\\..", "~"]
SYMLINKS = ["link_dir", "link_file", "docs/rel_link"]

segment = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(SYMLINKS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
structured = st.builds(
    lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
    st.booleans(),
    st.lists(segment, max_size=6),
)
# Mostly path-like compositions, sometimes arbitrary text (NUL, surrogates...).
paths = st.one_of(structured, structured, structured, st.text(max_size=40))

OPERATIONS = ["stat", "list_dir", "read", "hash", "upload", "append", "write_at",
              "mkdir", "rmdir", "remove", "remove_tree", "rename", "set_mtime",
              "exists", "is_dir", "unique_name"]

SENTINEL_HASH = hashlib.sha256(SENTINEL).hexdigest()


def _sentinel_ids(outside: Path) -> set[str]:
    ids = set()
    for path in [outside, *outside.iterdir()]:
        st_ = path.lstat()
        ids.add(f"{st_.st_ino:x}")
    return ids


def _run(fs: JailedFS, op: str, path: str, other: str, home: str,
         forbidden: set[str]) -> None:
    if op == "stat":
        assert fs.stat(path).unique not in forbidden
    elif op == "list_dir":
        for entry in fs.list_dir(path):
            assert entry.unique not in forbidden
    elif op == "read":
        with fs.open_read(path) as handle:
            real = os.readlink(f"/proc/self/fd/{handle.fileno()}")
            assert real.startswith(home + os.sep), real
            assert handle.read() != SENTINEL
    elif op == "hash":
        assert fs.hash_file(path) != SENTINEL_HASH
    elif op == "upload":
        with fs.open_upload(path) as upload:
            upload.write(b"payload")
            upload.commit()
    elif op == "append":
        with fs.open_append(path) as upload:
            upload.write(b"more")
            upload.commit()
    elif op == "write_at":
        with fs.open_write_at(path, 0) as upload:
            upload.write(b"w")
            upload.commit()
    elif op == "mkdir":
        fs.mkdir(path)
    elif op == "rmdir":
        fs.rmdir(path)
    elif op == "remove":
        fs.remove(path)
    elif op == "remove_tree":
        fs.remove_tree(path)
    elif op == "rename":
        fs.rename(path, other)
    elif op == "set_mtime":
        fs.set_mtime(path, 12345.0)
    elif op == "exists":
        fs.exists(path)
    elif op == "is_dir":
        fs.is_dir(path)
    elif op == "unique_name":
        result = fs.unique_name(path, "f")
        assert split_path(result)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPERATIONS), paths, paths),
                min_size=1, max_size=6))
def test_nothing_outside_the_home_is_touched(
    steps: list[tuple[str, str, str]],
) -> None:
    root = Path(tempfile.mkdtemp(prefix="vfs-prop-"))
    try:
        tree = build_tree(root)
        before = snapshot(tree.outside)
        forbidden = _sentinel_ids(tree.outside)
        fs = JailedFS(tree.home, ALL_PERMISSIONS)
        for op, path, other in steps:
            try:
                _run(fs, op, path, other, str(tree.home), forbidden)
            except VFSError:
                pass
            assert snapshot(tree.outside) == before
            assert sorted(os.listdir(root)) == ["home", "outside"]
    finally:
        shutil.rmtree(root)


@settings(max_examples=300, deadline=None)
@given(paths)
def test_normalised_paths_stay_in_the_virtual_root(path: str) -> None:
    try:
        parts = split_path(path)
    except VFSError:
        return
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts)
    joined = normalize(path)
    assert joined.startswith("/") and normalize(joined) == joined
    assert os.path.normpath("/home/x" + joined).startswith("/home/x")
