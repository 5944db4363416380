"""
FTPS logins with a client certificate (a mixin of the control protocol).

The login method of an account (C{rumpus-secure user auth NAME ...}) is
applied by the server's checker
(L{rumpus_secure.accounts.cert_checker.CertificateAwareChecker}); this
mixin hands it the certificate of the control connection and reports what
it decided.  The control protocol calls its hooks (a mixin cannot override
the protocol's own C{ftp_USER}/C{ftp_PASS}):

 - every USER/PASS login carries the connection's certificate
   (L{_login_credentials}); a refusal is audited as C{ftp.login} with
   C{method=cert} and its C{reason} (L{_login_audit_fields}) and, being an
   C{UnauthorizedLogin}, is counted by the guard like a wrong password;
 - C{USER NAME} alone logs a C{cert} account in (RFC 2228's "logged in,
   authorized by security data exchange", code 232) when the certificate of
   the connection passes for NAME (L{_user_reply}): clients need no PASS.
   If it does not pass, USER answers 331 as for anyone, and the PASS that
   follows gets the refusal, audited and counted.  Nothing about the
   account shows in that 331, whatever certificate was presented;
 - a PASS after such a login is answered "230 Already logged in"
   (L{_pass_after_certificate_login});
 - the data connections must present the control connection's certificate
   (L{_data_tls}: C{TLSSettings.client_cert}, checked by
   L{rumpus_secure.ftp.transfer}); a data connection whose certificate
   differs (or that has none when the control connection had one) is
   refused before any byte of a file moves.  With resumption required (the
   default) a data connection resumes the control connection's session,
   which carries its certificate; the check matters with
   C{--data-tls-reuse optional}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import defer

from rumpus_secure.accounts.cert_checker import (
    CertificateCredentials,
    CertificateRefused,
)
from rumpus_secure.accounts.client_certs import PeerCertificate


class ClientCertLogin:
    """
    The control protocol's side of client-certificate logins (a mixin).
    """

    #: The fingerprint of the certificate the session logged in with.
    login_certificate: str | None = None
    _cert_login_at_user = False
    _login_creds: CertificateCredentials | None = None
    _control_cert: Any = ()

    def _peer_certificate(self) -> PeerCertificate | None:
        """
        The control connection's client certificate (kept: a transfer may be
        set up after the connection is gone).
        """
        if self._control_cert == ():
            connection = self._tls_connection()  # type: ignore[attr-defined]
            if connection is None:
                return None
            self._control_cert = PeerCertificate.of(connection)
        return self._control_cert  # type: ignore[no-any-return]

    def _certificate_login(self) -> Any:
        """
        The server's L{CertificateLogin}, or L{None} (no client CA).
        """
        server = self.session_factory.shared.server  # type: ignore[attr-defined]
        login = getattr(getattr(server, "checker", None), "login", None)
        if login is None or login.ca is None:
            return None
        return login

    def _login_credentials(self, name: str, password: str) -> CertificateCredentials:
        self._login_creds = CertificateCredentials(
            name.encode("utf-8", "surrogateescape"),
            password.encode("utf-8", "surrogateescape"),
            self._peer_certificate(),
            "ftps" if self.secure else "ftp")  # type: ignore[attr-defined]
        return self._login_creds

    def _login_audit_fields(self, failure: Any = None) -> dict[str, Any]:
        """
        What the audit of a login says about the certificate.
        """
        if failure is not None:
            if failure.check(CertificateRefused):
                return {"method": "cert", "reason": failure.value.reason,
                        "certificate": failure.value.fingerprint}
            return {}
        creds, self._login_creds = self._login_creds, None
        verdict = getattr(creds, "verdict", None)
        if verdict is None or verdict.mode == "password":
            return {}
        self.login_certificate = verdict.fingerprint
        return {"method": verdict.mode, "certificate": verdict.fingerprint}

    def _user_reply(self, reply: str) -> Any:
        """
        What USER answers: C{reply} (331), or a login by certificate.

        Called by C{ftp_USER} once it has accepted the name.
        """
        login = self._certificate_login()
        presented = self._peer_certificate() if login is not None else None
        name: str | None = getattr(self, "_user", None)
        if presented is None or name is None:
            return reply
        return defer.Deferred.fromCoroutine(
            self._login_at_user(login, name, presented, reply))

    async def _login_at_user(self, login: Any, name: str, presented: PeerCertificate,
                             reply: str) -> Any:
        """
        Log a C{cert} account in on USER alone; anything else gets C{reply}.
        """
        server = self.session_factory.shared.server  # type: ignore[attr-defined]
        watcher = self._account_watcher()  # type: ignore[attr-defined]
        seq = await watcher.fresh() if watcher is not None else None
        verdict = await server.run_in_thread(login.check, name, presented)
        if (verdict.mode != "cert" or verdict.refusal is not None
                or self._closing  # type: ignore[attr-defined]
                or getattr(self, "_user", None) != name):
            return reply  # PASS decides, audited and counted there
        guard = self.guard  # type: ignore[attr-defined]
        if guard is not None:
            ban = guard.check(self.client_host, self._protocol_name)  # type: ignore[attr-defined]
            if ban is not None:
                self._turn_away(ban)  # type: ignore[attr-defined]
                return None
        self._user = None
        self.state = self.UNAUTH  # type: ignore[attr-defined]
        self._login_seq = seq
        self._cert_login_at_user = True
        answer = await self._verify(name, "", None)  # type: ignore[attr-defined]
        if isinstance(answer, str) and answer.startswith("230 "):
            return "232 " + answer[4:]
        self.login_certificate = None
        self._cert_login_at_user = False
        return answer

    def _pass_after_certificate_login(self) -> str | None:
        """
        The answer to a PASS sent after USER logged in by certificate, else
        L{None} (the PASS is handled as usual).
        """
        if self._cert_login_at_user and self.state == self.AUTHED:  # type: ignore[attr-defined]
            return "230 Already logged in with your certificate."
        return None

    def _forget_certificate_login(self) -> None:
        """
        REIN or AUTH: the next login starts afresh.
        """
        self.login_certificate = None
        self._cert_login_at_user = False

    def _data_tls(self) -> Any:
        settings = super()._data_tls()  # type: ignore[misc]
        if settings is None or self._certificate_login() is None:
            return settings
        presented = self._peer_certificate()
        return dataclasses.replace(
            settings, check_client_cert=True,
            client_cert=None if presented is None else presented.fingerprint)
