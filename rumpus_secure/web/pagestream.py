"""
A page written while it is made: pieces of HTML made in a thread, one
ahead of the network.

A folder of 100,000 entries is about 88 MB of HTML and takes seconds to
make (each entry is an ``lstat`` and a row of string work).  Made whole and
sent at once, the browser waited for all of it, and the server held it
all (see L{rumpus_secure.web.folder_page}).  L{PageProducer} instead asks a
thread for one piece (L{rumpus_secure.web.folder_page.PIECE}, 64 KiB) at a time: the
next piece is made while the last one is written, and none is asked for
while the transport has paused us (its buffer is full because the client
reads slower than we make), so what the server holds for a page is one
piece in the making, one waiting, and the transport's buffer, whatever the
size of the folder.  No thread waits for the client: between pieces the
page holds only its iterator (an open directory), so a slow reader costs
no thread of the shared pool, and every other request's work runs between
two of our pieces.

A page always ends as a page: the client going away stops the making at
the next piece (the directory is closed); an end from outside (the account
locked, see L{rumpus_secure.web.app.TransferBinding}) or a failure of the
making ends the already-sent part with a visible error and the page's own
closing tags, never a hang or a page that looks whole.  A client that reads
nothing for ``--http-timeout`` seconds is cut like a download's
(L{rumpus_secure.web.download.StallTimer}).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from rumpus_secure.serial import RunInThread
from rumpus_secure.web.download import StallTimer

_log = Logger()


def _next_piece(pieces: Iterator[bytes]) -> bytes | None:
    """In a thread: the next piece of the page, or L{None} at its end."""
    return next(pieces, None)


@implementer(IPushProducer)
class PageProducer:
    """
    Writes the pieces of C{pieces} to C{request} as a streamed body, then
    finishes it.

    @param pieces: made one C{next()} at a time in C{run_in_thread}.
    @param closing: C{closing(message)}: the bytes that end the page sent
        so far with C{message} as an error (L{cut}, a failure).
    @param close: closes C{pieces} (its directory); called once, never
        while a piece is being made.
    @param on_end: called once when the page ends, however.
    """

    def __init__(self, request: IRequest, pieces: Iterator[bytes],
                 run_in_thread: RunInThread, closing: Callable[[str], bytes],
                 close: Callable[[], None] = lambda: None,
                 on_end: Callable[[], None] = lambda: None,
                 clock: Any = None, stall_timeout: float = 0.0) -> None:
        self._request: IRequest | None = request
        self._pieces = pieces
        self._run = run_in_thread
        self._closing = closing
        self._close: Callable[[], None] | None = close
        self._on_end: Callable[[], None] | None = on_end
        self._stall = StallTimer(clock, stall_timeout, self._stalled)
        self._making: defer.Deferred[Any] | None = None
        self._ready: bytes | None = None  # made, waiting for a resume
        self._paused = False
        #: an end asked for while a piece was being made: its message
        self._cut: str | None = None

    def start(self) -> None:
        assert self._request is not None
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._make_next()

    # -- making ---------------------------------------------------------------

    def _make_next(self) -> None:
        if self._making is not None or self._request is None or self._paused:
            return
        making = self._making = self._run(_next_piece, self._pieces)
        making.addCallbacks(self._made, self._failed)

    def _made(self, piece: bytes | None) -> None:
        self._making = None
        if self._request is None:
            self._close_pieces()  # the client left while this piece was made
            return
        if self._cut is not None:
            if piece is not None:
                self._request.write(piece)  # the closing comes after what was made
            self._end_with(self._cut)
            return
        if piece is None:
            self._finish()
            return
        if self._paused:
            self._ready = piece
            return
        self._deliver(piece)

    def _deliver(self, piece: bytes) -> None:
        assert self._request is not None
        self._request.write(piece)
        self._make_next()  # the next piece is made while this one is sent

    def _failed(self, failure: Failure) -> None:
        self._making = None
        _log.failure("web: making a page failed", failure)
        if self._request is None:
            self._close_pieces()
            return
        self._end_with("The server could not finish this page. It has been logged; "
                       "reload the page to try again.")

    # -- ending ---------------------------------------------------------------

    def cut(self, reason: str) -> None:
        """
        End the page now, after what was sent, with C{reason} said as an
        error (the account was locked, deleted or its password changed).
        """
        if self._request is None:
            return
        _log.info("web: page cut: {reason}", reason=reason)
        message = f"The listing stopped here: {reason}."
        if self._making is not None:
            self._cut = message  # ends when the piece in the making returns
            return
        self._end_with(message)

    def _end_with(self, message: str) -> None:
        ready, self._ready = self._ready, None
        if ready is not None and self._request is not None:
            self._request.write(ready)  # the closing comes after what was made
        self._close_pieces()
        self._finish(self._closing(message))

    def _finish(self, tail: bytes = b"") -> None:
        request, self._request = self._request, None
        self._close_pieces()
        self._ended()
        if request is None:
            return
        request.unregisterProducer()
        if tail:
            request.write(tail)
        request.finish()

    def _stalled(self) -> None:
        request, self._request = self._request, None
        self._ended()
        if self._making is None:
            self._close_pieces()
        if request is not None:
            request.unregisterProducer()
            transport = getattr(getattr(request, "channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()

    def _close_pieces(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def _ended(self) -> None:
        self._stall.cancel()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    # -- IPushProducer --------------------------------------------------------

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
            self._make_next()

    def stopProducing(self) -> None:
        """The client went away: stop making the page (at the next piece)."""
        if self._request is None:
            return
        self._request = None
        self._ready = None
        self._ended()
        if self._making is None:
            self._close_pieces()
        # else: the piece in the making closes the pieces when it returns
