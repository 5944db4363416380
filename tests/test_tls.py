"""
Tests for L{rumpus_secure.tls}: certificates, contexts, ALPN, resumption, reload.

Handshakes run in memory: two C{SSL.Connection} objects on memory BIOs, or
L{TLSMemoryBIOFactory} over L{twisted.test.iosim}; no sockets.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

from rumpus_secure.tls import (
    FTP_ALPN,
    HTTPS_ALPN,
    ALPNRefused,
    TLSConfigError,
    TLSContextSource,
    ensure_certificate,
    keep_session_resumable,
    load_certificate,
    pinned_context_factory,
    session_binding,
    session_reused,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- certificate helpers -----------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    key: PrivateKeyTypes,
    subject: str,
    *,
    issuer_key: PrivateKeyTypes | None = None,
    issuer: str | None = None,
    hosts: tuple[str, ...] = (),
    ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())  # type: ignore[union-attr]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())  # type: ignore[arg-type]


def _pem(*items: x509.Certificate | PrivateKeyTypes) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    return out


@dataclass
class _CA:
    """
    A tiny CA: a root and an intermediate that issues server certificates.
    """

    root_key: PrivateKeyTypes = field(default_factory=_key)
    intermediate_key: PrivateKeyTypes = field(default_factory=_key)

    def __post_init__(self) -> None:
        self.root = _cert(self.root_key, "Test Root", ca=True)
        self.intermediate = _cert(
            self.intermediate_key,
            "Test Intermediate",
            issuer_key=self.root_key,
            issuer="Test Root",
            ca=True,
        )

    def issue(
        self, key: PrivateKeyTypes, *hosts: str, **kw: object
    ) -> x509.Certificate:
        return _cert(
            key,
            hosts[0],
            issuer_key=self.intermediate_key,
            issuer="Test Intermediate",
            hosts=hosts,
            **kw,  # type: ignore[arg-type]
        )


def _write_pair(
    directory: Path, cert_pem: bytes, key_pem: bytes, name: str = "server"
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def ca() -> _CA:
    return _CA()


@pytest.fixture
def pair(tmp_path: Path, ca: _CA) -> tuple[Path, Path]:
    """
    A CA-issued certificate for localhost (with its intermediate) and its key.
    """
    key = _key()
    return _write_pair(
        tmp_path,
        _pem(ca.issue(key, "localhost", "127.0.0.1"), ca.intermediate),
        _pem(key),
    )


# --- in-memory handshakes --------------------------------------------------------


def _client_context(
    max_version: int | None = None, min_version: int | None = None
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if min_version is not None:
        # Let the client even try old protocols; only the server refuses them.
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.set_min_proto_version(min_version)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    return context


def _pump(one: SSL.Connection, other: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for source, target in ((one, other), (other, one)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                target.bio_write(data)
                moved = True


@dataclass
class _Handshake:
    server: SSL.Connection
    client: SSL.Connection
    server_error: Exception | None = None
    client_error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None

    def exchange(self) -> None:
        """
        Send application data both ways (delivers TLS 1.3 session tickets).
        """
        self.server.send(b"hello")
        _pump(self.server, self.client)
        assert self.client.recv(100) == b"hello"
        self.client.send(b"hi")
        _pump(self.server, self.client)
        assert self.server.recv(100) == b"hi"

    def close(self) -> None:
        """
        Mark both ends shut down, so freeing them keeps the session resumable.
        """
        keep_session_resumable(self.client)
        keep_session_resumable(self.server)


def _handshake(
    creator: object,
    client_context: SSL.Context | None = None,
    alpn: list[bytes] | None = None,
    session: SSL.Session | None = None,
) -> _Handshake:
    server = creator.serverConnectionForTLS(None)  # type: ignore[attr-defined]
    server.set_accept_state()
    client = SSL.Connection(client_context or _client_context(), None)
    client.set_connect_state()
    if alpn:
        client.set_alpn_protos(alpn)
    if session is not None:
        client.set_session(session)
    result = _Handshake(server, client)
    for _ in range(10):
        for side in ("client", "server"):
            if getattr(result, f"{side}_error") is not None:
                continue
            try:
                getattr(result, side).do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                setattr(result, f"{side}_error", e)
        _pump(client, server)
    return result


def _served_leaf(handshake: _Handshake) -> x509.Certificate:
    chain = handshake.client.get_peer_cert_chain(as_cryptography=True)
    assert chain
    return chain[0]


# --- certificates ----------------------------------------------------------------


def test_generate_once(tmp_path: Path) -> None:
    """
    The self-signed pair is created on the first run only, key mode 0600.
    """
    first = ensure_certificate(tmp_path, "localhost", None, None)
    cert_bytes = first.cert_path.read_bytes()
    key_bytes = first.key_path.read_bytes()
    second = ensure_certificate(tmp_path, "localhost", None, None)

    assert first.generated is True
    assert second.generated is False
    assert first.cert_path == second.cert_path == tmp_path / "tls" / "cert.pem"
    assert first.key_path == tmp_path / "tls" / "key.pem"
    assert second.cert_path.read_bytes() == cert_bytes
    assert second.key_path.read_bytes() == key_bytes
    assert stat.S_IMODE(os.stat(first.key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "cert.pem",
        "key.pem",
    ]


def test_generated_localhost(tmp_path: Path) -> None:
    """
    A generated localhost certificate covers the loopback names and addresses.
    """
    info = ensure_certificate(tmp_path, "localhost", None, None)
    cert = x509.load_pem_x509_certificate(info.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert (
        cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    )
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert list(
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=824) < lifetime < timedelta(days=827)
    assert info.self_signed and info.covers_host
    assert info.chain_length == 1
    assert info.subject == "CN=localhost"
    assert info.not_after == cert.not_valid_after_utc
    assert any("self-signed" in w and "--cert/--key" in w for w in info.warnings)
    assert load_certificate(info.cert_path, info.key_path, "127.0.0.1").covers_host
    assert load_certificate(info.cert_path, info.key_path, "::1").covers_host


@pytest.mark.parametrize("host", ["files.example.org", "192.0.2.10"])
def test_generated_custom_host(tmp_path: Path, host: str) -> None:
    """
    A generated certificate covers the public host, and only it.
    """
    info = ensure_certificate(tmp_path, host, None, None)
    assert info.covers_host
    other = load_certificate(info.cert_path, info.key_path, "localhost")
    assert not other.covers_host
    assert any("does not cover" in w for w in other.warnings)


def test_half_present_generated_pair(tmp_path: Path) -> None:
    """
    A lone generated key is not silently replaced.
    """
    info = ensure_certificate(tmp_path, "localhost", None, None)
    info.cert_path.unlink()
    with pytest.raises(TLSConfigError, match="cert.pem is missing"):
        ensure_certificate(tmp_path, "localhost", None, None)


def test_load_given_pair(tmp_path: Path, ca: _CA) -> None:
    """
    A CA-issued pair is loaded as given, not generated, not self-signed.
    """
    key = _key()
    cert_path, key_path = _write_pair(
        tmp_path, _pem(ca.issue(key, "files.example.org"), ca.intermediate), _pem(key)
    )
    info = ensure_certificate(
        tmp_path / "data", "files.example.org", cert_path, key_path
    )

    assert not info.generated and not info.self_signed and info.covers_host
    assert info.cert_path == cert_path and info.key_path == key_path
    assert info.chain_length == 2
    assert info.warnings == ()
    assert not (tmp_path / "data").exists()

    elsewhere = ensure_certificate(tmp_path, "ftp.example.net", cert_path, key_path)
    assert not elsewhere.covers_host
    assert len(elsewhere.warnings) == 1


def test_expiring_soon_warns(tmp_path: Path, ca: _CA) -> None:
    key = _key()
    cert = ca.issue(key, "localhost", not_after=datetime.now(UTC) + timedelta(days=10))
    cert_path, key_path = _write_pair(tmp_path, _pem(cert), _pem(key))
    info = load_certificate(cert_path, key_path, "localhost")
    assert any("renew it soon" in w for w in info.warnings)


def test_key_readable_by_others_warns(pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    key_path.chmod(0o644)
    info = load_certificate(cert_path, key_path, "localhost")
    assert any("chmod 600" in w for w in info.warnings)


def test_only_one_path_given(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    with pytest.raises(TLSConfigError, match="together"):
        ensure_certificate(tmp_path, "localhost", pair[0], None)


def test_mismatched_key(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    other_key = tmp_path / "other.key"
    other_key.write_bytes(_pem(_key()))
    with pytest.raises(TLSConfigError, match="does not belong"):
        ensure_certificate(tmp_path, "localhost", pair[0], other_key)


def test_chain_in_wrong_order(tmp_path: Path, ca: _CA) -> None:
    """
    The key must match the first certificate: intermediate first is an error.
    """
    key = _key()
    cert_path, key_path = _write_pair(
        tmp_path, _pem(ca.intermediate, ca.issue(key, "localhost")), _pem(key)
    )
    with pytest.raises(TLSConfigError, match="must come first"):
        load_certificate(cert_path, key_path)


@pytest.mark.parametrize(
    "cert_content, key_content, message",
    [
        (b"\x30\x82garbage", None, "not a PEM file"),
        (None, b"garbage\n", "not a PEM file"),
        ("key", None, "holds no certificate"),
        (None, "cert", "holds no private key"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
            "damaged",
        ),
    ],
)
def test_bad_files(
    tmp_path: Path,
    pair: tuple[Path, Path],
    cert_content: bytes | str | None,
    key_content: bytes | str | None,
    message: str,
) -> None:
    cert_path, key_path = pair
    by_name = {"key": key_path.read_bytes(), "cert": cert_path.read_bytes()}
    for path, content in ((cert_path, cert_content), (key_path, key_content)):
        if content is not None:
            path.write_bytes(by_name[content] if isinstance(content, str) else content)
    with pytest.raises(TLSConfigError, match=message) as raised:
        ensure_certificate(tmp_path, "localhost", cert_path, key_path)
    assert "\n" not in str(raised.value)


def test_unreadable_file(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    with pytest.raises(TLSConfigError, match="cannot read the key file"):
        ensure_certificate(tmp_path, "localhost", pair[0], tmp_path / "missing.key")


def test_encrypted_key(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    key = serialization.load_pem_private_key(pair[1].read_bytes(), None)
    pair[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match="passphrase"):
        load_certificate(*pair)


def test_combined_file(tmp_path: Path, ca: _CA) -> None:
    """
    One file holding the chain and the key serves as both.
    """
    key = _key()
    combined = tmp_path / "combined.pem"
    combined.write_bytes(_pem(ca.issue(key, "localhost"), ca.intermediate, key))
    assert load_certificate(combined, combined).chain_length == 2


def test_expired(tmp_path: Path, ca: _CA) -> None:
    """
    An expired certificate is refused unless allow_expired, then it warns.
    """
    key = _key()
    cert = ca.issue(
        key,
        "localhost",
        not_before=datetime.now(UTC) - timedelta(days=100),
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    cert_path, key_path = _write_pair(tmp_path, _pem(cert), _pem(key))
    with pytest.raises(TLSConfigError, match="expired on"):
        ensure_certificate(tmp_path, "localhost", cert_path, key_path)
    with pytest.raises(TLSConfigError, match="expired on"):
        TLSContextSource(cert_path, key_path)

    info = ensure_certificate(
        tmp_path, "localhost", cert_path, key_path, allow_expired=True
    )
    assert any("expired" in w for w in info.warnings)
    source = TLSContextSource(cert_path, key_path, allow_expired=True)
    assert _handshake(source.context_factory(None)).ok


def test_clock_is_injected(pair: tuple[Path, Path]) -> None:
    """
    The source judges expiry by its clock: a far-future clock sees it expired.
    """
    clock = Clock()
    clock.advance((datetime.now(UTC) + timedelta(days=3650)).timestamp())
    with pytest.raises(TLSConfigError, match="expired"):
        TLSContextSource(*pair, clock=clock)
    assert ensure_certificate(
        Path("/nonexistent"), "localhost", *pair, now=NOW
    ).covers_host


# --- contexts: protocol versions, chain, ALPN --------------------------------------


def test_chain_is_served(pair: tuple[Path, Path]) -> None:
    source = TLSContextSource(*pair, public_host="localhost")
    handshake = _handshake(source.context_factory(FTP_ALPN))
    assert handshake.ok
    chain = handshake.client.get_peer_cert_chain(as_cryptography=True)
    assert chain is not None
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=localhost",
        "CN=Test Intermediate",
    ]
    assert source.info.chain_length == 2 and source.info.covers_host


def test_tls11_refused(pair: tuple[Path, Path]) -> None:
    source = TLSContextSource(*pair)
    client = _client_context(
        max_version=SSL.TLS1_1_VERSION, min_version=SSL.TLS1_VERSION
    )
    handshake = _handshake(source.context_factory(FTP_ALPN), client)
    assert handshake.server_error is not None
    assert "unsupported protocol" in str(handshake.server_error)
    assert handshake.client_error is not None


@pytest.mark.parametrize(
    "version, name", [(SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")]
)
def test_tls12_and_tls13_accepted(
    pair: tuple[Path, Path], version: int, name: str
) -> None:
    source = TLSContextSource(*pair)
    client = _client_context(max_version=version, min_version=version)
    handshake = _handshake(source.context_factory(HTTPS_ALPN), client)
    assert handshake.ok
    assert handshake.client.get_protocol_version_name() == name
    handshake.exchange()


@pytest.mark.parametrize(
    "profile, offered, negotiated",
    [
        (FTP_ALPN, None, b""),
        (FTP_ALPN, [b"ftp"], b"ftp"),
        (FTP_ALPN, [b"http/1.1", b"ftp"], b"ftp"),
        (HTTPS_ALPN, None, b""),
        (HTTPS_ALPN, [b"h2", b"http/1.1"], b"http/1.1"),
        (None, [b"h2"], b""),
    ],
)
def test_alpn_accepted(
    pair: tuple[Path, Path],
    profile: tuple[bytes, ...] | None,
    offered: list[bytes] | None,
    negotiated: bytes,
) -> None:
    source = TLSContextSource(*pair)
    handshake = _handshake(source.context_factory(profile), alpn=offered)
    assert handshake.ok
    assert handshake.client.get_alpn_proto_negotiated() == negotiated
    assert handshake.server.get_alpn_proto_negotiated() == negotiated


@pytest.mark.parametrize(
    "profile, offered",
    [
        (FTP_ALPN, [b"http/1.1"]),
        (FTP_ALPN, [b"h2", b"http/1.1"]),
        (HTTPS_ALPN, [b"ftp"]),
    ],
)
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_alpn_refused(
    pair: tuple[Path, Path],
    profile: tuple[bytes, ...],
    offered: list[bytes],
    version: int,
) -> None:
    """
    The ALPACA mitigation: an offer without our protocol fails the handshake
    with the no_application_protocol alert.
    """
    source = TLSContextSource(*pair)
    client = _client_context(max_version=version)
    handshake = _handshake(source.context_factory(profile), client, alpn=offered)
    assert isinstance(handshake.server_error, ALPNRefused)
    assert "no application protocol" in str(handshake.client_error)


def test_one_context_per_profile(pair: tuple[Path, Path]) -> None:
    source = TLSContextSource(*pair)
    ftp = source.context_factory([b"ftp"])
    assert source.context_factory(FTP_ALPN) is ftp
    assert ftp.getContext() is source.context_factory(FTP_ALPN).getContext()
    assert ftp.getContext() is not source.context_factory(HTTPS_ALPN).getContext()
    assert source.context_factory(None) is source.context_factory([])
    wrapped = source.wrap_factory(Factory.forProtocol(Protocol), FTP_ALPN)
    assert isinstance(wrapped, TLSMemoryBIOFactory)


# --- session resumption -----------------------------------------------------------


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest.mark.parametrize("tickets", [True, False])
def test_session_resumption(
    pair: tuple[Path, Path], version: int, tickets: bool
) -> None:
    """
    Connections of one profile resume the first one's session, repeatedly,
    with session tickets and (TLS 1.2) with the server's session cache.
    """
    source = TLSContextSource(*pair)
    client = _client_context(max_version=version, min_version=version)
    if not tickets:
        client.set_options(SSL.OP_NO_TICKET)
    control = _handshake(source.context_factory(FTP_ALPN), client, alpn=[b"ftp"])
    assert control.ok and not session_reused(control.server)
    # TLS 1.3 tickets arrive after the handshake: read once before get_session.
    control.exchange()
    session = control.client.get_session()
    assert session is not None

    for _ in range(3):
        data = _handshake(source.context_factory(FTP_ALPN), client, session=session)
        assert data.ok
        assert session_reused(data.server) and session_reused(data.client)
        data.exchange()
        data.close()

    other_profile = _handshake(
        source.context_factory(HTTPS_ALPN), client, session=session
    )
    assert other_profile.ok and not session_reused(other_profile.server)


def test_abnormal_close_without_keep_loses_session(pair: tuple[Path, Path]) -> None:
    """
    Why L{keep_session_resumable} exists: a server connection dropped without
    close_notify evicts the session from the cache (TLS 1.2 without tickets).
    """
    source = TLSContextSource(*pair)
    client = _client_context(max_version=SSL.TLS1_2_VERSION)
    client.set_options(SSL.OP_NO_TICKET)
    control = _handshake(source.context_factory(FTP_ALPN), client)
    control.exchange()
    session = control.client.get_session()

    aborted = _handshake(source.context_factory(FTP_ALPN), client, session=session)
    assert session_reused(aborted.server)
    keep_session_resumable(aborted.client)
    del aborted  # the server end is freed without shutdown
    assert not session_reused(
        _handshake(source.context_factory(FTP_ALPN), client, session=session).server
    )


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest.mark.parametrize("tickets", [True, False])
def test_per_session_contexts_resume_only_their_own_session(
    pair: tuple[Path, Path], version: int, tickets: bool
) -> None:
    """
    Issue #11: a data connection pinned to a control connection's context
    and session id context resumes that control connection's session, and
    not the session of another control connection of the same profile (a
    thief at the same address resuming its own session), with TLS 1.3
    tickets, TLS 1.2 tickets and TLS 1.2 session ids.  Both control
    connections share one context (its cache, its ticket keys): the
    session id context alone tells them apart.
    """
    source = TLSContextSource(*pair)
    client = _client_context(max_version=version, min_version=version)
    if not tickets:
        client.set_options(SSL.OP_NO_TICKET)
    sessions = source.per_session_factory(FTP_ALPN)
    victim = _handshake(sessions, client, alpn=[b"ftp"])
    thief = _handshake(sessions, client, alpn=[b"ftp"])
    assert victim.ok and thief.ok
    assert victim.server.get_context() is thief.server.get_context()
    victim_binding = session_binding(victim.server)
    thief_binding = session_binding(thief.server)
    assert victim_binding is not None and thief_binding is not None
    assert victim_binding.session_id_context != thief_binding.session_id_context
    victim.exchange()
    thief.exchange()
    victim_session = victim.client.get_session()
    thief_session = thief.client.get_session()

    for _ in range(2):  # the rightful client, again and again
        own = _handshake(pinned_context_factory(victim.server), client,
                         session=victim_session)
        assert own.ok and session_reused(own.server) and session_reused(own.client)
        own.exchange()
        own.close()
    # The thief's own session, valid on the thief's data connections...
    thiefs_own = _handshake(pinned_context_factory(thief.server), client,
                            session=thief_session)
    assert session_reused(thiefs_own.server)
    thiefs_own.close()
    # ... is not resumed on the victim's.
    stolen = _handshake(pinned_context_factory(victim.server), client,
                        session=thief_session)
    assert not session_reused(stolen.server)
    assert not session_reused(stolen.client)
    # A control connection cannot resume another one's session either.
    assert not session_reused(_handshake(sessions, client, session=victim_session).server)


def test_shared_profile_context_lets_anyone_resume(pair: tuple[Path, Path]) -> None:
    """
    Why FTP uses L{TLSContextSource.per_session_factory}: on the shared
    profile context, a second client's session resumes on the first
    client's context just as well (the bug of issue #11).
    """
    source = TLSContextSource(*pair)
    client = _client_context()
    victim = _handshake(source.context_factory(FTP_ALPN), client)
    thief = _handshake(source.context_factory(FTP_ALPN), client)
    thief.exchange()
    stolen = _handshake(pinned_context_factory(victim.server), client,
                        session=thief.client.get_session())
    assert session_reused(stolen.server)


def test_per_session_factory_follows_reload(
    tmp_path: Path, ca: _CA, pair: tuple[Path, Path]
) -> None:
    source = TLSContextSource(*pair)
    sessions = source.per_session_factory(FTP_ALPN)
    assert source.per_session_factory([b"ftp"]) is sessions
    before = _served_leaf(_handshake(sessions))
    new_key = _key()
    new_cert = ca.issue(new_key, "localhost")
    _write_pair(pair[0].parent, _pem(new_cert), _pem(new_key), "server")
    assert source.reload() is True
    after = _served_leaf(_handshake(sessions))
    assert after == new_cert != before
    wrapped = source.wrap_factory(Factory.forProtocol(Protocol), FTP_ALPN,
                                  per_session=True)
    assert isinstance(wrapped, TLSMemoryBIOFactory)


# --- reload -----------------------------------------------------------------------


def test_reload(tmp_path: Path, ca: _CA, pair: tuple[Path, Path]) -> None:
    """
    Reloaded files serve new handshakes; open connections go on; a broken
    file keeps the current certificate.
    """
    cert_path, key_path = pair
    source = TLSContextSource(cert_path, key_path, public_host="localhost")
    ftp = source.context_factory(FTP_ALPN)
    old_context = ftp.getContext()
    before = _handshake(ftp)
    old_leaf = _served_leaf(before)
    assert not source.files_changed()
    assert source.reload() is True  # same files: fine, nothing breaks

    new_key = _key()
    new_cert = ca.issue(new_key, "localhost", "files.example.org")
    new_cert_path, new_key_path = _write_pair(
        tmp_path, _pem(new_cert), _pem(new_key), "new"
    )
    os.replace(new_key_path, key_path)
    os.replace(new_cert_path, cert_path)
    assert source.files_changed()
    assert source.reload() is True
    assert not source.files_changed()

    assert ftp.getContext() is not old_context
    assert source.context_factory(FTP_ALPN).getContext() is ftp.getContext()
    after = _handshake(ftp)
    assert _served_leaf(after) == new_cert != old_leaf
    assert source.info.chain_length == 1
    before.exchange()  # the connection opened before the reload still works

    cert_path.write_bytes(b"half-written garbage")
    assert source.files_changed()
    assert source.reload() is False
    assert not source.files_changed()  # retried once the files change again
    assert _served_leaf(_handshake(ftp)) == new_cert
    assert source.info.subject == "CN=localhost"


def test_reload_mismatched_pair_keeps_old(pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    source = TLSContextSource(cert_path, key_path)
    served = _served_leaf(_handshake(source.context_factory(None)))
    key_path.write_bytes(_pem(_key()))
    assert source.reload() is False
    assert _served_leaf(_handshake(source.context_factory(None))) == served


def test_pinned_factory_resumes_across_reload(
    tmp_path: Path, ca: _CA, pair: tuple[Path, Path]
) -> None:
    """
    After a reload, a data connection pinned to the control connection's
    context still resumes its session; the profile's new context cannot.
    """
    source = TLSContextSource(*pair)
    client = _client_context()
    control = _handshake(source.context_factory(FTP_ALPN), client)
    control.exchange()
    session = control.client.get_session()

    new_key = _key()
    _write_pair(
        pair[0].parent, _pem(ca.issue(new_key, "localhost")), _pem(new_key), "server"
    )
    assert source.reload() is True

    pinned = _handshake(pinned_context_factory(control.server), client, session=session)
    assert pinned.ok and session_reused(pinned.server)
    pinned.close()
    fresh = _handshake(source.context_factory(FTP_ALPN), client, session=session)
    assert fresh.ok and not session_reused(fresh.server)


# --- through Twisted's TLS layer -----------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
@dataclass
class _ClientCreator:
    context: SSL.Context
    alpn: list[bytes] | None = None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.alpn:
            connection.set_alpn_protos(self.alpn)
        return connection


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


def _twisted_pair(
    source: TLSContextSource, profile: tuple[bytes, ...], offered: list[bytes] | None
) -> tuple[_Recorder, _Recorder, object]:
    server, client = _Recorder(), _Recorder()
    clock = Clock()
    server_factory = source.wrap_factory(
        Factory.forProtocol(lambda: server), profile, clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        _ClientCreator(_client_context(), offered),
        True,
        Factory.forProtocol(lambda: client),
        clock=clock,
    )
    _, _, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    return server, client, pump


def test_twisted_wrap_factory(pair: tuple[Path, Path]) -> None:
    source = TLSContextSource(*pair)
    server, client, pump = _twisted_pair(source, FTP_ALPN, [b"ftp"])
    server.transport.write(b"220 ready\r\n")
    client.transport.write(b"USER u\r\n")
    pump.flush()  # type: ignore[attr-defined]
    assert client.received == b"220 ready\r\n"
    assert server.received == b"USER u\r\n"
    assert server.transport.negotiatedProtocol == b"ftp"
    assert server.lost is None
    assert pump.clock.getDelayedCalls() == []  # type: ignore[attr-defined]


def test_twisted_alpn_refused(pair: tuple[Path, Path]) -> None:
    source = TLSContextSource(*pair)
    server, client, pump = _twisted_pair(source, FTP_ALPN, [b"http/1.1"])
    pump.flush()  # type: ignore[attr-defined]
    assert server.received == client.received == b""
    assert client.lost is not None and server.lost is not None
    assert "no application protocol" in str(client.lost.value)
    assert server.lost.check(ALPNRefused)
    assert server.lost.value.offered == (b"http/1.1",)


def test_start_tls_style_use(pair: tuple[Path, Path]) -> None:
    """
    What C{transport.startTLS(creator)} does: a server TLSMemoryBIOFactory
    with no wrapped factory makes its connection from the profile's context.
    """
    source = TLSContextSource(*pair)
    creator = source.context_factory(FTP_ALPN)
    tls_factory = TLSMemoryBIOFactory(creator, False, None)
    connection = tls_factory._creatorCallable(None)  # type: ignore[arg-type]
    assert connection.get_context() is creator.getContext()
