"""
Client-certificate bindings and login methods in the shared PostgreSQL
database: the twin of L{rumpus_secure.accounts.client_certs.ClientCertStore}
for C{--database postgresql://...} (schema version 3,
L{rumpus_secure.db.MIGRATIONS}).

Apart from L{rumpus_secure.accounts.pg} (already past the ~500 lines of a
module) and imported only with a PostgreSQL store, by
L{rumpus_secure.accounts.client_certs.client_cert_store}.

Every method blocks; call them from a thread.
"""

from __future__ import annotations

from typing import Any, Callable

from rumpus_secure.accounts.client_certs import (
    AUTH_MODES,
    CertBinding,
    _normal_fingerprint,
    fingerprint_of,
    load_certificate_bytes,
)
from rumpus_secure.accounts.pg import PGAccountStore, _record_account
from rumpus_secure.accounts.store import AccountError
from rumpus_secure.db import LOCK_ACCOUNT_LOG

_COLUMNS = "fingerprint, name, subject, not_after, added"


def _binding(row: tuple) -> CertBinding:  # type: ignore[type-arg]
    fingerprint, name, subject, not_after, added = row
    return CertBinding(fingerprint, name, subject, float(not_after), float(added))


class PGClientCertStore:
    """
    Client-certificate bindings and login methods in the shared database;
    the same methods and meaning as
    L{rumpus_secure.accounts.client_certs.ClientCertStore}.

    Every write takes the account log's lock and records its change
    (C{cert-add}, C{cert-del}, C{auth}) in the same transaction, announced to
    the other nodes on commit: a binding removed on one node ends the
    account's FTP sessions on all of them, and a removal or a new login
    method moves C{password_changed}, which ends its web sessions everywhere.
    Reads go to the primary at every login, never a cache.  Deleting the
    account deletes its rows with it (foreign keys, schema version 3).

    On loopback with 2,000 bindings, the reads of a certificate login
    (login method + owner) take about 124 microseconds median (SQLite 9),
    setting a login method with its log row and NOTIFY 310 (SQLite 28), next
    to 30-60 ms of argon2id for a password, C{python bench/pg_client_certs.py}.
    """

    def __init__(self, store: PGAccountStore,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.database = store.database
        self._clock = clock or store._clock

    def _writing(self) -> Any:
        return self.database.transaction(lock=LOCK_ACCOUNT_LOG)

    @staticmethod
    def _exists(conn: Any, name: str) -> None:
        # Under the log's lock, which a delete takes too: the account is
        # still there when this transaction commits.
        if conn.execute("SELECT 1 FROM accounts WHERE name = %s",
                        (name,)).fetchone() is None:
            raise AccountError(f"no account named {name!r}")

    @staticmethod
    def _credentials_changed(conn: Any, name: str, now: float) -> None:
        conn.execute("UPDATE accounts SET version = version + 1, changed = %s, "
                     "password_changed = %s WHERE name = %s", (now, now, name))

    def add(self, name: str, pem_or_der: bytes) -> CertBinding:
        cert = load_certificate_bytes(pem_or_der)
        fingerprint = fingerprint_of(cert)
        now = self._clock()
        binding = CertBinding(fingerprint, name, cert.subject.rfc4514_string(),
                              cert.not_valid_after_utc.timestamp(), now)
        with self._writing() as conn:
            self._exists(conn, name)
            owner = conn.execute("SELECT name FROM client_certs WHERE fingerprint = %s",
                                 (fingerprint,)).fetchone()
            if owner is not None:
                raise AccountError(f"certificate {fingerprint} is already bound to "
                                   f"account {owner[0]!r}")
            conn.execute(
                "INSERT INTO client_certs (fingerprint, name, subject, not_after, added) "
                "VALUES (%s, %s, %s, %s, %s)",
                (fingerprint, name, binding.subject, binding.not_after, now))
            _record_account(conn, name, "cert-add", fingerprint, now)
        return binding

    def list(self, name: str | None = None) -> list[CertBinding]:
        with self.database.connection() as conn:
            if name is None:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM client_certs "
                                    'ORDER BY name COLLATE "C", added').fetchall()
            else:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM client_certs "
                                    "WHERE name = %s ORDER BY added", (name,)).fetchall()
        return [_binding(row) for row in rows]

    def delete(self, name: str, fingerprint: str) -> CertBinding:
        wanted = _normal_fingerprint(fingerprint)
        if len(wanted.replace(":", "")) < 8:
            raise AccountError("give at least 8 hex digits of the fingerprint")
        now = self._clock()
        with self._writing() as conn:
            self._exists(conn, name)
            rows = [_binding(row) for row in conn.execute(
                f"SELECT {_COLUMNS} FROM client_certs WHERE name = %s",
                (name,)).fetchall() if row[0].startswith(wanted)]
            if not rows:
                raise AccountError(f"account {name!r} has no certificate {wanted}")
            if len(rows) > 1:
                raise AccountError(f"{wanted} matches {len(rows)} certificates; "
                                   "give more of the fingerprint")
            conn.execute("DELETE FROM client_certs WHERE fingerprint = %s",
                         (rows[0].fingerprint,))
            self._credentials_changed(conn, name, now)
            _record_account(conn, name, "cert-del", rows[0].fingerprint, now)
        return rows[0]

    def owner(self, fingerprint: str) -> str | None:
        with self.database.connection() as conn:
            row = conn.execute("SELECT name FROM client_certs WHERE fingerprint = %s",
                               (fingerprint,)).fetchone()
        return None if row is None else str(row[0])

    def auth_mode(self, name: str) -> str:
        with self.database.connection() as conn:
            row = conn.execute("SELECT mode FROM account_auth WHERE name = %s",
                               (name,)).fetchone()
        return "password" if row is None else str(row[0])

    def set_auth_mode(self, name: str, mode: str) -> None:
        if mode not in AUTH_MODES:
            raise AccountError(f"unknown login method {mode!r}: choose from "
                               + ", ".join(AUTH_MODES))
        now = self._clock()
        with self._writing() as conn:
            self._exists(conn, name)
            conn.execute("INSERT INTO account_auth (name, mode) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET mode = EXCLUDED.mode",
                         (name, mode))
            self._credentials_changed(conn, name, now)
            _record_account(conn, name, "auth", mode, now)
