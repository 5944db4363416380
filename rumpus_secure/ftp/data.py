"""
Data-connection set-up commands: PASV, EPSV, PORT and EPRT.

Each command leaves one I{data source} on the control protocol
(C{control.data_source}); the next transfer command takes it, uses it once
and closes it.  A passive source is a L{PassiveListener} that accepts only
the control connection's peer; an active source connects, when the transfer
starts, only to the control peer's own address on a port from 1024 up
(bounce protection).  Both refusals are audited.

The same address is not the same client (NAT, a shared host, a proxy).
Under PROT P a passive connection from the right address is taken only if
its TLS handshake resumed I{this} control connection's session (the control
connection has a TLS session id context of its own, L{rumpus_secure.tls});
any other is
closed, audited as C{ftp.data_refused} (reason C{foreign-session}, or
C{tls-failed}), and the port goes on waiting for the rightful client.

Nothing here waits: PASV answers at once and the client may connect before
or after it sends the transfer command.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.protocols import ftp
from twisted.python.failure import Failure

from rumpus_secure.ftp.passive import (
    DataConnectionRefused,
    PassiveListener,
    active_connector,
    normalise_host,
)
from rumpus_secure.ftp.transfer import ClientCertMismatch, SessionNotResumed, TransferHandle

__all__ = [
    "ActiveSource",
    "PassiveSource",
    "active",
    "extended_passive",
    "normalise_host",
    "passive",
]

Connect = Callable[[], socket.socket]


class PassiveSource:
    """
    A passive data connection: the client connects to our listener.

    Under PROT P the TLS handshake starts as soon as the client is in (in a
    worker thread), since some clients handshake before they send the
    transfer command; the transfer then takes the ready channel.  The
    handshake is the listener's vetting of a candidate (see
    L{rumpus_secure.ftp.passive}): one that did not resume this control
    connection's session is refused and the port waits on.
    """

    def __init__(self, listener: PassiveListener, control: Any) -> None:
        self.listener = listener
        self._control = control
        self._outcome: tuple[bool, Any] | None = None
        self._waiters: list[defer.Deferred[Any]] = []
        self._taken = False
        listener.vet = self._vet
        listener.wait().addCallbacks(self._settled_ok, self._settled_failed)

    def _vet(self, sock: socket.socket, host: str) -> defer.Deferred[Any]:
        control = self._control
        tls = control._data_tls()
        if tls is None:
            return defer.succeed(sock)
        handle = TransferHandle()
        cancelled = False

        def cancel(ignored: Any) -> None:
            nonlocal cancelled
            cancelled = True
            handle.abort()  # the handshake returns at once

        vetted: defer.Deferred[Any] = defer.Deferred(cancel)

        def done(channel: Any) -> None:
            if cancelled:
                channel.close()
            else:
                vetted.callback(channel)

        def failed(failure: Failure) -> None:
            refused = failure.check(SessionNotResumed)
            if refused:
                reason = ("foreign-certificate" if failure.check(ClientCertMismatch)
                          else "foreign-session")
            elif cancelled:
                return  # our own abort ended it
            else:
                reason = "tls-failed"
            detail = failure.getErrorMessage()[:200] or failure.type.__name__
            control._audit("ftp.data_refused", account=control.account,
                           reason=reason, data_client=host, error=detail,
                           outcome="refused")
            if refused and failure.value.channel is not None:
                failure.value.channel.close()  # only now: recorded first
            if not cancelled:
                vetted.errback(DataConnectionRefused(reason, detail))

        engine = control.session_factory.shared.engine
        engine.handshake(sock, tls, handle).addCallbacks(done, failed)
        return vetted

    def _settled_ok(self, connected: Any) -> None:
        self._outcome = (True, connected)
        self._wake()

    def _settled_failed(self, failure: Failure) -> None:
        self._outcome = (False, failure)
        self._wake()

    def _wake(self) -> None:
        if self._outcome is None:
            return
        ok, value = self._outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    def connector(self) -> defer.Deferred[Connect]:
        """
        Fires with a function returning the accepted socket (or the channel
        whose handshake is done), once it is here.
        """
        self._taken = True
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append(d)
        self._wake()
        return d.addCallback(lambda connected: (lambda: connected))

    def close(self) -> None:
        # Also stops the handshakes still running (their vetting is cancelled).
        self.listener.close()
        if not self._taken and self._outcome is not None and self._outcome[0]:
            self._outcome[1].close()  # accepted, never used by a transfer
        # Let the channel and its megabyte buffers go now, not whenever a
        # full garbage collection finds them (see PassiveListener.close).
        self._outcome = None


class ActiveSource:
    """
    An active data connection: we connect to the client when a transfer starts.
    """

    def __init__(self, host: str, port: int, source_host: str | None, timeout: float) -> None:
        self.host = host
        self.port = port
        self._connect = active_connector(host, port, source_host, timeout)

    def connector(self) -> defer.Deferred[Connect]:
        return defer.succeed(self._connect)

    def close(self) -> None:
        pass


def _replace_source(control: Any, source: Any) -> None:
    old, control.data_source = control.data_source, source
    if old is not None:
        old.close()


def bind_address(control: Any) -> str:
    """
    The address passive listeners bind and active connections leave from.

    C{--passive-bind} if given; else the address this node accepted the
    control connection on.  Behind a PROXY listener that is I{not}
    C{transport.getHost()}, the header's destination (the balancer's
    virtual address, announced to the client but not an address of this
    node: binding it failed with "address not available", or 425).
    """
    from rumpus_secure.proxy import node_host

    bind = getattr(control.config, "passive_bind", None)
    if bind:
        return str(bind)
    return node_host(control.transport) or control.transport.getHost().host


def trusted_proxies(control: Any) -> Any:
    """
    The balancers whose data connections carry a PROXY header, or L{None}.
    """
    from rumpus_secure.proxy import TrustedProxies

    networks = getattr(control.config, "trusted_proxies", ())
    return TrustedProxies(networks) if networks else None


#: How long PASV waits for a passive port of the range to come free.
PORT_WAIT = 10.0


def _listen(control: Any) -> defer.Deferred[PassiveSource | str] | str:
    """
    Open a passive listener; when every port of the range is taken, wait.

    A passive port is taken only from PASV until its client connects, so
    with a port range smaller than the number of clients arriving at once
    a short wait (bounded by L{PORT_WAIT}) for the next free port beats
    refusing with 425.
    """
    if control._epsvAll:
        return "503 Only EPSV may be used after EPSV ALL."
    _replace_source(control, None)
    local = bind_address(control)
    shared = control.session_factory.shared
    reactor = control.reactor
    pool = shared.port_pool
    deadline = reactor.seconds() + PORT_WAIT

    def refused(host: str) -> None:
        control._audit("ftp.data_peer_refused", account=control.account,
                       data_client=host, outcome="refused")

    def attempt() -> PassiveSource | None:
        try:
            listener = PassiveListener(
                reactor, local, control.passivePortRange, control.client_host,
                timeout=shared.data_connect_timeout, on_refused=refused, pool=pool,
                trusted=trusted_proxies(control),
            )
        except CannotListenError:
            return None
        source = PassiveSource(listener, control)
        control.data_source = source
        return source

    source = attempt()
    if source is not None:
        return defer.succeed(source)
    if pool is None:
        return "425 No passive data port is free right now; try again shortly."
    result: defer.Deferred[PassiveSource | str] = defer.Deferred()

    def give_up() -> None:
        waiting.cancel()

    def woken(ignored: Any) -> None:
        if control.disconnected:
            timer.cancel()
            result.callback("425 The connection is closing.")
            return
        source = attempt()
        if source is not None:
            timer.cancel()
            result.callback(source)
            return
        rewait()

    def timed_out(failure: Any) -> None:
        failure.trap(defer.CancelledError)
        result.callback("425 No passive data port is free right now; try again shortly.")

    def rewait() -> None:
        nonlocal waiting
        waiting = pool.wait()
        waiting.addCallbacks(woken, timed_out)

    waiting: defer.Deferred[None]
    timer = reactor.callLater(max(0.0, deadline - reactor.seconds()), give_up)
    rewait()
    return result


def _announce(listening: defer.Deferred[PassiveSource | str] | str,
              reply: Callable[[int], str]) -> defer.Deferred[str] | str:
    if isinstance(listening, str):
        return listening
    return listening.addCallback(
        lambda source: source if isinstance(source, str) else reply(source.listener.port))


def passive(control: Any, extended: bool = False) -> defer.Deferred[str] | str:
    """
    PASV: listen for the client's data connection, announce ``h1,...,p2``.
    """
    local = normalise_host(control.transport.getHost().host)
    announced = control.config.passive_address or local
    if ipaddress.ip_address(announced).version != 4:
        return "522 PASV works only over IPv4; use EPSV."
    return _announce(
        _listen(control),
        lambda port: f"227 Entering Passive Mode ({ftp.encodeHostPort(announced, port)}).")


def extended_passive(control: Any, argument: str = "") -> defer.Deferred[str] | str:
    """
    EPSV (RFC 2428): like PASV, announcing only the port; EPSV ALL.
    """
    argument = argument.strip().upper()
    if argument == "ALL":
        control._epsvAll = True
        return "200 EPSV ALL accepted: only EPSV from now on."
    local = ipaddress.ip_address(normalise_host(control.transport.getHost().host))
    wanted = "1" if local.version == 4 else "2"
    if argument and argument != wanted:
        return f"522 Network protocol not supported, use ({wanted})"
    return _announce(_listen(control),
                     lambda port: f"229 Entering Extended Passive Mode (|||{port}|).")


def _parse_port(argument: str) -> tuple[str, int]:
    parts = argument.strip().split(",")
    if len(parts) != 6:
        raise ValueError("PORT needs h1,h2,h3,h4,p1,p2")
    numbers = [int(p) for p in parts]
    if any(not 0 <= n <= 255 for n in numbers):
        raise ValueError("PORT numbers must be 0-255")
    return ".".join(str(n) for n in numbers[:4]), numbers[4] << 8 | numbers[5]


def active(control: Any, argument: str, extended: bool) -> str:
    """
    PORT and EPRT: remember where to connect, only the client's own address.
    """
    verb = "EPRT" if extended else "PORT"
    if control._epsvAll:
        return f"503 Only EPSV may be used after EPSV ALL, not {verb}."
    try:
        if extended:
            _family, host, port_text = ftp.decodeExtendedAddress(argument)
            port = int(port_text)
            host = str(ipaddress.ip_address(host))
        else:
            host, port = _parse_port(argument)
    except (ValueError, TypeError, IndexError):  # IndexError: Twisted on an empty EPRT
        return f"501 Malformed {verb} argument."
    peer = normalise_host(control.client_host)
    if normalise_host(host) != peer or not 1024 <= port <= 65535:
        control._audit("ftp.port_refused", account=control.account,
                       target=f"{host}:{port}", outcome="refused")
        return (f"504 {verb} refused: data connections go only to your own "
                "address, on port 1024 or above.")
    local = normalise_host(bind_address(control))
    timeout = control.session_factory.shared.data_connect_timeout
    _replace_source(control, ActiveSource(host, port, local, timeout))
    return f"200 {verb} command successful."
