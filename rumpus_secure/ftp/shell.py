"""
One FTP session's view of its home: a ``JailedFS``, a working directory, and
disk work that never runs on the reactor thread.

``FileShell`` is the avatar the realm gives an FTP login.  Every filesystem
call goes through ``call`` (a thread).  The bytes of a transfer are read and
written by the transfer engine's worker thread
(L{rumpus_secure.ftp.transfer}), which owns the data connection.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from twisted.internet import defer
from zope.interface import Interface, implementer

from rumpus_secure.serial import RunInThread
from rumpus_secure.vfs import JailedFS, join_path


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
