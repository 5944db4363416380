"""
One FTP session's view of its home: a ``JailedFS``, a working directory, and
disk work that never runs on the reactor thread.

``FileShell`` is the avatar the realm gives an FTP login.  Every filesystem
call goes through ``call`` (a thread); the transfer helpers read and write
files in chunks in the thread too, with the ordering and back-pressure a data
connection needs:

* ``ThreadedReader`` reads a download one chunk at a time;
* ``UploadWriter`` queues received data and has one writer thread call at a
  time, so chunks land in order; it tells its owner when the queue is long
  (pause the data connection) and short again (resume).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from zope.interface import Interface, implementer

from rumpus_secure.vfs import AbortOutcome, JailedFS, Upload, join_path

RunInThread = Callable[..., "defer.Deferred[Any]"]

#: Bytes per read of a download.
READ_CHUNK = 256 * 1024
#: Queued upload bytes above which the data connection is paused.
HIGH_WATER = 4 * 1024 * 1024
#: ... and below which it is resumed.
LOW_WATER = 1024 * 1024
#: Most bytes handed to one writer-thread call.
WRITE_BATCH = 1024 * 1024


class IFileShell(Interface):
    """The avatar interface of an FTP login: a ``FileShell``."""


@implementer(IFileShell)
class FileShell:
    """
    An FTP session's jailed filesystem and working directory.

    :param fs: the account's ``JailedFS``.
    :param run_in_thread: ``run_in_thread(fn, *args) -> Deferred``.
    :param account: the account name (the owner shown in listings).
    """

    def __init__(self, fs: JailedFS, run_in_thread: RunInThread, account: str) -> None:
        self.fs = fs
        self.run_in_thread = run_in_thread
        self.account = account
        self.cwd = "/"

    @property
    def perms(self) -> frozenset[str]:
        return self.fs.perms

    def path(self, argument: str | None) -> str:
        """
        The virtual path an FTP argument names, from the working directory.

        :raises InvalidPath: on a path the jail refuses outright.
        """
        return join_path(self.cwd, argument or "")

    def call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run ``JailedFS.<method>(*args)`` in a thread."""
        function = getattr(self.fs, method)
        if kwargs:
            return self.run_in_thread(lambda: function(*args, **kwargs))
        return self.run_in_thread(function, *args)

    def open_download(self, path: str, offset: int) -> defer.Deferred[tuple[BinaryIO, int]]:
        """Open ``path`` for reading at ``offset``; fires with (file, size)."""

        def open_it() -> tuple[BinaryIO, int]:
            handle = self.fs.open_read(path, offset)
            return handle, os.fstat(handle.fileno()).st_size

        return self.run_in_thread(open_it)

    def hash_with_size(self, path: str, algorithm: str) -> defer.Deferred[tuple[str, int]]:
        """Digest and size of a file, in one thread call."""

        def digest() -> tuple[str, int]:
            size = self.fs.stat(path).size
            return self.fs.hash_file(path, algorithm), size

        return self.run_in_thread(digest)

    def logout(self) -> None:
        """Nothing is held between commands."""


class ThreadedReader:
    """Read a download in chunks, each read in a thread."""

    def __init__(self, handle: BinaryIO, run_in_thread: RunInThread,
                 chunk: int = READ_CHUNK) -> None:
        self._handle = handle
        self._run = run_in_thread
        self._chunk = chunk

    def read(self) -> defer.Deferred[bytes]:
        return self._run(self._handle.read, self._chunk)

    def close(self) -> defer.Deferred[None]:
        return self._run(self._handle.close)


class UploadWriter:
    """
    Write an upload's chunks in order, one thread call at a time.

    :param on_high: called when the queue passes ``HIGH_WATER`` (pause).
    :param on_low: called when it falls under ``LOW_WATER`` again (resume).
    """

    def __init__(self, upload: Upload, run_in_thread: RunInThread,
                 on_high: Callable[[], None], on_low: Callable[[], None]) -> None:
        self.upload = upload
        self._run = run_in_thread
        self._on_high = on_high
        self._on_low = on_low
        self._queue: deque[bytes] = deque()
        self.queued = 0
        self.received = 0
        self._writing = False
        self._high = False
        self.error: Exception | None = None
        self._idle: list[defer.Deferred[None]] = []

    def write(self, data: bytes) -> None:
        """Queue ``data``; dropped once a write failed (see ``error``)."""
        if self.error is not None or not data:
            return
        self._queue.append(data)
        self.queued += len(data)
        self.received += len(data)
        if self.queued > HIGH_WATER and not self._high:
            self._high = True
            self._on_high()
        self._pump()

    def _pump(self) -> None:
        if self._writing:
            return
        if not self._queue or self.error is not None:
            self._queue.clear()
            self.queued = 0
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        batch: list[bytes] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0]) <= WRITE_BATCH):
            chunk = self._queue.popleft()
            batch.append(chunk)
            size += len(chunk)
        self._writing = True
        d = self._run(self.upload.write, b"".join(batch))
        d.addCallbacks(self._written, self._failed, callbackArgs=(size,),
                       errbackArgs=(size,))

    def _written(self, ignored: Any, size: int) -> None:
        self._writing = False
        self.queued -= size
        if self._high and self.queued < LOW_WATER:
            self._high = False
            self._on_low()
        self._pump()

    def _failed(self, failure: Any, size: int) -> None:
        self._writing = False
        self.error = failure.value
        self._pump()

    def drain(self) -> defer.Deferred[None]:
        """Fires once every queued chunk is written (or a write failed)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if not self._writing:
            self._pump()
        return d

    async def commit(self) -> None:
        """Write what is queued, then commit; raises the write's error."""
        await self.drain()
        if self.error is not None:
            raise self.error
        await self._run(self.upload.commit)

    async def abort(self) -> AbortOutcome:
        """Drop what is queued, wait for a running write, abort the upload."""
        self._queue.clear()
        self.queued = 0
        if self.error is None:
            self.error = _Aborted()
        await self.drain()
        if self.upload.finished:
            return AbortOutcome.DISCARDED
        outcome: AbortOutcome = await self._run(self.upload.abort)
        return outcome


class _Aborted(Exception):
    """Marks a writer whose upload was given up."""
