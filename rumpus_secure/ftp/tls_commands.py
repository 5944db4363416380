"""
RFC 4217 on the control connection: AUTH TLS, PBSZ, PROT, CCC, and the rule
for data connections under PROT.

A mixin of L{rumpus_secure.ftp.control.ControlProtocol}, which owns the
connection's state (C{secure}, C{prot}, C{pbsz_done}) and the command loop.
What matters here, from RFC 4217 and the STARTTLS injection family
(CVE-2011-0411): a byte that arrived in the clear behind C{AUTH TLS} is never
executed (the connection is closed with 503 instead); AUTH resets the
session's transfer state (section 4.2); CCC is refused (534), so the control
connection never drops back to cleartext; the handshake after AUTH has its
own deadline (L{rumpus_secure.handshake}, 15 s by default), so a client that
stalls it holds no slot for the 600 s idle timeout.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

from rumpus_secure.ftp.policy import AUTH_MECHANISMS
from rumpus_secure.handshake import watch_handshake
from rumpus_secure.tls import SessionBinding, session_binding


class TLSCommands:
    """
    The TLS commands of the control connection (a mixin).
    """

    # Provided by ControlProtocol.
    secure: bool
    implicit: bool
    prot: str
    pbsz_done: bool
    transport: Any

    #: The control connection's TLS session identity (context and session
    #: id context) that its data connections must resume; set when the
    #: handshake completes (L{rumpus_secure.tls.session_binding}).
    tls_binding: SessionBinding | None = None

    def handshakeCompleted(self) -> None:
        self._cancel_handshake_deadline()
        connection = self._tls_connection()
        if connection is not None:
            self.tls_version = connection.get_protocol_version_name()
            # Kept: data connections resume this context's sessions, and a
            # transfer may still be set up after the control connection has
            # gone (its transport is None then).
            self.tls_context_in_use = connection.get_context()
            self.tls_binding = session_binding(connection)
        self._audit("ftp.tls_established", outcome="ok",
                    mode="implicit" if self.implicit else "explicit")
        if self.implicit and not self._closing:
            self.sendLine(self._greeting())

    def _tls_connection(self) -> SSL.Connection | None:
        try:
            handle = self.transport.getHandle()
        except Exception:
            return None
        return handle if isinstance(handle, SSL.Connection) else None

    def ftp_AUTH(self, mechanism: str) -> str | None:
        mechanism = mechanism.strip().upper()
        if not self.policy.explicit_tls_offered and not self.secure:
            return "534 AUTH is not offered here. " + self.policy.how_to_connect()
        if self.secure:
            return "503 The connection is already protected by TLS."
        if mechanism not in AUTH_MECHANISMS:
            return "504 Only AUTH TLS is supported."
        if self._has_buffered_input():
            # Bytes sent behind AUTH in the clear would otherwise be read as
            # if they came inside TLS (the STARTTLS injection, CVE-2011-0411).
            self._audit("ftp.auth_injection", outcome="closed")
            self.sendLine("503 Spurious data after AUTH command; closing.")
            self.close()
            return None
        self.sendLine("234 AUTH TLS successful; start the TLS handshake.")
        self._reset_session()
        if AUTH_MECHANISMS[mechanism] == "P":
            self.prot = "P"
            self.pbsz_done = True
        self.secure = True
        self.transport.startTLS(self.session_factory.tls_context)
        # The handshake gets its own deadline, not the 600 s idle timeout.
        tls = self.session_factory.shared.tls
        in_flight = getattr(tls, "handshakes_in_flight", None)
        self._handshake_deadline = watch_handshake(
            self.reactor, self.transport, self.config.handshake_timeout,
            self._handshake_timed_out,
            in_flight(self.reactor) if in_flight is not None else None,
        )
        return None

    def _handshake_timed_out(self) -> None:
        self._audit("ftp.tls_timeout", outcome="closed")

    def _cancel_handshake_deadline(self) -> None:
        deadline, self._handshake_deadline = self._handshake_deadline, None
        if deadline is not None:
            deadline.cancel()

    def ftp_PBSZ(self, size: str) -> str:
        if not self.secure:
            return "503 PBSZ is only valid after AUTH TLS."
        if not size.strip().isdigit():
            return "501 PBSZ needs a number; use PBSZ 0."
        self.pbsz_done = True
        return "200 PBSZ=0"

    def ftp_PROT(self, level: str) -> str:
        level = level.strip().upper()
        if not self.secure:
            return "503 PROT is only valid after AUTH TLS."
        if not self.pbsz_done:
            return "503 Send PBSZ 0 before PROT."
        if level in ("S", "E"):
            return f"536 Protection level {level} is not supported; use PROT P."
        if level not in ("C", "P"):
            return f"504 Unknown protection level {level[:8]!r}; use PROT P."
        self.prot = level
        if level == "C" and self.config.data_tls == "required":
            return ("200 Protection level C set, but this server transfers "
                    "only encrypted data: send PROT P before transferring.")
        return f"200 Protection level {level} set."

    def ftp_CCC(self) -> str:
        self._audit("ftp.ccc_refused")
        return "534 CCC refused by policy: the control connection stays encrypted."

    def _data_refusal(self) -> str | None:
        if self.prot == "P" or not self.secure:
            return None
        if self.config.data_tls == "required":
            self._audit("ftp.prot_c_refused", account=self.account)
            return ("521 Data connections must be encrypted on this server: "
                    "send PBSZ 0 and PROT P, then retry.")
        return None
