"""
``DirScan``: a directory read one entry at a time, for listings that stream.

``JailedFS.list_dir`` returns every entry of a folder, sorted; for a folder
of 100,000 entries that is 100,000 ``Entry`` objects (about 40 MB of Python
objects) built before the first byte of a listing can go out.  A ``DirScan``
holds one directory descriptor, opened by the jail's descriptor walk (so
the jail and symlink rules were applied when it was opened), and yields the
entries in directory order as the caller asks for them: ``os.scandir`` on
the descriptor reads the kernel's entries 32 KiB at a time and each entry is
``lstat``-ed relative to the same descriptor (``fstatat`` with
``AT_SYMLINK_NOFOLLOW``), never by a path, so a directory renamed or
replaced by a symlink while it is read cannot redirect the scan.

Entries come unsorted: sorting needs the whole folder at once, which is what
streaming avoids (FTP clients sort listings themselves).  Upload temp files
are hidden, as in ``list_dir``.  Blocking: read it in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import TracebackType

from ._base import Entry
from .errors import from_os_error
from .paths import is_temp_name


class DirScan:
    """
    The entries of one directory, read lazily from an open descriptor.

    Iterate once (``entries`` or ``names``), then ``close``; closing twice is
    harmless, and a scan closed before it is read yields nothing.

    :ivar path: the virtual path of the directory.
    :ivar entry: the directory itself (``fstat`` of the descriptor).
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path
        try:
            self.entry = Entry.from_stat(path.rstrip("/").rpartition("/")[2] or "/",
                                         os.fstat(fd))
        except OSError as err:
            self.close()
            raise from_os_error(err, path) from None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> DirScan:  # noqa: PYI034 (final in practice)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _scan(self) -> Iterator[os.DirEntry[str]]:
        if self._fd is None:
            return
        try:
            # scandir works on a duplicate of the descriptor and closes only that.
            with os.scandir(self._fd) as scan:
                for item in scan:
                    if not is_temp_name(item.name):
                        yield item
        except OSError as err:
            raise from_os_error(err, self.path) from None

    def entries(self, keep: Callable[[str], bool] | None = None) -> Iterator[Entry]:
        """
        Each entry as ``lstat`` sees it (one ``fstatat`` per entry); with
        ``keep``, only the entries whose name it keeps, and only those are
        ``lstat``-ed (a search of a big folder: names cost about a seventh).
        """
        for item in self._scan():
            if keep is not None and not keep(item.name):
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we read: not listed
            except OSError as err:
                raise from_os_error(err, self.path) from None
            yield Entry.from_stat(item.name, st)

    def names(self) -> Iterator[str]:
        """Only the names (NLST): no ``stat`` at all."""
        for item in self._scan():
            yield item.name


__all__ = ["DirScan"]
