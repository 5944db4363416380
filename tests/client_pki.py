"""
A throwaway client CA for the tests: a CA, client certificates and a CRL,
made with cryptography's builders in a temporary directory.

Nothing here is ever committed: every file is written under the test's
C{tmp_path} (and *.pem / *.key / *.crt are in .gitignore).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class ClientCert:
    """
    A client certificate and its key, in memory and as PEM files.
    """

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()


@dataclass
class ClientPKI:
    """
    A client CA in C{directory}; L{issue} makes client certificates.
    """

    directory: Path
    common_name: str = "rumpus test client CA"
    now: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.common_name))
            .issuer_name(_name(self.common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - DAY)
            .not_valid_after(self.now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = self.directory / "client-ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.revoked: list[x509.Certificate] = []
        self.crl_path = self.directory / "client-ca.crl.pem"
        self.write_crl()

    def issue(self, common_name: str, *, expired: bool = False,
              signer: ClientPKI | None = None) -> ClientCert:
        """
        A client certificate for C{common_name} (signed by C{signer}'s CA if
        given: a certificate from another CA).
        """
        issuer = signer or self
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = ((self.now - 10 * DAY, self.now - DAY) if expired
                      else (self.now - DAY, self.now + 10 * DAY))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(issuer.key, hashes.SHA256())
        )
        stem = common_name.replace(" ", "-")
        cert_path = self.directory / f"{stem}.crt.pem"
        key_path = self.directory / f"{stem}.key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        key_path.chmod(0o600)
        return ClientCert(cert, key, cert_path, key_path)

    def revoke(self, client: ClientCert) -> None:
        self.revoked.append(client.cert)
        self.write_crl()

    def write_crl(self) -> None:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(self.now - DAY)
            .next_update(self.now + 7 * DAY)
        )
        for cert in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(self.now - DAY)
                .build())
        crl = builder.sign(self.key, hashes.SHA256())
        self.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
