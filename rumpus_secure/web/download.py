"""
Downloads: byte ranges (resume), content disposition, streaming from disk.

Downloaded files are always attachments of type ``application/octet-stream``
under a sandboxing CSP, so a user's uploaded HTML or script can never run in
the site's origin.

B{Clients that stop reading.}  While a response is written twisted.web has
no idle timeout (it is suspended from the end of the request until the
response is finished), so a client that reads nothing held its download --
and, for a ZIP, one of the six global ZIP slots -- for as long as it kept
the connection open (round 3: 11 minutes and counting).  A download or ZIP
whose producer stays paused (the transport's buffer full: the client took
nothing from it) for ``--http-timeout`` seconds is cut (L{StallTimer}).  A
slow but reading client resumes the producer each time its buffer drains,
so it is never cut.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from rumpus_secure.serial import RunInThread
from rumpus_secure.vfs import wire_name

CHUNK = 1024 * 1024

_log = Logger()


class Unsatisfiable(Exception):
    """The Range header asks for bytes the file does not have (416)."""


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """
    The one byte range asked for, as C{(first, last)} inclusive, or L{None}
    to send the whole file (no header, a malformed one, or several ranges:
    RFC 9110 allows ignoring Range).

    @raises Unsatisfiable: for a well-formed range outside the file.
    """
    if not header:
        return None
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition(b"-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:
        if not last_text.isdigit():
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    if first >= size:
        raise Unsatisfiable()
    if last is None:
        last = size - 1
    return first, min(last, size - 1)


def content_disposition(name: str) -> bytes:
    """
    ``attachment`` with an ASCII ``filename`` fallback and the exact UTF-8
    name as RFC 5987 / RFC 6266 ``filename*``.
    """
    shown = wire_name(name)
    fallback = "".join(
        c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in shown
    ).strip() or "download"
    encoded = quote(shown.encode("utf-8"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode(
        "ascii"
    )


def etag_for(size: int, mtime_ns: int, ino: int) -> bytes:
    return b'"%x-%x-%x"' % (ino, size, mtime_ns)


class StallTimer:
    """
    Calls C{on_stall()} once when a producer has been paused for
    C{timeout} seconds without a resume (see the module docstring).

    @param clock: provides C{callLater}; L{None} or C{timeout <= 0}: never.
    """

    def __init__(self, clock: Any, timeout: float, on_stall: Callable[[], None]) -> None:
        self._clock = clock if timeout > 0 else None
        self._timeout = timeout
        self._on_stall = on_stall
        self._call: Any = None

    def paused(self) -> None:
        if self._clock is not None and self._call is None:
            self._call = self._clock.callLater(self._timeout, self._fire)

    def resumed(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    cancel = resumed

    def _fire(self) -> None:
        self._call = None
        _log.info("a download's client read nothing for {timeout} s; cut",
                  timeout=self._timeout)
        self._on_stall()


@implementer(IPushProducer)
class FileProducer:
    """
    Writes C{length} bytes of an open file to a request, as fast as the
    transport takes them (it pauses us when its buffer is full), then
    finishes the request.

    The file is read in a thread, one chunk ahead of the network: the
    reactor thread never waits for a disk (a cold file on a slow disk would
    otherwise stall every other connection for the time of each read).

    @param run_in_thread: C{run_in_thread(function, *args) -> Deferred}.
    @param clock: for the stall timeout (L{StallTimer}); L{None}: none.
    @param stall_timeout: seconds a client may read nothing.
    """

    def __init__(self, request: IRequest, handle: BinaryIO, length: int,
                 run_in_thread: RunInThread,
                 on_end: Callable[[], None] | None = None,
                 clock: Any = None, stall_timeout: float = 0.0) -> None:
        self._request: IRequest | None = request
        self._on_end = on_end
        self._stall = StallTimer(clock, stall_timeout,
                                 lambda: self.cut("the client read nothing"))
        self._handle = handle
        self._remaining = length  # still to write to the request
        self._unread = length  # still to ask the file for
        self._run = run_in_thread
        self._reading: defer.Deferred[Any] | None = None
        self._ready: bytes | None = None  # read, waiting for a resume
        self._paused = False

    def start(self) -> None:
        assert self._request is not None
        self._request.registerProducer(self, True)
        self._read_next()

    def _read_next(self) -> None:
        if self._reading is not None or self._request is None or self._unread <= 0:
            return
        size = min(CHUNK, self._unread)
        self._unread -= size
        reading = self._reading = self._run(self._handle.read, size)
        reading.addCallbacks(self._read_done, self._read_failed)

    def _read_done(self, data: bytes) -> None:
        self._reading = None
        if self._request is None:
            self._handle.close()  # stopped while the read ran
            return
        if len(data) == 0:
            # The file shrank after Content-Length went out: finishing
            # normally would leave the client waiting for bytes that never
            # come (or read them as the next response).  Cut the connection.
            _log.warn("download cut short: the file shrank while it was sent")
            self._abort()
            return
        if self._paused:
            self._ready = data
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        assert self._request is not None
        self._remaining -= len(data)
        if self._remaining > 0:
            self._read_next()  # the next chunk is read while this one is sent
        self._request.write(data)
        if self._remaining <= 0:
            self._finish()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = None
        _log.failure("download: reading the file failed", failure)
        self._abort()

    def _abort(self) -> None:
        self._end(complete=False)

    def _finish(self) -> None:
        self._end(complete=True)

    def cut(self, reason: str) -> None:
        """
        End the download now, incomplete (its account was locked, deleted
        or its password changed): the connection is aborted so the client
        sees a cut, never a file that looks whole.
        """
        _log.info("download cut: {reason}", reason=reason)
        if self._reading is not None:
            # The read in flight closes the file when it returns.
            request, self._request = self._request, None
            self._ended()
            if request is not None:
                request.unregisterProducer()
                _abort_transport(request)
            return
        self._abort()

    def _ended(self) -> None:
        self._stall.cancel()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def _end(self, complete: bool) -> None:
        """
        Close the file and finish the response, or cut the connection when
        the response cannot be completed.
        """
        request, self._request = self._request, None
        self._handle.close()
        self._ended()
        if request is None:
            return
        request.unregisterProducer()
        if complete:
            request.finish()
            return
        _abort_transport(request)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._request is not None:
            self._stall.paused()

    def resumeProducing(self) -> None:
        self._paused = False
        self._stall.resumed()
        ready, self._ready = self._ready, None
        if ready is not None and self._request is not None:
            self._deliver(ready)
        else:
            self._read_next()

    def stopProducing(self) -> None:
        self._request = None
        self._ended()
        if self._reading is None:
            self._handle.close()
        # else: the read in flight closes it when it returns (_read_done)


def _abort_transport(request: IRequest) -> None:
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None:
        transport.abortConnection()


def send_file(request: IRequest, name: str, handle: BinaryIO,
              run_in_thread: RunInThread,
              on_end: Callable[[], None] | None = None,
              clock: Any = None, stall_timeout: float = 0.0) -> FileProducer | None:
    """
    Answer C{request} with the open file C{handle} (positioned at 0),
    honouring Range and If-Range; closes the handle when done.

    @param run_in_thread: where the file is read (L{FileProducer}).
    @param on_end: called once when a streamed body ends, however.
    @param clock: with C{stall_timeout}, cuts a client that reads nothing.
    @returns: the producer streaming the body (L{FileProducer.cut} ends
        it), or L{None} when the answer was complete at once.
    """
    st = os.fstat(handle.fileno())
    size = st.st_size
    etag = etag_for(size, st.st_mtime_ns, st.st_ino)
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"content-disposition", content_disposition(name))
    request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"etag", etag)
    request.setLastModified(st.st_mtime)
    request.setHeader(b"cache-control", b"private, no-cache")
    wanted = request.getHeader(b"range")
    if_range = request.getHeader(b"if-range")
    if if_range is not None and if_range.strip() != etag:
        wanted = None  # the file changed since the partial copy: send it all
    try:
        span = parse_range(wanted, size)
    except Unsatisfiable:
        handle.close()
        request.setResponseCode(416)
        request.setHeader(b"content-range", b"bytes */%d" % size)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-disposition", b"inline")
        request.write(b"The requested range is not in this file.\n")
        request.finish()
        return None
    if span is None:
        first, length = 0, size
    else:
        first, last = span
        length = last - first + 1
        request.setResponseCode(206)
        request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, size))
    request.setHeader(b"content-length", b"%d" % length)
    if request.method == b"HEAD" or length == 0:
        handle.close()
        request.write(b"")
        request.finish()
        return None
    handle.seek(first)
    producer = FileProducer(request, handle, length, run_in_thread, on_end,
                            clock=clock, stall_timeout=stall_timeout)
    producer.start()
    return producer


