"""
Client certificates: which certificate logs in as which account, and how.

Three things live here:

 - L{ClientCertStore}: per-account bindings (the SHA-256 fingerprint of a
   certificate; several per account) and the account's login method
   (C{password}, C{cert} or C{cert+password}), two tables added to the
   account store's SQLite file.  Every write also writes a row to the
   store's change log (kinds C{cert-add}, C{cert-del} and C{auth}), so open
   FTP sessions of the account end when a binding is removed or the method
   changes, exactly as after a password change (web sessions end too: both
   changes move the account's C{password_changed}).  With C{--database
   postgresql://...} the same tables and log entries live in the shared
   database (L{rumpus_secure.accounts.pg_client_certs}, schema version 3);
   L{client_cert_store} picks the one that goes with the account store.
 - L{ClientCA}: is a presented certificate one of ours?  It must chain to
   the C{--client-ca} file, be inside its validity period, and not be on
   the C{--client-crl} list.
 - L{CertificateLogin}: what an account's login method makes of a presented
   certificate; L{rumpus_secure.accounts.cert_checker} applies it in the
   twisted.cred checker every login goes through (FTP and web).

Why the certificate is judged at login and not by OpenSSL during the
handshake: the certificate is optional at the TLS level (password users
must still connect, with or without a certificate their browser offers),
and a refusal must be audited with the account it tried and counted by the
guard like a wrong password.  OpenSSL failing the handshake could do
neither.  So the TLS contexts ask for a certificate and accept whatever
chain comes (L{rumpus_secure.tls}); the client still has to prove it holds
the key (TLS CertificateVerify).  Judging a certificate (chain, dates, a
200-entry CRL) takes 0.23 ms, the whole certificate half of a login with its
SQLite reads 0.27 ms, in a thread, next to 30-60 ms of argon2id for a
password (C{bench/client_certs.py}, 2-core test VM).

The issuing CA must be in the C{--client-ca} file (with its intermediates,
if any): a client sends its chain in a full handshake, but a session resumed
from a ticket keeps only the leaf, so a chain is not relied upon.

A login presents a L{PeerCertificate}: the leaf and the chain the client
sent, taken from the TLS connection on the reactor thread (a resumed TLS
session carries the certificate of its first handshake).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto

from rumpus_secure.accounts.store import AccountError, SQLiteAccountStore, _record

#: Login methods of an account, in the words of C{rumpus-secure user auth}.
AUTH_MODES = ("password", "cert", "cert+password")

#: Why a certificate login was refused (the audit's C{reason}).
REFUSALS = ("cert-missing", "cert-not-bound", "cert-other-account",
            "cert-expired", "cert-revoked", "cert-untrusted")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS client_certs (
        fingerprint TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        subject TEXT NOT NULL,
        not_after REAL NOT NULL,
        added REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS client_certs_name ON client_certs (name)",
    """CREATE TABLE IF NOT EXISTS account_auth (
        name TEXT PRIMARY KEY,
        mode TEXT NOT NULL
    )""",
    # A deleted account leaves no binding behind for a namesake made later.
    """CREATE TRIGGER IF NOT EXISTS client_certs_account_deleted
        AFTER DELETE ON accounts BEGIN
            DELETE FROM client_certs WHERE name = old.name;
            DELETE FROM account_auth WHERE name = old.name;
        END""",
)


def fingerprint_of(cert: x509.Certificate) -> str:
    """
    The SHA-256 fingerprint as C{openssl x509 -fingerprint -sha256} shows it.
    """
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _normal_fingerprint(text: str) -> str:
    hexdigits = "".join(c for c in text if c not in ": ").upper()
    return ":".join(hexdigits[i:i + 2] for i in range(0, len(hexdigits), 2))


_log = Logger()


@dataclass(frozen=True)
class CertBinding:
    """
    One certificate bound to one account.
    """

    fingerprint: str
    name: str
    subject: str
    not_after: float
    added: float


@dataclass(frozen=True)
class PeerCertificate:
    """
    What a client presented on one TLS connection.
    """

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.leaf)

    @classmethod
    def of(cls, connection: SSL.Connection | None) -> PeerCertificate | None:
        """
        The certificate the peer of C{connection} presented, or L{None}.
        """
        if connection is None:
            return None
        leaf = connection.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        return cls(leaf, tuple(c for c in chain if c != leaf))


class ClientCertStore:
    """
    Certificate bindings and login methods, in the account store's database.

    Blocking, like the store: call from a thread in the server.
    """

    def __init__(self, store: SQLiteAccountStore,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self._clock = clock or store._clock
        with store._writing() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def _exists(self, db: sqlite3.Connection, name: str) -> None:
        row = db.execute("SELECT 1 FROM accounts WHERE name = ? COLLATE BINARY",
                         (name,)).fetchone()
        if row is None:
            raise AccountError(f"no account named {name!r}")

    def add(self, name: str, pem_or_der: bytes) -> CertBinding:
        """
        Bind the certificate in C{pem_or_der} to account C{name}.

        @raises AccountError: not a certificate, unknown account, or the
            certificate is bound already (to this or another account).
        """
        cert = load_certificate_bytes(pem_or_der)
        fingerprint = fingerprint_of(cert)
        now = self._clock()
        binding = CertBinding(fingerprint, name, cert.subject.rfc4514_string(),
                              cert.not_valid_after_utc.timestamp(), now)
        with self.store._writing() as db:
            self._exists(db, name)
            owner = db.execute("SELECT name FROM client_certs WHERE fingerprint = ?",
                               (fingerprint,)).fetchone()
            if owner is not None:
                raise AccountError(f"certificate {fingerprint} is already bound to "
                                   f"account {owner[0]!r}")
            db.execute("INSERT INTO client_certs VALUES (?, ?, ?, ?, ?)",
                       (fingerprint, name, binding.subject, binding.not_after, now))
            _record(db, name, "cert-add", fingerprint, now)
        return binding

    def list(self, name: str | None = None) -> list[CertBinding]:
        with self.store._connections.connection() as db:
            if name is None:
                rows = db.execute("SELECT * FROM client_certs ORDER BY name, added")
            else:
                rows = db.execute("SELECT * FROM client_certs WHERE name = ? "
                                  "ORDER BY added", (name,))
            return [CertBinding(*row) for row in rows.fetchall()]

    def delete(self, name: str, fingerprint: str) -> CertBinding:
        """
        Remove the binding of C{name} whose fingerprint starts with C{fingerprint}.

        @raises AccountError: no such binding, or the prefix is ambiguous.
        """
        wanted = _normal_fingerprint(fingerprint)
        if len(wanted.replace(":", "")) < 8:
            raise AccountError("give at least 8 hex digits of the fingerprint")
        now = self._clock()
        with self.store._writing() as db:
            self._exists(db, name)
            rows = [CertBinding(*row) for row in db.execute(
                "SELECT * FROM client_certs WHERE name = ?", (name,)).fetchall()
                if row[0].startswith(wanted)]
            if not rows:
                raise AccountError(f"account {name!r} has no certificate {wanted}")
            if len(rows) > 1:
                raise AccountError(f"{wanted} matches {len(rows)} certificates; "
                                   "give more of the fingerprint")
            db.execute("DELETE FROM client_certs WHERE fingerprint = ?",
                       (rows[0].fingerprint,))
            _credentials_changed(db, name, now)
            _record(db, name, "cert-del", rows[0].fingerprint, now)
        return rows[0]

    def owner(self, fingerprint: str) -> str | None:
        with self.store._connections.connection() as db:
            row = db.execute("SELECT name FROM client_certs WHERE fingerprint = ?",
                             (fingerprint,)).fetchone()
        return None if row is None else str(row[0])

    def auth_mode(self, name: str) -> str:
        """
        The login method of C{name}; C{password} for unknown accounts.
        """
        with self.store._connections.connection() as db:
            row = db.execute("SELECT mode FROM account_auth WHERE name = ?",
                             (name,)).fetchone()
        return "password" if row is None else str(row[0])

    def set_auth_mode(self, name: str, mode: str) -> None:
        if mode not in AUTH_MODES:
            raise AccountError(f"unknown login method {mode!r}: choose from "
                               + ", ".join(AUTH_MODES))
        now = self._clock()
        with self.store._writing() as db:
            self._exists(db, name)
            db.execute("INSERT INTO account_auth (name, mode) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET mode = excluded.mode",
                       (name, mode))
            _credentials_changed(db, name, now)
            _record(db, name, "auth", mode, now)


def client_cert_store(store: Any, clock: Callable[[], float] | None = None) -> Any:
    """
    The bindings and login methods of C{store}'s accounts, where they live:
    a L{ClientCertStore} in the SQLite file, or, for the shared PostgreSQL
    store, a L{rumpus_secure.accounts.pg_client_certs.PGClientCertStore}
    (same methods, same meaning).
    """
    if not isinstance(store, SQLiteAccountStore):
        from rumpus_secure.accounts.pg import PGAccountStore
        from rumpus_secure.accounts.pg_client_certs import PGClientCertStore

        if isinstance(store, PGAccountStore):
            return PGClientCertStore(store, clock)
    return ClientCertStore(store, clock)


def _credentials_changed(db: sqlite3.Connection, name: str, now: float) -> None:
    """
    A new version of the account whose credentials changed as of C{now}.

    C{password_changed} moves too: web sessions end on it (they compare it
    with their start at each request), and cached password verifications
    are dropped.
    """
    db.execute("UPDATE accounts SET version = version + 1, changed = ?, "
               "password_changed = ? WHERE name = ? COLLATE BINARY", (now, now, name))


def load_certificate_bytes(data: bytes) -> x509.Certificate:
    """
    The first certificate in PEM or DER C{data}.

    @raises AccountError: it is not a certificate.
    """
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise AccountError(f"not an X.509 certificate: {e}") from None


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ClientCA:
    """
    Judges presented certificates against the client CA file and the CRL.

    Both files are re-read when they change (checked at each verification,
    one C{stat} each), so a new CRL applies to the next login.

    @param clock: seconds since the epoch; the time certificates must be
        valid at.
    @raises ValueError: the CA file holds no certificate, or the CRL cannot
        be read.
    """

    def __init__(self, ca_path: Path, crl_path: Path | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.ca_path = Path(ca_path)
        self.crl_path = None if crl_path is None else Path(crl_path)
        self._clock = clock or time.time
        self._loaded: tuple[Any, Any] = (None, None)
        self.cas: list[x509.Certificate] = []
        self._crl: x509.CertificateRevocationList | None = None
        self._load()

    def _load(self) -> None:
        signature = (_signature(self.ca_path), _signature(self.crl_path))
        if signature == self._loaded:
            return
        try:
            cas = x509.load_pem_x509_certificates(self.ca_path.read_bytes())
        except (OSError, ValueError) as e:
            raise ValueError(f"--client-ca {self.ca_path}: no usable CA "
                             f"certificate: {e}") from None
        crl = None
        if self.crl_path is not None:
            try:
                data = self.crl_path.read_bytes()
                crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
                       else x509.load_der_x509_crl(data))
            except (OSError, ValueError) as e:
                raise ValueError(f"--client-crl {self.crl_path}: {e}") from None
            if not _signed_by(crl, cas):
                # A list anyone could have made (CRLs travel over plain HTTP):
                # taken, it would revoke nothing.  Refused like a garbled
                # file: the last good list stays.
                _log.warn("--client-crl {path} is not signed by a client CA: ignored, "
                          "the last good list stays", path=str(self.crl_path))
                raise ValueError(f"--client-crl {self.crl_path}: not signed by a CA "
                                 f"of --client-ca {self.ca_path}")
        self.cas, self._crl, self._loaded = cas, crl, signature

    def problem(self, presented: PeerCertificate) -> str | None:
        """
        L{None} if C{presented} is a client certificate of ours, else why not:
        C{cert-expired}, C{cert-revoked} or C{cert-untrusted}.
        """
        try:
            self._load()
        except ValueError:
            pass  # keep the files read last; the next login tries again
        now = datetime.fromtimestamp(self._clock(), UTC)
        leaf = presented.leaf
        if leaf.not_valid_after_utc < now:
            return "cert-expired"
        if leaf.not_valid_before_utc > now:
            return "cert-untrusted"
        store = crypto.X509Store()
        for ca in self.cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
        store.set_time(now.replace(tzinfo=None))
        chain = [crypto.X509.from_cryptography(c) for c in presented.chain]
        try:
            crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf),
                                    chain).verify_certificate()
        except crypto.X509StoreContextError:
            return "cert-untrusted"
        crl = self._crl
        if (crl is not None and crl.issuer == leaf.issuer and self._crl_signed()
                and crl.get_revoked_certificate_by_serial_number(
                    leaf.serial_number) is not None):
            return "cert-revoked"
        return None

    def _crl_signed(self) -> bool:
        assert self._crl is not None
        return _signed_by(self._crl, self.cas)


def _signed_by(crl: x509.CertificateRevocationList, cas: list[x509.Certificate]) -> bool:
    """
    Whether one of C{cas} issued and signed C{crl}.
    """
    for ca in cas:
        if ca.subject == crl.issuer:
            try:
                if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                    return True
            except TypeError:
                continue
    return False


@dataclass(frozen=True)
class CertVerdict:
    """
    What the login method of one account makes of one presented certificate.

    @ivar mode: the account's login method.
    @ivar refusal: one of L{REFUSALS}, or L{None} (passed, or not needed).
    @ivar fingerprint: of the presented certificate, if any.
    """

    mode: str
    refusal: str | None
    fingerprint: str | None


class CertificateLogin:
    """
    The certificate half of a login, in a thread.
    """

    def __init__(self, bindings: ClientCertStore, ca: ClientCA | None) -> None:
        self.bindings = bindings
        self.ca = ca

    def judge(self, presented: PeerCertificate | None) -> str | None:
        """
        Why C{presented} is not a valid client certificate, or L{None}.
        """
        if presented is None:
            return "cert-missing"
        if self.ca is None:
            return "cert-untrusted"
        return self.ca.problem(presented)

    def check(self, name: str, presented: PeerCertificate | None) -> CertVerdict:
        mode = self.bindings.auth_mode(name)
        fingerprint = None if presented is None else presented.fingerprint
        if mode == "password":
            return CertVerdict(mode, None, fingerprint)
        refusal = self.judge(presented)
        if refusal is None:
            assert fingerprint is not None
            owner = self.bindings.owner(fingerprint)
            if owner is None:
                refusal = "cert-not-bound"
            elif owner != name:
                refusal = "cert-other-account"
        return CertVerdict(mode, refusal, fingerprint)

    def account_of(self, presented: PeerCertificate) -> tuple[str, str] | None:
        """
        The account C{presented} is bound to and its login method, or L{None}.
        """
        owner = self.bindings.owner(presented.fingerprint)
        if owner is None:
            return None
        return owner, self.bindings.auth_mode(owner)
