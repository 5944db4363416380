"""
Logging in to the web manager with a client certificate, without a form.

With C{--client-ca}, a browser that presents a certificate bound to an
account whose login method is C{cert} is logged in as that account when it
opens the login page (every page without a session leads there).  For a
C{cert+password} account the form is shown, and the certificate of the
connection goes with the password (L{request_certificate}); for a
C{password} account the certificate plays no part.

A certificate that is bound to a C{cert} account but refused (expired,
revoked, not from the client CA) is audited as C{web.login} with
C{method=cert} and its C{reason}, counted by the guard as a failed login,
and the form is shown with the reason.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.web.iweb import IRequest

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.cert_checker import (
    CertificateCredentials,
    CertificateRefused,
)
from rumpus_secure.accounts.checker import LockedAccountError
from rumpus_secure.accounts.client_certs import PeerCertificate
from rumpus_secure.web.app import WebApp, client_ip

#: What a person is told for each refusal.
_REFUSAL_TEXT = {
    "cert-expired": "your client certificate has expired",
    "cert-revoked": "your client certificate was revoked",
    "cert-untrusted": "your client certificate is not from this server's CA",
    "cert-other-account": "your client certificate belongs to another account",
    "cert-not-bound": "your client certificate is not registered for an account",
    "cert-missing": "this account needs a client certificate",
}


def refusal_text(reason: str) -> str:
    return _REFUSAL_TEXT.get(reason, "your client certificate was refused")


def request_certificate(request: IRequest) -> PeerCertificate | None:
    """
    The client certificate of the connection C{request} came on, or L{None}.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    while transport is not None:
        try:
            handle = transport.getHandle()
        except AttributeError:  # a test transport, or one already gone
            return None
        if isinstance(handle, SSL.Connection):
            return PeerCertificate.of(handle)
        if handle is transport:
            return None
        transport = handle if hasattr(handle, "getHandle") else None
    return None


async def certificate_login(app: WebApp, request: IRequest) -> str | None:
    """
    Log in with the connection's certificate if it is bound to a C{cert} account.

    :returns: C{"ok"} (a session was started), a refusal message for the
        form, or L{None} (no certificate login here: show the form).
    """
    checker = app.server.checker
    login = getattr(checker, "login", None)
    presented = request_certificate(request)
    if login is None or login.ca is None or presented is None:
        return None
    found = await app.server.run_in_thread(login.account_of, presented)
    if found is None or found[1] != "cert":
        return None
    name = found[0]
    guard = getattr(app.server, "guard", None)
    client = client_ip(request)
    attempt = None
    if guard is not None:
        started = await guard.begin_login(client, "web", name)
        if isinstance(started, Ban):
            return str(guard.message(started))
        attempt = started
    credentials = CertificateCredentials(name.encode("utf-8", "surrogateescape"), b"",
                                         presented)
    try:
        avatar = await checker.requestAvatarId(credentials)
    except LockedAccountError as e:
        if guard is not None and attempt is not None and (
                ban := attempt.succeeded()) is not None:
            return str(guard.message(ban))
        app.audit(request, "web.login", account=name, outcome="locked", method="cert")
        return f"This account is locked ({e.reason or 'no reason given'})."
    except CertificateRefused as e:
        app.audit(request, "web.login", account=name, outcome="failed", method="cert",
                  reason=e.reason, certificate=e.fingerprint)
        # Not a guess: the browser holds the key of a certificate bound to
        # this account, only an expired or revoked one, and may send it with
        # every page view (it banned its user, and everyone behind the same
        # address, after 15).  Audited; not scored.
        if attempt is not None:
            attempt.abandoned()
        return f"Certificate login refused: {refusal_text(e.reason)}."
    except BaseException:
        if attempt is not None:
            attempt.abandoned()
        raise
    if guard is not None and attempt is not None and (
            ban := attempt.succeeded()) is not None:
        return str(guard.message(ban))
    user = avatar.decode("utf-8", "surrogateescape")
    app.start_session(request, user)
    app.audit(request, "web.login", account=user, outcome="ok", method="cert",
              certificate=presented.fingerprint)
    return "ok"


def refusal_fields(error: Any) -> dict[str, Any]:
    """
    Audit fields for a failed form login (a refused certificate, or nothing).
    """
    if isinstance(error, CertificateRefused):
        return {"method": "cert", "reason": error.reason, "certificate": error.fingerprint}
    return {}
