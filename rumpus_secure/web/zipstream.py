"""
Several files and folders downloaded as one ZIP, streamed as it is built.

The archive is written by ``zipfile`` in a thread of its own into a sink
that hands 256 KiB chunks to the reactor; the thread blocks while
L{WINDOW} chunks wait for the network (the transport pauses us when its
buffer is full), so memory stays at about 1 MiB per download whatever the
size of the selection, and there is no temporary file: ``zipfile`` writes
to a stream that cannot seek by putting each entry's sizes and CRC in a data
descriptor after its data (ZIP64 where needed).

Every file is read through the account's L{JailedFS}: its ``list`` and
``download`` permissions and the jail apply as for a single download, and
symbolic links are left out, never followed.  Entries are stored, not
compressed (``ZIP_STORED``): most large files are already compressed, and
deflating would cost a CPU core per download.

At most L{MAX_PER_ACCOUNT} ZIP downloads per account and L{MAX_TOTAL} in
all run at once (each holds a thread for its duration).  So that clients
that stop reading cannot hold those slots, a ZIP whose client reads nothing
for ``--http-timeout`` seconds is cut
(L{rumpus_secure.web.download.StallTimer}).  A selection may name at most
L{MAX_NAMES} entries and each name counts once: round 3 listed one 64 MiB
file 40 times and got a 2.68 GB archive.
"""

from __future__ import annotations

import threading
import time
import zipfile
from typing import Any, Callable, Iterable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from rumpus_secure.vfs import JailedFS, VFSError, join_path, split_path
from rumpus_secure.web.download import StallTimer

_log = Logger()

CHUNK = 256 * 1024
WINDOW = 4
MAX_PER_ACCOUNT = 2
MAX_TOTAL = 6
READ = 1024 * 1024
#: Most entries one ZIP request may select (the page selects a folder's rows).
MAX_NAMES = 1000


def unique_names(names: Iterable[str]) -> list[str]:
    """C{names} in their first order, each once."""
    return list(dict.fromkeys(names))


class Stopped(Exception):
    """The client went away: stop building the archive."""


def zip_name(directory: str, names: list[str]) -> str:
    """``photos.zip`` for one folder, else the folder's name (or ``files``)."""
    if len(names) == 1:
        base = names[0]
    else:
        parts = split_path(directory)
        base = parts[-1] if parts else "files"
    return base + ".zip"


def walk(fs: JailedFS, directory: str, names: Iterable[str]) -> Iterable[tuple[str, str, Any]]:
    """
    ``(archive name, virtual path, entry)`` for every file and folder under
    the selected C{names}, depth first; symbolic links and other special
    files are left out.  Listing needs ``list`` (checked by C{fs}).
    """
    stack = [(name, join_path(directory, name)) for name in reversed(list(names))]
    while stack:
        arcname, vpath = stack.pop()
        entry = fs.stat(vpath)
        if entry.kind == "dir":
            yield arcname + "/", vpath, entry
            children = fs.list_dir(vpath)
            stack.extend((f"{arcname}/{child.name}", join_path(vpath, child.name))
                         for child in reversed(children) if child.kind in ("dir", "file"))
        elif entry.kind == "file":
            yield arcname, vpath, entry


class _Sink:
    """The file object zipfile writes to (no tell/seek: streaming mode)."""

    def __init__(self, producer: ZipProducer) -> None:
        self._producer = producer
        self._buffer = bytearray()
        #: set after a failure: an abandoned ZipFile's __del__ would
        #: otherwise finish the archive on its way out
        self.dead = False

    def write(self, data: bytes) -> int:
        if self.dead:
            return len(data)
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer and not self.dead:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._producer.hand_over(chunk)


@implementer(IPushProducer)
class ZipProducer:
    """
    Streams the ZIP built by C{build(sink)} (in a thread) to C{request}.

    @param call_from_thread: the reactor's C{callFromThread}.
    @param start_thread: starts C{function} in a new thread (injectable).
    """

    def __init__(self, request: IRequest, build: Callable[[Any], None],
                 call_from_thread: Callable[..., Any],
                 start_thread: Callable[[Callable[[], None]], Any] | None = None,
                 done: Callable[[], None] = lambda: None,
                 clock: Any = None, stall_timeout: float = 0.0) -> None:
        self._request = request
        self._stall = StallTimer(clock, stall_timeout,
                                 lambda: self.cut("the client read nothing"))
        self._build = build
        self._call = call_from_thread
        self._start = start_thread or _daemon
        self._done = done
        self._window = threading.Semaphore(WINDOW)
        self._owed = 0
        self._paused = False
        self._stopped = threading.Event()

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._start(self._run)

    # -- in the thread -----------------------------------------------------

    def _run(self) -> None:
        ok = False
        sink = _Sink(self)
        try:
            self._build(sink)
            sink.flush()
            ok = True
        except Stopped:
            sink.dead = True
        except Exception:  # noqa: BLE001 - logged; the client sees a cut
            sink.dead = True
            _log.failure("ZIP download failed")
        self._call(self._end, ok)

    def hand_over(self, chunk: bytes) -> None:
        """In the thread: wait for room in the window, then pass C{chunk} on."""
        while not self._window.acquire(timeout=1.0):
            if self._stopped.is_set():
                raise Stopped()
        if self._stopped.is_set():
            raise Stopped()
        self._call(self._deliver, chunk)

    # -- in the reactor ----------------------------------------------------

    def _deliver(self, chunk: bytes) -> None:
        if self._stopped.is_set():
            return
        self._request.write(chunk)
        if self._paused:
            self._owed += 1
        else:
            self._window.release()

    def _end(self, ok: bool) -> None:
        self._stall.cancel()
        self._done()
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._request.unregisterProducer()
        if ok:
            self._request.finish()
            return
        # Half an archive must not look whole: cut the connection.
        transport = getattr(getattr(self._request, "channel", None), "transport", None)
        if transport is not None:
            transport.abortConnection()

    def cut(self, reason: str) -> None:
        """
        End the download now, incomplete (its account ended): the connection
        is aborted, and the building thread stops at its next chunk; the
        ZIP slot is given back when it has (C{done}).
        """
        if self._stopped.is_set():
            return
        _log.info("ZIP download cut: {reason}", reason=reason)
        self._stall.cancel()
        self._stopped.set()
        self._request.unregisterProducer()
        transport = getattr(getattr(self._request, "channel", None), "transport", None)
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self._paused = True
        if not self._stopped.is_set():
            self._stall.paused()

    def resumeProducing(self) -> None:
        self._paused = False
        self._stall.resumed()
        owed, self._owed = self._owed, 0
        for _ in range(owed):
            self._window.release()

    def stopProducing(self) -> None:
        self._stall.cancel()
        self._stopped.set()


def _daemon(function: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=function, name="rumpus-zip", daemon=True)
    thread.start()
    return thread


def build_zip(open_fs: Callable[[], JailedFS], directory: str,
              names: list[str]) -> Callable[[Any], None]:
    """
    The function that writes the archive of C{names} in C{directory} into
    a sink, for L{ZipProducer}.  A file that cannot be read (permission,
    gone meanwhile) stops the archive: a ZIP that silently lacks a file is
    worse than a failed download.
    """
    def build(sink: Any) -> None:
        fs = open_fs()
        # Not a ``with``: on an error the archive must stay unfinished (no
        # central directory), so it cannot pass for a whole one.
        archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED,
                                  allowZip64=True)
        for arcname, vpath, entry in walk(fs, directory, names):
            info = zipfile.ZipInfo(arcname, time.gmtime(max(entry.mtime, 315532800))[:6])
            if arcname.endswith("/"):
                info.external_attr = 0o40755 << 16 | 0x10
                archive.writestr(info, b"")
                continue
            info.external_attr = 0o644 << 16
            with fs.open_read(vpath) as source, archive.open(info, "w",
                                                             force_zip64=True) as target:
                while True:
                    data = source.read(READ)
                    if not data:
                        break
                    target.write(data)
        archive.close()
    return build


__all__ = ["MAX_NAMES", "MAX_PER_ACCOUNT", "MAX_TOTAL", "VFSError", "ZipProducer", "build_zip",
           "unique_names", "walk", "zip_name"]
