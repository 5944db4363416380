"""
Leftovers of uploads cut short by a crash.

An atomic store writes to a hidden ``.rumpus-upload-<hex>.part`` file and
renames it into place at the end (L{rumpus_secure.vfs.upload}); a server
killed in the middle leaves that file behind.  It is never listed and never
reachable by a client, so nobody else would ever remove it: each one is
disk space lost.  At start-up the server removes the ones older than the
process, in a thread (the walk may be long), while it already serves.

Several nodes may share one file folder (C{--database} with a shared
folder): each names its temporary files after itself
(``.rumpus-upload-<node>-<hex>.part``, L{rumpus_secure.vfs.paths.temp_name})
and removes only its own, so a node's restart never takes the paused
upload of a node that still runs.  Single-node names (no node, from a
release before node ids) are removed only by a server without a shared
database: with one, no node can tell whose they are.

Safety: the walk uses directory descriptors (C{os.fwalk}) and never follows
a symbolic link, so a client that swaps a directory for a link while the
walk runs cannot make it delete anything outside the tree; only regular
files with the reserved name, last written before this process started and
not held by an upload of this process, are removed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .paths import temp_name_node
from .upload import active_temp_names


@dataclass
class CleanupResult:
    files: int = 0
    bytes: int = 0
    errors: int = 0


def _distinct_roots(roots: Iterable[Path]) -> list[Path]:
    """
    The roots without the ones inside another (walked once, not twice).
    """
    resolved = sorted({Path(os.path.abspath(r)) for r in roots}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for root in resolved:
        if not any(root.is_relative_to(parent) for parent in kept):
            kept.append(root)
    return kept


def remove_stale_uploads(roots: Iterable[Path], started: float,
                         node: str | None = None, legacy: bool = True) -> CleanupResult:
    """
    Remove the temporary upload files under C{roots} last written before
    C{started} (a Unix time).  Blocking: run it in a thread.

    @param node: remove only the files named for this node (and, with
        C{legacy}, the single-node ones); L{None}: every node's.
    @param legacy: whether single-node names (no node) are removed too.
    """

    def ours(name: str) -> bool:
        owner = temp_name_node(name)
        if owner is None:
            return False
        if owner == "":
            return legacy
        return node is None or owner == node

    result = CleanupResult()

    def failed(error: OSError) -> None:
        result.errors += 1

    for root in _distinct_roots(roots):
        if not root.is_dir():
            continue
        for _, _, files, dir_fd in os.fwalk(root, onerror=failed, follow_symlinks=False):
            for name in files:
                if not ours(name):
                    continue
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if (not stat.S_ISREG(info.st_mode) or info.st_mtime >= started
                            or name in active_temp_names):
                        continue
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError:
                    result.errors += 1
                    continue
                result.files += 1
                result.bytes += info.st_size
    return result
