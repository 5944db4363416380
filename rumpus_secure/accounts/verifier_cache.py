"""
A short-lived memory of successful password verifications.

FTP clients such as FileZilla open several connections with the same
credentials within seconds; each would otherwise pay a full argon2id
verification (19 MiB, tens of milliseconds).  L{VerifierCache} remembers
that a name and password verified successfully against account version
C{v}, for a few minutes.  A later login with the same name and password
skips argon2id only if the account's stored C{version} is still C{v}: the
store bumps C{version} on every password change, lock (quarantine included),
unlock and permission change, so any of those drops the entry.

The exposure checks of L{rumpus_secure.exposure} keep an instance of their
own that also remembers I{wrong} passwords (L{outcome}), stamped with the
state of the account's password: a flood of the same cleartext pair is then
verified once.  The login cache never stores a failure: an attacker could
otherwise push honest entries out with wrong guesses.

The key is HMAC-SHA256 under a random secret made when the process starts,
over ``name NUL password``; the password itself is never kept, and the keys
are useless outside this process.  Only successes are stored, the map is
bounded (least recently used entries go first) and every method is safe to
call from several threads (verification runs in a thread pool).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

DEFAULT_SIZE = 4096
DEFAULT_TTL = 300.0


class VerifierCache:
    """
    Remembers (name, password) pairs that verified, per account version.

    @param ttl: seconds an entry lives after the verification.
    @param size: the most entries kept.
    @param clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[Hashable, float, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _key(self, name: str, password: str) -> bytes:
        message = name.encode("utf-8", "surrogatepass") + b"\0" + password.encode(
            "utf-8", "surrogatepass"
        )
        # One C call (hmac.new(...).digest() is a few Python calls more).
        return hmac.digest(self._secret, message, "sha256")

    def hit(self, name: str, password: str, stamp: Hashable) -> bool:
        """
        Did C{name}/C{password} verify recently against this account C{stamp}?

        The stamp is what identifies the account's state, at least its
        C{version}; any difference is a miss and drops the entry.
        """
        return self.outcome(name, password, stamp) is True

    def outcome(self, name: str, password: str, stamp: Hashable) -> bool | None:
        """
        How C{name}/C{password} verified against account C{stamp}, or
        L{None} when not remembered.
        """
        key = self._key(name, password)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            cached_stamp, expires, result = entry
            if cached_stamp != stamp or now >= expires:
                del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return result

    def remember(self, name: str, password: str, stamp: Hashable,
                 result: bool = True) -> None:
        """
        Record a verification against account C{stamp}: a success unless
        C{result} says otherwise.
        """
        if self.ttl <= 0 or self.size <= 0:
            return
        key = self._key(name, password)
        with self._lock:
            self._entries[key] = (stamp, self._clock() + self.ttl, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
