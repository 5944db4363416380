"""
The descriptor walk under ``JailedFS``: how a virtual path becomes a file
descriptor without ever leaving the home.

``_open_dir`` opens the home, then each component with ``openat(name,
O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``; the last component is then used
relative to its parent's descriptor.  A symlink anywhere fails the step that
meets it, so swapping a directory for a symlink between two calls (or between
a check and a use) cannot redirect an operation outside the home.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._syscalls import is_symlink_at
from .errors import (
    HomeUnavailable,
    InvalidPath,
    IsADirectory,
    NotARegularFile,
    PermissionDenied,
    SymlinkNotFollowed,
    VFSError,
    from_os_error,
)
from . import paths
from .paths import Parts, join_parts, split_path

#: Every account permission, by its exact name.
ALL_PERMISSIONS: frozenset[str] = frozenset(
    {"list", "download", "upload", "overwrite", "delete", "rename", "mkdir"}
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FILE_MODE = 0o640
DIR_MODE = 0o750


def unique_fact(st: os.stat_result) -> str:
    """
    The MLSD ``unique`` fact of a file: its inode number, without ``st_dev``.
    """
    return f"{st.st_ino:x}"


@dataclass(frozen=True)
class Entry:
    """
    One directory entry, as ``lstat`` saw it (symlinks are not followed).

    :ivar kind: ``'file'``, ``'dir'``, ``'symlink'`` or ``'other'``.
    :ivar unique: a stable identity, the inode number in hex (MLSD fact).
        Not the device number: on a shared filesystem (NFS, GlusterFS
        FUSE) each node's mount has its own ``st_dev``, so a client that
        moved to another node would see every file as a new one; the
        inode number (NFS fileid, Gluster's gfid-derived inode) is the
        same on every node.
    """

    name: str
    kind: str
    size: int
    mtime: float
    mode: int
    unique: str

    @classmethod
    def from_stat(cls, name: str, st: os.stat_result) -> Entry:
        """Build an entry from an ``lstat`` result."""
        if stat.S_ISREG(st.st_mode):
            kind = "file"
        elif stat.S_ISDIR(st.st_mode):
            kind = "dir"
        elif stat.S_ISLNK(st.st_mode):
            kind = "symlink"
        else:
            kind = "other"
        return cls(
            name=name,
            kind=kind,
            size=st.st_size,
            mtime=st.st_mtime,
            mode=st.st_mode,
            unique=unique_fact(st),
        )


class JailCore:
    """
    Configuration and descriptor helpers shared by ``JailedFS`` operations.

    :param home: the real home directory; it must exist (it is not created).
    :param perms: permission names, a subset of ``ALL_PERMISSIONS``.
    :param fsync: default for uploads: ``fsync`` data (and the directory
        after the rename) before ``commit`` returns.
    :raises HomeUnavailable: when ``home`` is missing or not a directory.
    :raises ValueError: on an unknown permission name.
    """

    def __init__(
        self, home: Path | str, perms: frozenset[str], *, fsync: bool = False
    ) -> None:
        unknown = set(perms) - ALL_PERMISSIONS
        if unknown:
            raise ValueError(f"unknown permissions: {sorted(unknown)}")
        # A Path is kept as it is: Path(path) parses it again (issue #18).
        self.home = home if isinstance(home, Path) else Path(home)
        self.perms = frozenset(perms)
        self.fsync = fsync
        os.close(self._open_home())

    def _open_home(self) -> int:
        try:
            return os.open(self.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise HomeUnavailable() from None

    def _open_dir(self, parts: Parts) -> int:
        """Open the directory at ``parts`` (the home for ``()``); caller closes."""
        fd = self._open_home()
        for index, name in enumerate(parts):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                where = join_parts(parts[: index + 1])
                try:
                    error = self._classify(err, fd, name, where)
                finally:
                    os.close(fd)
                raise error from None
            os.close(fd)
            fd = child
        return fd

    @staticmethod
    def _classify(err: OSError, dir_fd: int, name: str, where: str) -> VFSError:
        """Map an error on ``name`` in ``dir_fd``, telling symlinks apart."""
        symlink_errors = (errno.ENOTDIR, errno.ELOOP)
        if err.errno in symlink_errors and is_symlink_at(dir_fd, name):
            return SymlinkNotFollowed(where)
        return from_os_error(err, where)

    @contextmanager
    def _dir(self, parts: Parts) -> Iterator[int]:
        fd = self._open_dir(parts)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, parts: Parts) -> Iterator[int]:
        """Descriptor of the directory holding the last of ``parts``."""
        with self._dir(parts[:-1]) as fd:
            yield fd

    def _require(self, permission: str, path: str | None = None) -> None:
        if permission not in self.perms:
            raise PermissionDenied(permission, path)

    @staticmethod
    def _split_nonroot(path: str, action: str) -> tuple[Parts, str]:
        parts = split_path(path)
        if not parts:
            raise InvalidPath(f"invalid path: cannot {action} the home directory", "/")
        return parts, join_parts(parts)

    def _open_file(self, dir_fd: int, name: str, vpath: str, flags: int,
                   mode: int = FILE_MODE) -> int:
        """Open a regular file relative to ``dir_fd`` (never a symlink/FIFO)."""
        try:
            fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ENXIO:  # a FIFO with no reader, a socket
                raise NotARegularFile(vpath) from None
            raise self._classify(err, dir_fd, name, vpath) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(vpath)
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularFile(vpath)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _fsync(self, fsync: bool | None) -> bool:
        return self.fsync if fsync is None else fsync

    @staticmethod
    def _create_temp(dir_fd: int, vpath: str, mode: int) -> tuple[str, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            temp_name = paths.temp_name(secrets.token_hex(16))
            try:
                return temp_name, os.open(temp_name, flags, mode, dir_fd=dir_fd)
            except FileExistsError:
                continue
            except OSError as err:
                raise from_os_error(err, vpath) from None

