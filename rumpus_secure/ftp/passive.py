"""
Setting up data connections: passive listeners and active connectors.

A passive listener is a plain listening socket watched by the reactor.  It
accepts only the control connection's peer (anyone else is closed at once
and reported), and it stops listening as soon as the right client arrives,
so a range of 100 passive ports serves far more than 100 transfers over
time.  The accepted socket is handed, untouched, to the transfer engine's
worker thread (L{rumpus_secure.ftp.transfer}).

The peer's address is not enough: behind a NAT, on a shared host or
through a proxy, other clients have the same one.  So a connection from the
right address is only a I{candidate}, which a C{vet} function (under PROT P:
the TLS handshake, which must resume the control connection's session)
accepts or refuses.  A refused candidate does not end the wait: the port
keeps listening for the rightful client until its connection arrives or the
connect timeout ends.  Up to L{MAX_CANDIDATES} candidates are vetted at
once, and a new one displaces the oldest, so impostors that connect and
say nothing cannot hold the port either: they would have to keep opening
connections faster than the rightful client's handshake (a round trip or
two) to push it out.  Only if the time runs out does a refusal become the
transfer's answer.

The port is chosen at random among the free ports of the range (the
kernel's ephemeral choice without a range): handed out lowest first, the
next passive port of a busy server was a guess away.
"""

from __future__ import annotations

import errno
import random
import socket
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rumpus_secure.guard import normalise_address as normalise_host
from rumpus_secure.proxy import (
    HEADER_TIMEOUT,
    ProxyHeaderError,
    TrustedProxies,
    read_header,
)

_log = Logger()

#: Connections from the right address vetted at once by one listener.
MAX_CANDIDATES = 8

_random = random.SystemRandom()


class DataConnectionTimeout(Exception):
    """
    The client did not open the data connection in time.
    """


class DataConnectionRefused(Exception):
    """
    Connections came from the right address, but none was the rightful one.

    What a listener fails with when its time runs out after refusing at
    least one candidate (the last refusal).

    @ivar reason: C{"foreign-session"} (the TLS handshake did not resume
        the control connection's session) or C{"tls-failed"}.
    @ivar detail: a short description for the reply.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Vet = Callable[[socket.socket, str], "defer.Deferred[Any]"]


def _accept_as_is(sock: socket.socket, host: str) -> defer.Deferred[Any]:
    return defer.succeed(sock)


#: Ports drawn straight from a range before L{random_order} lists it.
_QUICK_DRAWS = 8


def random_order(ports: Iterable[int], skip: Container[int] = ()) -> Iterator[int]:
    """
    The ports not in C{skip} in a random order, from a system random source.

    Each port is drawn only when the one before it turned out to be taken.
    From a range, the first few are drawn straight from it (a draw that
    lands in C{skip} or on a port already tried is drawn again), so a PASV
    on a mostly free range of thousands of ports costs a draw or two, not
    a list of the range per PASV (two lists of 10,000 ports cost about
    0.5 ms); only when those are all taken is the rest listed and drawn
    from.  Each free port still comes first with the same chance.
    """
    tried: set[int] = set()
    if isinstance(ports, range) and len(ports) > 2 * _QUICK_DRAWS:
        for _ in range(_QUICK_DRAWS):
            port = ports[_random.randrange(len(ports))]
            if port in skip or port in tried:
                continue
            tried.add(port)
            yield port
    candidates = [port for port in ports if port not in skip and port not in tried]
    while candidates:
        index = _random.randrange(len(candidates))
        candidates[index], candidates[-1] = candidates[-1], candidates[index]
        yield candidates.pop()


@implementer(IReadDescriptor)
class PassiveListener:
    """
    Waits for one data connection from one address.

    @param on_refused: called with the address of a refused connection.
    @param trusted: load balancers (C{--trusted-proxies}): a connection from
        one of them starts with a PROXY header naming the real client, which
        is held to C{allowed_peer} like a direct connection (the passive
        ranges are routed to their node by the balancer, see the README).
    @ivar vet: called with each connection from the allowed address and
        that address; fires with what L{wait} delivers (the socket, or a
        channel made from it) or fails with L{DataConnectionRefused}, and is
        cancelled if another candidate wins or the wait ends.  Set it before
        the reactor next runs; by default every connection is accepted.
    """

    def __init__(self, reactor: Any, interface: str, ports: range,
                 allowed_peer: str, timeout: float,
                 on_refused: Callable[[str], None] = lambda host: None,
                 pool: PortPool | None = None,
                 trusted: TrustedProxies | None = None) -> None:
        self.reactor = reactor
        self.trusted = trusted
        self.allowed_peer = normalise_host(allowed_peer)
        self.on_refused = on_refused
        self.vet: Vet = _accept_as_is
        self._pool = pool
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._reading = False
        self._accepted: Any = None
        self._won = False
        self._candidates: list[defer.Deferred[Any]] = []
        self._headers: list[defer.Deferred[Any]] = []
        self._refusal: DataConnectionRefused | None = None
        self._waiters: list[defer.Deferred[Any]] = []
        self._timer: Any = None
        self._failure: BaseException | None = None
        self.port = self._bind(interface, random_order(
            ports, pool.in_use if pool is not None else ()))

    def _bind(self, interface: str, ports: Iterable[int]) -> int:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        last: OSError | None = None
        for number in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((interface, number))
                sock.listen(8)
            except OSError as e:
                sock.close()
                last = e
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise CannotListenError(interface, number, e) from None
            sock.setblocking(False)
            self._sock = sock
            if self._pool is not None:
                self._pool.taken(sock.getsockname()[1])
            self._start_reading()
            self._timer = self.reactor.callLater(self._timeout, self._expire)
            return sock.getsockname()[1]
        raise CannotListenError(interface, 0, last or OSError("every passive port is taken"))

    # IReadDescriptor

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def logPrefix(self) -> str:
        return "PassiveListener"

    def connectionLost(self, reason: Any) -> None:
        self._stop_listening()

    def doRead(self) -> None:
        while self._sock is not None:
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                _log.info("passive accept failed: {error}", error=e)
                return
            host = normalise_host(address[0])
            if self.trusted and host in self.trusted:
                self._read_header(conn, host)
                continue
            if host != self.allowed_peer:
                conn.close()
                self.on_refused(host)
                continue
            conn.setblocking(True)
            self._admit(conn, host)

    def _admit(self, conn: socket.socket, host: str) -> None:
        """
        Vet a connection from the right client, displacing the oldest
        candidate if L{MAX_CANDIDATES} are being vetted.
        """
        if len(self._candidates) >= MAX_CANDIDATES:
            _log.info("passive port {port}: a new connection from {host}"
                      " displaces the oldest one still in its handshake",
                      port=self.port, host=host)
            self._candidates[0].cancel()  # removes it from the list
        self._vet(conn, host)

    def _read_header(self, conn: socket.socket, proxy: str) -> None:
        """
        Read the PROXY header of a connection from a trusted proxy; if it
        names the control connection's client, vet it as a candidate.

        Header reads have their own bound (L{MAX_CANDIDATES}, the oldest
        making room): through a proxy, anyone on the Internet can open
        connections to a passive port, but only those whose header names
        the rightful client may compete with it for a candidate's place,
        as only connections from its address could without a proxy.
        """
        if len(self._headers) >= MAX_CANDIDATES:
            self._headers[0].cancel()  # removes it from the list
        conn.setblocking(False)
        reading = read_header(self.reactor, conn, min(HEADER_TIMEOUT, self._timeout))
        self._headers.append(reading)

        def settled(result: Any) -> Any:
            if reading in self._headers:
                self._headers.remove(reading)
            return result

        def got(header: Any) -> None:
            source = proxy if header.source is None else normalise_host(header.source.host)
            if source != self.allowed_peer:
                conn.close()
                self.on_refused(source)
                return
            if self._won or self._failure is not None:
                conn.close()
                return
            conn.setblocking(True)
            self._admit(conn, source)

        def bad(failure: Failure) -> None:
            conn.close()
            if failure.check(ProxyHeaderError):
                _log.info("passive port {port}: bad PROXY header from {proxy}: {error}",
                          port=self.port, proxy=proxy, error=failure.getErrorMessage())
                self.on_refused(proxy)
            elif not failure.check(defer.CancelledError):
                _log.failure("reading a PROXY header failed", failure)

        reading.addBoth(settled).addCallbacks(got, bad)

    def _vet(self, conn: socket.socket, host: str) -> None:
        try:
            vetting = self.vet(conn, host)
        except Exception:  # noqa: BLE001 (a bug: logged; the port keeps serving)
            _log.failure("vetting a data connection failed")
            conn.close()
            return
        self._candidates.append(vetting)

        def settled(result: Any) -> Any:
            if vetting in self._candidates:
                self._candidates.remove(vetting)
            return result

        vetting.addBoth(settled).addCallbacks(self._won_by, self._refused)

    def _won_by(self, connected: Any) -> None:
        if self._won or self._failure is not None:
            # Too late (a race with the timer or close): not wanted.
            connected.close()
            return
        self._won = True
        self._stop_listening()
        self._cancel_candidates()
        self._accepted = connected
        self._deliver()

    def _refused(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return
        if failure.check(DataConnectionRefused):
            self._refusal = failure.value
        else:
            _log.failure("vetting a data connection failed", failure)
            self._refusal = DataConnectionRefused("internal-error", "internal error")

    # the control side

    def wait(self) -> defer.Deferred[Any]:
        """
        Fires with the accepted socket (once), or what L{vet} made of it;
        fails on timeout (L{DataConnectionTimeout}, or L{DataConnectionRefused}
        if candidates were refused) or close.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append(d)
        self._deliver()
        return d

    def take(self) -> Any:
        """
        The accepted socket if it is already here, else None.
        """
        sock, self._accepted = self._accepted, None
        return sock

    def _deliver(self) -> None:
        if self._failure is not None:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(self._failure)
            return
        if self._accepted is not None and self._waiters:
            d = self._waiters.pop(0)
            sock, self._accepted = self._accepted, None
            d.callback(sock)

    def _expire(self) -> None:
        self._timer = None
        if not self._won:
            self._failure = self._refusal or DataConnectionTimeout()
            self._stop_listening()
            self._cancel_candidates()
            self._deliver()

    def _cancel_candidates(self) -> None:
        headers, self._headers = self._headers, []
        for reading in headers:
            reading.cancel()
        candidates, self._candidates = self._candidates, []
        for vetting in candidates:
            vetting.cancel()

    def _start_reading(self) -> None:
        if not self._reading and self._sock is not None:
            self._reading = True
            self.reactor.addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _stop_listening(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._sock is not None:
            self._stop_reading()
            self._sock.close()
            self._sock = None
            if self._pool is not None:
                self._pool.released(self.port)

    def close(self) -> None:
        """
        Give up: stop listening, close an unused connection, fail waiters.

        Also drops L{vet}: typically a method of the listener's owner, which
        holds the listener, and a reference cycle would keep both (and the
        data channel with its megabyte buffers) until the next full garbage
        collection: 130 MB more peak memory with 200 clients at once
        (C{bench/concurrent_downloads.py}).
        """
        self.vet = _accept_as_is
        self._stop_listening()
        self._cancel_candidates()
        if self._accepted is not None:
            self._accepted.close()
            self._accepted = None
        if self._failure is None:
            self._failure = defer.CancelledError()
        self._deliver()

    @property
    def listening(self) -> bool:
        return self._sock is not None


class PortPool:
    """
    The passive port range, shared by every session of a server.

    A port is taken from PASV until its client connects.  When every port
    is taken, PASV waits (see L{wait}) and is woken as soon as a port comes
    free, instead of polling: with a range smaller than a burst of clients
    that is the difference between a short queue and a storm of bind calls.
    """

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self.in_use: set[int] = set()
        self._waiters: deque[defer.Deferred[None]] = deque()

    def candidates(self) -> list[int]:
        return [port for port in self.ports if port not in self.in_use]

    def taken(self, port: int) -> None:
        self.in_use.add(port)

    def released(self, port: int) -> None:
        self.in_use.discard(port)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.called:
                waiter.callback(None)
                return

    def wait(self) -> defer.Deferred[None]:
        """
        Fires when a port is released (cancel it to stop waiting).
        """
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._forget(d))
        self._waiters.append(d)
        return d

    def _forget(self, d: defer.Deferred[None]) -> None:
        try:
            self._waiters.remove(d)
        except ValueError:
            pass


def active_connector(host: str, port: int, source_host: str | None,
                     timeout: float) -> Callable[[], socket.socket]:
    """
    A function that connects to the client (PORT/EPRT), run in a worker.
    """

    def connect() -> socket.socket:
        source = (source_host, 0) if source_host else None
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=source)
        sock.settimeout(None)
        return sock

    return connect
