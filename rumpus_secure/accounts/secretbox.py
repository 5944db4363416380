"""
Encryption at rest for secrets the server must read back (TOTP seeds).

A password is stored as an argon2id hash because the server only has to
recognise it.  A TOTP secret cannot be hashed: the server computes codes
from it.  Kept in the clear beside the password hash, one stolen copy of
``accounts.sqlite3`` (a backup, a snapshot) would give away both factors.
So the secret is sealed with AES-256-GCM (the C{cryptography} package, no
cipher of our own) under a key in ``DATA-DIR/secret.key`` (mode 0600,
32 random bytes, created on first need).  A database copied without the
key file holds nothing usable; each sealed value carries its own 96-bit
random nonce and is bound, as associated data, to the account name and the
purpose, so a sealed secret moved to another account's row does not open.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secret.key"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Format byte in front of every sealed value, so the scheme can change.
VERSION = b"\x01"


class SecretBoxError(Exception):
    """The key file is unusable or a sealed value does not open."""


def load_or_create_key(path: Path) -> bytes:
    """
    The key in C{path}, created (mode 0600, exclusively) if missing.

    @raises SecretBoxError: the file exists with the wrong length or is
        readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretBoxError(
            f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SecretBoxError(f"{path} is not a {KEY_BYTES}-byte key")
    return key


class SecretBox:
    """
    Seals and opens short secrets with one AES-256-GCM key.

    @param key_path: the key file; read (or created) on first use, so a
        server without two-factor accounts never writes it.
    """

    def __init__(self, key_path: Path) -> None:
        self.key_path = Path(key_path)
        self._aead: AESGCM | None = None

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SecretBox:
        return cls(Path(data_dir) / KEY_FILE)

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(load_or_create_key(self.key_path))
        return self._aead

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """
        C{plaintext} encrypted and authenticated, bound to C{context}.
        """
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, plaintext, context.encode("utf-8"))
        return VERSION + nonce + sealed

    def open(self, sealed: bytes, context: str) -> bytes:
        """
        The plaintext of C{sealed}.

        @raises SecretBoxError: wrong key, wrong context, or tampered data.
        """
        sealed = bytes(sealed)
        if not sealed.startswith(VERSION) or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SecretBoxError("not a sealed value")
        nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            return self._cipher().decrypt(nonce, body, context.encode("utf-8"))
        except InvalidTag:
            raise SecretBoxError(
                "a sealed secret does not open: wrong secret.key, or the data "
                "was changed") from None
