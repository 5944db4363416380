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

A deadline alone still lets stalls from many addresses fill the FTP
connection slots (500) for 15 s at a time, again and again.  So the
handshakes in progress are also bounded (L{HandshakesInFlight}, 250, half the
slots): past the bound the oldest stall, once a second old, is aborted to
make room for the newcomer.  Honest clients finish in milliseconds and are
never the oldest; the attacker's stalls are what get pushed out.

 - L{HandshakeDeadlineFactory} is the C{TLSMemoryBIOFactory} of the ports
   that speak TLS from the first byte (implicit FTPS, HTTPS): its protocols
   start the deadline when the connection is made.
 - L{watch_handshake} starts the same deadline (and bound) on a transport
   that has just called C{startTLS} (FTP after C{AUTH TLS}); the caller
   cancels it from its C{handshakeCompleted}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from rumpus_secure.guard import normalise_address

_log = Logger()

#: Seconds a client has to finish its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 15.0

#: Handshakes in progress above which the oldest makes room for a new one.
DEFAULT_MAX_IN_FLIGHT = 250

#: Handshakes in progress from one address above which its oldest makes room.
DEFAULT_MAX_IN_FLIGHT_PER_ADDRESS = 20

#: A handshake younger than this is never pushed out.  1 s cut 441 of 1,000
#: honest FTPS clients arriving at once through HAProxy on 2 cores (their
#: handshakes queue for CPU for 1.5-3 s: bench/haproxy_nodes.py); 3 s lets
#: such a burst finish and still drops a stall long before its deadline.
DEFAULT_MIN_AGE = 3.0


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


class HandshakesInFlight:
    """
    TLS handshakes in progress on a server, the oldest first.

    When more than C{limit} are in progress, a new one makes room by
    aborting the oldest, if that one has already had C{min_age} seconds (an
    honest handshake over loopback or a LAN takes milliseconds, over a slow
    link well under a second).  So stalled handshakes cannot keep newcomers
    out: a stall is what gets pushed out.  If even the oldest is younger, the
    newcomer is let in anyway (a burst of honest clients is not refused; the
    guard's connection limits still apply).

    The default limit, 250, is half of the guard's default C{max-connections}
    (500): however many handshakes an attacker stalls from however many
    addresses, at least half the FTP connection slots stay for clients that
    finish their handshake.  One address has at most C{per_address} (20, the
    guard's default per-address limit) in progress by the same rule, so a
    single address pushes out its own stalls first; this also covers HTTPS,
    which has no connection limit of the guard.
    """

    def __init__(self, clock: IReactorTime, limit: int = DEFAULT_MAX_IN_FLIGHT,
                 min_age: float = DEFAULT_MIN_AGE,
                 per_address: int = DEFAULT_MAX_IN_FLIGHT_PER_ADDRESS) -> None:
        self._clock = clock
        self.limit = limit
        self.min_age = min_age
        self.per_address = per_address
        self._pending: OrderedDict[HandshakeWatch, float] = OrderedDict()
        self._by_address: dict[str, OrderedDict[HandshakeWatch, float]] = {}
        #: Handshakes aborted to make room.
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def started(self, watch: HandshakeWatch) -> None:
        now = self._clock.seconds()
        mine = self._by_address.setdefault(watch.address, OrderedDict())
        self._make_room(mine, self.per_address, now)
        self._make_room(self._pending, self.limit, now)
        self._pending[watch] = now
        mine[watch] = now

    def _make_room(self, pending: OrderedDict[HandshakeWatch, float], limit: int,
                   now: float) -> None:
        while pending and len(pending) >= limit:
            oldest, since = next(iter(pending.items()))
            if now - since < self.min_age:
                break
            self.finished(oldest)
            self.evicted += 1
            oldest.evict()

    def finished(self, watch: HandshakeWatch) -> None:
        self._pending.pop(watch, None)
        mine = self._by_address.get(watch.address)
        if mine is not None:
            mine.pop(watch, None)
            if not mine:
                del self._by_address[watch.address]


class HandshakeWatch:
    """
    The deadline of one handshake: abort the transport if it is not done in
    time, or if L{HandshakesInFlight} needs the room.

    Has C{active()} and C{cancel()} like the C{IDelayedCall} it wraps; cancel
    it once the handshake is done or the connection is lost.
    """

    def __init__(
        self,
        clock: IReactorTime,
        transport: Any,
        timeout: float,
        on_timeout: Callable[[], object] | None = None,
        in_flight: HandshakesInFlight | None = None,
    ) -> None:
        self._transport = transport
        self._on_timeout = on_timeout
        try:
            self.address = normalise_address(transport.getPeer().host)
        except Exception:
            self.address = "?"
        self._in_flight = in_flight
        self._call: IDelayedCall | None = (
            clock.callLater(timeout, self._expire) if timeout > 0 else None)
        if in_flight is not None:
            in_flight.started(self)

    def active(self) -> bool:
        return self._call is not None or self._in_flight is not None

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.finished(self)

    def _expire(self) -> None:
        self._call = None
        if handshake_finished(self._transport):
            self.cancel()
            return
        self.cancel()
        if self._on_timeout is not None:
            self._on_timeout()
        self._transport.abortConnection()

    def evict(self) -> None:
        """Called by L{HandshakesInFlight} (which already forgot us)."""
        self._in_flight = None
        if handshake_finished(self._transport):
            self.cancel()
            return
        self.cancel()
        self._transport.abortConnection()


def watch_handshake(
    clock: IReactorTime,
    transport: Any,
    timeout: float,
    on_timeout: Callable[[], object] | None = None,
    in_flight: HandshakesInFlight | None = None,
) -> HandshakeWatch:
    """
    Abort C{transport} if its TLS handshake has not finished in C{timeout} s
    (0: no deadline), or when C{in_flight} needs the room.

    :param on_timeout: called (no arguments) just before a timeout's abort,
        for audit or counting.
    :returns: the watch; cancel it once the handshake is done.
    """
    return HandshakeWatch(clock, transport, timeout, on_timeout, in_flight)


class HandshakeDeadlineProtocol(TLSMemoryBIOProtocol):
    """
    A server-side TLS connection whose handshake must finish in time.
    """

    factory: HandshakeDeadlineFactory
    _watch: HandshakeWatch | None = None

    def makeConnection(self, transport: Any) -> None:
        # Started before the wrapped protocol is connected: a protocol that
        # closes at once (a banned address) still ends by the deadline.
        factory = self.factory
        self._watch = watch_handshake(
            factory.deadline_clock, self, factory.handshake_timeout,
            factory.handshake_timed_out, factory.in_flight,
        )
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._watch is not None and handshake_finished(self):
            self._cancel_watch()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_watch()
        super().connectionLost(reason)

    def _cancel_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()


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
        in_flight: HandshakesInFlight | None = None,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock=clock)
        self.deadline_clock = clock
        self.handshake_timeout = handshake_timeout
        self.in_flight = in_flight
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
