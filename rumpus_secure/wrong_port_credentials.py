"""
Passwords sent in the clear to a TLS port: the careless-client problem on
the wrong port.

A client that speaks plain FTP to the implicit FTPS port, or plain HTTP to
the HTTPS port, gets a plain answer that says where to go
(L{rumpus_secure.sniff}).  A careless one has already sent its password by
then: ``USER erin`` and ``PASS ...`` pipelined, an ``Authorization: Basic``
header, a login form.  An attacker found those passwords were neither
checked nor audited, while the same bytes sent to the plain FTP or HTTP port
quarantine the account (round 3).  These functions find the credentials in
the first bytes the sniffer holds (nothing more is read: the connection is
answered and closed at once), and L{watch_wrong_port} hands them to the
exposure guard and scores the address like any cleartext login.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable
from urllib.parse import parse_qs

#: Field names that carry a password in a form or a query.
PASSWORD_FIELDS = ("password", "pass", "passwd")

Credentials = tuple[str | None, str]


def ftp_credentials(first: bytes) -> Credentials | None:
    """
    The USER and PASS pipelined in C{first}, if a PASS is there.
    """
    user: str | None = None
    for raw in first.replace(b"\r", b"").split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        verb, _, argument = line.partition(" ")
        if verb.upper() == "USER":
            user = argument.strip() or None
        elif verb.upper() == "PASS":
            return user, argument
    return None


def http_credentials(first: bytes) -> Credentials | None:
    """
    Credentials in a plain HTTP request's head (C{Authorization} or
    C{Proxy-Authorization: Basic}), query, or urlencoded body (as much of it
    as C{first} holds).
    """
    head, _, body = first.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or b" " not in lines[0]:
        return None
    target = lines[0].split(b" ")[1] if len(lines[0].split(b" ")) > 1 else b""
    form_body = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name in (b"authorization", b"proxy-authorization"):
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"basic":
                try:
                    decoded = base64.b64decode(token.strip(), validate=True)
                except (binascii.Error, ValueError):
                    continue
                user, sep, password = decoded.decode("utf-8", "surrogateescape").partition(":")
                if sep:
                    return user or None, password
        elif name == b"content-type":
            form_body = value.lower().startswith(b"application/x-www-form-urlencoded")
    sources = [target.partition(b"?")[2]]
    if form_body:
        sources.append(body)
    for source in sources:
        fields = parse_qs(source.decode("utf-8", "surrogateescape"), keep_blank_values=True)
        for field in PASSWORD_FIELDS:
            if fields.get(field):
                user = (fields.get("username") or fields.get("user") or [None])[0]
                return user, fields[field][0]
    return None


def watch_wrong_port(server: Any, protocol: str,
                     parse: Callable[[bytes], Credentials | None]) -> Callable[[bytes, str], None]:
    """
    A sniffer observer: credentials in a wrong-port client's first bytes are
    checked for exposure (and quarantine the account if real), and score the
    address as a cleartext login.
    """

    def observe(first: bytes, client: str) -> None:
        found = parse(first) if first else None
        if found is None:
            return
        user, password = found
        guard = getattr(server, "guard", None)
        if guard is not None:
            guard.offence(client, "cleartext_login", protocol=protocol, account=user)
        exposure = getattr(server, "exposure", None)
        if exposure is not None:
            exposure.check(protocol=protocol, client=client, user=user, password=password)

    return observe
