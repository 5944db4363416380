"""
Server certificates: load and check them, or generate a self-signed one once.

L{ensure_certificate} finds the server's certificate and key (given paths, or
C{DATA-DIR/tls/cert.pem} and C{key.pem}, generated self-signed on the first
run only), validates them and describes them in a L{CertificateInfo}: errors
(L{TLSConfigError}) for what cannot work, warnings for what a person should
fix.  L{load_material} gives L{rumpus_secure.tls} the parsed objects, so the
contexts serve exactly what was checked.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from service_identity.exceptions import CertificateError, VerificationError
from twisted.logger import Logger

_log = Logger()

GENERATED_VALIDITY = timedelta(days=825)
EXPIRY_WARNING = timedelta(days=30)

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL
)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


class TLSConfigError(Exception):
    """
    The certificate or key cannot be used; the message is one line for a person.
    """


@dataclass(frozen=True)
class CertificateInfo:
    """
    What the server's certificate is, and what a person should know about it.
    """

    cert_path: Path
    key_path: Path
    generated: bool
    self_signed: bool
    subject: str
    not_after: datetime
    covers_host: bool
    chain_length: int
    warnings: tuple[str, ...] = ()
    sha256_fingerprint: str = ""


@dataclass(frozen=True)
class CertificateMaterial:
    """
    Certificates and key parsed from the files, already checked.
    """

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    info: CertificateInfo


def ensure_certificate(
    data_dir: Path,
    public_host: str,
    cert: Path | None,
    key: Path | None,
    *,
    allow_expired: bool = False,
    now: datetime | None = None,
) -> CertificateInfo:
    """
    Load the configured certificate, or the generated one, creating it once.

    With C{cert} and C{key} given, those files are loaded.  Otherwise
    C{data_dir/tls/cert.pem} and C{key.pem} are used, and a self-signed
    certificate for C{public_host} is generated only if neither file exists.

    :param now: the current time (aware); defaults to the system clock.
    :raises TLSConfigError: the files cannot serve as the server's identity.
    """
    now = now or datetime.now(UTC)
    if (cert is None) != (key is None):
        raise TLSConfigError("--cert and --key must be given together")
    generated = False
    if cert is None or key is None:
        tls_dir = data_dir / "tls"
        cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
        cert_exists, key_exists = cert.exists(), key.exists()
        if not cert_exists and not key_exists:
            if not public_host:
                raise TLSConfigError(
                    "a public host name is needed to generate a certificate"
                )
            _generate_self_signed(tls_dir, cert, key, public_host, now)
            generated = True
        elif not (cert_exists and key_exists):
            present, missing = (cert, key) if cert_exists else (key, cert)
            raise TLSConfigError(
                f"{missing} is missing but {present} exists: restore it, or remove "
                f"{present} to have a new self-signed certificate generated"
            )
    material = load_material(cert, key, public_host, allow_expired, now, generated)
    if generated:
        _log.info(
            "Generated a self-signed TLS certificate for {host} in {path},"
            " SHA-256 fingerprint {fingerprint}",
            host=public_host,
            path=str(cert),
            fingerprint=material.info.sha256_fingerprint,
        )
    return material.info


def load_certificate(
    cert_path: Path,
    key_path: Path,
    public_host: str | None = None,
    *,
    allow_expired: bool = False,
    now: datetime | None = None,
) -> CertificateInfo:
    """
    Check a certificate file and its key without generating anything.

    :raises TLSConfigError: the files cannot serve as the server's identity.
    """
    now = now or datetime.now(UTC)
    return load_material(
        cert_path, key_path, public_host, allow_expired, now, False
    ).info


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {path}: {e.strerror}") from e


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _parse_chain(path: Path, data: bytes) -> tuple[x509.Certificate, ...]:
    blocks = _pem_blocks(data)
    if not blocks:
        raise TLSConfigError(
            f"{path} is not a PEM file (a DER certificate can be converted with"
            " 'openssl x509 -inform der -in FILE -out cert.pem')"
        )
    pems = [
        pem
        for label, pem in blocks
        if label in (b"CERTIFICATE", b"TRUSTED CERTIFICATE")
    ]
    if not pems:
        raise TLSConfigError(
            f"{path} holds no certificate (no BEGIN CERTIFICATE block)"
        )
    chain = []
    for number, pem in enumerate(pems, 1):
        try:
            chain.append(x509.load_pem_x509_certificate(pem))
        except ValueError as e:
            raise TLSConfigError(
                f"certificate {number} in {path} is damaged: {e}"
            ) from e
    return tuple(chain)


def _parse_key(path: Path, data: bytes) -> PrivateKeyTypes:
    blocks = _pem_blocks(data)
    if not blocks:
        raise TLSConfigError(f"{path} is not a PEM file (expected BEGIN PRIVATE KEY)")
    labels = {label for label, _ in blocks}
    if b"ENCRYPTED PRIVATE KEY" in labels and not labels & _KEY_LABELS:
        raise TLSConfigError(
            f"the key in {path} is protected by a passphrase; store it"
            " unencrypted with mode 0600 ('openssl pkey -in KEY -out key.pem')"
        )
    pems = [pem for label, pem in blocks if label in _KEY_LABELS]
    if not pems:
        raise TLSConfigError(
            f"{path} holds no private key (no BEGIN PRIVATE KEY block)"
        )
    try:
        return serialization.load_pem_private_key(pems[0], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(f"the private key in {path} is unusable: {e}") from e


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _covers(cert: x509.Certificate, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    try:
        if address is not None:
            verify_certificate_ip_address(cert, str(address))
        else:
            verify_certificate_hostname(cert, host)
    except (VerificationError, CertificateError):
        return False
    return True


def covers_host(cert: x509.Certificate, host: str) -> bool:
    """
    Whether C{cert} is valid for C{host} (a DNS name or an IP address), by
    the rules clients apply (RFC 6125, through C{service_identity}).
    """
    return _covers(cert, host)


def load_material(
    cert_path: Path,
    key_path: Path,
    public_host: str | None,
    allow_expired: bool,
    now: datetime,
    generated: bool,
) -> CertificateMaterial:
    chain = _parse_chain(cert_path, _read_file(cert_path, "certificate file"))
    key = _parse_key(key_path, _read_file(key_path, "key file"))
    leaf = chain[0]
    if _public_bytes(leaf.public_key()) != _public_bytes(key.public_key()):  # type: ignore[attr-defined]
        raise TLSConfigError(
            f"the key in {key_path} does not belong to the first certificate in"
            f" {cert_path} (the server's own certificate must come first)"
        )
    subject = leaf.subject.rfc4514_string() or "(empty subject)"
    not_after = leaf.not_valid_after_utc
    if not_after <= now and not allow_expired:
        raise TLSConfigError(
            f"the certificate in {cert_path} ({subject}) expired on"
            f" {not_after:%Y-%m-%d %H:%M} UTC; renew it"
        )
    warnings: list[str] = []
    self_signed = leaf.issuer == leaf.subject and _is_issued_by(leaf, leaf)
    if self_signed:
        warnings.append(
            f"the certificate {cert_path} is self-signed: clients will warn"
            " until they are told to trust it; replace it with --cert/--key"
        )
    covers_host = True
    if public_host:
        covers_host = _covers(leaf, public_host)
        if not covers_host:
            warnings.append(
                f"the certificate {cert_path} ({subject}) does not cover the"
                f" public host {public_host}: clients will refuse or warn"
            )
    if not_after <= now:
        warnings.append(f"the certificate {cert_path} has expired")
    elif not_after - now < EXPIRY_WARNING:
        warnings.append(
            f"the certificate {cert_path} expires on {not_after:%Y-%m-%d};"
            " renew it soon"
        )
    if leaf.not_valid_before_utc > now:
        warnings.append(
            f"the certificate {cert_path} is not valid before"
            f" {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    for number, (cert, issuer) in enumerate(itertools.pairwise(chain), 2):
        if not _is_issued_by(cert, issuer):
            warnings.append(
                f"certificate {number} in {cert_path} did not issue the one before"
                " it: the chain must run from the server's certificate up"
            )
    key_mode = _file_mode(key_path)
    if key_mode is not None and key_mode & 0o077:
        warnings.append(
            f"the key file {key_path} can be read by other users"
            f" (mode {key_mode:04o}): chmod 600 it"
        )
    info = CertificateInfo(
        cert_path=cert_path,
        key_path=key_path,
        generated=generated,
        self_signed=self_signed,
        subject=subject,
        not_after=not_after,
        covers_host=covers_host,
        chain_length=len(chain),
        warnings=tuple(warnings),
        sha256_fingerprint=leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
    )
    return CertificateMaterial(chain=chain, key=key, info=info)


def _file_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def _san_for(public_host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    try:
        address = ipaddress.ip_address(public_host)
    except ValueError:
        names.append(x509.DNSName(public_host))
        loopback = public_host.lower() == "localhost"
    else:
        names.append(x509.IPAddress(address))
        loopback = address.is_loopback
    if loopback:
        for extra in (
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ):
            if extra not in names:
                names.append(extra)
    return names


def _generate_self_signed(
    tls_dir: Path, cert_path: Path, key_path: Path, public_host: str, now: datetime
) -> None:
    """
    Write a new ECDSA P-256 key and a self-signed server certificate for it.

    ECDSA rather than RSA: signing is what every handshake costs the server,
    and a P-256 signature is over ten times cheaper than an RSA 2048 one.
    Every client that can speak the TLS 1.2 ECDHE suites we require can
    verify it.  (Measured with bench/load.py, 500 FTPS sessions logging in at
    once on 2 cores: see the commit that made the switch.)  Both files are
    written to a temporary name (created with C{O_EXCL}, mode 0600) and
    renamed into place, key first.
    """
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise TLSConfigError(f"cannot create {tls_dir}: {e.strerror}") from e
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = public_host if 0 < len(public_host) <= 64 else "rumpus-secure"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + GENERATED_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(_san_for(public_host)), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,  # meaningless for an EC key
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(
        cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{data} to a fresh temporary file beside C{path}, then rename it.

    C{mkstemp} opens with C{O_CREAT|O_EXCL} and mode 0600, so a key is never
    readable by others, not even for a moment.
    """
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise TLSConfigError(f"cannot write in {path.parent}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise TLSConfigError(f"cannot write {path}: {e.strerror}") from e
