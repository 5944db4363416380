"""
What ``rumpus-secure check`` says about client certificates (C{--client-ca}).

Three rules, added to L{rumpus_secure.selfcheck.SelfCheck}'s results when
C{--client-ca} is set (nothing otherwise):

 - the client CA file: readable, each CA and how long it is valid;
 - the CRL (C{--client-crl}): issued and signed by a client CA, how many
   certificates it revokes, and whether its next update is past (a stale
   CRL still applies: the server keeps refusing what it lists);
 - each TLS port (explicit FTPS after C{AUTH TLS}, implicit FTPS, HTTPS)
   asks for a client certificate and names the client CA(s) in its
   request.  Read with pyOpenSSL, whose client side shows the CA names a
   server sends (Python's C{ssl} does not); the probe presents no
   certificate, so it logs nobody in and costs the guard nothing.
"""

from __future__ import annotations

import select
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from OpenSSL import SSL

from rumpus_secure.certificates import EXPIRY_WARNING

if TYPE_CHECKING:
    from rumpus_secure.selfcheck import SelfCheck, Target

_ALPN = {"ftp": [b"ftp"], "ftps": [b"ftp"], "https": [b"http/1.1"]}


def client_certificate_checks(check: SelfCheck) -> None:
    """
    Add the client-certificate rules to C{check}'s results.
    """
    from rumpus_secure.selfcheck import Status

    config = check.config
    client_ca = getattr(config, "client_ca", None)
    if client_ca is None:
        return  # off: no rows, the report stays as it was
    try:
        cas = x509.load_pem_x509_certificates(client_ca.read_bytes())
    except (OSError, ValueError) as e:
        check._add("Client CA", Status.FAIL, f"--client-ca {client_ca}: {e}")
        return
    now = check.now()
    for ca in cas:
        check._add(f"Client CA: {ca.subject.rfc4514_string()}", *_validity(ca, now))
    if config.client_crl is not None:
        check._add("Client CRL", *_crl_status(config.client_crl, cas, now))
    for label in ("ftp", "ftps", "https"):
        description = getattr(config, label)
        if description is None:
            continue
        from rumpus_secure.selfcheck import target_for

        target = target_for(label, description, check.host)
        if isinstance(target, str):
            continue
        name = f"{label.upper()}: asks for a client certificate"
        try:
            asked = _requested_cas(target, label, check.server_name, check.timeout)
        except (OSError, SSL.Error, ValueError) as e:
            check._add(name, Status.FAIL, f"probe failed: {e}")
            continue
        wanted = [ca.subject.rfc4514_string() for ca in cas]
        if not asked:
            check._add(name, Status.FAIL, "no certificate request: is the server "
                       "running with this --client-ca?")
        elif set(wanted) <= set(asked):
            check._add(name, Status.PASS, "optional request naming " + "; ".join(asked))
        else:
            check._add(name, Status.WARN, "the request names " + "; ".join(asked)
                       + ", not " + "; ".join(wanted) + " (restart to apply)")


def _validity(cert: x509.Certificate, now: datetime) -> tuple[Any, str]:
    from rumpus_secure.selfcheck import Status

    left = cert.not_valid_after_utc - now
    until = f"{cert.not_valid_after_utc:%Y-%m-%d} UTC"
    if left.total_seconds() <= 0:
        return Status.FAIL, f"expired on {until}: no client certificate passes"
    if left < EXPIRY_WARNING:
        return Status.WARN, f"expires in {left.days} days ({until})"
    return Status.PASS, f"{left.days} days left (until {until})"


def _crl_status(path: Any, cas: list[x509.Certificate], now: datetime) -> tuple[Any, str]:
    from rumpus_secure.selfcheck import Status

    try:
        data = path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
    except (OSError, ValueError) as e:
        return Status.FAIL, f"--client-crl {path}: {e}"
    signed = any(ca.subject == crl.issuer and _signed_by(crl, ca) for ca in cas)
    if not signed:
        return Status.FAIL, (f"issued by {crl.issuer.rfc4514_string()}, not signed by a "
                             "--client-ca certificate: it revokes nothing")
    count = len(list(crl))
    following = crl.next_update_utc
    if following is not None and following < now:
        return Status.WARN, (f"{count} revoked; next update was due "
                             f"{following:%Y-%m-%d %H:%M} UTC: publish a new CRL")
    return Status.PASS, f"{count} revoked certificate(s), signed by {crl.issuer.rfc4514_string()}"


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]
    except TypeError:
        return False


def _requested_cas(target: Target, label: str, server_name: str | None,
                   timeout: float) -> list[str]:
    """
    The CA names in the certificate request of one TLS port (empty: no request).
    """
    from rumpus_secure.selfcheck import _Connection

    conn = _Connection(target, timeout)
    try:
        if label == "ftp":
            conn.ftp_reply()
            code, text = conn.ftp_command("AUTH TLS")
            if code != 234:
                raise ValueError(f"AUTH TLS answered {text}")
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos(_ALPN[label])
        tls = SSL.Connection(context, conn.sock)
        if server_name:
            tls.set_tlsext_host_name(server_name.encode("idna"))
        tls.set_connect_state()
        _handshake(tls, conn.sock, conn.deadline)
        names = [_name_text(n) for n in tls.get_client_ca_list()]
        try:
            tls.shutdown()
        except SSL.Error:
            pass
        return names
    finally:
        conn.close()


def _handshake(tls: SSL.Connection, sock: Any, deadline: float) -> None:
    """
    Finish the client handshake on the socket (non-blocking under its
    timeout) before C{deadline} (C{time.monotonic()}).
    """
    sock.setblocking(False)
    wait: tuple[list[Any], list[Any]]
    while True:
        try:
            tls.do_handshake()
            return
        except SSL.WantReadError:
            wait = ([sock], [])
        except SSL.WantWriteError:
            wait = ([], [sock])
        left = deadline - time.monotonic()
        if left <= 0 or not any(select.select(*wait, [], left)[:2]):
            raise TimeoutError("the TLS handshake did not finish in time")


def _name_text(name: Any) -> str:
    """
    A pyOpenSSL X509Name as RFC 4514 text (most specific part first).
    """
    parts = [f"{key.decode('ascii', 'replace')}={value.decode('utf-8', 'replace')}"
             for key, value in name.get_components()]
    return ",".join(reversed(parts))
