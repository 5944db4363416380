"""
TCP transports for the FTP listeners that send a reply when it is written.

Twisted's TCP transport never writes to the socket from C{write()}: it
buffers the bytes, asks epoll to watch the socket for writability
(C{epoll_ctl}), and sends them on the next turn of the reactor, when
C{doWrite} is called; then it asks epoll to stop watching (C{epoll_ctl}
again).  That is right for bulk data, and for a reply that answers a
command it is pure overhead: the socket is writable, the reply is a few
dozen bytes, and it costs two system calls and one more dispatch through
the reactor (C{callWithLogger}, C{doWrite}) each time.  A repeat FTPS login
(connect, AUTH TLS, USER, PASS, QUIT) writes seven times: strace counted 16
C{epoll_ctl} per login against pyftpdlib's 2 (``bench/login_profile.py
--strace``).

L{DirectWriteServer} keeps Twisted's transport and changes when bytes go
out:

 - what the protocol writes while it handles one read (one C{doRead}: the
   commands in it, the TLS records they make, a TLS handshake flight) is
   held, and sent with one C{send()} when that read is done.  Several reply
   lines of one command (FEAT, HELP), or a reply and the TLS close_notify
   after it, still leave in one segment, as Twisted's buffering made them;
 - what is written at any other time (a timer's 421) is sent at once,
   unless the protocol holds writes itself (L{DirectWriteServer.hold_writes}:
   the control connection does, around a command run after a thread's
   answer, so that QUIT's 221 and the TLS close_notify leave together);
 - only what the kernel does not take (a full socket buffer) is handed to
   Twisted's own buffer, and from there everything is as before: epoll,
   C{doWrite}, producers paused and resumed, errors reported through
   C{connectionLost} from C{doWrite}, never from inside C{write()}.

C{startTLS} (C{AUTH TLS}) keeps that path for the TLS records: Twisted's
own implementation writes them through C{FileDescriptor.write}, past any
override, and its TLS protocol holds every application write until the
next reactor turn (C{callLater(0)}, one more turn per reply), then copies
the ten or so interfaces of the transport onto itself one
C{directlyProvides} at a time (each call builds a new interface
specification; about 40 us per connection).  L{LeanTLSProtocol} provides
them with one call, and does not defer writes: the transport already
gathers what one read produces.

Measured (``bench/login_profile.py``; 200 logins from 4 clients under
C{strace -c -f}, and instructions per login under callgrind): per login,
C{epoll_ctl} 16.2 -> 2.0, C{epoll_wait} 6.2 -> 3.8, C{sendto} 7.1 -> 7.1
(what leaves in one segment still does), and the server's instructions
8.08 M -> 7.04 M with the other changes of that round to the control
connection (pyftpdlib: 3.15 M).  Tried and dropped: looking at the
outgoing BIO before Twisted reads it (an empty read raises): 6 fewer
exceptions a login, no measurable change in instructions, and one more
private pyOpenSSL part to rely on.

Nothing else changes: the same TLS object, handshake, contexts and
callbacks (L{rumpus_secure.tls}, L{rumpus_secure.handshake}), the same
C{loseConnection} and C{abortConnection}.  The listeners get this transport
through L{direct_write_endpoint}, which sets it on the C{tcp.Port} after
listening; other endpoints are left as they are.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import directlyProvides, providedBy

#: Interface specifications pinned for reuse (see L{_provide}): zope keeps
#: them in a weak cache, so one that no live object holds is built again.
_SPECS: dict[tuple[type, tuple[Any, ...]], Any] = {}


def _provide(obj: Any, interfaces: Any) -> None:
    """
    C{directlyProvides(obj, *interfaces)}, with the specification built once
    per class of C{obj} and C{interfaces} (a tuple, or the specification of
    another object: iterating one takes about 50 generator calls).
    """
    key = (type(obj), interfaces)
    spec = _SPECS.get(key)
    if spec is None:
        if len(_SPECS) > 64:  # bounded: a handful of transport kinds
            _SPECS.clear()
        directlyProvides(obj, *tuple(interfaces))
        _SPECS[key] = obj.__provides__
    else:
        obj.__provides__ = spec


def _send(connection: Any, data: bytes) -> None:
    """
    Write C{data} on C{connection} (a L{DirectWriteServer}) bypassing TLS:
    hold it during a read, else send what the kernel takes and buffer the
    rest the Twisted way.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"Data must be bytes, not {type(data).__name__}")
    held = connection._held
    if held is not None:
        held.append(data)  # sent (or dropped, if the connection is gone) on release
        connection._held_bytes += len(data)
        return
    if not data or not connection.connected or connection._writeDisconnected:
        return
    if (connection.dataBuffer or connection._tempDataBuffer
            or connection._aborting):
        FileDescriptor.write(connection, data)
        return
    try:
        sent = connection.socket.send(data)
    except OSError:
        # EAGAIN, or a dead socket: Twisted's doWrite tries again and
        # reports a lost connection through connectionLost, as always.
        sent = 0
    if sent < len(data):
        FileDescriptor.write(connection, data[sent:])


class _RawTransport:
    """
    What L{LeanTLSProtocol} writes its records to: the connection itself,
    with C{write} bypassing the TLS layer the connection now forwards to
    (Twisted's C{_BypassTLS}, with our C{write}).
    """

    def __init__(self, connection: DirectWriteServer) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def write(self, data: bytes) -> None:
        _send(self._connection, data)

    def writeSequence(self, iovec: Any) -> None:
        _send(self._connection, b"".join(iovec))

    def loseConnection(self) -> None:
        FileDescriptor.loseConnection(self._connection)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        FileDescriptor.registerProducer(self._connection, producer, streaming)

    def unregisterProducer(self) -> None:
        FileDescriptor.unregisterProducer(self._connection)


class LeanTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol with writes not deferred to the next reactor
    turn, and the transport's interfaces provided with one call.
    """

    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection, but one directlyProvides for
        # all the transport's interfaces instead of one per interface.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        _provide(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()


class _LeanTLSFactory(TLSMemoryBIOFactory):
    protocol = LeanTLSProtocol


class DirectWriteServer(tcp.Server):
    """
    A TCP server connection that sends what is written at once, or at the
    end of the read being handled (see the module docstring).
    """

    #: Bytes written during the current read, or None outside a read.
    _held: list[bytes] | None = None

    #: How many bytes L{_held} holds (L{rumpus_secure.ftp.reply_backlog}).
    _held_bytes = 0

    #: No C{shutdown(SHUT_RDWR)} before C{close()}: the socket was accepted
    #: close-on-exec (C{accept4(SOCK_CLOEXEC)}, Python's default) and no
    #: other descriptor of it exists, so C{close()} ends the connection the
    #: same way (FIN after what is queued; RST if unread data is left, as
    #: after a shutdown).  Twisted's C{shutdown} mostly failed anyway: the
    #: client had closed first after C{QUIT}, and the socket was no longer
    #: connected (C{ENOTCONN}: 403 failed calls per 400 logins under
    #: strace, each a system call and a Python exception).
    _shouldShutdown = False

    def doRead(self) -> Any:
        if self._held is not None:  # re-entered: the outer read sends
            return super().doRead()
        self._held = []
        try:
            return super().doRead()
        finally:
            self._release()

    def hold_writes(self) -> Any:
        """
        Hold what is written until the returned function is called, then
        send it in one piece; L{None} (nothing to call) when writes are
        already held, by a read being handled or an outer hold.

        For work done outside a read: a command answered after a thread's
        result (a reply and the TLS close_notify after it).
        """
        if self._held is not None:
            return None
        self._held = []
        return self._release

    def _release(self) -> None:
        held, self._held = self._held, None
        self._held_bytes = 0
        if held:
            _send(self, b"".join(held) if len(held) > 1 else held[0])

    def write(self, data: bytes) -> None:
        if self.TLS:
            if self.connected:
                self.protocol.write(data)
        else:
            _send(self, data)

    def writeSequence(self, iovec: Any) -> None:
        if self.TLS:
            if self.connected:
                self.protocol.writeSequence(iovec)
        else:
            _send(self, b"".join(iovec))

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        """
        Twisted's C{startTLS} (C{twisted.internet._newtls.startTLS}), with
        L{LeanTLSProtocol} writing through L{_send}.
        """
        client = self._tlsClientDefault if normal else not self._tlsClientDefault
        producer, streaming = None, None
        if self.producer is not None:
            producer, streaming = self.producer, self.streamingProducer
            self.unregisterProducer()
        factory = _LeanTLSFactory(ctx, client, None, clock=self.reactor)
        tls = LeanTLSProtocol(factory, self.protocol, False)
        self.protocol = tls
        self.getHandle = tls.getHandle
        self.getPeerCertificate = tls.getPeerCertificate
        _provide(self, (ISSLTransport,))
        self.TLS = True
        tls.makeConnection(_RawTransport(self))
        if producer:
            self.registerProducer(producer, streaming)


def use_direct_write(port: Any) -> Any:
    """
    Make a listening C{tcp.Port} build L{DirectWriteServer} transports.

    Anything else (a UNIX socket, a port already customised) is returned
    unchanged.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = DirectWriteServer
    return port


class DirectWriteEndpoint:
    """
    A server endpoint whose TCP listener uses L{DirectWriteServer}.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return self.inner.listen(factory).addCallback(use_direct_write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def direct_write_endpoint(endpoint: Any) -> DirectWriteEndpoint:
    """
    L{DirectWriteEndpoint} around C{endpoint}.
    """
    return DirectWriteEndpoint(endpoint)
