"""
Small system-call helpers the standard library lacks.

``rename_noreplace`` is ``renameat2(..., RENAME_NOREPLACE)`` through ctypes,
so "create but never clobber" renames are race-free on Linux.  Shared
filesystems refuse the flag: GlusterFS FUSE answers EINVAL and Linux NFS
rejects rename flags.  There a file is renamed with ``link()`` + ``unlink()``:
``link`` fails with EEXIST atomically on the server, so two nodes committing
the same name at once cannot both win (a check-then-rename lets the second
one clobber the first's file).  Only what cannot be hard-linked (directories,
filesystems without hard links) falls back to check-then-rename, which has a
window but is the best POSIX offers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from typing import Any

_RENAME_NOREPLACE = 1


def _load_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in ``dir_fd`` (a symlink counts; never followed)."""
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` relative to ``dir_fd``, or ``None`` when nothing is there."""
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def is_symlink_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` in ``dir_fd`` is a symbolic link right now."""
    st = lstat_at(dir_fd, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


#: What renameat2 answers when the kernel or the filesystem lacks the flag.
_FLAG_REFUSED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)

#: What link() answers where hard links cannot be made (a directory, a
#: filesystem without them): the caller falls back to check-then-rename.
_NO_HARD_LINK = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
                 errno.EINVAL)


def link_then_unlink(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> bool:
    """
    Move a file by hard-linking it to ``dst``, then removing ``src``.

    :returns: ``False`` when no hard link can be made here (nothing done).
    :raises FileExistsError: if ``dst`` exists, decided atomically by ``link``.
    """
    try:
        st = os.lstat(src, dir_fd=src_dir_fd)
    except OSError:
        return False  # let rename report it
    if stat.S_ISDIR(st.st_mode):
        return False
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_HARD_LINK:
            return False
        raise
    try:
        os.unlink(src, dir_fd=src_dir_fd)
    except FileNotFoundError:
        pass  # someone else moved or removed it meanwhile: ours is in place
    except OSError:
        # Undo, so that a failure leaves one name, not two.
        try:
            os.unlink(dst, dir_fd=dst_dir_fd)
        except OSError:
            pass
        raise
    return True


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """
    Rename ``src`` to ``dst``, failing with EEXIST if ``dst`` exists.

    :raises OSError: as ``os.rename`` would, or ``FileExistsError``.
    """
    if _renameat2 is not None:
        result = _renameat2(
            src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst),
            _RENAME_NOREPLACE,
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in _FLAG_REFUSED:
            raise OSError(code, os.strerror(code), dst)
    if link_then_unlink(src_dir_fd, src, dst_dir_fd, dst):
        return
    if exists_at(dst_dir_fd, dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def write_all(fd: int, data: bytes) -> int:
    """Write all of ``data`` to ``fd`` (looping over short writes)."""
    view = memoryview(data)
    total = 0
    while total < len(view):
        total += os.write(fd, view[total:])
    return total
