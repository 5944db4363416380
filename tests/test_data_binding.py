"""
Issue #11 in the small: the data handshake refuses before its first byte,
passive listeners vet candidates and keep waiting, ports are random.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from rumpus_secure.ftp import passive as passive_module
from rumpus_secure.ftp.passive import (
    MAX_CANDIDATES,
    DataConnectionRefused,
    DataConnectionTimeout,
    PassiveListener,
    random_order,
)
from rumpus_secure.ftp.transfer import (
    SessionNotResumed,
    TLSSettings,
    TransferHandle,
    handshake,
)
from rumpus_secure.tls import FTP_ALPN, TLSContextSource, ensure_certificate


@pytest.fixture(scope="module")
def control_context(tmp_path_factory: pytest.TempPathFactory) -> SSL.Context:
    """
    The session context of the control connections (shared; a connection
    made on it directly has the unbound session id context).
    """
    info = ensure_certificate(tmp_path_factory.mktemp("tls"), "localhost", None, None)
    return TLSContextSource(info.cert_path, info.key_path).per_session_factory(
        FTP_ALPN).getContext()


def _listener(timeout: float = 5.0) -> PassiveListener:
    return PassiveListener(reactor, "127.0.0.1", range(1), "127.0.0.1", timeout)


def _client_hello_and_read(port: int, version: int, tickets: bool,
                           until_closed: bool) -> bytes:
    """
    Send a fresh ClientHello (no session to resume), return the raw bytes
    the server sends back: all of them until it closes, or the first ones.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    if not tickets:
        context.set_options(SSL.OP_NO_TICKET)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(client.bio_read(65536))
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if not until_closed:
                break
    except OSError:
        pass
    sock.close()
    return received


@pytest.mark.parametrize("version, tickets", [
    (SSL.TLS1_3_VERSION, True), (SSL.TLS1_2_VERSION, True), (SSL.TLS1_2_VERSION, False)])
@pytest.mark.parametrize("require_reuse", [True, False])
@pytest_twisted.ensureDeferred
async def test_refused_handshake_sends_nothing(control_context: SSL.Context, version: int,
                                               tickets: bool, require_reuse: bool) -> None:
    """
    A data connection that does not resume is refused before the server's
    first byte: not even a ServerHello, so no TLS 1.2 ticket or cached
    session that the client could resume on a second try.  (Without the
    requirement, the same client does get the server's flight.)
    """
    passive = _listener()
    client = deferToThread(_client_hello_and_read, passive.port, version, tickets,
                           require_reuse)
    sock = await passive.wait()
    settings = TLSSettings(control_context, require_reuse=require_reuse)
    server = deferToThread(handshake, sock, settings, 2.0, TransferHandle())
    if require_reuse:
        with pytest.raises(SessionNotResumed) as refused:
            await server
        assert refused.value.channel is not None
        assert not client.called, "left open for the caller to record the refusal"
        refused.value.channel.close()
        assert await client == b""
    else:
        with pytest.raises((SSL.Error, OSError, TimeoutError)):
            await server  # the client stops after reading the flight
        assert len(await client) > 40  # at least a ServerHello


class Vetting:
    """
    A vet function whose verdicts the test gives.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[socket.socket, str, defer.Deferred[Any]]] = []
        self.cancelled: list[socket.socket] = []
        self._called: defer.Deferred[None] | None = None

    def __call__(self, sock: socket.socket, host: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred(lambda d: self.cancelled.append(sock))
        self.calls.append((sock, host, d))
        if self._called is not None:
            called, self._called = self._called, None
            called.callback(None)
        return d

    def next_call(self, count: int) -> defer.Deferred[None]:
        """
        Fires once there are C{count} calls.
        """
        if len(self.calls) >= count:
            return defer.succeed(None)
        self._called = defer.Deferred()
        return self._called.addCallback(lambda ignored: self.next_call(count))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest_twisted.ensureDeferred
async def test_refused_candidate_leaves_the_port_to_the_rightful_one() -> None:
    passive = _listener()
    vetting = passive.vet = Vetting()
    impostor = await deferToThread(_connect, passive.port)
    await vetting.next_call(1)
    vetting.calls[0][2].errback(DataConnectionRefused("foreign-session", "not resumed"))
    vetting.calls[0][0].close()
    assert passive.listening
    rightful = await deferToThread(_connect, passive.port)
    await vetting.next_call(2)
    assert vetting.calls[1][1] == "127.0.0.1"
    vetting.calls[1][2].callback("the channel")
    assert await passive.wait() == "the channel"
    assert not passive.listening
    impostor.close()
    rightful.close()
    vetting.calls[1][0].close()


@pytest_twisted.ensureDeferred
async def test_the_first_accepted_candidate_wins_and_the_others_are_cancelled() -> None:
    passive = _listener()
    vetting = passive.vet = Vetting()
    clients = [await deferToThread(_connect, passive.port) for _ in range(3)]
    await vetting.next_call(3)
    vetting.calls[1][2].callback("second")
    assert await passive.wait() == "second"
    assert vetting.cancelled == [vetting.calls[0][0], vetting.calls[2][0]]
    for sock, _, _ in vetting.calls:
        sock.close()
    for sock in clients:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_new_candidate_displaces_the_oldest() -> None:
    passive = _listener()
    vetting = passive.vet = Vetting()
    clients = [await deferToThread(_connect, passive.port)
               for _ in range(MAX_CANDIDATES + 1)]
    await vetting.next_call(MAX_CANDIDATES + 1)
    assert vetting.cancelled == [vetting.calls[0][0]]
    vetting.calls[-1][2].callback("newest")
    assert await passive.wait() == "newest"
    assert len(vetting.cancelled) == MAX_CANDIDATES
    for sock, _, _ in vetting.calls:
        sock.close()
    for sock in clients:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_timeout_after_a_refusal_reports_the_refusal() -> None:
    passive = _listener(timeout=0.5)
    vetting = passive.vet = Vetting()
    client = await deferToThread(_connect, passive.port)
    await vetting.next_call(1)
    vetting.calls[0][2].errback(DataConnectionRefused("foreign-session", "not resumed"))
    with pytest.raises(DataConnectionRefused) as refused:
        await passive.wait()
    assert refused.value.reason == "foreign-session"
    assert not passive.listening
    client.close()
    vetting.calls[0][0].close()


@pytest_twisted.ensureDeferred
async def test_timeout_cancels_a_candidate_still_in_its_handshake() -> None:
    passive = _listener(timeout=0.5)
    vetting = passive.vet = Vetting()
    client = await deferToThread(_connect, passive.port)
    await vetting.next_call(1)
    with pytest.raises(DataConnectionTimeout):
        await passive.wait()
    assert vetting.cancelled == [vetting.calls[0][0]]
    client.close()
    vetting.calls[0][0].close()


def test_random_order_gives_every_port_once_in_no_fixed_order() -> None:
    ports = range(40000, 40100)
    assert sorted(random_order(ports)) == list(ports)
    firsts = {next(iter(random_order(ports))) for _ in range(30)}
    assert len(firsts) > 5
    assert list(random_order(range(1))) == [0]


def test_random_order_skips_ports_in_use_and_does_not_list_a_range_first() -> None:
    """
    A PASV on a large range draws from it directly: a range far too large
    to list still gives its first port at once, never one in use, and the
    whole order still has every free port once.
    """
    huge = range(1, 2**40)
    assert next(iter(random_order(huge))) in huge
    ports = range(40000, 40100)
    in_use = set(range(40000, 40100, 2))
    order = list(random_order(ports, in_use))
    assert sorted(order) == [p for p in ports if p not in in_use]
    firsts = {next(iter(random_order(ports, in_use))) for _ in range(30)}
    assert len(firsts) > 5 and not firsts & in_use


def test_passive_ports_are_not_handed_out_lowest_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The listener takes its port through L{random_order}: with a random
    source that picks the last index, the highest port of the range comes
    first, not the lowest.
    """

    class Highest:
        def randrange(self, n: int) -> int:
            return n - 1

    probes = [socket.socket(), socket.socket()]
    probes[0].bind(("127.0.0.1", 0))
    base = probes[0].getsockname()[1]
    try:
        probes[1].bind(("127.0.0.1", base + 1))
    except OSError:
        pytest.skip("no two free ports in a row")
    finally:
        for probe in probes:
            probe.close()
    monkeypatch.setattr(passive_module, "_random", Highest())
    listener = PassiveListener(reactor, "127.0.0.1", range(base, base + 2), "127.0.0.1", 5)
    try:
        assert listener.port == base + 1
    finally:
        listener.close()


def test_the_private_pyopenssl_parts_we_use_are_still_there() -> None:
    """
    L{rumpus_secure.tls} and L{rumpus_secure.ftp.transfer} reach into
    pyOpenSSL's private parts (C{OpenSSL._util}, C{Connection._ssl} and its
    memory BIOs).  If pyOpenSSL renames or drops any of them, this fails
    by name instead of a data connection failing at run time.
    """
    from OpenSSL._util import ffi, lib

    for name in ("SSL_session_reused", "SSL_clear_mode", "SSL_MODE_ENABLE_PARTIAL_WRITE",
                 "SSL_MODE_RELEASE_BUFFERS", "SSL_write", "SSL_read", "SSL_get_error",
                 "SSL_ERROR_WANT_READ", "BIO_read", "BIO_write"):
        assert hasattr(lib, name), f"OpenSSL._util.lib.{name} is gone"
    assert callable(ffi.from_buffer)
    connection = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
    for attribute in ("_ssl", "_from_ssl", "_into_ssl", "_raise_ssl_error"):
        assert hasattr(connection, attribute), f"SSL.Connection.{attribute} is gone"
    assert lib.SSL_session_reused(connection._ssl) == 0


def test_the_private_openssl_parts_of_the_session_binding_are_still_there(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """
    L{rumpus_secure.tls.bound_connection} gives each FTP control connection
    (and its data connections) a session id context of its own through
    C{OpenSSL._util.lib.SSL_CTX_set_session_id_context} on the pyOpenSSL
    context's private C{_context}, relying on OpenSSL copying the context's
    sid_ctx into a connection when C{SSL.Connection()} creates it (and
    never again).  If pyOpenSSL or cryptography drops either part, or the
    copy stops happening at creation, this fails by name: the data channel
    binding (issue #11) depends on it.  (Should cryptography ever export
    C{SSL_set_session_id_context}, bound_connection can use it instead.)
    """
    from OpenSSL._util import ffi, lib

    from rumpus_secure import tls

    assert hasattr(lib, "SSL_CTX_set_session_id_context"), (
        "OpenSSL._util.lib.SSL_CTX_set_session_id_context is gone")
    info = ensure_certificate(tmp_path_factory.mktemp("sid"), "localhost", None, None)
    context = TLSContextSource(info.cert_path, info.key_path).per_session_factory(
        FTP_ALPN).getContext()
    assert isinstance(getattr(context, "_context", None), ffi.CData), (
        "SSL.Context._context is gone")
    assert lib.SSL_CTX_set_session_id_context(context._context, b"x" * 33, 33) == 0
    # A connection keeps the sid_ctx it was made with while the context's
    # changes: a session made on it resumes under that sid_ctx only.
    first = tls.bound_connection(context, b"A" * 32)
    second = tls.bound_connection(context, b"B" * 32)
    assert tls.session_binding(first) == tls.SessionBinding(context, b"A" * 32)
    assert tls.session_binding(second) == tls.SessionBinding(context, b"B" * 32)
    client = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client.set_max_proto_version(SSL.TLS1_2_VERSION)
    client.set_options(SSL.OP_NO_TICKET)

    def handshake(server: SSL.Connection, session: Any = None) -> SSL.Connection:
        connection = SSL.Connection(client, None)
        connection.set_connect_state()
        if session is not None:
            connection.set_session(session)
        server.set_accept_state()
        for _ in range(10):
            for one, other in ((connection, server), (server, connection)):
                try:
                    one.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    other.bio_write(one.bio_read(65536))
                except SSL.WantReadError:
                    pass
        tls.keep_session_resumable(server)
        tls.keep_session_resumable(connection)  # freed: the session stays usable
        return connection

    session = handshake(first).get_session()
    again = tls.bound_connection(context, b"A" * 32)
    handshake(again, session)
    assert lib.SSL_session_reused(again._ssl) == 1
    other = tls.bound_connection(context, b"B" * 32)
    handshake(other, session)
    assert lib.SSL_session_reused(other._ssl) == 0


def test_a_closed_listener_lets_its_owner_go_without_the_garbage_collector() -> None:
    """
    The owner's method as C{vet} makes a reference cycle; closing the
    listener breaks it, so the owner (and the data channel it holds, with
    its megabyte buffers) is freed at once rather than at the next full
    collection.
    """
    import gc
    import weakref

    class Owner:
        def __init__(self) -> None:
            self.listener = _listener()
            self.listener.vet = self.vet

        def vet(self, sock: socket.socket, host: str) -> defer.Deferred[Any]:
            return defer.succeed(sock)

    gc.disable()
    try:
        owner = Owner()
        gone = weakref.ref(owner)
        owner.listener.close()
        del owner
        assert gone() is None
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_a_hello_retry_request_does_not_refuse_a_resumption(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """
    When the client's TLS 1.3 key share is not one the server takes, the
    server's first answer is a HelloRetryRequest, sent before OpenSSL has
    decided on resumption; the decision comes with the second hello, and
    the rightful client resumes.
    """
    from OpenSSL._util import lib

    from tests.test_transfer import client_context, control_session, tls_client

    info = ensure_certificate(tmp_path_factory.mktemp("hrr"), "localhost", None, None)
    context = TLSContextSource(info.cert_path, info.key_path).per_session_factory(
        FTP_ALPN).getContext()
    # Clients send an X25519 key share first; this server takes P-384 only.
    assert lib.SSL_CTX_set1_curves_list(context._context, b"P-384") == 1
    client = client_context(SSL.TLS1_3_VERSION)
    session = control_session(context, client)
    passive = _listener()
    received = deferToThread(tls_client, passive.port, client, session)
    sock = await passive.wait()
    try:
        channel = await deferToThread(handshake, sock,
                                      TLSSettings(context, require_reuse=True),
                                      5.0, TransferHandle())
    except SessionNotResumed as e:
        assert e.channel is not None
        e.channel.close()
        await received
        pytest.fail("a resumption after a HelloRetryRequest was refused")
    assert channel.tls.get_protocol_version_name() == "TLSv1.3"
    channel.release_held()
    channel.send_all(b"resumed after a retry")
    channel.finish_sending()
    channel.close()
    assert await received == b"resumed after a retry"
