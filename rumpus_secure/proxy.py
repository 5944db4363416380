"""
The PROXY protocol (HAProxy's, versions 1 and 2), parsed before anything else.

Behind a TCP load balancer every connection comes from the balancer, so the
client's address travels in a PROXY header in front of the stream.  Twisted's
``haproxy:`` wrapper (C{HAProxyWrappingFactory}) calls the wrapped protocol's
C{connectionMade} at accept time, I{before} the header has arrived
(twisted/twisted#12501): on a two-node rig behind HAProxy 2.6 our guard
counted HAProxy's own address, so 20 of 60 distinct clients got ``421 Too
many connections from your address``, and a banned client was greeted with
``220`` because the ban was looked up for the balancer.  It also trusts a
header from any peer, and hangs up on a header split over two reads shorter
than 16 bytes.

This module replaces it.  L{ProxyProtocolFactory} wraps a listener's factory
and builds the wrapped protocol only once the header is in, with the client's
address, so everything that looks at the address in C{connectionMade} (the
guard and its limits, the greeting, the audit, the first-byte sniffer of
L{rumpus_secure.sniff}, the HTTPS channel's connection count) sees the real
client, with no change to any of them.  Around it:

- a header is accepted only from C{--trusted-proxies}; any other peer of a
  PROXY listener is disconnected at once (a client that could reach the
  node directly would otherwise name any address it likes);
- a missing or malformed header, or one not complete within
  L{HEADER_TIMEOUT} seconds, drops the connection: HAProxy writes the header
  in the first segment, so 5 s is three orders of magnitude over its delay;
- the v2 ``LOCAL`` command and v1 ``UNKNOWN`` (health checks) keep the
  connection's own addresses, as the specification asks.

Passive data ports are plain sockets handed to a worker thread
(L{rumpus_secure.ftp.passive}), not Twisted protocols; for them
L{read_header} reads the header off the socket without consuming a byte of
what follows (the client's TLS ClientHello or its upload).

The parser is ours (about 100 lines, after the specification in HAProxy's
``doc/proxy-protocol.txt``) rather than Twisted's private C{_v1parser} and
C{_v2parser}: we need an incremental parse that also says how many bytes the
header took, for the raw sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime, IReadDescriptor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.declarations import directlyProvides

_log = Logger()

#: Seconds a trusted proxy has to send the complete header (see the module
#: docstring).
HEADER_TIMEOUT = 5.0

V1_PREFIX = b"PROXY "
#: "PROXY TCP6 " + two 39-character addresses + two ports + spaces + CRLF.
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM = 0x0, 0x1


class ProxyHeaderError(ValueError):
    """
    The bytes in front of the stream are not a valid PROXY header.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A parsed PROXY header.

    @ivar source: the client's address, or L{None} for ``LOCAL`` and
        ``UNKNOWN`` (use the connection's own).
    @ivar destination: the address the client connected to (the proxy's
        frontend, usually a virtual address), or L{None}.
    @ivar length: how many bytes the header took.
    """

    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None
    length: int


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def _v1(buffer: bytes) -> ProxyHeader | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        if b"\n" in buffer:
            raise ProxyHeaderError("PROXY v1 line ends without CR")
        return None
    try:
        words = buffer[len(V1_PREFIX):end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if words and words[0] == "UNKNOWN":
        return ProxyHeader(None, None, end + 2)
    if len(words) != 5 or words[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not TCP4/TCP6 SRC DST SPORT DPORT")
    family, source, destination, sport, dport = words
    version = 4 if family == "TCP4" else 6
    try:
        hosts = [ipaddress.ip_address(source), ipaddress.ip_address(destination)]
        ports = [int(sport), int(dport)]
    except ValueError:
        raise ProxyHeaderError("PROXY v1 line has a bad address or port") from None
    if any(host.version != version for host in hosts):
        raise ProxyHeaderError(f"PROXY v1 {family} line with another family's address")
    if any(not 0 <= port <= 65535 or (str(port) != text)
           for port, text in zip(ports, (sport, dport))):
        raise ProxyHeaderError("PROXY v1 line has a bad port")
    return ProxyHeader(_address(str(hosts[0]), ports[0]),
                       _address(str(hosts[1]), ports[1]), end + 2)


def _v2(buffer: bytes) -> ProxyHeader | None:
    if len(buffer) < V2_FIXED:
        return None
    version_command, family_protocol, length = struct.unpack("!BBH", buffer[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 signature with another version")
    command = version_command & 0xF
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("PROXY v2 header with an unknown command")
    total = V2_FIXED + length
    if len(buffer) < total:
        return None
    if command == _V2_LOCAL:
        return ProxyHeader(None, None, total)
    family, proto = family_protocol >> 4, family_protocol & 0xF
    if family in (_AF_UNSPEC, _AF_UNIX) or proto == _PROTO_UNSPEC:
        # "The receiver must accept and ignore the addresses" (UNIX sockets
        # and unknown families).
        return ProxyHeader(None, None, total)
    if proto != _PROTO_STREAM:
        raise ProxyHeaderError("PROXY v2 header for a datagram on a stream")
    body = buffer[V2_FIXED:total]
    if family == _AF_INET:
        if length < 12:
            raise ProxyHeaderError("PROXY v2 IPv4 header too short")
        source = socket.inet_ntop(socket.AF_INET, body[0:4])
        destination = socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == _AF_INET6:
        if length < 36:
            raise ProxyHeaderError("PROXY v2 IPv6 header too short")
        source = socket.inet_ntop(socket.AF_INET6, body[0:16])
        destination = socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        raise ProxyHeaderError("PROXY v2 header with an unknown address family")
    return ProxyHeader(_address(source, sport), _address(destination, dport), total)


def parse_header(buffer: bytes) -> ProxyHeader | None:
    """
    Parse a PROXY header (v1 or v2) at the start of C{buffer}.

    @returns: the header, or L{None} if C{buffer} is a valid beginning that
        needs more bytes.
    @raises ProxyHeaderError: if C{buffer} cannot start a valid header.
    """
    if not buffer:
        return None
    if buffer[:1] == V2_SIGNATURE[:1]:
        if not V2_SIGNATURE.startswith(buffer[:12]):
            raise ProxyHeaderError("not a PROXY header")
        if len(buffer) < len(V2_SIGNATURE):
            return None
        return _v2(buffer)
    if buffer[:6] != V1_PREFIX[:len(buffer[:6])]:
        raise ProxyHeaderError("not a PROXY header")
    if len(buffer) < len(V1_PREFIX):
        return None
    return _v1(buffer)


def v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    A PROXY v2 header (command PROXY, TCP) for C{source} -> C{destination}.

    What HAProxy's ``send-proxy-v2`` writes; for tests and benchmarks.
    """
    six = ":" in source[0]
    family = socket.AF_INET6 if six else socket.AF_INET
    body = (socket.inet_pton(family, source[0]) + socket.inet_pton(family, destination[0])
            + struct.pack("!HH", source[1], destination[1]))
    return V2_SIGNATURE + struct.pack(
        "!BBH", 0x21, ((_AF_INET6 if six else _AF_INET) << 4) | _PROTO_STREAM, len(body)
    ) + body


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    A PROXY v1 line for C{source} -> C{destination} (tests and benchmarks).
    """
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} "
            f"{destination[1]}\r\n").encode("ascii")


class TrustedProxies:
    """
    The networks whose connections may carry a PROXY header.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: object) -> bool:
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def node_host(transport: Any) -> str | None:
    """
    The address this node accepted C{transport} on, under any PROXY wrapper.

    C{transport.getHost()} behind PROXY is the header's destination (the
    virtual address clients connect to), which this node cannot bind.  The
    wrappers (TLS, PROXY) keep the transport below them in C{.transport}.
    """
    seen = 0
    while transport is not None and seen < 8:
        if isinstance(transport, ProxyProtocolWrapper):
            return str(getattr(transport.transport.getHost(), "host", "")) or None
        transport = getattr(transport, "transport", None)
        seen += 1
    return None


class ProxyProtocolWrapper(policies.ProtocolWrapper):
    """
    Reads the PROXY header, then builds and connects the wrapped protocol.

    Until the header is in there is no wrapped protocol at all: nothing can
    greet, count or log the connection under the proxy's address.
    """

    factory: ProxyProtocolFactory
    header: ProxyHeader | None = None

    def __init__(self, factory: ProxyProtocolFactory, addr: Any) -> None:
        self.factory = factory
        self.wrappedProtocol = None  # type: ignore[assignment]
        self._addr = addr
        self._buffer = b""
        self._timer: Any = None
        self._done = False

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        if host not in self.factory.trusted:
            _log.info("{label}: {peer} is not a trusted proxy (--trusted-proxies); "
                      "connection dropped", label=self.factory.label, peer=host)
            self._drop()
            return
        if self.factory.timeout > 0:
            self._timer = self.factory.clock.callLater(self.factory.timeout, self._late)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as e:
            _log.info("{label}: bad PROXY header from {peer}: {error}; connection "
                      "dropped", label=self.factory.label,
                      peer=getattr(self.transport.getPeer(), "host", "?"), error=str(e))
            self._drop()
            return
        if header is None:
            return
        self._cancel_timer()
        self._done = True
        rest, self._buffer = self._buffer[header.length:], b""
        self.header = header
        inner = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if inner is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = inner
        self.factory.registerProtocol(self)
        inner.makeConnection(self)
        # The port starts reading after makeConnection returns, undoing a
        # pause made in connectionMade; we connect later, so do what it does
        # (see SniffingProtocol._hand_over).
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None and not self.disconnecting:
            resume()
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        inner, self.wrappedProtocol = self.wrappedProtocol, None  # type: ignore[assignment]
        if inner is not None:
            self.factory.unregisterProtocol(self)
            inner.connectionLost(reason)

    def getPeer(self) -> IAddress:
        if self.header is not None and self.header.source is not None:
            return self.header.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self.header is not None and self.header.destination is not None:
            return self.header.destination
        return self.transport.getHost()

    def logPrefix(self) -> str:
        return f"{self.factory.label} (PROXY)"

    def _late(self) -> None:
        self._timer = None
        _log.info("{label}: no complete PROXY header from {peer} within {seconds} s; "
                  "connection dropped", label=self.factory.label,
                  peer=getattr(self.transport.getPeer(), "host", "?"),
                  seconds=self.factory.timeout)
        self._drop()

    def _drop(self) -> None:
        self._done = True
        self._cancel_timer()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class ProxyProtocolFactory(policies.WrappingFactory):
    """
    Wrap a listener's factory so that each connection starts with a PROXY header.

    :param wrapped: the factory that serves the listener.
    :param trusted: the peers allowed to send the header; any other is
        disconnected.
    :param clock: schedules the header deadline.
    :param timeout: seconds for the header (0: no deadline).
    :param label: the listener's name, for the log.
    """

    protocol = ProxyProtocolWrapper  # type: ignore[assignment]

    def __init__(self, wrapped: Any, trusted: TrustedProxies, clock: IReactorTime,
                 timeout: float = HEADER_TIMEOUT, label: str = "listener") -> None:
        super().__init__(wrapped)
        # Made at listen time, after the assembly made the listener's
        # factories quiet: no "Starting factory <... at 0x...>" line.
        self.noisy = getattr(wrapped, "noisy", False)
        self.trusted = trusted
        self.clock = clock
        self.timeout = timeout
        self.label = label

    def buildProtocol(self, addr: Any) -> ProxyProtocolWrapper:
        return ProxyProtocolWrapper(self, addr)


class ProxyServerEndpoint:
    """
    A server endpoint whose listener expects a PROXY header on each connection.
    """

    def __init__(self, inner: Any, trusted: TrustedProxies, clock: IReactorTime,
                 label: str = "listener", timeout: float = HEADER_TIMEOUT) -> None:
        self.inner = inner
        self.trusted = trusted
        self.clock = clock
        self.label = label
        self.timeout = timeout

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return self.inner.listen(ProxyProtocolFactory(
            factory, self.trusted, self.clock, timeout=self.timeout, label=self.label))


def split_proxy(description: str) -> tuple[bool, str]:
    """
    ``(True, "tcp:21")`` for ``haproxy:tcp:21``; ``(False, d)`` otherwise.
    """
    if description.split(":", 1)[0].lower() == "haproxy":
        return True, description.split(":", 1)[1]
    return False, description


@implementer(IReadDescriptor)
class _HeaderReader:
    """
    Read a PROXY header off a non-blocking socket, and not one byte more.

    Each read peeks first: while the header is incomplete, every byte in the
    socket belongs to it and is taken; once it is complete, exactly its
    remaining bytes are taken.
    """

    def __init__(self, reactor: Any, sock: socket.socket, timeout: float) -> None:
        self.reactor = reactor
        self.sock = sock
        self.buffer = b""
        self.result: defer.Deferred[ProxyHeader] = defer.Deferred(self._cancel)
        self._timer = reactor.callLater(timeout, self._late)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "ProxyHeaderReader"

    def connectionLost(self, reason: Any) -> None:
        self._fail(ProxyHeaderError("connection lost before the PROXY header"))

    def doRead(self) -> None:
        try:
            peeked = self.sock.recv(V2_FIXED + 65535, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(ProxyHeaderError(f"reading the PROXY header: {e}"))
            return
        if not peeked:
            self._fail(ProxyHeaderError("connection closed before the PROXY header"))
            return
        try:
            header = parse_header(self.buffer + peeked)
        except ProxyHeaderError as e:
            self._fail(e)
            return
        take = len(peeked) if header is None else header.length - len(self.buffer)
        try:
            self.buffer += _recv_exactly(self.sock, take)
        except OSError as e:
            self._fail(ProxyHeaderError(f"reading the PROXY header: {e}"))
            return
        if header is not None:
            self._finish()
            self.result.callback(header)

    def _late(self) -> None:
        self._timer = None
        self._fail(ProxyHeaderError("no complete PROXY header in time"))

    def _cancel(self, d: Any) -> None:
        self._finish()

    def _fail(self, error: Exception) -> None:
        if self.result.called:
            return
        self._finish()
        self.result.errback(error)

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.reactor.removeReader(self)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    # The bytes were peeked, so they are in the socket's buffer: a
    # non-blocking recv returns them all (one loop turn in practice).
    parts = []
    while count > 0:
        part = sock.recv(count)
        if not part:
            raise OSError("connection closed")
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


def read_header(reactor: Any, sock: socket.socket,
                timeout: float = HEADER_TIMEOUT) -> defer.Deferred[ProxyHeader]:
    """
    Read the PROXY header at the start of a freshly accepted socket.

    The socket must be non-blocking.  Fires with the L{ProxyHeader}, or fails
    with L{ProxyHeaderError}; cancelling stops reading (the caller closes
    the socket).  What follows the header stays in the socket.
    """
    return _HeaderReader(reactor, sock, timeout).result
