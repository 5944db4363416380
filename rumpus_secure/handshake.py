"""
A deadline for TLS handshakes, on every TLS port and after C{AUTH TLS}.

Why: a client that opens a connection and never finishes its handshake (one
byte of ClientHello, then nothing) costs the server a socket, a TLS object and,
on the FTP ports, one of the guard's connection slots (20 per address, 500 in
all).  Without a deadline of its own the handshake is bounded only by the
control connection's idle timeout, 600 s: 500 such connections, opened in a
second, kept honest FTPS clients out for ten minutes (issue #12, attack 3).
A real handshake takes one or two round trips, well under a second even over
a slow link, so the default deadline of 15 s (C{--handshake-timeout}) is
generous and frees a stalled slot 40 times sooner.

How: the connection is aborted (no close_notify: there is no TLS session to
close) when the deadline passes and the peer's Finished message has not been
received (C{SSL.Connection.get_peer_finished}, public pyOpenSSL API; set by
OpenSSL for TLS 1.2 and 1.3, full and resumed handshakes).  Aborting makes
the wrapped protocol's C{connectionLost} run, which is where the FTP control
connection gives its guard slot back.

 - L{HandshakeDeadlineFactory} is the C{TLSMemoryBIOFactory} of the ports
   that speak TLS from the first byte (implicit FTPS, HTTPS): its protocols
   start the deadline when the connection is made.
 - L{watch_handshake} starts the same deadline on a transport that has just
   called C{startTLS} (FTP after C{AUTH TLS}); the caller cancels it from its
   C{handshakeCompleted}.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

_log = Logger()

#: Seconds a client has to finish its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 15.0


def handshake_finished(transport: Any) -> bool:
    """
    Whether the TLS handshake on C{transport} is complete.

    A transport without a TLS connection (not TLS, or already torn down) is
    reported as finished: there is no handshake to wait for.
    """
    try:
        connection = transport.getHandle()
    except Exception:
        return True
    if not isinstance(connection, SSL.Connection):
        return True
    return connection.get_peer_finished() is not None


def watch_handshake(
    clock: IReactorTime,
    transport: Any,
    timeout: float,
    on_timeout: Any = None,
) -> IDelayedCall | None:
    """
    Abort C{transport} if its TLS handshake has not finished in C{timeout} s.

    :param on_timeout: called (no arguments) just before the abort, for
        audit or counting.
    :returns: the delayed call (cancel it once the handshake is done), or
        L{None} if C{timeout} is 0 (no deadline).
    """
    if timeout <= 0:
        return None

    def expire() -> None:
        if handshake_finished(transport):
            return
        if on_timeout is not None:
            on_timeout()
        transport.abortConnection()

    return clock.callLater(timeout, expire)


class HandshakeDeadlineProtocol(TLSMemoryBIOProtocol):
    """
    A server-side TLS connection whose handshake must finish in time.
    """

    factory: HandshakeDeadlineFactory
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # Started before the wrapped protocol is connected: a protocol that
        # closes at once (a banned address) still ends by the deadline.
        factory = self.factory
        self._deadline = watch_handshake(
            factory.deadline_clock, self, factory.handshake_timeout,
            factory.handshake_timed_out,
        )
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._deadline is not None and handshake_finished(self):
            self._cancel_deadline()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


class HandshakeDeadlineFactory(TLSMemoryBIOFactory):
    """
    C{TLSMemoryBIOFactory} whose connections abort an unfinished handshake.

    :ivar timed_out: how many handshakes this factory has aborted.
    """

    protocol = HandshakeDeadlineProtocol

    def __init__(
        self,
        contextFactory: Any,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        *,
        clock: IReactorTime,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock=clock)
        self.deadline_clock = clock
        self.handshake_timeout = handshake_timeout
        self.timed_out = 0

    def handshake_timed_out(self) -> None:
        self.timed_out += 1
        # One line per power of two: a flood of stalled handshakes is visible
        # without writing a line for each.
        if self.timed_out & (self.timed_out - 1) == 0:
            _log.info(
                "{count} TLS handshake(s) not finished within {timeout} s "
                "were aborted on {factory}",
                count=self.timed_out, timeout=self.handshake_timeout,
                factory=self.wrappedFactory.__class__.__name__,
            )
