"""
Certificates and the one reloadable TLS context source behind every TLS port.

The server's certificate and key (checked, or generated once) come from
L{rumpus_secure.certificates}; L{ensure_certificate}, L{CertificateInfo} and
L{TLSConfigError} are re-exported here.  L{TLSContextSource} turns those files
into one C{OpenSSL.SSL.Context} per ALPN profile (C{[b"ftp"]} for FTP,
C{[b"http/1.1"]} for HTTPS) and hands out connection creators usable by
L{TLSMemoryBIOFactory} and C{startTLS}; it can re-read the files without
touching connections that are already open.

Why our own connection creator and not L{twisted.internet.ssl.CertificateOptions}:
pyOpenSSL forbids changing a context once a connection was made from it, so a
reload must build new contexts; a thin creator that looks up the current
context of its profile at each connection makes every listener and every
C{AUTH TLS} pick up a reload with no re-plumbing.  Owning the context also
lets us refuse a non-matching ALPN offer with the proper alert (Twisted's
selector returns an empty protocol, which OpenSSL turns into an
C{internal_error} alert) and keep session resumption on, which the FTPS data
channel needs.

Why FTP control connections get a session id context each
(L{TLSContextSource.per_session_factory}): an FTPS data connection proves
that it belongs to its control connection by resuming that connection's TLS
session.  With one plain context per profile every control connection shares
one session cache and one ticket key, so any client could resume I{its own}
session on someone else's data port (issue #11).  OpenSSL stamps every
session with the session id context (sid_ctx) of the connection that made
it, and resumes a session only on a connection with the same sid_ctx: for a
TLS 1.2 session id found in the cache, a TLS 1.2 ticket and a TLS 1.3 PSK
ticket alike (C{ssl_get_prev_session} in C{ssl/ssl_sess.c} compares them
after the cache lookup or the ticket decryption, for both versions; a
mismatch is a cache miss, and a full handshake follows.  For TLS 1.3,
C{tls_parse_ctos_psk} only finds and decrypts the ticket; it stamps the
connection's sid_ctx on a session only for the application PSK callbacks,
which are not set here).  So each control
connection gets a random 32-byte sid_ctx, and its data connections get the
same one (L{SessionBinding}): a session or ticket issued to any other
control connection cannot be resumed on them, even though they share the
context's cache and ticket keys.  How, with the bindings cryptography
exports, and what it takes to share one context between the reactor
thread and the transfer threads: L{rumpus_secure.session_binding}.

Round 3 gave each control connection a context of its own instead (own
cache, own ticket keys, own sid_ctx).  That cost 0.18-0.33 ms and 22 KiB per
control connection (C{bench/session_context.py}: 178-332 us and 38.9 KiB
for context and connection, against 12.5-15.7 us and 17.2 KiB for a bound
connection on the shared context, 10.9-19.3 us and 16.7 KiB for a plain
one; about 6% of the server's samples in a repeat-login profile:
C{Context.__init__}, the certificate and key conversions,
C{set_cipher_list}).  C{bench/logins.py}, four runs each way alternated on
the shared 2-core VM: 1.58-1.77 ms of server CPU per repeat login, down
from 2.10-2.28 ms (2.77-3.02x pyftpdlib's in the same runs, down from
3.68-4.06x).  C{bench/load.py --idle 10000 --sessions 0}: 31.0 KiB per idle
logged-in session, down from 53.1 KiB (2,000: 30.8-31.0, from 53.0-53.3).

Why a session context is replaced after L{SESSIONS_PER_CONTEXT} control
connections: a shared session cache evicts its oldest session once it holds
20,480 (OpenSSL's default; cryptography exports no setter for it nor
C{SSL_CTX_add_session}), and an evicted session is gone for a TLS 1.2
client that resumes by session id only.  A flood of (thief) logins could
then break a long-lived victim's data connections.  A context serves at
most 4,096 control connections, each of which caches one session (TLS 1.2
data connections that resume are not cached again, TLS 1.3 server sessions
are stateless tickets, and a refused full handshake never completes), so
its cache never fills.  It is also replaced once it is
L{SESSION_CONTEXT_LIFETIME} (an hour) old: the ticket keys of a context of
its own died with its control connection, shared ones should not live for
days on a quiet server (they protect the resumption secrets of every TLS
1.2 ticket they sealed).  A data connection always uses the context of its
control connection (L{SessionBinding}), through a replacement and through
a certificate reload alike.

Client certificates (C{--client-ca}): every context, per profile and for
sessions, asks for one and accepts any chain (L{request_client_certificates});
the login judges it.  A data connection is bound to its control
connection's context, so it is asked too, and a resumed session carries the
certificate of the control connection's handshake.  Measured with
C{bench/client_certs.py}: the request adds 0.03 ms to a control connection's
context (0.14 -> 0.17 ms); a full in-memory handshake takes 1.05 ms without
it, 1.36 ms when the client sends no certificate, 1.94 ms with one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl_lib
from OpenSSL.crypto import X509
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from rumpus_secure.certificates import (
    CertificateInfo,
    CertificateMaterial,
    TLSConfigError,
    ensure_certificate,
    load_certificate,
    load_material,
)
from rumpus_secure.handshake import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    HandshakeDeadlineFactory,
    HandshakesInFlight,
)
from rumpus_secure.session_binding import (
    SESSION_ID_CONTEXT_BYTES,
    UNBOUND,
    SessionBinding,
    bound_connection,
    callback_problems_per_thread,
    session_binding,
)

__all__ = [
    "FTP_ALPN",
    "HTTPS_ALPN",
    "ALPNRefused",
    "CertificateInfo",
    "SESSIONS_PER_CONTEXT",
    "SESSION_CONTEXT_LIFETIME",
    "SessionBinding",
    "TLSConfigError",
    "TLSContextSource",
    "bound_connection",
    "client_ca_certificates",
    "ensure_certificate",
    "keep_session_resumable",
    "load_certificate",
    "pinned_context_factory",
    "request_client_certificates",
    "session_binding",
    "session_reused",
]

_log = Logger()

FTP_ALPN: tuple[bytes, ...] = (b"ftp",)
HTTPS_ALPN: tuple[bytes, ...] = (b"http/1.1",)

DEFAULT_SESSION_TIMEOUT = 24 * 3600
"""Seconds a TLS session (cache entry or ticket) may be resumed: a long FTP
session's data connections resume the control connection's session."""

# TLS 1.2: forward-secret AEAD only (Mozilla "intermediate" without DHE).
# TLS 1.3 suites are OpenSSL's defaults, all of which are fine.
_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

_SIGNATURE = tuple[int, int, int, int, int] | None

#: Control connections a session context serves before the next one is
#: built: well below the 20,480 sessions at which OpenSSL's cache starts
#: evicting (see the module docstring).
SESSIONS_PER_CONTEXT = 4096

#: Seconds a session context serves new control connections (and so the
#: lifetime of its ticket keys for new sessions).
SESSION_CONTEXT_LIFETIME = 3600.0

class ALPNRefused(SSL.Error):
    """
    A client offered ALPN protocols, none of them the one this port serves.

    A subclass of C{SSL.Error} so that Twisted's TLS layer treats it as a
    failed handshake; OpenSSL has already queued a C{no_application_protocol}
    alert for the client when this is raised.  Its argument is shaped like
    OpenSSL's error queue (a list of C{(library, function, reason)}), which
    Twisted's TLS layer unpacks when the handshake fails.
    """

    def __init__(self, offered: Sequence[bytes], accepted: Sequence[bytes]) -> None:
        self.offered = tuple(offered)
        self.accepted = tuple(accepted)
        reason = (
            f"no application protocol: client offered {list(self.offered)!r},"
            f" this port serves {list(self.accepted)!r}"
        )
        super().__init__([("rumpus-secure", "alpn_select", reason)])


def session_reused(connection: SSL.Connection) -> bool:
    """
    Whether this connection's handshake resumed an earlier TLS session.

    pyOpenSSL 26 has no public API for this; it reads C{SSL_session_reused}.
    """
    return bool(_openssl_lib.SSL_session_reused(connection._ssl))


def keep_session_resumable(connection: SSL.Connection) -> None:
    """
    Keep this connection's session resumable even if it ends without close_notify.

    OpenSSL evicts the session of a connection freed before it sent
    close_notify (and marks it not resumable on the client side).  For an
    aborted FTPS data connection that is the control connection's session,
    so every later data connection would fail to resume it.  Call this
    before dropping a data connection that is closed abnormally on purpose.
    """
    connection.set_shutdown(connection.get_shutdown() | SSL.SENT_SHUTDOWN)


def pinned_context_factory(connection: SSL.Connection) -> _PinnedCreator:
    """
    A connection creator on the very context that served C{connection}, and
    with its session id context if it was bound (L{session_binding}).

    The FTPS data channel must resume the control connection's session, which
    only the control connection's C{SSL.Context} can do (its session cache and
    ticket keys) with the control connection's sid_ctx; after a reload the
    profile's current context is a new one.
    """
    return _PinnedCreator(connection.get_context(), session_binding(connection))


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class _ProfileCreator:
    """
    Server-side connections on the current context of one ALPN profile.
    """

    def __init__(self, source: TLSContextSource, profile: tuple[bytes, ...]) -> None:
        self._source = source
        self.alpn = profile

    def getContext(self) -> SSL.Context:
        return self._source._context_for(self.alpn)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)


@dataclass
class _Generation:
    """
    The current session context of a profile, when it was built and how
    many control connections it has served.
    """

    context: SSL.Context
    born: float
    served: int = 0


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class _SessionCreator:
    """
    Server-side connections of one ALPN profile, each a TLS session identity.

    Each connection is made on the profile's current session context with a
    random session id context of its own (L{bound_connection}), so only the
    connection itself and the connections bound to it (its FTPS data
    connections, L{session_binding}) can resume its sessions.
    """

    def __init__(self, source: TLSContextSource, profile: tuple[bytes, ...]) -> None:
        self._source = source
        self.alpn = profile

    def getContext(self) -> SSL.Context:
        """
        The profile's current session context (shared; connections made on
        it directly are unbound, see L{bound_connection}).
        """
        return self._source._session_context(self.alpn)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol | None
    ) -> SSL.Connection:
        return bound_connection(self._source._session_context(self.alpn, issue=True),
                                secrets.token_bytes(SESSION_ID_CONTEXT_BYTES))


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class _PinnedCreator:
    """
    Server-side connections on one fixed context (and binding, if any).
    """

    def __init__(self, context: SSL.Context,
                 binding: SessionBinding | None = None) -> None:
        self._context = context
        self._binding = binding

    def getContext(self) -> SSL.Context:
        return self._context

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol | None
    ) -> SSL.Connection:
        if self._binding is not None:
            return self._binding.connection()
        return SSL.Connection(self._context, None)


class TLSContextSource:
    """
    One reloadable source of server TLS contexts, one context per ALPN profile.

    Every listener and every C{AUTH TLS} of a profile shares one
    C{SSL.Context}, so the TLS session cache and session tickets are shared:
    an FTPS data connection resumes its control connection's session.  The
    contexts require TLS 1.2 or later, offer forward-secret AEAD ciphers only,
    serve the full chain from the certificate file and refuse (alert
    C{no_application_protocol}) a client whose ALPN offer does not include
    the profile's protocol; a client that offers no ALPN is served.

    A reload builds new contexts from the re-read files; connections already
    open keep their old context.  L{files_changed} lets a periodic checker
    elsewhere decide when to call L{reload}.
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        public_host: str | None = None,
        allow_expired: bool = False,
        clock: IReactorTime | None = None,
        session_timeout: int = DEFAULT_SESSION_TIMEOUT,
        client_ca: Path | None = None,
    ) -> None:
        """
        Load the files now.

        :param public_host: the name clients connect to, for L{info}'s
            coverage check and warnings.
        :param clock: the time source for expiry checks; the system clock if
            not given.
        :param client_ca: ask clients for a certificate, naming the CAs in
            this PEM file (see L{request_client_certificates}).
        :raises TLSConfigError: the files cannot serve as the server's identity.
        """
        self._cert_path = cert_path
        self._key_path = key_path
        self._public_host = public_host
        self._allow_expired = allow_expired
        self._clock = clock
        self._session_timeout = session_timeout
        self._creators: dict[tuple[bytes, ...], _ProfileCreator] = {}
        self._in_flight: HandshakesInFlight | None = None
        self._session_creators: dict[tuple[bytes, ...], _SessionCreator] = {}
        #: Per profile: the current session context and the control
        #: connections it has served.
        self._session_contexts: dict[tuple[bytes, ...], _Generation] = {}
        #: Why the last L{reload} kept the old certificate, or L{None}.
        self.last_error: str | None = None
        self._client_cas: list[x509.Certificate] | None = None
        self._client_ca_path = client_ca
        if client_ca is not None:
            self._client_cas = client_ca_certificates(client_ca)
        self._signature = self._file_signature()
        self._material = self._read()
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {
            (): self._build_context(self._material, ())
        }

    @property
    def info(self) -> CertificateInfo:
        """
        The certificate currently served to new connections.
        """
        return self._material.info

    def context_factory(self, alpn: Sequence[bytes] | None) -> _ProfileCreator:
        """
        The connection creator of one ALPN profile (the same object each time).

        Usable as C{TLSMemoryBIOFactory(creator, False, factory)} and as
        C{transport.startTLS(creator)}.  Its C{getContext()} is the profile's
        one C{SSL.Context} until the next successful reload.

        :param alpn: acceptable protocols in order of preference, or L{None}
            (or empty) for no ALPN check.
        """
        profile = tuple(alpn or ())
        creator = self._creators.get(profile)
        if creator is None:
            creator = self._creators[profile] = _ProfileCreator(self, profile)
        return creator

    def per_session_factory(self, alpn: Sequence[bytes] | None) -> _SessionCreator:
        """
        A connection creator that makes every connection a session identity.

        For FTP control connections (C{AUTH TLS} and the implicit port): each
        connection gets a random session id context on a shared session
        context, and a data connection bound to it (L{session_binding})
        resumes that control connection's session and no other (see the
        module docstring).  A reload applies to the next connection.

        :param alpn: as for L{context_factory}.
        """
        profile = tuple(alpn or ())
        creator = self._session_creators.get(profile)
        if creator is None:
            creator = self._session_creators[profile] = _SessionCreator(self, profile)
        return creator

    def wrap_factory(
        self,
        factory: IProtocolFactory,
        alpn: Sequence[bytes] | None,
        clock: IReactorTime | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        *,
        per_session: bool = False,
    ) -> TLSMemoryBIOFactory:
        """
        Wrap a server factory in TLS from the start (implicit FTPS, HTTPS).

        :param clock: schedules the flush of small writes that Twisted's TLS
            layer aggregates, and the handshake deadline; the source's clock
            if not given, and the global reactor if neither is.
        :param handshake_timeout: seconds a client has to finish its TLS
            handshake before the connection is aborted (0: no deadline); see
            L{rumpus_secure.handshake}.
        :param per_session: make each connection a TLS session identity of
            its own (L{per_session_factory}); the implicit FTPS port needs it.
        """
        clock = clock or self._clock
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        creator = self.per_session_factory(alpn) if per_session else self.context_factory(alpn)
        return HandshakeDeadlineFactory(
            creator, False, factory, clock=clock,
            handshake_timeout=handshake_timeout,
            in_flight=self.handshakes_in_flight(clock),
        )

    def handshakes_in_flight(self, clock: IReactorTime) -> HandshakesInFlight:
        """
        The one bound on handshakes in progress shared by every TLS port and
        every C{AUTH TLS} of this source (made with C{clock} on first use).
        """
        if self._in_flight is None:
            self._in_flight = HandshakesInFlight(clock)
        return self._in_flight

    def files_changed(self) -> bool:
        """
        Whether the certificate or key file changed since they were last read.

        Compares device, inode, size, mtime and ctime, so a renewal that
        replaces a file or a symlink target is seen.  A failed reload counts
        as a read: the files are tried again only once they change again.
        """
        return self._file_signature() != self._signature

    def reload(self) -> bool:
        """
        Re-read the files; new connections get the new certificate.

        On any problem the current contexts stay in service, the reason is
        logged, and C{False} is returned.
        """
        self._signature = self._file_signature()
        self.last_error = None
        try:
            material = self._read()
            if self._client_ca_path is not None:
                # A new client CA file applies to the certificate request too.
                self._client_cas = client_ca_certificates(self._client_ca_path)
            contexts = {
                profile: self._build_context(material, profile)
                for profile in self._contexts
            }
            session_contexts = {
                profile: _Generation(self._build_context(material, profile, UNBOUND),
                                     self._seconds())
                for profile in self._session_contexts
            }
        except TLSConfigError as e:
            self.last_error = str(e)
            _log.error(
                "Keeping the current TLS certificate, the new files are unusable:"
                " {reason}",
                reason=str(e),
            )
            return False
        self._material = material
        self._contexts = contexts
        self._session_contexts = session_contexts
        _log.info(
            "Reloaded TLS certificate {subject}, valid until {not_after},"
            " SHA-256 fingerprint {fingerprint}",
            subject=material.info.subject,
            not_after=material.info.not_after.isoformat(),
            fingerprint=material.info.sha256_fingerprint,
        )
        return True

    def _context_for(self, profile: tuple[bytes, ...]) -> SSL.Context:
        context = self._contexts.get(profile)
        if context is None:
            context = self._contexts[profile] = self._build_context(
                self._material, profile
            )
        return context

    def _session_context(self, profile: tuple[bytes, ...], issue: bool = False) -> SSL.Context:
        """
        The current session context of C{profile}.

        :param issue: count one control connection against it; the one
            that takes it to L{SESSIONS_PER_CONTEXT} is the last it serves,
            and after L{SESSION_CONTEXT_LIFETIME} seconds it serves no new
            one (see the module docstring).  Connections already made on it,
            and their data connections, keep it.
        """
        now = self._seconds()
        current = self._session_contexts.get(profile)
        if (current is None or current.served >= SESSIONS_PER_CONTEXT
                or now - current.born >= SESSION_CONTEXT_LIFETIME):
            current = self._session_contexts[profile] = _Generation(
                self._build_context(self._material, profile, UNBOUND), now)
        if issue:
            current.served += 1
        return current.context

    def _seconds(self) -> float:
        return time.time() if self._clock is None else self._clock.seconds()

    def _now(self) -> datetime:
        if self._clock is None:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    def _read(self) -> CertificateMaterial:
        return load_material(
            self._cert_path,
            self._key_path,
            self._public_host,
            self._allow_expired,
            self._now(),
            False,
        )

    def _file_signature(self) -> tuple[_SIGNATURE, _SIGNATURE]:
        return (_stat_signature(self._cert_path), _stat_signature(self._key_path))

    def _build_context(
        self,
        material: CertificateMaterial,
        profile: tuple[bytes, ...],
        session_id_context: bytes | None = None,
    ) -> SSL.Context:
        """
        A server context for one profile, from already validated material.

        The certificates and key are loaded from the parsed objects (the
        equivalent of C{use_certificate_chain_file} and C{use_privatekey_file})
        so what is served is exactly what was checked, even if a file changes
        meanwhile.
        """
        try:
            context = SSL.Context(SSL.TLS_SERVER_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                                | SSL.OP_CIPHER_SERVER_PREFERENCE)
            # AES-128-GCM first: as safe for this use and cheaper per byte for
            # both ends of a bulk transfer than the AES-256 clients list first.
            context.set_tls13_ciphersuites(_TLS13_SUITES)
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            context.set_cipher_list(_TLS12_CIPHERS)
            context.use_certificate(material.chain[0])
            for intermediate in material.chain[1:]:
                context.add_extra_chain_cert(intermediate)
            context.use_privatekey(material.key)  # type: ignore[arg-type]
            context.check_privatekey()
        except SSL.Error as e:
            raise TLSConfigError(
                f"OpenSSL refuses {self._cert_path} / {self._key_path}: {e}"
            ) from e
        # Resumption: a server-side session cache under a per-profile session
        # id context, plus stateless session tickets (OpenSSL's default; not
        # OP_NO_TICKET).  Stateless TLS 1.3 tickets may be resumed many times,
        # which an FTP client does for each data connection.
        if session_id_context is None:
            session_id_context = (
                b"rumpus/" + hashlib.sha256(b"\0".join(profile)).digest()[:16]
            )
        context.set_session_id(session_id_context)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_timeout(self._session_timeout)
        if profile:
            context.set_alpn_select_callback(_alpn_selector(profile))
        if self._client_cas is not None:
            request_client_certificates(context, self._client_cas)
        callback_problems_per_thread(context)
        return context


def client_ca_certificates(path: Path) -> list[x509.Certificate]:
    """
    The CA certificates in PEM file C{path}, read once (not per context).

    :raises TLSConfigError: the file holds no certificate.
    """
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise TLSConfigError(f"--client-ca {path}: no usable CA certificate: {e}") from None


def _accept_any_chain(connection: SSL.Connection, certificate: X509, error: int,
                      depth: int, ok: int) -> bool:
    return True


def request_client_certificates(context: SSL.Context,
                                cas: Sequence[x509.Certificate]) -> None:
    """
    Ask for a client certificate on C{context}, and take whatever comes.

    Optional (no C{VERIFY_FAIL_IF_NO_PEER_CERT}): password users connect
    without one.  The verify callback accepts every chain, so a handshake
    never fails for a certificate: whether it may log in, and as whom, is
    decided at login with the account known, audited and counted by the
    guard (L{rumpus_secure.accounts.client_certs}).  The client still
    proves it holds the certificate's key (CertificateVerify).  The subjects
    of C{cas} tell clients which certificates to offer.
    """
    for ca in cas:
        context.add_client_ca(ca)
    context.set_verify(SSL.VERIFY_PEER, _accept_any_chain)


def _alpn_selector(profile: tuple[bytes, ...]):  # type: ignore[no-untyped-def]
    """
    An ALPN select callback that picks from C{profile} or fails the handshake.

    Returning C{SSL.NO_OVERLAPPING_PROTOCOLS} would NOT fail it: pyOpenSSL
    maps it to C{SSL_TLSEXT_ERR_NOACK}, and the handshake goes on without
    ALPN.  Raising makes pyOpenSSL return C{SSL_TLSEXT_ERR_ALERT_FATAL}:
    OpenSSL sends C{no_application_protocol} and C{do_handshake} re-raises
    our exception.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in profile:
            if protocol in offered:
                return protocol
        _log.info(
            "Refused a TLS client offering ALPN {offered} on a port for {accepted}",
            offered=[p.decode("ascii", "replace") for p in offered],
            accepted=[p.decode("ascii", "replace") for p in profile],
        )
        raise ALPNRefused(offered, profile)

    return select


def _stat_signature(path: Path) -> _SIGNATURE:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
