"""
One kept SQLite connection per thread, for stores read on every login.

Opening a connection costs about 0.5 ms here (the file is opened, the
``-wal`` and ``-shm`` files are mapped, and the pragmas are run) and the
same read on a kept connection costs 0.014 ms (``shared/reference/
perf-notes.md``).  A login reads the account twice (checker and realm), so
opening per read was about 1 ms of a 6.7 ms repeat login.

A kept connection in autocommit mode starts a new read transaction for each
statement, so it still sees what the admin command (another process) wrote
a moment ago: nothing is cached above SQLite.

SQLite connections must not be shared by threads, so each thread of the
pool gets its own, and they must not cross a C{fork()} (twistd daemonising
after the store was first used), so a connection remembers the process that
opened it and a child opens its own.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ThreadConnections:
    """
    Lend each thread its own long-lived connection from C{opener}.
    """

    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        self._opener = opener
        self._local = threading.local()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """
        This thread's connection; opened on first use.

        A connection that raised an error other than a constraint or a
        busy database is dropped, so a broken one is not lent again.
        """
        kept = getattr(self._local, "kept", None)
        if kept is None or kept[0] != os.getpid():
            db = self._opener()
            self._local.kept = (os.getpid(), db)
        else:
            db = kept[1]
        try:
            yield db
        except (sqlite3.IntegrityError, sqlite3.OperationalError):
            raise
        except sqlite3.Error:
            self._local.kept = None
            db.close()
            raise

    def close_this_thread(self) -> None:
        """
        Close the calling thread's connection, if it has one.
        """
        kept = getattr(self._local, "kept", None)
        self._local.kept = None
        if kept is not None and kept[0] == os.getpid():
            kept[1].close()
