"""
Data connections: PASV, EPSV, PORT and EPRT, under TLS when PROT P.

On data connections the FTP client is always the TLS client (RFC 4217
section 7), for passive and active set-up alike, so we wrap the data factory
as a TLS I{server} in both directions.  The context is the control
connection's own, so a client can resume the control session.

Passive connections are accepted only from the control connection's peer;
active connections go only to the control peer's address on ports from 1024
up (bounce protection).  Both refusals are audited.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.protocols import ftp
from twisted.protocols.tls import TLSMemoryBIOFactory

from rumpus_secure.tls import pinned_context_factory


def normalise_host(host: str) -> str:
    """
    An address in one canonical text form (IPv4-mapped IPv6 becomes IPv4).
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


class _PeerCheckFactory(protocol.ServerFactory):
    """
    Accept a passive data connection only from the control connection's peer.
    """

    def __init__(self, control: Any, inner: protocol.Factory) -> None:
        self.control = control
        self.inner = inner

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def buildProtocol(self, addr: Any) -> protocol.Protocol | None:
        expected = normalise_host(self.control.client_host)
        if normalise_host(addr.host) != expected:
            self.control._audit(
                "ftp.data_peer_refused", account=self.control.account,
                data_client=normalise_host(addr.host), outcome="refused",
            )
            return None
        return self.inner.buildProtocol(addr)


def _new_dtp_factory(control: Any, peer_host: str | None = None) -> ftp.DTPFactory:
    if control.dtpFactory is not None:
        control.cleanupDTP()
    factory = ftp.DTPFactory(pi=control, peerHost=peer_host, reactor=control.reactor)
    factory.setTimeout(control.dtpTimeout)
    control.dtpFactory = factory
    return factory


def _tls_wrapped(control: Any, factory: protocol.Factory) -> protocol.Factory:
    """
    Wrap a data factory in TLS (server side) when PROT P is in force.

    The context is pinned to the one the control connection uses, so the
    client can resume its control session even after a certificate reload.
    """
    if control.secure and control.prot == "P":
        creator = pinned_context_factory(control.transport.getHandle())
        return TLSMemoryBIOFactory(creator, False, factory, clock=control.reactor)
    return factory


def _listen(control: Any, factory: protocol.Factory, interface: str) -> Any:
    last_error: Exception | None = None
    for port in control.passivePortRange:
        try:
            return control.listenFactory(port, factory, interface=interface)
        except CannotListenError as e:
            last_error = e
    raise CannotListenError(interface, 0, f"no free passive port ({last_error})")


def _start_passive(control: Any) -> tuple[ftp.DTPFactory, Any] | str:
    if control._epsvAll:
        return "503 Only EPSV may be used after EPSV ALL."
    factory = _new_dtp_factory(control)
    local = control.transport.getHost().host
    try:
        control.dtpPort = _listen(
            control, _PeerCheckFactory(control, _tls_wrapped(control, factory)), local,
        )
    except CannotListenError:
        control.dtpFactory = None
        return "425 No passive data port is free right now; try again shortly."
    return factory, control.dtpPort


def passive(control: Any, extended: bool = False) -> Any:
    """
    PASV: listen for the client's data connection, announce ``h1,...,p2``.
    """
    local = normalise_host(control.transport.getHost().host)
    announced = control.config.passive_address or local
    if ipaddress.ip_address(announced).version != 4:
        return "522 PASV works only over IPv4; use EPSV."
    started = _start_passive(control)
    if isinstance(started, str):
        return started
    factory, port = started
    number = port.getHost().port
    control.sendLine(
        "227 Entering Passive Mode (%s)." % ftp.encodeHostPort(announced, number)
    )
    return factory.deferred.addCallback(lambda ignored: None)


def extended_passive(control: Any, argument: str = "") -> Any:
    """
    EPSV (RFC 2428): like PASV, announcing only the port; EPSV ALL.
    """
    argument = argument.strip().upper()
    if argument == "ALL":
        control._epsvAll = True
        return "200 EPSV ALL accepted: only EPSV from now on."
    if argument and argument not in ("1", "2"):
        return "522 Network protocol not supported, use (1,2)"
    local = ipaddress.ip_address(normalise_host(control.transport.getHost().host))
    wanted = "1" if local.version == 4 else "2"
    if argument and argument != wanted:
        return f"522 Network protocol not supported, use ({wanted})"
    started = _start_passive(control)
    if isinstance(started, str):
        return started
    factory, port = started
    control.sendLine(f"229 Entering Extended Passive Mode (|||{port.getHost().port}|).")
    return factory.deferred.addCallback(lambda ignored: None)


def _parse_port(argument: str) -> tuple[str, int]:
    parts = argument.strip().split(",")
    if len(parts) != 6:
        raise ValueError("PORT needs h1,h2,h3,h4,p1,p2")
    numbers = [int(p) for p in parts]
    if any(not 0 <= n <= 255 for n in numbers):
        raise ValueError("PORT numbers must be 0-255")
    return "%d.%d.%d.%d" % tuple(numbers[:4]), numbers[4] << 8 | numbers[5]


def active(control: Any, argument: str, extended: bool) -> Any:
    """
    PORT and EPRT: connect to the client, only at its own address.
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
    except (ValueError, TypeError):
        return f"501 Malformed {verb} argument."
    peer = normalise_host(control.client_host)
    if normalise_host(host) != peer or not 1024 <= port <= 65535:
        control._audit("ftp.port_refused", account=control.account,
                       target=f"{host}:{port}", outcome="refused")
        return (f"504 {verb} refused: data connections go only to your own "
                "address, on port 1024 or above.")
    factory = _new_dtp_factory(control, peer_host=peer)
    control.dtpPort = control.reactor.connectTCP(
        host, port, _tls_wrapped(control, factory), timeout=control.dtpTimeout,
    )

    def connected(ignored: Any) -> str:
        return f"200 {verb} command successful."

    def failed(failure: Any) -> str:
        failure.trap(ftp.PortConnectionError)
        return "425 Cannot open the data connection."

    d: defer.Deferred[str] = factory.deferred.addCallbacks(connected, failed)
    return d
