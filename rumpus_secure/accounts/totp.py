"""
Two-factor login with time-based one-time codes (TOTP, RFC 6238).

The arithmetic is C{pyotp}'s (HMAC-SHA1, 6 digits, 30-second steps: what
every authenticator app speaks); the QR code is C{segno}'s.  This module
adds what a server must decide for itself:

B{The window.}  A code is accepted for the step it was made in and one
step either side (L{WINDOW}): a phone clock 30 s off, or a code typed in
the last seconds of its step, still works.  That is 3 codes out of 10**6
live at a time, so a blind guess succeeds with p = 3e-6; the guard bans an
address after a handful of wrong codes (they are offences like wrong
passwords), which keeps the odds per address and window near 1.5e-5.

B{No replay.}  The store keeps the last step a code was accepted for and
accepts only later steps, with one conditional UPDATE (atomic across the
server's threads and the CLI's process).  A code seen over a shoulder, or
sent twice by a double click, works once; so does the code of an earlier
step after a later one was used (RFC 6238 section 5.2).

B{Recovery codes.}  Ten codes of 16 base32 characters (80 random bits),
shown once.  They are stored as SHA-256 digests, not argon2id: 80 random
bits cannot be brute-forced from a digest (2**80 SHA-256 computations),
and a lookup by digest costs one indexed query instead of ten 19 MiB
argon2id runs per login.  Each works once.

B{The secret at rest} is sealed with L{rumpus_secure.accounts.secretbox}
under ``DATA-DIR/secret.key``; the account database holds only the sealed
bytes.  Every method here blocks (database, key file): call them from a
thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import pyotp
import segno

from rumpus_secure.accounts.secretbox import SecretBox

#: Steps accepted either side of the current one.
WINDOW = 1
STEP_SECONDS = 30
DIGITS = 6
RECOVERY_CODES = 10
#: base32 characters per recovery code (5 bits each: 80 bits).
RECOVERY_LENGTH = 16
ISSUER = "rumpus-secure"

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def new_secret() -> str:
    """A fresh 160-bit TOTP secret in base32 (RFC 4226 recommends 160)."""
    return pyotp.random_base32(32)


def matching_step(secret: str, code: str, now: float, after_step: int = 0) -> int | None:
    """
    The time step whose code is C{code}, within L{WINDOW} of C{now} and
    later than C{after_step}; L{None} if none is.

    Every step of the window is compared (in constant time), so the answer
    takes as long whichever matched.
    """
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = totp.timecode(now)
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        expected = totp.generate_otp(step)
        if hmac.compare_digest(expected.encode(), code.encode()) and step > after_step:
            found = step if found is None else found
    return found


def code_at(secret: str, when: float) -> str:
    """The code for the step of C{when} (tests and the CLI's self-test)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).at(when)


def provisioning_uri(secret: str, account: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """
    The QR code of C{uri} as an inline C{<svg>} element: no inline style
    (the site's CSP forbids it), black on white whatever the page theme.
    """
    return segno.make(uri, error="m").svg_inline(
        scale=5, dark="#000", light="#fff", border=4, omitsize=False,
        title="QR code for your authenticator app")


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Fresh recovery codes, formatted ``abcd-efgh-ijkl-mnop``."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_BASE32) for _ in range(RECOVERY_LENGTH))
        codes.append("-".join(raw[i:i + 4] for i in range(0, RECOVERY_LENGTH, 4)))
    return codes


def recovery_digest(code: str) -> bytes:
    """The stored form of a recovery code (case, spaces and dashes ignored)."""
    clean = "".join(c for c in code.lower() if c.isalnum())
    return hashlib.sha256(b"rumpus-recovery\0" + clean.encode("ascii", "replace")).digest()


def looks_like_recovery_code(code: str) -> bool:
    clean = "".join(c for c in code.lower() if c.isalnum())
    return len(clean) == RECOVERY_LENGTH and all(c in _BASE32 for c in clean)


@dataclass(frozen=True)
class TwoFactorStatus:
    """
    @ivar required: the administrator requires it (or reset it): the next
        web login must enrol.
    @ivar enabled: a secret is confirmed; logins ask for a code.
    @ivar recovery_left: unused recovery codes.
    """

    required: bool
    enabled: bool
    recovery_left: int

    @property
    def on(self) -> bool:
        """Whether the main password alone is refused (web and FTP)."""
        return self.required or self.enabled


OFF = TwoFactorStatus(required=False, enabled=False, recovery_left=0)


class TwoFactor:
    """
    Enrolment and verification for one server, over the account store's
    two-factor methods (L{rumpus_secure.accounts.store.ITwoFactorStore}).

    @param store: the account store.
    @param box: seals the secrets.
    @param clock: seconds since the epoch.
    """

    def __init__(self, store: Any, box: SecretBox,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.box = box
        self.clock = clock

    @staticmethod
    def _context(name: str) -> str:
        return "totp:" + name

    def status(self, name: str) -> TwoFactorStatus:
        reader = getattr(self.store, "two_factor", None)  # a store without 2FA
        row = None if reader is None else reader(name)
        if row is None:
            return OFF
        return TwoFactorStatus(required=row.required, enabled=row.secret is not None,
                               recovery_left=row.recovery_left)

    def pending_secret(self, name: str) -> str:
        """
        The secret being enrolled, made and stored (sealed) on first call;
        a reload of the enrolment page shows the same QR code.
        """
        row = self.store.two_factor(name)
        if row is not None and row.pending is not None:
            return self.box.open(row.pending, self._context(name)).decode("ascii")
        secret = new_secret()
        self.store.set_pending_secret(name, self.box.seal(secret.encode("ascii"),
                                                          self._context(name)))
        return secret

    def confirm(self, name: str, code: str) -> list[str] | None:
        """
        Turn two-factor login on if C{code} matches the pending secret.

        @returns: the new recovery codes (show them once), or L{None} for a
            wrong code or no pending enrolment.
        """
        row = self.store.two_factor(name)
        if row is None or row.pending is None:
            return None
        secret = self.box.open(row.pending, self._context(name)).decode("ascii")
        step = matching_step(secret, code, self.clock())
        if step is None:
            return None
        codes = new_recovery_codes()
        if not self.store.enable_two_factor(name, row.pending, step,
                                            [recovery_digest(c) for c in codes]):
            return None
        return codes

    def verify(self, name: str, code: str) -> str | None:
        """
        Check a login's second factor.

        @returns: ``"code"`` or ``"recovery"`` (which was used up), or
            L{None} for a wrong, replayed or unusable code.
        """
        row = self.store.two_factor(name)
        if row is None or row.secret is None:
            return None
        if looks_like_recovery_code(code):
            if self.store.use_recovery_code(name, recovery_digest(code)):
                return "recovery"
            return None
        secret = self.box.open(row.secret, self._context(name)).decode("ascii")
        step = matching_step(secret, code, self.clock(), after_step=row.last_step)
        if step is None or not self.store.use_totp_step(name, step):
            return None
        return "code"
