"""
L{rumpus_secure.direct_write}: FTP control connections send a reply when it
is written, and what one read produces in one segment.

Real loopback sockets on the real reactor: what is counted is the calls to
the socket's C{send} and the descriptors the reactor watches for writing.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, tcp
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, KeyPair
from twisted.internet.threads import deferToThread
from twisted.protocols import tls as twisted_tls

from rumpus_secure import direct_write
from rumpus_secure.direct_write import (
    DirectWriteServer,
    LeanTLSProtocol,
    direct_write_endpoint,
)


class _CountingSocket:
    """
    A socket whose C{send} calls are counted (socket objects take no new
    attributes, so this stands in front of one).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[bytes] = []

    def send(self, data: Any) -> int:
        self.sends.append(bytes(data))
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Server(Protocol):
    """
    Greets, then obeys one command per line.
    """

    context: Any = None

    def connectionMade(self) -> None:
        self.counter = _CountingSocket(self.transport.socket)
        self.transport.socket = self.counter
        self.factory.connections.append(self)
        self.transport.write(b"hello\r\n")
        self.greeting_waits_for_epoll = self.transport in reactor.getWriters()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.command(line.strip())

    def command(self, line: bytes) -> None:
        if line == b"TWO":
            self.transport.write(b"one\r\n")
            self.transport.writeSequence([b"tw", b"o\r\n"])
        elif line == b"TLS":
            self.transport.write(b"go ahead\r\n")
            self.transport.startTLS(self.factory.context)
            self.layer = self.transport.protocol
        elif line == b"BIG":
            self.transport.write(b"x" * (8 << 20) + b"\r\n")
        elif line == b"BYE":
            self.transport.write(b"bye\r\n")
            self.transport.loseConnection()
        elif line == b"ABORT":
            self.transport.write(b"never\r\n")
            self.transport.abortConnection()
        elif line == b"LATER":
            reactor.callLater(0, self.transport.write, b"later\r\n")


@pytest.fixture(scope="module")
def tls_context() -> Any:
    key = KeyPair.generate(size=2048)
    cert = key.selfSignedCert(1, CN="localhost")
    return CertificateOptions(privateKey=key.original, certificate=cert.original)


async def _listen(context: Any = None) -> tuple[Any, Factory]:
    factory = Factory.forProtocol(_Server)
    factory.connections = []  # type: ignore[attr-defined]
    factory.context = context  # type: ignore[attr-defined]
    endpoint = direct_write_endpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    port = await endpoint.listen(factory)
    return port, factory


def _client(port: int, script: Any) -> Any:
    """
    Run C{script(sock_file_like)} on a blocking client socket in a thread.
    """
    def run() -> Any:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            return script(sock)
    return deferToThread(run)


def _read_until(sock: Any, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


@pytest_twisted.ensureDeferred
async def test_listener_builds_direct_write_connections() -> None:
    port, factory = await _listen()
    try:
        assert isinstance(port, tcp.Port)
        assert port.transport is DirectWriteServer

        def script(sock: socket.socket) -> bytes:
            return _read_until(sock, b"hello\r\n")

        assert await _client(port.getHost().port, script) == b"hello\r\n"
        server = factory.connections[0]
        assert isinstance(server.transport, DirectWriteServer)
        # Sent from write() itself: the reactor never watched for writability.
        assert server.greeting_waits_for_epoll is False
        assert server.counter.sends == [b"hello\r\n"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_one_read_writes_leaves_in_one_send() -> None:
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"TWO\n")
            return _read_until(sock, b"two\r\n")

        assert await _client(port.getHost().port, script) == b"one\r\ntwo\r\n"
        assert factory.connections[0].counter.sends == [b"hello\r\n", b"one\r\ntwo\r\n"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_write_outside_a_read_is_sent_at_once() -> None:
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"LATER\n")
            return _read_until(sock, b"later\r\n")

        assert await _client(port.getHost().port, script) == b"later\r\n"
        assert factory.connections[0].counter.sends[-1] == b"later\r\n"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_goes_the_twisted_way() -> None:
    """
    8 MiB cannot go in one send to a client that is not reading yet: the
    rest waits in Twisted's buffer and arrives whole, in order.
    """
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> int:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"BIG\nTWO\n")
            data = _read_until(sock, b"two\r\n")
            assert data.endswith(b"x\r\none\r\ntwo\r\n")
            return data.count(b"x")

        assert await _client(port.getHost().port, script) == 8 << 20
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_reply_then_close_in_one_read() -> None:
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"BYE\n")
            data = b""
            while part := sock.recv(1024):
                data += part
            return data  # then EOF

        assert await _client(port.getHost().port, script) == b"bye\r\n"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_abort_drops_what_the_read_wrote() -> None:
    """
    As with Twisted's transport, abortConnection drops what is not sent.
    """
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"ABORT\n")
            data = b""
            try:
                while part := sock.recv(1024):
                    data += part
            except ConnectionResetError:
                pass
            return data

        assert await _client(port.getHost().port, script) == b""
        assert factory.connections[0].counter.sends == [b"hello\r\n"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_start_tls_sends_the_reply_in_clear_then_speaks_tls(tls_context: Any) -> None:
    port, factory = await _listen(tls_context)
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"TLS\n")
            assert _read_until(sock, b"go ahead\r\n") == b"go ahead\r\n"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(b"TWO\n")
                data = _read_until(tls, b"two\r\n")
                tls.sendall(b"BYE\n")
                data += _read_until(tls, b"bye\r\n")
                return data

        assert await _client(port.getHost().port, script) == b"one\r\ntwo\r\nbye\r\n"
        server = factory.connections[0]
        # As with Twisted's startTLS: the protocol keeps writing to its TCP
        # transport, which now hands the bytes to the TLS layer.
        transport = server.transport
        assert isinstance(transport, DirectWriteServer)
        assert ISSLTransport.providedBy(transport)
        layer = server.layer
        assert isinstance(layer, LeanTLSProtocol)
        # The interfaces of the TCP transport, and TLS's own.
        assert ITCPTransport.providedBy(layer) and ISSLTransport.providedBy(layer)
        # The two reply lines of one command: one TLS flush, one send.
        sends = server.counter.sends
        assert sends[:2] == [b"hello\r\n", b"go ahead\r\n"]
        assert all(s[:1] in (b"\x16", b"\x17", b"\x15", b"\x14") for s in sends[2:])
    finally:
        await port.stopListening()


def test_twisted_parts_we_rely_on_are_there() -> None:
    """
    L{rumpus_secure.direct_write} uses private parts of Twisted's TCP
    transport and TLS protocol: this fails by name when one goes.
    """
    assert tcp.Port.transport is tcp.Server
    server_attributes = ["dataBuffer", "_tempDataBuffer", "_writeDisconnected",
                         "_aborting", "TLS", "_tlsClientDefault", "connected",
                         "producer", "streamingProducer"]
    probe = tcp.Server.__new__(tcp.Server)
    from twisted.internet.abstract import FileDescriptor

    FileDescriptor.__init__(probe, reactor)
    for name in server_attributes:
        assert hasattr(probe, name), f"tcp.Server.{name} is gone"
    for name in ["_checkHandshakeStatus", "_write", "getHandle", "getPeerCertificate"]:
        assert hasattr(twisted_tls.TLSMemoryBIOProtocol, name), name
    factory = twisted_tls.TLSMemoryBIOFactory(CertificateOptions(), False, None,
                                             clock=reactor)
    assert callable(factory._creatorCallable), "TLSMemoryBIOFactory._creatorCallable"
    protocol = twisted_tls.TLSMemoryBIOProtocol(factory, Protocol(), False)
    assert protocol._connectWrapped is False, "TLSMemoryBIOProtocol._connectWrapped"
    # LeanTLSProtocol.makeConnection is Twisted's with one line changed:
    # when Twisted's changes, ours must be looked at again.
    import ast
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(twisted_tls.TLSMemoryBIOProtocol.makeConnection))
    function = ast.parse(source).body[0]
    body = [ast.unparse(node) for node in function.body  # type: ignore[attr-defined]
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert body == [
        "self._tlsConnection = self.factory._creatorCallable(self)",
        "self._appSendBuffer = []",
        "for interface in providedBy(transport):\n    directlyProvides(self, interface)",
        "Protocol.makeConnection(self, transport)",
        "self.factory.registerProtocol(self)",
        "if self._connectWrapped:\n    ProtocolWrapper.makeConnection(self, transport)",
        "self._checkHandshakeStatus()",
    ], "TLSMemoryBIOProtocol.makeConnection changed: compare LeanTLSProtocol's"


def test_specifications_are_built_once() -> None:
    class Thing:
        pass

    a, b = Thing(), Thing()
    direct_write._provide(a, (ISSLTransport, ITCPTransport))
    direct_write._provide(b, (ISSLTransport, ITCPTransport))
    assert a.__provides__ is b.__provides__  # type: ignore[attr-defined]
    assert ISSLTransport.providedBy(b) and ITCPTransport.providedBy(b)


def test_other_ports_are_left_alone() -> None:
    class Other:
        transport = object()

    other = Other()
    assert direct_write.use_direct_write(other) is other
    assert other.transport is Other.transport


@pytest_twisted.ensureDeferred
async def test_no_writer_left_behind() -> None:
    """
    After a round of replies nothing is left watched for writability.
    """
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"TWO\n")
            return _read_until(sock, b"two\r\n")

        await _client(port.getHost().port, script)
        await defer.succeed(None)
        for server in factory.connections:
            assert server.transport not in reactor.getWriters()
    finally:
        await port.stopListening()


def test_ftp_listeners_use_direct_writes(tmp_path: Any) -> None:
    from rumpus_secure import tap
    from rumpus_secure.direct_write import DirectWriteEndpoint
    from tests.test_tap import Reactor, listeners, parse

    top = tap.makeService(parse("--data-dir", str(tmp_path / "data")), reactor=Reactor())
    found = listeners(top)
    assert isinstance(found["ftp"].endpoint, DirectWriteEndpoint)
    assert isinstance(found["ftps"].endpoint, DirectWriteEndpoint)
    assert not isinstance(found["https"].endpoint, DirectWriteEndpoint)


@pytest_twisted.ensureDeferred
async def test_held_writes_leave_together_and_holds_do_not_nest() -> None:
    port, factory = await _listen()
    try:
        sent = defer.Deferred()

        def later() -> None:
            server = factory.connections[0]
            release = server.transport.hold_writes()
            assert server.transport.hold_writes() is None  # already held
            server.transport.write(b"221 bye\r\n")
            server.transport.write(b"close\r\n")
            assert server.counter.sends == [b"hello\r\n"]
            release()
            sent.callback(list(server.counter.sends))

        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            reactor.callFromThread(reactor.callLater, 0, later)
            return _read_until(sock, b"close\r\n")

        assert await _client(port.getHost().port, script) == b"221 bye\r\nclose\r\n"
        assert await sent == [b"hello\r\n", b"221 bye\r\nclose\r\n"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_close_without_shutdown_still_ends_the_connection_cleanly() -> None:
    """
    The control socket is closed without C{shutdown()} first (one failing
    system call a login saved): that is safe because the accepted socket is
    close-on-exec, the only descriptor of it; the client still gets all that
    was written, then an orderly EOF (no reset), while another client of the
    same listener keeps its connection.
    """
    assert tcp._SocketCloser._shouldShutdown is True, "Twisted's _shouldShutdown is gone"
    assert DirectWriteServer._shouldShutdown is False
    port, factory = await _listen()
    try:
        def script(sock: socket.socket) -> bytes:
            _read_until(sock, b"hello\r\n")
            sock.sendall(b"BIG\nBYE\n")
            data = b""
            while part := sock.recv(1 << 20):  # a reset would raise here
                data += part
            return data

        second = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        try:
            data = await _client(port.getHost().port, script)
            assert data == b"x" * (8 << 20) + b"\r\nbye\r\n"
            server = next(c for c in factory.connections
                          if c.transport.getPeer().port == second.getsockname()[1])
            assert server.counter.get_inheritable() is False  # close-on-exec
            # The other connection is untouched and still served.
            second.sendall(b"TWO\n")
            assert await deferToThread(_read_until, second, b"two\r\n") == \
                b"hello\r\none\r\ntwo\r\n"
        finally:
            second.close()
    finally:
        await port.stopListening()
