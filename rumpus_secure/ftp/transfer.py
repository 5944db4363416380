"""
The data-transfer engine: bulk bytes off the reactor thread.

Twisted's TLS layer moves data through a memory BIO in Python and tops out
at a few hundred MB/s; pyOpenSSL on the real socket in a worker thread runs
OpenSSL's record layer in C with the GIL released, several times faster.  So
the reactor only sets up a data connection (listen, accept, peer check) and
the rest happens in a worker thread:

 1. take the connected socket (accepted passively, or connected actively);
 2. under PROT P, run the TLS handshake as the TLS I{server} (RFC 4217
    section 7) with the control connection's context and session id context
    (C{TLSSettings.binding}), and when reuse is required refuse a handshake
    that did not resume a session.  That session id context belongs to the
    control connection alone (L{rumpus_secure.tls}), so the only sessions it
    can resume are the ones issued to that control connection and to its
    own data connections; the refusal comes before
    our first handshake byte, so a refused client is issued no session or
    ticket that it could resume on a second try (L{SessionNotResumed});
 3. run the job: send a file or a listing, or receive into an upload;
 4. report a L{TransferResult} to the reactor thread through a Deferred.

Every blocking call has a timeout, so a client that stops reading or
sending cannot hold a thread forever; L{TransferHandle.abort} (ABOR, or the
control connection going away) shuts the socket down from the reactor thread
and the worker returns at once.

Small files (issue #18, target 3).  A 4 KiB file cost the server 1.9-3.1 ms
of CPU with lftp under PROT P (bench/small_files.py; vsftpd 0.4-1.2 ms).
Profiled on the server (py-spy -f raw -t, strace -c -f, perf): the reactor
thread takes 78-84% of it (the commands and replies of the control
connection through Twisted's TLS, the account watcher's read in a thread
before each command, hand-offs to threads, the audit record and its
console line, the passive listener), this module's worker 9-14% (mostly
the resumed TLS 1.3 handshake of the data connection), with about 190
system calls, 83-95 of them futex, and 42 context switches per file.  A
hand-off to a thread costs the reactor about 40 µs of dispatch on a busy
server, and a file took four (open, handshake, transfer, then commit or
close).  So the worker that moved the bytes also closes the download's file
(L{send_file} C{close}) and commits the upload (L{receive_into} C{commit},
only after a clean end and only if not aborted meanwhile), and a transfer
starts with 64 KiB buffers (L{SMALL_CHUNK}) instead of 2.2 MiB that the
allocator zeroed for every file (memset was 2% of the server's CPU).
Server CPU per file, main then this code (bench/small_files.py, each run
with vsftpd and pyftpdlib in turn): uploads 2.50 -> 2.19 ms (x8: 2.36 ->
1.76), downloads 2.12 -> 1.90 ms (x8: 1.95 -> 1.84); vsftpd's 0.7-1.1 ms is
still 1.6-2.5x below, and most of the rest is per command, on the reactor.

Counted instructions (round 4; C{bench/small_files.py --callgrind}, all
threads, 100 files, two runs within 0.5%), because CPU time per file swung
by 20-40% between runs at a load of 20-44: 4.99 M per upload and 4.49 M per
download on main (pyftpdlib 4.04 M and 8.8-9.9 M).  Of an upload's, by
library: the interpreter 46% (2.06 M); X25519 21% (0.94 M), the key
exchange of the data connection's resumed TLS 1.3 handshake (OpenSSL
resumes with psk_dhe_ke, a fresh key share per file); libc 11% (mostly
the zeroing of the two 64 KiB buffers, which callgrind counts byte by
byte: a few microseconds really); OpenSSL's other work 9%; SHA-256 7%
(the handshake's key schedule).  A download's split is the same.  strace
-c -f per upload: 24 futex calls (thread hand-offs and the GIL between the
reactor and the workers), 7 epoll_wait, 7 send, 7 write (replies and
wakers), 11 recv, 5 openat and 2 accept4.

What was cut: the console line, formatted once
(L{rumpus_secure.xferlog.TransferConsole}), 2.3% of an upload's
instructions and 2.0% of a download's (4.88 M and 4.40 M).  lftp (GnuTLS)
offers psk_ke as well; a server taking it (OpenSSL's
SSL_OP_PREFER_NO_DHE_KEX on the data connection) was measured at 3.89 M and
3.39 M, 20% and 23% less, and is not offered: a data connection keyed from
the resumption secret alone can be decrypted later by whoever gets the
session ticket key (shared by every connection of a context for up to an
hour), and this server does not trade its users' forward secrecy for CPU.
What is left to win: the per-file hand-offs to threads (open,
data handshake, transfer, and MFMT after an upload: four for an upload,
three for a download), about 35-50 us of CPU each with their wake-ups.

Bytes (target 6).  Server user CPU per GiB with curl, 1 GiB, PROT P
(bench/ftps_throughput.py, three runs at load 4-7): 0.15-0.16 s down and
0.14-0.18 s up, 0.37-0.41x and 0.35-0.41x pyftpdlib's.  perf puts about 45%
of a download's user time in AES-GCM, a third in the memory BIOs' copies
(OpenSSL zeroes a memory BIO's room before each copy into it: the memset),
the rest in the interpreter and cffi.  An upload makes three copies (into
the BIO, into OpenSSL's record buffer, out to our buffer).  pyOpenSSL's
bindings expose neither BIO_reset nor BIO_ctrl, so sending straight from
the BIO's memory is not possible; the earlier 0.54x/0.61x were measured
with 256 MiB at a load of 6-60, where the 10 ms clock tick of /proc is a
fifth of the figure.
"""

from __future__ import annotations

import enum
import errno
import select
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from rumpus_secure.tls import SessionBinding, keep_session_resumable, session_reused

_log = Logger()

#: Bytes per file read and per gathered disk write.
CHUNK = 1024 * 1024

#: The buffers a transfer starts with when it may well be small (an
#: upload of unknown size, a download of a small file): 64 KiB, grown to
#: L{CHUNK} (and the channel's to L{_Channel.WIRE_CHUNK}) as soon as the
#: bytes fill them.  Allocated at full size for every transfer, the
#: buffers were 2.2 MiB of zeroed memory per file, about 2% of the
#: server's CPU for 1,000 x 4 KiB files (perf, memset; bench/small_files.py).
SMALL_CHUNK = 64 * 1024

#: Plaintext encrypted and handed to the kernel per step of a TLS send.
#: Measured against curl on loopback (bench/ftps_throughput.py): 1 MiB
#: steps let the server run far ahead of the client, and the client then
#: pays for our segments (its window updates transmit them) and reads
#: cache-cold data; 16-32 KiB steps cost the server a system call per
#: record.  256 KiB with the kernel queue capped (below) is the best of both.
SEND_SLICE = 256 * 1024

#: TCP_NOTSENT_LOWAT for data sockets: the kernel accepts at most this
#: much beyond what the receive window lets it transmit at once, so the
#: worker waits for the client instead of queueing megabytes that go out
#: later in the client's own time, already cold in cache.  It caps only
#: the unsent queue, not what is in flight, so a long fat network still
#: fills its window.
NOTSENT_LOWAT = 128 * 1024


class Outcome(enum.Enum):
    """
    How a transfer ended.
    """

    COMPLETE = "complete"
    ABORTED = "aborted"  # ABOR or the control connection went away
    CONNECTION_LOST = "connection-lost"  # reset, timeout, or cut short
    TRUNCATED = "truncated"  # TCP closed without TLS close_notify
    TLS_FAILED = "tls-failed"  # handshake failed
    NOT_RESUMED = "not-resumed"  # handshake did not resume the session
    LOCAL_ERROR = "local-error"  # disk full, read error


@dataclass(frozen=True)
class TransferResult:
    outcome: Outcome
    bytes: int = 0
    detail: str = ""
    tls_version: str | None = None
    error: BaseException | None = None
    #: The job's L{commit <receive_into>} step ran in the worker and
    #: succeeded (the upload is in place).
    committed: bool = False
    #: What the job's commit step raised: the transfer itself was complete.
    commit_error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETE


class Sink(Protocol):
    """
    Where received bytes go (an upload from L{rumpus_secure.vfs}).
    """

    def write(self, data: bytes) -> Any: ...


@dataclass
class TLSSettings:
    """
    TLS for one data connection.

    @ivar context: the control connection's C{SSL.Context}.
    @ivar binding: the control connection's session identity; the data
        connection is made with it (L{rumpus_secure.tls.SessionBinding}).
    @ivar require_reuse: refuse a handshake that does not resume a session.
    @ivar strict_eof: treat a close without close_notify as truncation.
    """

    context: SSL.Context
    require_reuse: bool = True
    strict_eof: bool = True
    #: With a client CA: the data connection must present the certificate
    #: the control connection presented (its SHA-256 fingerprint; L{None}:
    #: none).  See L{rumpus_secure.ftp.client_cert_login}.
    check_client_cert: bool = False
    client_cert: str | None = None
    binding: SessionBinding | None = None


class _Aborted(Exception):
    pass


class SessionNotResumed(Exception):
    """
    A data connection's handshake did not resume a session of its context.

    Raised by L{_Channel.start_tls} when reuse is required, as soon as
    OpenSSL has read the ClientHello and decided, before anything is sent
    back: under TLS 1.2 the server's last flight of a full handshake carries
    a session ticket, and under both versions a completed handshake caches
    a session.  A client refused here leaves with neither, so it cannot come
    back and resume a session the data port itself handed out.

    @ivar channel: from L{handshake}, the refused connection, still open:
        the caller closes it once it has recorded the refusal, so that the
        refused client never sees the end before the server's record of it.
    """

    channel: _Channel | None = None


class ClientCertMismatch(SessionNotResumed):
    """
    The data connection's client certificate is not its control connection's.
    """


#: Raised by a data connection stopped with L{TransferHandle.abort}.
Aborted = _Aborted


class _Channel:
    """
    A blocking byte channel over a socket, plain or TLS, with timeouts.

    TLS runs over memory BIOs: OpenSSL encrypts into and decrypts from
    memory, and this class moves ciphertext to and from the socket in large
    blocks.  On the socket that means one system call per megabyte instead
    of one or two per 16 KiB record, which on a virtual machine (where each
    system call is dear) is most of the cost of a bulk transfer.
    """

    #: Bytes of ciphertext moved per socket call.
    WIRE_CHUNK = 1024 * 1024 + 128 * 1024
    #: The same, until bulk bytes come (L{grow}): a handshake's flights
    #: are a few KiB, and a passive data connection is handshaken as soon
    #: as it is accepted, then may wait for a transfer thread.  2,000
    #: downloads started at once held 2.6 GB in buffers of the full size
    #: (bench/concurrent_downloads.py).
    HANDSHAKE_WIRE = 64 * 1024

    def __init__(self, sock: socket.socket, timeout: float, handle: "TransferHandle") -> None:
        self.sock = sock
        self.timeout = timeout
        self.handle = handle
        self.tls: SSL.Connection | None = None
        self._wire = bytearray(self.HANDSHAKE_WIRE)
        self._wire_view = memoryview(self._wire)
        self._eof = False
        self._error: BaseException | None = None  # raised by the next receive
        self._held: bytearray | None = None  # TLS output held back (start_tls)
        self._quickack = _TCP_QUICKACK is not None
        sock.setblocking(False)
        if _TCP_NOTSENT_LOWAT is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            except OSError:
                pass  # not TCP (a test's socketpair), or an older kernel

    def grow(self) -> None:
        """
        Move bulk data from now on: ciphertext in blocks of L{WIRE_CHUNK}.

        Called by L{send_all} and L{receive} when they are given more than
        a handshake buffer's worth, so a small file never pays for it.
        """
        if len(self._wire) < self.WIRE_CHUNK:
            self._wire = bytearray(self.WIRE_CHUNK)
            self._wire_view = memoryview(self._wire)

    # -- the raw socket ------------------------------------------------------

    def _wait(self, readable: bool) -> None:
        if self.handle.aborted:
            raise _Aborted()
        fd = self.sock.fileno()
        if fd < 0:
            raise _Aborted()
        if readable and self._quickack:
            # We wait for the client, so the client may be waiting for us:
            # its TLS stack wrote a message in two segments (lftp's last
            # handshake flight, ftplib's close_notify after the data) and
            # Nagle holds the second until we acknowledge the first, which
            # Linux delays by up to 40 ms.  Acknowledge at once instead:
            # a 4 KiB file went from 17 to 74 files/s with lftp
            # (shared/reference/perf-notes.md).  The flag is not sticky, so
            # it is set before every wait; one system call per wait.
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._quickack = False  # not TCP (a test's socketpair)
        # poll, not select: a busy server has descriptors above FD_SETSIZE.
        poller = select.poll()
        poller.register(fd, select.POLLIN if readable else select.POLLOUT)
        ready = poller.poll(self.timeout * 1000)
        if self.handle.aborted:
            raise _Aborted()
        if not ready:
            raise TimeoutError(f"no progress for {self.timeout:.0f} s")

    def _raw_send_all(self, view: memoryview) -> None:
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                self._wait(False)
                continue
            view = view[sent:]

    def _raw_recv_into(self, view: memoryview) -> int:
        while True:
            try:
                return self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                self._wait(True)

    # -- TLS over memory BIOs -----------------------------------------------

    def _flush_tls(self) -> None:
        """
        Send every byte of ciphertext OpenSSL has produced (or hold it back
        while the channel is quiet: see L{start_tls}).
        """
        assert self.tls is not None
        with _ffi.from_buffer(self._wire, require_writable=True) as target:
            while True:
                n = _lib.BIO_read(self.tls._from_ssl, target, len(self._wire))
                if n <= 0:
                    return
                if self._held is not None:
                    self._held += self._wire_view[:n]
                else:
                    self._raw_send_all(self._wire_view[:n])

    def _feed_tls(self, wait: bool = True) -> bool:
        """
        Give OpenSSL the next block of ciphertext from the socket.

        @param wait: wait for the network when nothing has arrived; if
            false, return C{False} instead.
        """
        assert self.tls is not None
        try:
            n = self.sock.recv_into(self._wire_view)
        except (BlockingIOError, InterruptedError):
            if not wait:
                return False
            self._wait(True)
            n = self._raw_recv_into(self._wire_view)
        if n == 0:
            self._eof = True
            self.tls.bio_shutdown()  # OpenSSL now reports the end of input
            return True
        with _ffi.from_buffer(self._wire) as source:
            _lib.BIO_write(self.tls._into_ssl, source, n)
        return True

    def start_tls(self, settings: TLSSettings) -> None:
        """
        Run the server side of the handshake.

        Post-handshake output is held back until L{release_held}.  With TLS
        1.3, OpenSSL sends session tickets I{after} the handshake; a client
        that only uploads never reads them, so when it closes its socket the
        unread tickets make its kernel send a reset, and a reset destroys
        upload data still queued on our side: uploads cut short at random
        sizes, the classic lftp/GnuTLS-over-TLS-1.3 failure.  A download
        releases the held bytes before its data; an upload sends them with
        its close_notify once the upload has been read to the end (a client
        such as Python's ftplib waits for that close_notify).
        """
        tls = (settings.binding.connection() if settings.binding is not None
               else SSL.Connection(settings.context, None))
        # Idle control connections release their record buffers to save
        # memory; a bulk data connection would re-allocate them per record.
        # pyOpenSSL turns partial writes on, which makes SSL_write return
        # after every 16 KiB record; into a memory BIO a write never blocks,
        # so one call can encrypt a whole slice (see send_all).
        _lib.SSL_clear_mode(tls._ssl, SSL.MODE_RELEASE_BUFFERS
                            | _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        tls.set_accept_state()
        self.tls = tls
        undecided = settings.require_reuse
        while True:
            try:
                tls.do_handshake()
                break
            except SSL.WantReadError:
                if undecided:
                    # The first output answers the whole ClientHello, so
                    # OpenSSL has decided whether it resumes: check before
                    # sending any of it (see SessionNotResumed).  Except a
                    # TLS 1.3 HelloRetryRequest (the client's key share is
                    # not one we take): it carries no session, and the
                    # decision comes with the answer to the second hello.
                    flight = self._pending_tls_output()
                    if flight:
                        if not _is_hello_retry_request(flight):
                            undecided = False
                            if not session_reused(tls):
                                raise SessionNotResumed(
                                    "the data connection did not resume the TLS"
                                    " session of its control connection")
                        self._raw_send_all(memoryview(flight))
                self._flush_tls()
                if self._eof:
                    raise ConnectionError("the client closed during the handshake") from None
                self._feed_tls()
        if settings.check_client_cert:
            peer = tls.get_peer_certificate(as_cryptography=True)
            presented = (None if peer is None
                         else peer.fingerprint(hashes.SHA256()).hex(":").upper())
            if presented != settings.client_cert:
                raise ClientCertMismatch(
                    "the data connection's client certificate is not the one"
                    " of its control connection")
        if tls.get_protocol_version_name() == "TLSv1.3":
            # The handshake's last flight went out with the WantRead above;
            # what OpenSSL has written since is post-handshake (tickets).
            self._held = bytearray()
        self._flush_tls()

    def _pending_tls_output(self) -> bytes:
        """
        Take what OpenSSL has written so far, without sending it.

        In 16 KiB reads: a handshake flight is a few KiB, and pyOpenSSL
        allocates a buffer of the size asked for at each call.
        """
        assert self.tls is not None
        parts = []
        while True:
            try:
                parts.append(self.tls.bio_read(16 * 1024))
            except SSL.WantReadError:
                return b"".join(parts)

    def release_held(self) -> None:
        """
        Send the post-handshake output held back by L{start_tls}.
        """
        held, self._held = self._held, None
        if held:
            self._raw_send_all(memoryview(held))

    # -- the byte stream -----------------------------------------------------

    def send_all(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        if self.tls is None:
            self._raw_send_all(view)
            return
        if len(view) > len(self._wire):
            self.grow()
        # Encrypt into memory one slice at a time (never blocks) and hand
        # each slice's records to the kernel in one call.
        ssl = self.tls._ssl
        size = len(view)
        with _ffi.from_buffer(view) as source:
            for start in range(0, size, SEND_SLICE):
                step = min(SEND_SLICE, size - start)
                result = _lib.SSL_write(ssl, source + start, step)
                if result != step:
                    self.tls._raise_ssl_error(ssl, result)
                    raise SSL.Error(f"short TLS write: {result} of {step} bytes")
                self._flush_tls()

    def receive(self, view: memoryview) -> int:
        """
        Fill C{view} with what has arrived, waiting only while nothing has.

        Returns the number of bytes read: 0 at a clean end of data.  A bulk
        upload arrives in 16 KiB records, and each costs one C{SSL_read}
        call here and nothing more, which keeps the Python work per record
        (the upload's bottleneck after the disk) to a minimum.

        @raises _Truncated: TLS ended without close_notify.
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.tls is None:
            return self._raw_recv_into(view)
        ssl = self.tls._ssl
        size = len(view)
        if size > len(self._wire):
            self.grow()
        got = 0
        with _ffi.from_buffer(view, require_writable=True) as target:
            while got < size:
                result = _lib.SSL_read(ssl, target + got, size - got)
                if result > 0:
                    got += result
                    continue
                if _lib.SSL_get_error(ssl, result) == _lib.SSL_ERROR_WANT_READ:
                    try:
                        self._flush_tls()  # e.g. the answer to a key update
                        if self._eof:
                            raise _Truncated()
                        if not self._feed_tls(wait=not got):
                            break  # the rest has not arrived: return what has
                        continue
                    except (_Truncated, _Aborted, OSError, TimeoutError) as e:
                        error = e  # a reset, a timeout, ABOR
                else:
                    try:
                        self._raise_read_error(result)
                        if not got:
                            return 0  # close_notify: the clean end
                        break
                    except (_Truncated, ConnectionError, SSL.Error) as e:
                        error = e
                # What arrived before a failure is real data: return it,
                # and raise the failure on the next call.
                if got:
                    self._error = error
                    break
                raise error
        return got

    def _raise_read_error(self, result: int) -> None:
        """
        Raise what a failed C{SSL_read} means; return at a clean end.
        """
        assert self.tls is not None
        try:
            self.tls._raise_ssl_error(self.tls._ssl, result)
        except SSL.ZeroReturnError:
            return
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:
                raise _Truncated() from None
            raise ConnectionError(str(e)) from None
        raise SSL.Error(f"SSL_read failed: {result}")

    def finish_sending(self) -> None:
        """
        End the stream: TLS close_notify (where TLS), then a TCP FIN.
        """
        try:
            if self.tls is not None:
                self.release_held()
                try:
                    self.tls.shutdown()
                except SSL.Error:
                    pass
                self._flush_tls()
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, TimeoutError, _Aborted):
            # The client already closed its end (it has all the data, or
            # it is gone): nothing more to say to it.
            pass

    def discard_unread(self) -> None:
        """
        Read and drop what the client has already sent, without waiting.

        Closing a socket with unread bytes makes the kernel send a reset
        instead of a FIN, and a reset can destroy data the client has not
        read yet.  Nothing is waited for: a client may well wait for our
        226 before it closes its side.
        """
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        if self.tls is not None:
            # An aborted data connection must not evict the control
            # connection's cached session (tls.keep_session_resumable).
            keep_session_resumable(self.tls)
        try:
            self.sock.close()
        except OSError:
            pass


class _Truncated(Exception):
    pass


#: socket.TCP_QUICKACK (Linux only): acknowledge at once, see _Channel._wait.
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


#: The ServerHello random that marks a HelloRetryRequest (RFC 8446 4.1.3).
_HRR_RANDOM = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def _is_hello_retry_request(flight: bytes) -> bool:
    """
    Whether the server's first flight is a TLS 1.3 HelloRetryRequest.

    A handshake record (type 22) opening with a ServerHello (type 2) whose
    random is the HelloRetryRequest constant.
    """
    return flight[:1] == b"\x16" and flight[5:6] == b"\x02" and flight[11:43] == _HRR_RANDOM


#: socket.TCP_NOTSENT_LOWAT, which Python names only from 3.12 on.
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT",
                             25 if sys.platform.startswith("linux") else None)


class TransferHandle:
    """
    A running transfer, as seen from the reactor thread.
    """

    def __init__(self) -> None:
        self.aborted = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.result: defer.Deferred[TransferResult] | None = None
        self.bytes = 0

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted:
                self._shutdown()

    def abort(self) -> None:
        """
        Stop the transfer now (from any thread).
        """
        with self._lock:
            self.aborted = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


Job = Callable[[_Channel, TransferHandle], int]


class Converter(Protocol):
    """
    TYPE A line-end conversion (L{rumpus_secure.ftp.listing}).
    """

    def convert(self, data: bytes) -> bytes: ...


def send_file(source: BinaryIO, encoder: Converter | None = None, close: bool = False,
              size: int | None = None) -> Job:
    """
    A job that sends a file (RETR), through C{encoder} in TYPE A.

    @param size: the bytes expected, if known: a small file is read into
        a buffer of L{SMALL_CHUNK}, not L{CHUNK}.

    @param close: close C{source} in the worker when the job ends, however
        it ends, so the reactor need not send a thread the close (one
        thread hand-off less per download; see L{receive_into}).  A job
        that never ran leaves the file open: its owner closes it.
    """

    def job(channel: _Channel, handle: TransferHandle) -> int:
        try:
            total = 0
            buffer = bytearray(CHUNK if size is None or size >= CHUNK
                               else max(size, SMALL_CHUNK))
            view = memoryview(buffer)
            while True:
                n = source.readinto(buffer)  # type: ignore[attr-defined]
                if not n:
                    break
                if encoder is not None:
                    channel.send_all(encoder.convert(bytes(view[:n])))
                else:
                    channel.send_all(view[:n])
                total += n
                handle.bytes = total
            return total
        finally:
            if close:
                source.close()

    return job


def send_bytes(data: bytes) -> Job:
    """
    A job that sends bytes already in memory (a listing).
    """

    def job(channel: _Channel, handle: TransferHandle) -> int:
        channel.send_all(data)
        handle.bytes = len(data)
        return len(data)

    return job


def send_stream(chunks: Iterable[bytes], done: Callable[[], None] | None = None) -> Job:
    """
    A job that sends bytes made while they are sent (a streamed listing).

    C{chunks} is consumed in the worker thread, so the directory is read and
    formatted there, one block ahead of the network; C{done} (closing the
    directory) runs in the worker when the job ends, however it ends.
    """

    def job(channel: _Channel, handle: TransferHandle) -> int:
        total = 0
        try:
            for chunk in chunks:
                if handle.aborted:
                    raise _Aborted()
                channel.send_all(chunk)
                total += len(chunk)
                handle.bytes = total
        finally:
            if done is not None:
                done()
        return total

    return job


def receive_into(sink: Sink, decoder: Any = None,
                 commit: Callable[[], None] | None = None) -> Job:
    """
    A job that receives the data connection's bytes into C{sink} (STOR).

    Records arrive 16 KiB at a time; they are gathered and written to disk
    once per chunk, or when the network makes us wait (so a slow sender's
    bytes reach the disk as they come), not once per record.

    @param decoder: TYPE A conversion with C{convert} and C{flush}.
    @param commit: run by the worker once the transfer has ended cleanly
        (the client's close_notify read, ours sent) and only if it was not
        aborted meanwhile: puts the upload in place without a second
        thread hand-off (L{TransferResult.committed}, C{commit_error}).
        A small upload was three hand-offs to a thread (open, transfer,
        commit); the commit's own costs about 0.1 ms of server CPU per
        file in Python and futex calls (bench/small_files.py).
    """

    def job(channel: _Channel, handle: TransferHandle) -> int:
        view = memoryview(bytearray(SMALL_CHUNK))
        while True:
            # Returns when the chunk is full or the network makes us wait;
            # what arrived before a failure comes first, the failure on the
            # next call, so a new file's partial data can be resumed.
            n = channel.receive(view)
            if n == 0:
                break
            handle.bytes += n
            if decoder is not None:
                sink.write(decoder.convert(bytes(view[:n])))
            else:
                sink.write(view[:n])  # no copy: the file layer writes it out
            if n == len(view) < CHUNK:
                view = memoryview(bytearray(CHUNK))  # a big upload after all
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                sink.write(tail)
        return handle.bytes

    job.receives = True  # type: ignore[attr-defined]
    job.commit = commit  # type: ignore[attr-defined]
    return job


class TransferEngine:
    """
    Runs data transfers in a thread pool of their own.

    @param max_threads: transfers running at once; more wait their turn.
    """

    def __init__(self, reactor: Any, idle_timeout: float = 60.0,
                 max_threads: int = 200, pool: ThreadPool | None = None) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        if pool is None:
            pool = ThreadPool(minthreads=0, maxthreads=max_threads, name="rumpus-data")
            reactor.callWhenRunning(pool.start)
            reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        self.pool = pool

    def handshake(self, sock: socket.socket, tls: TLSSettings,
                  handle: TransferHandle) -> defer.Deferred["_Channel"]:
        """
        Run L{handshake} in the pool; fires with the ready channel.
        """
        return deferToThreadPool(self.reactor, self.pool, handshake, sock, tls,
                                 self.idle_timeout, handle)

    def run(self, connect: Callable[[], socket.socket], tls: TLSSettings | None,
            job: Job, handle: TransferHandle | None = None) -> TransferHandle:
        """
        Start a transfer; C{handle.result} fires with a L{TransferResult}.

        @param connect: called in the worker thread, returns the connected
            data socket (already accepted, or connecting out for PORT).
        """
        handle = handle or TransferHandle()
        handle.result = deferToThreadPool(
            self.reactor, self.pool, _run, connect, tls, job, handle, self.idle_timeout,
        )
        return handle


def handshake(sock: socket.socket, tls: TLSSettings, timeout: float,
              handle: TransferHandle) -> "_Channel":
    """
    The TLS handshake of a data connection, run as soon as it is accepted.

    Some clients start TLS on a passive data connection at once, before
    they send the transfer command; waiting for the command would leave
    both sides waiting for each other.  Runs in a worker thread.

    @raises SSL.Error, OSError, TimeoutError: the handshake failed.
    @raises SessionNotResumed: reuse is required and the client did not
        resume a session of the control connection; its C{channel} is the
        caller's to close.
    """
    handle.attach(sock)
    channel = _Channel(sock, timeout, handle)
    try:
        channel.start_tls(tls)
    except SessionNotResumed as e:
        e.channel = channel
        raise
    except BaseException:
        channel.close()
        raise
    return channel


def _run(connect: Callable[[], "socket.socket | _Channel"], tls: TLSSettings | None,
         job: Job, handle: TransferHandle, timeout: float) -> TransferResult:
    try:
        connected = connect()
    except _Aborted:
        return TransferResult(Outcome.ABORTED)
    except OSError as e:
        return TransferResult(Outcome.CONNECTION_LOST, detail=f"cannot connect: {e}")
    if isinstance(connected, _Channel):
        channel = connected  # accepted and handshaken already (see handshake)
        channel.handle = handle
        handle.attach(channel.sock)
    else:
        handle.attach(connected)
        channel = _Channel(connected, timeout, handle)
    version = None
    try:
        if tls is not None:
            if channel.tls is None:
                try:
                    channel.start_tls(tls)
                except SessionNotResumed as e:
                    return TransferResult(Outcome.NOT_RESUMED, detail=_describe(e))
                except (SSL.Error, OSError, TimeoutError, _Aborted) as e:
                    return TransferResult(Outcome.TLS_FAILED, detail=_describe(e))
            assert channel.tls is not None
            version = channel.tls.get_protocol_version_name()
            if tls.require_reuse and not session_reused(channel.tls):
                return TransferResult(Outcome.NOT_RESUMED, tls_version=version,
                                      detail="TLS session not resumed")
            if not getattr(job, "receives", False):
                channel.release_held()
        try:
            total = job(channel, handle)
        except _Truncated:
            if handle.aborted:  # ABOR shut the socket down under us
                return TransferResult(Outcome.ABORTED, handle.bytes, tls_version=version)
            if tls is not None and not tls.strict_eof:
                return TransferResult(Outcome.COMPLETE, handle.bytes, tls_version=version,
                                      detail="closed without TLS close_notify")
            return TransferResult(Outcome.TRUNCATED, handle.bytes, tls_version=version,
                                  detail="the data connection closed without TLS close_notify")
        except _Aborted:
            return TransferResult(Outcome.ABORTED, handle.bytes, tls_version=version)
        except (OSError, SSL.Error, TimeoutError) as e:
            if handle.aborted:
                return TransferResult(Outcome.ABORTED, handle.bytes, tls_version=version)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                return TransferResult(Outcome.LOCAL_ERROR, handle.bytes, tls_version=version,
                                      detail="disk full", error=e)
            local = _is_local_error(e)
            return TransferResult(
                Outcome.LOCAL_ERROR if local else Outcome.CONNECTION_LOST,
                handle.bytes, tls_version=version, detail=_describe(e),
                error=e if local else None,
            )
        except Exception as e:  # noqa: BLE001 (a sink error from the file layer: DiskFull...)
            return TransferResult(Outcome.LOCAL_ERROR, handle.bytes, tls_version=version,
                                  detail=str(e), error=e)
        if handle.aborted:
            return TransferResult(Outcome.ABORTED, total, tls_version=version)
        channel.finish_sending()
        channel.discard_unread()
        commit = getattr(job, "commit", None)
        if commit is None:
            return TransferResult(Outcome.COMPLETE, total, tls_version=version)
        if handle.aborted:  # ABOR, or the account locked, since the end
            return TransferResult(Outcome.ABORTED, total, tls_version=version)
        try:
            commit()
        except Exception as e:  # noqa: BLE001 (the reply's business: see Plan.finish)
            return TransferResult(Outcome.COMPLETE, total, tls_version=version,
                                  commit_error=e)
        return TransferResult(Outcome.COMPLETE, total, tls_version=version, committed=True)
    finally:
        channel.close()


def _is_local_error(e: BaseException) -> bool:
    # Errors raised by the file (not the socket) carry no socket errno.
    return isinstance(e, OSError) and e.errno in (errno.EIO, errno.EROFS, errno.EFBIG)


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    return text[:200]
