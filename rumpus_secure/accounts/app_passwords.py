"""
App passwords: how an account with two-factor login uses FTP.

FTP cannot ask for a one-time code, and a client such as FileZilla keeps
its password for months.  So an account whose web login needs a second
factor does not log in to FTP with its main password at all (the checker
answers ``530`` and says why); instead its owner creates, on the web, one
app password per client.  Each has a name, is shown once, is stored as an
argon2id hash, can be revoked on its own (its open FTP sessions end), and
works only on FTPS (a TLS-protected control connection), never on the web
login and never in cleartext.  Any account may have them, with or without
two-factor login.

An app password reads ``rsap-<id>-<secret>``: C{id} is 10 base32
characters that name the row (so a login verifies one argon2id hash, not
one per app password of the account) and C{secret} 26 base32 characters,
130 random bits.  The prefix makes a leaked one easy to recognise.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

PREFIX = "rsap"
ID_LENGTH = 10
SECRET_LENGTH = 26
MAX_LABEL = 60
MAX_PER_ACCOUNT = 20

_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_FORM = re.compile(
    rf"{PREFIX}-([a-z2-7]{{{ID_LENGTH}}})-([a-z2-7]{{{SECRET_LENGTH}}})\Z")


@dataclass(frozen=True)
class NewAppPassword:
    ident: str
    password: str


def generate() -> NewAppPassword:
    """A fresh app password and its id."""
    ident = "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return NewAppPassword(ident, f"{PREFIX}-{ident}-{secret}")


def ident_of(password: str) -> str | None:
    """The id in C{password} if it has the form of an app password."""
    found = _FORM.match(password.strip().lower())
    return None if found is None else found.group(1)


def clean_label(label: str | None) -> str:
    """
    One line of at most L{MAX_LABEL} characters.

    @raises ValueError: an empty name.
    """
    text = " ".join(str(label or "").split())[:MAX_LABEL]
    if not text:
        raise ValueError("give the app password a name, such as the client it is for")
    return text
