"""
Uploads in progress: atomic stores and in-place writes.

An atomic store writes to a hidden temporary file,
``.rumpus-upload-<32 hex>.part``, created with ``O_CREAT|O_EXCL|O_NOFOLLOW``
(mode 0o640, or the permission bits of the file it replaces) in the
destination's directory, and renames it into place on ``commit``.  The
directory is held open by descriptor for the whole upload, so the rename lands
where the upload began even if the directory is moved or replaced by a
symbolic link meanwhile.

An in-place upload (append, or write at the end of the file for a resumed
transfer, ``REST <size>`` + ``STOR``) writes straight into the destination
file: what arrived before a failure stays, so the resume can be resumed.

A resume that rewrites part of the file (``REST n`` + ``STOR`` with n below
the file's size) is spliced: the new bytes go to a temporary file, and only
``commit`` copies them into the destination at n and cuts it to its new
length.  A transfer that fails leaves the destination byte for byte as it
was (issue #12: it used to be cut to n bytes when the transfer opened, so a
failed resume lost the file's tail).  The price is one copy of the new bytes
at commit (``copy_file_range``, in the kernel: about 1-2 GB/s from the page
cache), never of the whole file.  A crash during that copy can leave a mix of
old and new bytes beyond n; the bytes before n are never touched.
"""

from __future__ import annotations

import enum
import os
import weakref
from types import TracebackType

from ._syscalls import rename_noreplace, write_all
from .errors import AlreadyExists, PermissionDenied, from_os_error


#: The temporary file names of this process's uploads in progress, so the
#: start-up clean-up (L{rumpus_secure.vfs.cleanup}) never takes one for a
#: leftover.  Names are 128 random bits: unique across directories.
active_temp_names: set[str] = set()


class AbortOutcome(enum.Enum):
    """What ``Upload.abort`` left on disk, so a reply can tell the user."""

    #: Nothing of this upload remains; the destination is as it was.
    DISCARDED = "discarded"
    #: The bytes received so far are in the destination file (resumable).
    KEPT_PARTIAL = "kept-partial"


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _copy_range(source: int, destination: int, length: int, at: int) -> None:
    """Copy C{length} bytes from the start of C{source} to C{destination} at C{at}."""
    done = 0
    while done < length:
        try:
            copied = os.copy_file_range(source, destination, length - done,
                                        done, at + done)
        except (AttributeError, OSError):
            copied = -1
        if copied <= 0:
            break
        done += copied
    while done < length:  # no copy_file_range (or it refused): read and write
        chunk = os.pread(source, min(1 << 20, length - done), done)
        if not chunk:
            raise OSError(f"temporary file ended after {done} of {length} bytes")
        written = os.pwrite(destination, chunk, at + done)
        done += written


def _forget(temp_name: str | None, *fds: int) -> None:
    active_temp_names.discard(temp_name)  # type: ignore[arg-type]
    _close_fds(*fds)


class Upload:
    """
    One upload in progress.  Not thread-safe: one transfer drives it.

    Call ``write`` for each chunk, then exactly one of ``commit`` or
    ``abort``.  Used as a context manager, leaving the block without having
    committed aborts.

    :ivar path: the virtual destination path.
    :ivar bytes_written: bytes written by this upload so far.
    """

    def __init__(
        self,
        *,
        path: str,
        dir_fd: int,
        fd: int,
        name: str,
        temp_name: str | None,
        dest_existed: bool,
        may_replace: bool,
        exclusive: bool,
        fsync: bool,
        splice_fd: int | None = None,
        splice_at: int = 0,
    ) -> None:
        """
        :param splice_fd: for a splice, the destination open for writing;
            ``fd`` is then the temporary file, copied into it at
            ``splice_at`` by ``commit``.
        """
        self.path = path
        self.bytes_written = 0
        self._dir_fd = dir_fd
        self._fd = fd
        self._name = name
        self._temp_name = temp_name
        if temp_name is not None:
            active_temp_names.add(temp_name)
        self._dest_existed = dest_existed
        self._may_replace = may_replace
        self._exclusive = exclusive
        self._fsync = fsync
        self._finished = False
        self._splice_fd = splice_fd
        self._splice_at = splice_at
        fds = (fd, dir_fd) if splice_fd is None else (fd, dir_fd, splice_fd)
        # Last resort against descriptor leaks if a caller forgets to finish.
        self._finalizer = weakref.finalize(self, _forget, temp_name, *fds)

    @property
    def atomic(self) -> bool:
        """Whether this upload goes through a temporary file."""
        return self._temp_name is not None

    @property
    def finished(self) -> bool:
        """Whether ``commit`` or ``abort`` has been called."""
        return self._finished

    def write(self, data: bytes) -> None:
        """
        Append ``data`` to the upload.

        :raises DiskFull: when the disk or quota is full; the upload stays
            open, and ``abort`` then decides what to keep.
        """
        self._check_open()
        try:
            self.bytes_written += write_all(self._fd, data)
        except OSError as err:
            raise from_os_error(err, self.path) from None

    def commit(self) -> None:
        """
        Finish the upload: the destination now holds the data.

        For an atomic store the temporary file is renamed over the
        destination.  If the account may not overwrite and the destination
        appeared meanwhile (or ``exclusive`` was asked), nothing is replaced:
        the temporary file is removed and an error raised.
        """
        self._check_open()
        self._finished = True
        try:
            try:
                try:
                    if self._fsync:
                        os.fsync(self._fd)
                finally:
                    os.close(self._fd)
            except OSError:
                if self._temp_name is not None:
                    self._remove_temp()
                raise
            if self._temp_name is None:
                return
            if self._splice_fd is not None:
                self._splice()
                return
            try:
                if self._may_replace and not self._exclusive:
                    os.replace(
                        self._temp_name, self._name,
                        src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd,
                    )
                else:
                    rename_noreplace(
                        self._dir_fd, self._temp_name, self._dir_fd, self._name
                    )
            except FileExistsError:
                self._remove_temp()
                if self._exclusive:
                    raise AlreadyExists(self.path) from None
                raise PermissionDenied("overwrite", self.path) from None
            except OSError:
                self._remove_temp()
                raise
            if self._fsync:
                os.fsync(self._dir_fd)
        except OSError as err:
            raise from_os_error(err, self.path) from None
        finally:
            self._release()

    def abort(self) -> AbortOutcome:
        """
        Give up the upload and say what was kept.

        * replacing an existing file: the old file is untouched and the
          temporary file removed (``DISCARDED``);
        * a new file with some data: the partial data is renamed to the
          destination name so the client can resume it with REST+STOR or
          APPE (``KEPT_PARTIAL``), unless the name was taken meanwhile or
          no byte arrived (``DISCARDED``);
        * an in-place append or write: what was written stays
          (``KEPT_PARTIAL``).
        """
        if self._finished:
            raise ValueError("upload already finished")
        self._finished = True
        try:
            _close_fds(self._fd)
            if self._temp_name is None:
                return AbortOutcome.KEPT_PARTIAL
            if self._splice_fd is not None:
                self._remove_temp()
                return AbortOutcome.DISCARDED
            if not self._dest_existed and self.bytes_written > 0:
                try:
                    rename_noreplace(
                        self._dir_fd, self._temp_name, self._dir_fd, self._name
                    )
                    return AbortOutcome.KEPT_PARTIAL
                except OSError:
                    pass
            self._remove_temp()
            return AbortOutcome.DISCARDED
        finally:
            self._release()

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.abort()

    def _check_open(self) -> None:
        if self._finished:
            raise ValueError("upload already finished")

    def _remove_temp(self) -> None:
        assert self._temp_name is not None
        try:
            os.unlink(self._temp_name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass

    def _splice(self) -> None:
        """
        Copy the temporary file into the destination at the offset, cut the
        destination after it, remove the temporary file.
        """
        assert self._temp_name is not None and self._splice_fd is not None
        destination = self._splice_fd
        try:
            source = os.open(self._temp_name, os.O_RDONLY | os.O_NOFOLLOW,
                             dir_fd=self._dir_fd)
        except OSError:
            self._remove_temp()
            raise
        try:
            length = os.fstat(source).st_size
            _copy_range(source, destination, length, self._splice_at)
            os.ftruncate(destination, self._splice_at + length)
            if self._fsync:
                os.fsync(destination)
        finally:
            os.close(source)
            self._remove_temp()

    def _release(self) -> None:
        self._finalizer.detach()
        if self._splice_fd is not None:
            _close_fds(self._splice_fd)
        _close_fds(self._dir_fd)
        active_temp_names.discard(self._temp_name)  # type: ignore[arg-type]
