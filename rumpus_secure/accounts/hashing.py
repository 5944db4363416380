"""
Password hashing with argon2id.

Every password is hashed with argon2id through argon2-cffi's
L{PasswordHasher}.  The production parameters live in L{DEFAULT_HASHER}:
19 MiB of memory, time cost 2, 1 lane: the configuration OWASP's password
storage guidance gives first for argon2id (its other settings, such as
46 MiB with time cost 1, are listed as equal in strength).  One verification
takes about 17 ms on one core of a small server (measured here), against
42 ms for 46 MiB/t=1 and 66 ms, both cores busy, for the 64 MiB/t=2/4-lane
setting used before: that one allowed 17 first logins a second on two cores,
less than half of what vsftpd's yescrypt manages on the same machine.  A
single lane also lets concurrent logins use the cores instead of fighting
over them.  The checker runs verification in a thread so the reactor never
waits for it; stored hashes made with other parameters are re-hashed at the
next successful login.

Memory matters as much as time: every verification running at the same time
holds 19 MiB, so the number of threads that verify is a memory budget too
(see L{rumpus_secure.accounts.checker.verify_thread_pool}).

Unknown users cost the same as known ones: L{verify_password} with no stored
hash verifies against a dummy hash made with the same parameters and then
returns L{False}, so response time does not tell an attacker which account
names exist.

Text going in is normalised by L{normalise_text} in both directions (hashing
and verifying), so a password typed in the CLI, sent as UTF-8 bytes, or
handed over by Twisted's FTP code as a latin-1-decoded string all give the
same text.

Every function takes an optional C{hasher} so tests can inject cheap
parameters; production code leaves it out.
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.logger import Logger

_log = Logger()

TIME_COST = 2
MEMORY_COST_KIB = 19 * 1024
PARALLELISM = 1

DEFAULT_HASHER = PasswordHasher(
    time_cost=TIME_COST,
    memory_cost=MEMORY_COST_KIB,
    parallelism=PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

_dummy_lock = threading.Lock()
_dummy_hashes: dict[tuple[int, int, int, int, int, Type], str] = {}


def normalise_text(value: str | bytes) -> str:
    """
    Turn a user name or password from any protocol into one canonical text.

    Bytes are decoded as UTF-8, or as latin-1 when they are not valid UTF-8
    (every byte string decodes as latin-1, so nothing is lost).  A string
    whose characters all fit in latin-1 is first turned back into those bytes
    and decoded the same way: Twisted's FTP server decodes commands as
    latin-1, so a UTF-8 client's ``é`` arrives as ``Ã©`` and is repaired
    here, while a genuine ``é`` (not valid UTF-8 as a single byte) is kept.
    """
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            return value
    else:
        raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _key(hasher: PasswordHasher) -> tuple[int, int, int, int, int, Type]:
    return (
        hasher.time_cost,
        hasher.memory_cost,
        hasher.parallelism,
        hasher.hash_len,
        hasher.salt_len,
        hasher.type,
    )


def dummy_hash(hasher: PasswordHasher | None = None) -> str:
    """
    A hash of a random secret nobody knows, made with C{hasher}'s parameters.

    Made once per parameter set on first use (not at import, which would
    slow down every CLI start) and kept for the life of the process.
    """
    hasher = hasher or DEFAULT_HASHER
    key = _key(hasher)
    with _dummy_lock:
        found = _dummy_hashes.get(key)
        if found is None:
            found = hasher.hash(secrets.token_urlsafe(32))
            _dummy_hashes[key] = found
        return found


def hash_password(password: str | bytes, hasher: PasswordHasher | None = None) -> str:
    """
    Hash a password for storage.

    @raises ValueError: the password is empty.
    """
    text = normalise_text(password)
    if not text:
        raise ValueError("empty password")
    return (hasher or DEFAULT_HASHER).hash(text)


def verify_password(
    stored: str | None, password: str | bytes, hasher: PasswordHasher | None = None
) -> bool:
    """
    Whether C{password} matches the C{stored} hash.

    When C{stored} is L{None} (no such account) the same work is done against
    L{dummy_hash} and the answer is L{False}.  A stored value that is not an
    argon2 hash at all is logged and treated the same way.  Never raises for
    a wrong or odd password.  Blocking: call it in a thread.
    """
    hasher = hasher or DEFAULT_HASHER
    text = normalise_text(password)
    if stored is None:
        _verify_quietly(hasher, dummy_hash(hasher), text)
        return False
    try:
        return hasher.verify(stored, text)
    except VerificationError:
        return False
    except InvalidHashError:
        _log.error("a stored password hash is not a valid argon2 hash")
        _verify_quietly(hasher, dummy_hash(hasher), text)
        return False


def _verify_quietly(hasher: PasswordHasher, stored: str, text: str) -> None:
    try:
        hasher.verify(stored, text)
    except VerificationError:
        pass


def needs_rehash(stored: str, hasher: PasswordHasher | None = None) -> bool:
    """
    Whether C{stored} was made with parameters other than C{hasher}'s.
    """
    try:
        return (hasher or DEFAULT_HASHER).check_needs_rehash(stored)
    except InvalidHashError:
        return False
