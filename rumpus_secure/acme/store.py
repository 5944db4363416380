"""
``DATA-DIR/acme/``: the ACME account key, the certificate and its key, and
the status of the last attempts.

Every file is written whole to a temporary name and renamed into place, so
a crash never leaves half a key; files are 0600 and the directory 0700
(the account key can order certificates for our names, the certificate key
is the server's identity).

The TLS listeners serve ``cert.pem`` and ``key.pem`` from here.  Until the
CA has issued the first certificate these two are a copy of the
self-signed certificate that the server generates anyway
(``DATA-DIR/tls/``), so the server starts and serves at once; that
placeholder is recognised by being self-signed.  A new certificate is
written beside them as ``*.new`` by the issuing thread and renamed over
them on the reactor thread, right before the reload, so the periodic file
check can never see a new certificate with the old key.

``status.json`` records the last attempt for ``rumpus-secure check``, which
runs in another process.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import Logger

_log = Logger()

ACCOUNT_KEY = "account.key"
CERT = "cert.pem"
KEY = "key.pem"
STATUS = "status.json"


def write_private(path: Path, data: bytes) -> None:
    """
    Blocking: replace C{path} by C{data} atomically, mode 0600.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class AcmeStore:
    """
    The files of ``DATA-DIR/acme/``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT

    @property
    def key_path(self) -> Path:
        return self.directory / KEY

    @property
    def status_path(self) -> Path:
        return self.directory / STATUS

    def ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)

    # -- the account key -------------------------------------------------------

    def account_key_pem(self) -> bytes:
        """
        Blocking: the account's private key, created (EC P-256) on first use.
        """
        path = self.directory / ACCOUNT_KEY
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        self.ensure_directory()
        pem = new_key_pem()
        write_private(path, pem)
        _log.info("Created the ACME account key {path}", path=str(path))
        return pem

    # -- the certificate ---------------------------------------------------------

    def current_certificate(self) -> x509.Certificate | None:
        """
        Blocking: the certificate a CA issued us, or L{None} (none yet, or the
        self-signed placeholder).
        """
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError):
            return None
        return None if cert.issuer == cert.subject else cert

    def write_pending(self, fullchain_pem: bytes, key_pem: bytes) -> None:
        """
        Blocking: put a new certificate and key beside the served ones.
        """
        self.ensure_directory()
        write_private(self.directory / (KEY + ".new"), key_pem)
        write_private(self.directory / (CERT + ".new"), fullchain_pem)

    def install_pending(self) -> None:
        """
        Rename the pending pair over the served one, keeping the served one
        as ``*.old`` (renames only, no data written: cheap enough for the
        reactor thread).
        """
        for name in (KEY, CERT):
            current = self.directory / name
            if current.exists():
                os.replace(current, self.directory / (name + ".old"))
            os.replace(self.directory / (name + ".new"), current)

    def restore_previous(self) -> None:
        """
        Put the pair that L{install_pending} replaced back in place.
        """
        for name in (KEY, CERT):
            old = self.directory / (name + ".old")
            if old.exists():
                os.replace(old, self.directory / name)

    def install_placeholder(self, cert: Path, key: Path) -> None:
        """
        Blocking: serve a copy of C{cert}/C{key} until the CA issues ours.
        """
        self.ensure_directory()
        write_private(self.key_path, key.read_bytes())
        write_private(self.cert_path, cert.read_bytes())

    # -- status, for ``check`` ----------------------------------------------------

    def write_status(self, status: dict[str, Any]) -> None:
        """
        Blocking: record the state of renewal for ``rumpus-secure check``.
        """
        self.ensure_directory()
        data = json.dumps(status, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_private(self.status_path, data)

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def new_key_pem() -> bytes:
    """
    A new EC P-256 private key, PKCS#8 PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def prepare_files(data_dir: Path, public_host: str, now: datetime | None = None
                  ) -> tuple[Path, Path, bool]:
    """
    Blocking, at start-up: the certificate and key files the listeners serve
    under ACME, with a self-signed placeholder where no usable issued
    certificate exists yet.

    :returns: the certificate path, the key path, and whether the placeholder
        is served.
    """
    from rumpus_secure.certificates import TLSConfigError, ensure_certificate, load_certificate

    store = AcmeStore(data_dir / "acme")
    now = now or datetime.now(UTC)
    if store.current_certificate() is not None:
        try:
            load_certificate(store.cert_path, store.key_path, now=now)
            return store.cert_path, store.key_path, False
        except TLSConfigError as e:
            _log.warn("The ACME certificate in {path} cannot be served ({reason});"
                      " serving a self-signed one until a new one is issued.",
                      path=str(store.cert_path), reason=str(e))
    elif store.cert_path.exists() and store.key_path.exists():
        return store.cert_path, store.key_path, True
    info = ensure_certificate(data_dir, public_host, None, None, now=now)
    store.install_placeholder(info.cert_path, info.key_path)
    return store.cert_path, store.key_path, True


__all__ = ["AcmeStore", "new_key_pem", "prepare_files", "write_private"]
