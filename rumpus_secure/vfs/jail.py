"""
``JailedFS``: one account's view of its home directory, with its permissions.

Every operation starts from a descriptor of the home directory and walks the
virtual path one component at a time with ``openat(..., O_DIRECTORY |
O_NOFOLLOW)``, then acts on the last component relative to its parent's
descriptor (``*at`` calls via ``dir_fd=``).  Each step refuses a symbolic
link, so no path string, symlink, or symlink swapped in between a check and a
use can lead outside the home: the check *is* the use.

Symlink policy: symbolic links are never followed.  They are listed (kind
``'symlink'``) and can be removed or renamed as entries, but reading,
writing, listing, or walking through one fails with ``SymlinkNotFollowed``
("... is a symbolic link; not followed").

This layer is synchronous and blocking; protocol layers call it in a thread
pool.  A ``JailedFS`` keeps no open descriptors between calls and is safe to
use from several threads at once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from typing import BinaryIO

from ._base import ALL_PERMISSIONS, DIR_MODE, FILE_MODE, Entry, JailCore
from ._syscalls import lstat_at, rename_noreplace
from .errors import (
    AlreadyExists,
    InvalidOffset,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotARegularFile,
    NotFound,
    PermissionDenied,
    SymlinkNotFollowed,
    VFSError,
    from_os_error,
)
from .paths import Parts, join_parts, split_path
from .scan import DirScan
from .upload import Upload

__all__ = ["ALL_PERMISSIONS", "HASH_ALGORITHMS", "Entry", "JailedFS"]

#: Algorithms ``hash_file`` accepts.
HASH_ALGORITHMS: frozenset[str] = frozenset(
    {"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256",
     "sha3_512", "blake2b", "blake2s"}
)
_CHUNK = 256 * 1024


class JailedFS(JailCore):
    """
    A home directory seen through an account's permissions.

    Construct with ``JailedFS(home, perms, fsync=False)``; see ``JailCore``.
    Every method takes virtual paths and raises only ``VFSError`` subclasses
    (and ``ValueError``/``TypeError`` for programming errors).
    """

    # -- queries -----------------------------------------------------------

    def stat(self, path: str) -> Entry:
        """
        The entry at ``path`` (a symlink is described, not followed).

        Needs ``list`` or ``download`` (clients ask SIZE/MDTM before a
        download); the error names ``list``.
        """
        parts = split_path(path)
        vpath = join_parts(parts)
        if not self.perms & {"list", "download"}:
            raise PermissionDenied("list", vpath)
        if not parts:
            with self._dir(()) as fd:
                return Entry.from_stat("/", os.fstat(fd))
        with self._parent(parts) as fd:
            try:
                return Entry.from_stat(parts[-1], os.lstat(parts[-1], dir_fd=fd))
            except OSError as err:
                raise from_os_error(err, vpath) from None

    def exists(self, path: str) -> bool:
        """
        Whether ``path`` names an entry, without following symlinks.

        Needs no permission (protocols need it for CWD and bookkeeping; any
        refused operation would reveal the same).  A path through a symlink or
        a non-directory is reported as not existing.
        """
        try:
            parts = split_path(path)
            if not parts:
                return True
            with self._parent(parts) as fd:
                return lstat_at(fd, parts[-1]) is not None
        except (InvalidPath, NotFound, NotADirectory):
            return False

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a real directory (for CWD); needs no permission."""
        try:
            with self._dir(split_path(path)):
                return True
        except VFSError:
            return False

    def list_dir(self, path: str) -> list[Entry]:
        """
        The entries of a directory, sorted by name, without upload temp files.

        Names that are not UTF-8 on disk come back with ``surrogateescape``
        surrogates (``os.fsdecode``); pass them through ``wire_name`` for
        display.  Needs ``list``.  A big folder is better read with
        ``scan_dir``, which holds one entry at a time.
        """
        with self.scan_dir(path) as scan:
            entries = list(scan.entries())
        entries.sort(key=lambda e: e.name)
        return entries

    def scan_dir(self, path: str) -> DirScan:
        """
        Open a directory for reading entry by entry (a streamed listing).

        The jail and symlink rules apply here, when the descriptor is opened;
        the caller closes the scan.  Needs ``list``.
        """
        parts = split_path(path)
        vpath = join_parts(parts)
        self._require("list", vpath)
        return DirScan(self._open_dir(parts), vpath)

    # -- reading -----------------------------------------------------------

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        """
        Open a file for download, positioned at ``offset``.  Needs ``download``.

        :raises InvalidOffset: when ``offset`` is negative or past the end.
        """
        parts, vpath = self._split_nonroot(path, "download")
        self._require("download", vpath)
        with self._parent(parts) as dir_fd:
            fd = self._open_file(dir_fd, parts[-1], vpath, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if offset < 0 or offset > size:
                raise InvalidOffset(vpath, offset, size)
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def hash_file(self, path: str, algorithm: str = "sha256", start: int = 0,
                  end: int | None = None) -> str:
        """
        Hex digest of bytes ``start`` to ``end`` (exclusive; ``None`` = to the
        end, clamped to the size) of a file.  Needs ``download``.

        :raises ValueError: for an algorithm not in ``HASH_ALGORITHMS``.
        :raises InvalidOffset: when ``start`` is past the end or after ``end``.
        """
        if algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"unsupported hash algorithm {algorithm!r}")
        vpath = join_parts(split_path(path))
        digest = hashlib.new(algorithm)
        with self.open_read(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            stop = size if end is None else min(end, size)
            if start < 0 or start > size or stop < start:
                raise InvalidOffset(vpath, start, size)
            handle.seek(start)
            remaining = stop - start
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest()

    # -- uploads -----------------------------------------------------------

    def open_upload(self, path: str, *, exclusive: bool = False,
                    fsync: bool | None = None) -> Upload:
        """
        Start an atomic store (STOR, STOU, web upload) into a temporary file.

        Needs ``upload`` for a new file, ``overwrite`` to replace one.  With
        ``exclusive`` (STOU) an existing destination is refused, also if it
        appears before ``commit``.
        """
        parts, vpath = self._split_nonroot(path, "upload to")
        name = parts[-1]
        dir_fd = self._open_dir(parts[:-1])
        try:
            existing = lstat_at(dir_fd, name)
            if existing is not None:
                if stat.S_ISLNK(existing.st_mode):
                    raise SymlinkNotFollowed(vpath)
                if stat.S_ISDIR(existing.st_mode):
                    raise IsADirectory(vpath)
                if not stat.S_ISREG(existing.st_mode):
                    raise NotARegularFile(vpath)
                if exclusive:
                    raise AlreadyExists(vpath)
                self._require("overwrite", vpath)
                mode = existing.st_mode & 0o777
            else:
                self._require("upload", vpath)
                mode = FILE_MODE
            temp_name, fd = self._create_temp(dir_fd, vpath, mode)
            if existing is not None:
                try:  # keep the replaced file's bits, whatever the umask
                    os.fchmod(fd, mode)
                except OSError:
                    pass
        except BaseException:
            os.close(dir_fd)
            raise
        return Upload(
            path=vpath, dir_fd=dir_fd, fd=fd, name=name, temp_name=temp_name,
            dest_existed=existing is not None,
            may_replace="overwrite" in self.perms, exclusive=exclusive,
            fsync=self._fsync(fsync),
        )

    def open_append(self, path: str, *, fsync: bool | None = None) -> Upload:
        """
        Append to a file in place (APPE); creates it if missing.

        Needs ``overwrite`` if the file exists, ``upload`` if it does not.
        """
        return self._open_in_place(path, None, False, fsync)

    def open_write_at(self, path: str, offset: int, *, truncate: bool = False,
                      fsync: bool | None = None) -> Upload:
        """
        Write into a file in place from ``offset`` (REST + STOR resume).

        Needs ``overwrite`` if the file exists, ``upload`` if it does not
        (then ``offset`` must be 0).  With ``truncate`` the file ends after
        the new data once committed; when ``offset`` is below the file's
        size the new data is spliced in at commit, so an aborted upload
        leaves the file unchanged (see L{rumpus_secure.vfs.upload}).

        :raises InvalidOffset: when ``offset`` is negative or past the end.
        """
        return self._open_in_place(path, offset, truncate, fsync)

    def _open_in_place(self, path: str, offset: int | None, truncate: bool,
                       fsync: bool | None) -> Upload:
        parts, vpath = self._split_nonroot(path, "upload to")
        name = parts[-1]
        dir_fd = self._open_dir(parts[:-1])
        try:
            existing = lstat_at(dir_fd, name)
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                raise SymlinkNotFollowed(vpath)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise IsADirectory(vpath)
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                raise NotARegularFile(vpath)
            size = existing.st_size if existing is not None else 0
            if offset is not None and not 0 <= offset <= size:
                raise InvalidOffset(vpath, offset, size)
            if existing is not None:
                self._require("overwrite", vpath)
                flags = os.O_WRONLY
            else:
                self._require("upload", vpath)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            if offset is None:
                flags |= os.O_APPEND
            fd = self._open_file(dir_fd, name, vpath, flags)
            try:
                if offset is not None:
                    size = os.fstat(fd).st_size
                    if offset > size:
                        raise InvalidOffset(vpath, offset, size)
                    if truncate and offset < size:
                        # Rewriting the tail: splice at commit, never cut now.
                        temp_name, temp_fd = self._create_temp(
                            dir_fd, vpath, FILE_MODE)
                        return Upload(
                            path=vpath, dir_fd=dir_fd, fd=temp_fd, name=name,
                            temp_name=temp_name, dest_existed=True,
                            may_replace=True, exclusive=False,
                            fsync=self._fsync(fsync), splice_fd=fd,
                            splice_at=offset,
                        )
                    os.lseek(fd, offset, os.SEEK_SET)
            except OSError as err:
                os.close(fd)
                raise from_os_error(err, vpath) from None
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(dir_fd)
            raise
        return Upload(
            path=vpath, dir_fd=dir_fd, fd=fd, name=name, temp_name=None,
            dest_existed=existing is not None, may_replace=True,
            exclusive=False, fsync=self._fsync(fsync),
        )

    def unique_name(self, directory: str, base: str) -> str:
        """
        A virtual path in ``directory`` that does not exist yet (STOU).

        Tries ``base``, then ``base.1``, ``base.2``, ...  Use it with
        ``open_upload(path, exclusive=True)``, which refuses a name taken in
        the meantime.  Needs ``upload``.
        """
        parts = split_path(directory)
        self._require("upload", join_parts(parts))
        base_parts = split_path(base)
        if len(base_parts) != 1:
            raise InvalidPath(f"invalid file name: {base!r}")
        with self._dir(parts) as fd:
            for counter in range(10000):
                name = base_parts[0] if counter == 0 else f"{base_parts[0]}.{counter}"
                if counter >= 1000:
                    name = f"{base_parts[0]}.{secrets.token_hex(6)}"
                split_path(name)
                if lstat_at(fd, name) is None:
                    return join_parts(parts + (name,))
        raise AlreadyExists(join_parts(parts + base_parts))

    # -- changes -------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        """Create a directory (mode 0o750).  Needs ``mkdir``."""
        parts = split_path(path)
        vpath = join_parts(parts)
        self._require("mkdir", vpath)
        if not parts:
            raise AlreadyExists(vpath)
        with self._parent(parts) as fd:
            try:
                os.mkdir(parts[-1], DIR_MODE, dir_fd=fd)
            except OSError as err:
                raise self._classify(err, fd, parts[-1], vpath) from None

    def rmdir(self, path: str) -> None:
        """Remove an empty directory.  Needs ``delete``."""
        parts = split_path(path)
        self._require("delete", join_parts(parts))
        parts, vpath = self._split_nonroot(path, "remove")
        with self._parent(parts) as fd:
            try:
                os.rmdir(parts[-1], dir_fd=fd)
            except OSError as err:
                raise self._classify(err, fd, parts[-1], vpath) from None

    def remove(self, path: str) -> None:
        """
        Remove a file (or a symlink or other non-directory entry; a symlink
        is removed itself, its target is untouched).  Needs ``delete``.
        """
        parts = split_path(path)
        self._require("delete", join_parts(parts))
        parts, vpath = self._split_nonroot(path, "remove")
        with self._parent(parts) as fd:
            try:
                os.unlink(parts[-1], dir_fd=fd)
            except OSError as err:
                raise from_os_error(err, vpath) from None

    def remove_tree(self, path: str) -> None:
        """
        Remove a file or a whole directory tree.  Needs ``delete``.

        Symlinks met in the tree are unlinked, never followed; every step is
        relative to a directory descriptor opened with ``O_NOFOLLOW``.
        """
        parts = split_path(path)
        self._require("delete", join_parts(parts))
        parts, vpath = self._split_nonroot(path, "remove")
        with self._parent(parts) as fd:
            st = lstat_at(fd, parts[-1])
            if st is None:
                raise NotFound(vpath)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree_at(fd, parts[-1], parts)
            else:
                try:
                    os.unlink(parts[-1], dir_fd=fd)
                except OSError as err:
                    raise from_os_error(err, vpath) from None

    def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        """
        Rename or move ``src`` to ``dst`` (renameat semantics; a symlink is
        moved itself).  Needs ``rename``, and ``overwrite`` too when ``dst``
        is an existing file.  An existing directory is never replaced.

        With ``replace=False`` an existing ``dst`` is never replaced, also
        one that appears during the call (``AlreadyExists``): the web
        manager asks the person first.
        """
        src_parts = split_path(src)
        dst_parts = split_path(dst)
        self._require("rename", join_parts(src_parts))
        src_parts, src_vpath = self._split_nonroot(src, "rename")
        dst_parts, dst_vpath = self._split_nonroot(dst, "replace")
        if src_parts == dst_parts:
            return
        if dst_parts[: len(src_parts)] == src_parts:
            raise InvalidPath(
                f"cannot move {src_vpath!r} into itself ({dst_vpath!r})", dst_vpath
            )
        with self._parent(src_parts) as src_fd, self._parent(dst_parts) as dst_fd:
            if lstat_at(src_fd, src_parts[-1]) is None:
                raise NotFound(src_vpath)
            existing = lstat_at(dst_fd, dst_parts[-1])
            if existing is not None and (stat.S_ISDIR(existing.st_mode) or not replace):
                raise AlreadyExists(dst_vpath)
            if existing is not None:
                self._require("overwrite", dst_vpath)
            try:
                if existing is None:
                    rename_noreplace(src_fd, src_parts[-1], dst_fd, dst_parts[-1])
                else:
                    os.rename(src_parts[-1], dst_parts[-1],
                              src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as err:
                if err.errno == errno.EINVAL:
                    raise InvalidPath(
                        f"cannot rename {src_vpath!r} to {dst_vpath!r}", dst_vpath
                    ) from None
                raise from_os_error(err, dst_vpath) from None

    def set_mtime(self, path: str, mtime: float) -> None:
        """
        Set the modification time (MFMT, web "touch").  Needs ``overwrite``.

        The access time is kept.  A symlink is refused, never followed.
        """
        parts = split_path(path)
        vpath = join_parts(parts)
        self._require("overwrite", vpath)
        mtime_ns = int(round(mtime * 1e9))
        if not parts:
            with self._dir(()) as fd:
                atime_ns = os.fstat(fd).st_atime_ns
                os.utime(fd, ns=(atime_ns, mtime_ns))
            return
        with self._parent(parts) as fd:
            st = lstat_at(fd, parts[-1])
            if st is None:
                raise NotFound(vpath)
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkNotFollowed(vpath)
            try:
                os.utime(parts[-1], ns=(st.st_atime_ns, mtime_ns), dir_fd=fd,
                         follow_symlinks=False)
            except OSError as err:
                raise from_os_error(err, vpath) from None


def _remove_tree_at(parent_fd: int, name: str, parts: Parts) -> None:
    """Remove directory ``name`` in ``parent_fd`` and all it holds."""
    vpath = join_parts(parts)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except OSError as err:
        if err.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise from_os_error(err, vpath) from None
        _unlink_at(parent_fd, name, vpath)  # replaced by a non-directory
        return
    try:
        with os.scandir(fd) as scan:
            children = [(item.name, item.is_dir(follow_symlinks=False))
                        for item in scan]
        for child, is_dir in children:
            if is_dir:
                _remove_tree_at(fd, child, parts + (child,))
                continue
            try:
                os.unlink(child, dir_fd=fd)
            except IsADirectoryError:
                _remove_tree_at(fd, child, parts + (child,))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise from_os_error(err, join_parts(parts + (child,))) from None
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError as err:
        raise from_os_error(err, vpath) from None


def _unlink_at(dir_fd: int, name: str, vpath: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise from_os_error(err, vpath) from None
