"""
The data-transfer engine and passive listeners, on real loopback sockets.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import threading
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from rumpus_secure.ftp.listing import LineEndDecoder, LineEndEncoder
from rumpus_secure.ftp.passive import DataConnectionTimeout, PassiveListener
from rumpus_secure.ftp.transfer import (
    Outcome,
    TLSSettings,
    TransferEngine,
    receive_into,
    send_bytes,
    send_file,
)
from rumpus_secure.tls import TLSContextSource, ensure_certificate, keep_session_resumable


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> SSL.Context:
    data = tmp_path_factory.mktemp("tls")
    info = ensure_certificate(data, "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path)
    return source.context_factory([b"ftp"]).getContext()


@pytest.fixture
def engine() -> Any:
    pool = ThreadPool(minthreads=0, maxthreads=8, name="test-data")
    pool.start()
    yield TransferEngine(reactor, idle_timeout=5.0, pool=pool)
    pool.stop()


def client_context(version: int | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    if version is not None:
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
    return ctx


def control_session(server_context: SSL.Context, client: SSL.Context) -> SSL.Session:
    """
    A full in-memory handshake against the server context: the "control
    connection" whose session the data connection must resume.
    """
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    conn = SSL.Connection(client, None)
    conn.set_connect_state()
    for _ in range(20):
        for one, other in ((conn, server), (server, conn)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                data = one.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                other.bio_write(data)
    server.send(b"ok")  # TLS 1.3: tickets go out after the handshake
    conn.bio_write(server.bio_read(65536))
    assert conn.recv(2) == b"ok"
    # Freed without close_notify, OpenSSL would evict the session.
    keep_session_resumable(server)
    keep_session_resumable(conn)
    return conn.get_session()


def resuming_connection(port: int, ctx: SSL.Context,
                        session: SSL.Session | None) -> tuple[socket.socket, SSL.Connection]:
    """
    A TLS client connection to the passive port, offering C{session}.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)  # pyOpenSSL needs a blocking socket
    conn = SSL.Connection(ctx, sock)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    return sock, conn


def drain_and_close(sock: socket.socket) -> None:
    """
    Read until the server closes (or resets), then close.
    """
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


def tls_client(port: int, ctx: SSL.Context, session: SSL.Session | None,
               upload: bytes | None = None, close_notify: bool = True) -> bytes:
    sock, conn = resuming_connection(port, ctx, session)
    received = bytearray()
    try:
        _talk(conn, sock, received, upload, close_notify)
    except (SSL.Error, OSError):
        pass  # the server refused or cut the connection: return what came
    sock.close()
    return bytes(received)


def _talk(conn: SSL.Connection, sock: socket.socket, received: bytearray,
          upload: bytes | None, close_notify: bool) -> None:
    conn.do_handshake()
    if upload is not None:
        conn.sendall(upload)
        if close_notify:
            conn.shutdown()
        sock.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(65536):
                pass
        except (SSL.ZeroReturnError, SSL.SysCallError):
            pass
    else:
        try:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        except SSL.ZeroReturnError:
            pass
        conn.shutdown()


def plain_client(port: int, upload: bytes | None = None, source: str = "127.0.0.1") -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    received = bytearray()
    if upload is not None:
        sock.sendall(upload)
        sock.shutdown(socket.SHUT_WR)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sock.close()
    return bytes(received)


def listener(timeout: float = 5.0, refused: list[str] | None = None) -> PassiveListener:
    return PassiveListener(reactor, "127.0.0.1", range(0, 1), "127.0.0.1", timeout,
                           on_refused=(refused.append if refused is not None else lambda h: None))


@pytest_twisted.ensureDeferred
async def test_plain_download(engine: TransferEngine) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    passive = listener()
    client = deferToThread(plain_client, passive.port)
    sock = await passive.wait()
    assert not passive.listening, "the passive port closes once the client is in"
    handle = engine.run(lambda: sock, None, send_file(io.BytesIO(payload)))
    result = await handle.result
    assert result.outcome is Outcome.COMPLETE and result.bytes == len(payload)
    assert await client == payload


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest_twisted.ensureDeferred
async def test_tls_download_resuming_control_session(
    engine: TransferEngine, server_context: SSL.Context, version: int
) -> None:
    ctx = client_context(version)
    session = control_session(server_context, ctx)
    payload = os.urandom(2 * 1024 * 1024)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, TLSSettings(server_context, require_reuse=True),
                        send_bytes(payload))
    result = await handle.result
    assert result.outcome is Outcome.COMPLETE, result
    assert hashlib.sha256(await client).digest() == hashlib.sha256(payload).digest()


@pytest_twisted.ensureDeferred
async def test_fresh_handshake_refused_when_reuse_required(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    passive = listener()
    client = deferToThread(tls_client, passive.port, client_context(), None)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, TLSSettings(server_context, require_reuse=True),
                        send_bytes(b"secret"))
    result = await handle.result
    assert result.outcome is Outcome.NOT_RESUMED
    assert await client == b""


@pytest_twisted.ensureDeferred
async def test_fresh_handshake_accepted_when_reuse_optional(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    passive = listener()
    client = deferToThread(tls_client, passive.port, client_context(), None)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, TLSSettings(server_context, require_reuse=False),
                        send_bytes(b"listing"))
    assert (await handle.result).outcome is Outcome.COMPLETE
    assert await client == b"listing"


class Sink:
    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data


@pytest_twisted.ensureDeferred
async def test_tls_upload_with_close_notify(engine: TransferEngine,
                                            server_context: SSL.Context) -> None:
    ctx = client_context()
    session = control_session(server_context, ctx)
    payload = os.urandom(5 * 1024 * 1024 + 3)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, payload)
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, TLSSettings(server_context), receive_into(sink))
    result = await handle.result
    await client
    assert result.outcome is Outcome.COMPLETE
    assert bytes(sink.buffer) == payload


@pytest.mark.parametrize("strict, expected", [(True, Outcome.TRUNCATED),
                                              (False, Outcome.COMPLETE)])
@pytest_twisted.ensureDeferred
async def test_tls_upload_without_close_notify(engine: TransferEngine,
                                               server_context: SSL.Context,
                                               strict: bool, expected: Outcome) -> None:
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, b"x" * 100000, False)
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, TLSSettings(server_context, strict_eof=strict),
                        receive_into(sink))
    result = await handle.result
    await client
    assert result.outcome is expected
    # Either way every byte that arrived reached the sink (a partial new
    # file can be resumed).
    assert bytes(sink.buffer) == b"x" * 100000 and result.bytes == 100000


@pytest_twisted.ensureDeferred
async def test_tls_upload_broken_by_garbage_keeps_what_came_before(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    payload = os.urandom(100000)

    def corrupt_upload() -> None:
        sock, conn = resuming_connection(passive.port, ctx, session)
        conn.do_handshake()
        conn.sendall(payload)
        sock.sendall(b"\x17\x03\x03\x00\x20" + b"not a real record" * 2)
        sock.shutdown(socket.SHUT_WR)
        drain_and_close(sock)

    client = deferToThread(corrupt_upload)
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, TLSSettings(server_context), receive_into(sink))
    result = await handle.result
    await client
    assert result.outcome is Outcome.CONNECTION_LOST, result
    assert bytes(sink.buffer) == payload and result.bytes == len(payload)


@pytest_twisted.ensureDeferred
async def test_abort_during_tls_upload(engine: TransferEngine,
                                       server_context: SSL.Context) -> None:
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    started = threading.Event()

    def endless_upload() -> None:
        sock, conn = resuming_connection(passive.port, ctx, session)
        try:
            conn.do_handshake()
            block = os.urandom(256 * 1024)
            while True:
                conn.sendall(block)
                started.set()
        except (SSL.Error, OSError):
            pass
        finally:
            started.set()
            sock.close()

    client = deferToThread(endless_upload)
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, TLSSettings(server_context), receive_into(sink))
    await deferToThread(started.wait, 10)
    while handle.bytes == 0:
        await deferToThread(started.wait, 0.01)
    handle.abort()
    result = await handle.result
    await client
    assert result.outcome is Outcome.ABORTED, result
    assert len(sink.buffer) == result.bytes > 0


@pytest_twisted.ensureDeferred
async def test_wrong_peer_is_refused_and_listener_keeps_waiting(engine: TransferEngine) -> None:
    refused: list[str] = []
    passive = listener(refused=refused)
    intruder = deferToThread(plain_client, passive.port, None, "127.0.0.2")
    assert await intruder == b""
    assert refused == ["127.0.0.2"]
    assert passive.listening
    client = deferToThread(plain_client, passive.port)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, None, send_bytes(b"mine"))
    await handle.result
    assert await client == b"mine"


@pytest_twisted.ensureDeferred
async def test_data_connection_that_never_arrives_times_out() -> None:
    passive = listener(timeout=0.2)
    port = passive.port
    with pytest.raises(DataConnectionTimeout):
        await passive.wait()
    assert not passive.listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest_twisted.ensureDeferred
async def test_abort_during_download(engine: TransferEngine) -> None:
    passive = listener()
    started = threading.Event()

    def slow_reader(port: int) -> int:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        started.set()
        got = sock.recv(1024)  # read a little, then stop reading
        drain_and_close(sock)
        return len(got)

    client = deferToThread(slow_reader, passive.port)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, None, send_bytes(b"z" * (64 * 1024 * 1024)))
    await deferToThread(started.wait, 5)
    handle.abort()
    result = await handle.result
    assert result.outcome is Outcome.ABORTED
    await client


@pytest_twisted.ensureDeferred
async def test_ascii_conversion(engine: TransferEngine) -> None:
    passive = listener()
    client = deferToThread(plain_client, passive.port)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, None, send_file(io.BytesIO(b"a\nb\r\nc\n"), LineEndEncoder()))
    await handle.result
    assert await client == b"a\r\nb\r\nc\r\n"

    passive = listener()
    client = deferToThread(plain_client, passive.port, b"x\r\ny\r\n")
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, None, receive_into(sink, LineEndDecoder()))
    await handle.result
    await client
    assert bytes(sink.buffer) == b"x\ny\n"


def test_fds_do_not_leak_on_listener_close() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        passive = listener()
        passive.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not reactor.getReaders() or all(
        not isinstance(r, PassiveListener) for r in reactor.getReaders())


def test_passive_port_range_exhausted() -> None:
    from twisted.internet.error import CannotListenError

    first = PassiveListener(reactor, "127.0.0.1", range(0, 1), "127.0.0.1", 5)
    try:
        with pytest.raises(CannotListenError):
            PassiveListener(reactor, "127.0.0.1", range(first.port, first.port + 1),
                            "127.0.0.1", 5)
    finally:
        first.close()


class RecordingFile(io.BytesIO):
    """
    A file that remembers the size of every read.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        self.reads.append(len(buffer))
        return super().readinto(buffer)


@pytest_twisted.ensureDeferred
async def test_tls_download_of_a_file_in_large_reads_and_bounded_kernel_queue(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    # Not a multiple of the read size nor of the TLS send slice, so the
    # last slice and the last record are short.
    payload = os.urandom(3 * 1024 * 1024 + 16384 * 3 + 5)
    source = RecordingFile(payload)
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session)
    sock = await passive.wait()
    lowat: list[int] = []

    def connect() -> socket.socket:
        return sock

    job = send_file(source)

    def recording_job(channel: Any, handle: Any) -> int:
        lowat.append(channel.sock.getsockopt(socket.IPPROTO_TCP, 25))
        return job(channel, handle)

    handle = engine.run(connect, TLSSettings(server_context, require_reuse=True), recording_job)
    result = await handle.result
    assert result.outcome is Outcome.COMPLETE, result
    assert hashlib.sha256(await client).digest() == hashlib.sha256(payload).digest()
    # A handful of large reads, not one per record.
    assert min(source.reads) >= 256 * 1024 and len(source.reads) <= 5, source.reads
    # TCP_NOTSENT_LOWAT (Linux): the kernel never queues megabytes for a slow client.
    if sys.platform.startswith("linux"):
        assert 0 < lowat[0] <= 1024 * 1024


class FullDisk:
    """
    A sink that fails like a full disk after some bytes.
    """

    def __init__(self, room: int) -> None:
        self.room = room
        self.written = 0

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.written += len(data)


@pytest_twisted.ensureDeferred
async def test_upload_to_a_full_disk_stops_with_a_local_error(engine: TransferEngine) -> None:
    def sender(port: int) -> None:
        try:
            plain_client(port, os.urandom(8 * 1024 * 1024))
        except OSError:
            pass  # the server stops reading and resets: expected

    passive = listener()
    client = deferToThread(sender, passive.port)
    sock = await passive.wait()
    sink = FullDisk(room=2 * 1024 * 1024)
    handle = engine.run(lambda: sock, None, receive_into(sink))
    result = await handle.result
    await client
    assert result.outcome is Outcome.LOCAL_ERROR and result.detail == "disk full"
    assert sink.written <= 2 * 1024 * 1024


class _RecordingSocket:
    """
    A real socket that records the options set on it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options.append((level, name, value))
        self._sock.setsockopt(level, name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
def test_waiting_for_the_client_acknowledges_at_once() -> None:
    """
    Before each wait for client bytes the data socket asks for an immediate
    ACK (TCP_QUICKACK): a client whose TLS stack split a message in two
    would otherwise stall 40 ms per file behind our delayed ACK.
    """
    from rumpus_secure.ftp.transfer import TransferHandle, _Channel

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        recording = _RecordingSocket(accepted)
        channel = _Channel(recording, timeout=5.0, handle=TransferHandle())  # type: ignore[arg-type]
        client.sendall(b"x")
        before = list(recording.options)
        channel._wait(True)
        assert (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1) in recording.options[len(before):]
        channel._wait(False)  # waiting to send is not waiting for the client
        assert recording.options.count((socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)) == 1


@pytest_twisted.ensureDeferred
async def test_a_handshaken_data_connection_waits_with_a_small_buffer(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    """
    A passive data connection is handshaken as soon as it is accepted and
    may then wait for a transfer thread: until its transfer starts it holds
    a handshake-sized buffer, not the megabyte of a bulk transfer, and the
    transfer still moves every byte.
    """
    from rumpus_secure.ftp.transfer import TransferHandle, _Channel

    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    payload = os.urandom(3 * 1024 * 1024)
    client = deferToThread(tls_client, passive.port, ctx, session)
    sock = await passive.wait()
    handle = TransferHandle()
    channel = await engine.handshake(sock, TLSSettings(server_context), handle)
    assert len(channel._wire) <= _Channel.HANDSHAKE_WIRE
    sizes = []

    def job(ch: Any, h: TransferHandle) -> int:
        sent = send_bytes(payload)(ch, h)
        sizes.append(len(ch._wire))
        return sent

    engine.run(lambda: channel, TLSSettings(server_context), job, handle)
    assert (await handle.result).outcome is Outcome.COMPLETE
    assert sizes == [_Channel.WIRE_CHUNK]  # grown for the bulk bytes
    assert hashlib.sha256(await client).digest() == hashlib.sha256(payload).digest()


class CommitSink(Sink):
    """
    A sink that records the thread its commit runs in.
    """

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__()
        self.commits: list[str] = []
        self.fail = fail

    def commit(self) -> None:
        self.commits.append(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail


@pytest_twisted.ensureDeferred
async def test_upload_commits_in_the_worker_after_a_clean_end(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    """
    A clean upload is committed by the transfer's own worker (no second
    hand-off to a thread), after every byte and the close_notify.
    """
    ctx = client_context()
    session = control_session(server_context, ctx)
    payload = os.urandom(4096)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, payload)
    sock = await passive.wait()
    sink = CommitSink()
    handle = engine.run(lambda: sock, TLSSettings(server_context),
                        receive_into(sink, commit=sink.commit))
    result = await handle.result
    await client
    assert result.outcome is Outcome.COMPLETE and result.committed
    assert result.commit_error is None
    assert bytes(sink.buffer) == payload
    assert len(sink.commits) == 1 and sink.commits[0].startswith("PoolThread-test-data")


@pytest_twisted.ensureDeferred
async def test_upload_commit_error_is_reported_not_swallowed(
    engine: TransferEngine, server_context: SSL.Context
) -> None:
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, b"abc")
    sock = await passive.wait()
    failure = OSError(28, "No space left on device")
    sink = CommitSink(fail=failure)
    handle = engine.run(lambda: sock, TLSSettings(server_context),
                        receive_into(sink, commit=sink.commit))
    result = await handle.result
    await client
    assert result.outcome is Outcome.COMPLETE and not result.committed
    assert result.commit_error is failure


@pytest.mark.parametrize("strict", [True, False])
@pytest_twisted.ensureDeferred
async def test_upload_cut_without_close_notify_is_not_committed_in_the_worker(
    engine: TransferEngine, server_context: SSL.Context, strict: bool
) -> None:
    """
    A truncated upload is never committed by the worker; with
    ``--data-tls-strict-eof off`` it is complete but left for the reply's
    own commit (uncommitted, so the caller decides).
    """
    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, b"x" * 1000, False)
    sock = await passive.wait()
    sink = CommitSink()
    handle = engine.run(lambda: sock, TLSSettings(server_context, strict_eof=strict),
                        receive_into(sink, commit=sink.commit))
    result = await handle.result
    await client
    assert sink.commits == [] and not result.committed


@pytest_twisted.ensureDeferred
async def test_upload_aborted_between_its_end_and_its_commit_is_not_committed(
    engine: TransferEngine, server_context: SSL.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The account watcher's abort (a lock) landing after the last byte but
    before the worker's commit still stops the commit: the upload is
    reported aborted and nothing is put in place.
    """
    from rumpus_secure.ftp import transfer as transfer_module

    ctx = client_context()
    session = control_session(server_context, ctx)
    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, b"y" * 5000)
    sock = await passive.wait()
    sink = CommitSink()
    handle_box: list[Any] = []
    original = transfer_module._Channel.discard_unread

    def discard_then_lock(self: Any) -> None:
        original(self)
        handle_box[0].abort()  # the window between the end and the commit

    monkeypatch.setattr(transfer_module._Channel, "discard_unread", discard_then_lock)
    handle = transfer_module.TransferHandle()
    handle_box.append(handle)
    engine.run(lambda: sock, TLSSettings(server_context),
               receive_into(sink, commit=sink.commit), handle)
    result = await handle.result
    await client
    assert result.outcome is Outcome.ABORTED and not result.committed
    assert sink.commits == []


@pytest.mark.parametrize("close", [True, False])
@pytest_twisted.ensureDeferred
async def test_download_closes_its_file_in_the_worker_when_asked(
    engine: TransferEngine, close: bool
) -> None:
    payload = os.urandom(10000)
    source = io.BytesIO(payload)
    passive = listener()
    client = deferToThread(plain_client, passive.port)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, None, send_file(source, close=close))
    result = await handle.result
    assert await client == payload
    assert result.outcome is Outcome.COMPLETE
    assert source.closed is close


@pytest.mark.parametrize("size, grows", [(4096, False), (3 * 1024 * 1024, True)])
@pytest_twisted.ensureDeferred
async def test_only_bulk_transfers_take_bulk_buffers(
    engine: TransferEngine, server_context: SSL.Context, size: int, grows: bool
) -> None:
    """
    A small file goes through with the handshake-sized buffer; a big one
    still moves its ciphertext in blocks of WIRE_CHUNK, both directions.
    """
    from rumpus_secure.ftp.transfer import _Channel

    ctx = client_context()
    session = control_session(server_context, ctx)
    payload = os.urandom(size)
    wires: list[int] = []

    def recording(job: Any) -> Any:
        def run(ch: Any, h: Any) -> int:
            done = job(ch, h)
            wires.append(len(ch._wire))
            return done
        run.receives = getattr(job, "receives", False)  # type: ignore[attr-defined]
        return run

    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session)
    sock = await passive.wait()
    handle = engine.run(lambda: sock, TLSSettings(server_context),
                        recording(send_file(io.BytesIO(payload), size=size)))
    assert (await handle.result).outcome is Outcome.COMPLETE
    assert hashlib.sha256(await client).digest() == hashlib.sha256(payload).digest()

    passive = listener()
    client = deferToThread(tls_client, passive.port, ctx, session, payload)
    sock = await passive.wait()
    sink = Sink()
    handle = engine.run(lambda: sock, TLSSettings(server_context),
                        recording(receive_into(sink)))
    assert (await handle.result).outcome is Outcome.COMPLETE
    await client
    assert bytes(sink.buffer) == payload
    expected = _Channel.WIRE_CHUNK if grows else _Channel.HANDSHAKE_WIRE
    assert wires == [expected, expected]
