"""
The password policy: long enough, and not one everybody tries first.

Applied wherever a person chooses a password (``rumpus-secure user add``,
``user passwd``, and any future web password change through
L{PasswordPolicy.check}); a generated password (``--generate-password``, the
first-start admin) is 20 random URL-safe characters and passes by
construction.

The rules follow NIST SP 800-63B (section 5.1.1.2): a minimum length, a
check against a list of passwords known from breaches, and no composition
rules (no "one digit and one symbol"), which push people to ``Password1!``.

- B{Length.}  800-63B asks for at least 8 characters; its 2024 revision
  (800-63B-4) asks for 15 where the password is the only factor, as it is
  here.  The default, L{DEFAULT_MIN_LENGTH} = 12, sits between the two: an
  online guesser is already held to a few guesses a minute per address by
  the guard, and 12 lower-case letters alone are 26**12 = 9.5e16
  candidates.  ``--password-min-length`` sets it (8 at least, per 800-63B).
- B{Common passwords.}  C{data/common-passwords.txt} holds the 8,359
  passwords of 8 or more characters from the list of the 20,000 most common
  passwords that Django ships (``django/contrib/auth/common-passwords.txt.gz``,
  derived by Royce Williams from breach corpora, lower-cased); shorter ones
  can never pass the length rule, so they are left out.  The comparison is
  case-insensitive: ``PASSWORD123`` is as common as ``password123``.
- B{Context.}  The account's own name, and a password of fewer than four
  distinct characters (``aaaaaaaaaaaa``, ``abababababab``), are refused too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from rumpus_secure.accounts.store import AccountError

#: Characters a chosen password needs by default (see the module docstring).
DEFAULT_MIN_LENGTH = 12

#: The lowest minimum the option accepts: NIST SP 800-63B's 8.
LOWEST_MIN_LENGTH = 8

#: Longest password accepted; 800-63B asks to allow at least 64.
MAX_LENGTH = 1024

#: A password needs at least this many different characters.
MIN_DISTINCT = 4


class WeakPassword(AccountError):
    """
    The password breaks the policy; the message says which rule and what to do.
    """


@functools.cache
def common_passwords() -> frozenset[str]:
    """
    The bundled list of common passwords, lower-cased (read once).
    """
    text = (resources.files("rumpus_secure.accounts") / "data" / "common-passwords.txt"
            ).read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class PasswordPolicy:
    """
    The rules a chosen password must meet.
    """

    min_length: int = DEFAULT_MIN_LENGTH

    def problem(self, password: str, account: str | None = None) -> str | None:
        """
        Why C{password} is refused for C{account}, or L{None} if it is fine.

        The message never repeats the password.
        """
        if len(password) < self.min_length:
            return (f"the password is too short: {len(password)} characters, at least "
                    f"{self.min_length} needed")
        if len(password) > MAX_LENGTH:
            return f"the password is longer than {MAX_LENGTH} characters"
        folded = password.lower()
        if folded.strip() in common_passwords():
            return ("the password is on the list of the most common passwords, "
                    "which attackers try first")
        if account and folded == account.lower():
            return "the password is the account name"
        if len(set(password)) < MIN_DISTINCT:
            return (f"the password has fewer than {MIN_DISTINCT} different "
                    "characters")
        return None

    def check(self, password: str, account: str | None = None) -> None:
        """
        Raise L{WeakPassword} if C{password} breaks the policy.
        """
        problem = self.problem(password, account)
        if problem is not None:
            raise WeakPassword(
                f"{problem}; nothing changed (choose a longer passphrase, or use "
                "--generate-password)"
            )
