"""
The twisted.cred checker: user name and password against the account store.

L{ArgonChecker} does the whole login (database read and argon2 verify) in a
thread, so a burst of logins never stalls the reactor.  Unknown users cost
the same as known ones (a dummy hash is verified; see
L{rumpus_secure.accounts.hashing.verify_password}) and fail with the same
L{UnauthorizedLogin}.  A locked account is only revealed to someone who
gave its right password: they get L{LockedAccountError}, whose C{reason}
the protocol can show ("locked: password seen in cleartext").

User names and passwords arrive as bytes or text depending on the
protocol; both are normalised with
L{rumpus_secure.accounts.hashing.normalise_text}, the same function used
when the password was stored.

B{Two-factor accounts and app passwords.}  Credentials say which channel
they came on (L{ChannelCredentials}: ``web``, ``ftps`` or ``ftp``; plain
L{UsernamePassword} counts as neither web nor TLS).  An account with
two-factor login on (L{rumpus_secure.accounts.totp}) passes here on the
web only, where the login then asks for a code; anywhere else its right
main password fails with L{TwoFactorRequired}, which FTP answers with a
``530`` that says to use an app password.  An app password
(L{rumpus_secure.accounts.app_passwords}) is tried only on ``ftps``: one
argon2id verification of the one row its id names, never a fallback to
the main password.

Every login reads the database, so a password change, lock or unlock made
with the CLI works at once.  An optional L{VerifierCache} lets a repeat
login with the same name and password skip argon2id while the account's
C{version} is unchanged (see L{rumpus_secure.accounts.verifier_cache}).
The one exception to "every login reads": the server's
L{rumpus_secure.accounts.cert_checker.CertificateAwareChecker} decides a
warm repeat login from what this checker read last time while the account
watcher vouches that the database was not written since
(L{rumpus_secure.accounts.snapshots}); L{AccountId.two_factor_off} is what
lets it keep that.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from rumpus_secure.accounts import app_passwords
from rumpus_secure.accounts.hashing import (
    hash_password,
    needs_rehash,
    normalise_text,
    verify_password,
)
from rumpus_secure.accounts.store import IAccountStore
from rumpus_secure.accounts.verifier_cache import VerifierCache

_log = Logger()


class LockedAccountError(UnauthorizedLogin):
    """
    The password was right but the account is locked.

    @ivar name: the account name.
    @ivar reason: why it was locked, one line (may be empty).
    """

    def __init__(self, name: str, reason: str | None) -> None:
        super().__init__(f"account {name} is locked: {reason or 'no reason given'}")
        self.name = name
        self.reason = reason or ""


class AccountId(bytes):
    """
    The avatar ID of a login (the account name, UTF-8) carrying the account
    as the check read it, so that the realm need not read it again.

    Changes made after that read reach the session through the account
    watcher, from the change before the login began.
    """

    account: Any = None
    #: The check read the two-factor row and found two-factor login off
    #: (main-password logins off the web only); see accounts.snapshots.
    two_factor_off: bool = False

    @classmethod
    def of(cls, account: Any, two_factor_off: bool = False) -> AccountId:
        avatar_id = cls(account.name.encode("utf-8"))
        avatar_id.account = account
        avatar_id.two_factor_off = two_factor_off
        return avatar_id


class TwoFactorRequired(UnauthorizedLogin):
    """
    The main password was right, but the account uses two-factor login and
    this channel cannot ask for a code: use an app password on FTPS.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"account {name} uses two-factor login")
        self.name = name


class ChannelCredentials(UsernamePassword):
    """
    A user name and password, and the channel they came on: ``web`` (the
    HTTPS login form, which asks for a code next), ``ftps`` (an FTP control
    connection under TLS) or ``ftp`` (one without).
    """

    def __init__(self, username: bytes, password: bytes, channel: str) -> None:
        super().__init__(username, password)
        self.channel = channel


def two_factor_on(store: Any, name: str) -> bool:
    """Whether the account's main password alone is refused off the web."""
    reader = getattr(store, "two_factor", None)
    if reader is None:
        return False
    row = reader(name)
    return row is not None and (row.required or row.secret is not None)


@implementer(ICredentialsChecker)
class ArgonChecker:
    """
    Checks L{IUsernamePassword} credentials against an L{IAccountStore}.

    @param store: the accounts.
    @param reactor: provides L{IReactorThreads}; its thread pool is used
        unless C{threadpool} is given.
    @param threadpool: where verification runs; see L{verify_thread_pool}.
    @param hasher: argon2 parameters for the dummy hash and for re-hashing;
        leave out in production.
    @param cache: remembers recent successful verifications, or L{None}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        store: IAccountStore,
        reactor: IReactorThreads,
        threadpool: ThreadPool | None = None,
        hasher: PasswordHasher | None = None,
        cache: VerifierCache | None = None,
    ) -> None:
        self._store = store
        self._reactor = reactor
        self._threadpool = threadpool
        self._hasher = hasher
        self.cache = cache

    def _pool(self) -> ThreadPool:
        return self._threadpool or self._reactor.getThreadPool()

    @property
    def slots(self) -> int:
        """
        How many logins are verified at once: the size of the pool.  The
        guard starts no more than this, so that it picks the order.
        """
        return int(self._pool().max)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        """
        Fire with the account name (UTF-8 bytes) if the password is right.

        Fails with L{UnauthorizedLogin} for an unknown user or a wrong
        password (the same error, after the same work), and with
        L{LockedAccountError} when the password is right but the account is
        locked.
        """
        name = normalise_text(credentials.username)
        password = normalise_text(credentials.password)
        channel = getattr(credentials, "channel", None)
        # Credentials that will be refused whatever the password (a refused
        # client certificate) skip the verifier cache both ways: a cached
        # right password would answer measurably faster than a wrong one,
        # an oracle for the password without the certificate.
        uncached = bool(getattr(credentials, "uncached", False))
        return deferToThreadPool(
            self._reactor, self._pool(), self._login, name, password, channel, uncached
        )

    def check_password(
        self,
        name: str | bytes,
        password: str | bytes,
        threadpool: ThreadPool | None = None,
        cache: VerifierCache | None = None,
    ) -> Deferred[bool]:
        """
        Fire with whether C{password} is the real password of account C{name}.

        True even if the account is locked: used to tell whether a password
        seen in cleartext was a real one.  Same cost for unknown accounts.
        An app password of the account seen this way is revoked, and the
        answer is False: the main password was not exposed.

        @param threadpool: where to verify (the exposure checks have their
            own); the login pool by default.
        @param cache: remembers outcomes, right and wrong, per state of the
            account's password (when it was set, when the account was
            made), so an identical pair is verified once; L{None}: no memory.
        """
        return deferToThreadPool(
            self._reactor,
            threadpool or self._pool(),
            self._matches,
            normalise_text(name),
            normalise_text(password),
            cache,
        )

    def _matches(self, name: str, password: str,
                 cache: VerifierCache | None = None) -> bool:
        """
        In a thread: read the hash and verify.

        With a cache the account is read first (as in L{_login}): a password
        change between the two reads can only make the entry stale.  A lock
        does not change the password, so it keeps the entry: a password
        seen again after its account was quarantined is known at once.
        """
        if self._contain_app_password(name, password):
            return False  # the main password was not exposed
        stamp = None
        if cache is not None:
            account = self._store.get(name)
            stamp = (None if account is None
                     else ("password", account.password_changed, account.created))
            known = cache.outcome(name, password, stamp)
            if known is not None:
                return known
        result = verify_password(self._store.password_hash(name), password, self._hasher)
        if cache is not None:
            cache.remember(name, password, stamp, result)
        return result

    def _contain_app_password(self, name: str, password: str) -> bool:
        """
        In a thread, for a password seen in cleartext: if it is one of the
        account's app passwords, revoke it (they are for FTPS only; the
        revocation ends the FTP sessions that used it) and say so.
        """
        ident = app_passwords.ident_of(password)
        reader = getattr(self._store, "app_password_hash", None)
        if ident is None or reader is None:
            return False
        stored = reader(name, ident)
        if stored is None:
            return False
        if verify_password(stored, password.strip().lower(), self._hasher):
            self._store.revoke_app_password(name, ident)
            _log.warn("app password {ident} of {account} was sent unencrypted: revoked",
                      ident=ident, account=name)
        return True

    def _login(self, name: str, password: str, channel: str | None = None,
               uncached: bool = False) -> bytes:
        """
        In a thread: the whole login decision.

        With a cache, the account is read first: its C{version} must be read
        before the hash, so that a password change between the two reads can
        only make the entry stale, never vouch for an old password.
        """
        ident = app_passwords.ident_of(password) if channel == "ftps" else None
        if ident is not None:
            stored_app = getattr(self._store, "app_password_hash", lambda n, i: None)(
                name, ident)
            if stored_app is not None:
                return self._app_login(name, ident, stored_app, password)
        before = None
        cache = None if uncached else self.cache
        if cache is not None:
            before = self._store.get(name)
            if before is not None and cache.hit(name, password, _stamp(before)):
                if before.locked:
                    raise LockedAccountError(before.name, before.lock_reason)
                self._second_factor_gate(before.name, channel)
                return AccountId.of(before, two_factor_off=channel != "web")
        stored = self._store.password_hash(name)
        if not verify_password(stored, password, self._hasher):
            raise UnauthorizedLogin("wrong user name or password")
        assert stored is not None
        account = self._store.get(name)
        if account is None:
            # Deleted between the two reads.
            raise UnauthorizedLogin("wrong user name or password")
        if account.locked:
            raise LockedAccountError(account.name, account.lock_reason)
        self._second_factor_gate(account.name, channel)
        self._rehash_if_needed(name, stored, password)
        if cache is not None and before is not None:
            cache.remember(name, password, _stamp(before))
        return AccountId.of(account, two_factor_off=channel != "web")

    def _second_factor_gate(self, name: str, channel: str | None) -> None:
        """
        The main password was right: refuse it off the web when the
        account uses two-factor login.
        """
        if channel != "web" and two_factor_on(self._store, name):
            raise TwoFactorRequired(name)

    def _app_login(self, name: str, ident: str, stored: str, password: str) -> bytes:
        """
        In a thread: an app password on FTPS, against its own row only.
        """
        if not verify_password(stored, password.strip().lower(), self._hasher):
            raise UnauthorizedLogin("wrong user name or password")
        account = self._store.get(name)
        if account is None:
            raise UnauthorizedLogin("wrong user name or password")
        if account.locked:
            raise LockedAccountError(account.name, account.lock_reason)
        try:
            self._store.app_password_used(ident)
        except (sqlite3.Error, OSError) as e:
            _log.warn("could not note the use of an app password of {account}: {error}",
                      account=name, error=str(e))
        return AccountId.of(account)

    def _rehash_if_needed(self, name: str, stored: str, password: str) -> None:
        """
        Re-hash with the current parameters after a successful login.

        Failure to store the new hash never fails the login.
        """
        if not needs_rehash(stored, self._hasher):
            return
        try:
            self._store.replace_hash(name, stored, hash_password(password, self._hasher))
        except (sqlite3.Error, OSError) as e:
            _log.warn(
                "could not store a re-hashed password for {account}: {error}",
                account=name, error=str(e),
            )


def _stamp(account: Any) -> tuple[int, float, float]:
    """
    What must not change for a cached verification to stay valid.

    C{version} moves on every change; C{created} and C{password_changed}
    tell a deleted and re-created account (whose version restarts at 1)
    from the old one.
    """
    return (account.version, account.password_changed, account.created)


#: The public name of L{_stamp} (accounts.cert_checker decides repeat logins with it).
account_stamp = _stamp


def verify_thread_pool(
    reactor: IReactorCore, max_threads: int | None = None
) -> ThreadPool:
    """
    A thread pool for password verification, started and stopped with C{reactor}.

    Each verification holds 19 MiB for its duration, and the reactor's
    shared pool (10 threads) is also used for DNS and file work, so a
    dedicated pool bounds both memory (C{max_threads} x 19 MiB) and the
    effect of a login burst on everything else.  Logins beyond
    C{max_threads} queue.

    @param max_threads: default: the number of CPUs, at least 2, at most 8.
    """
    if max_threads is None:
        max_threads = max(2, min(8, os.cpu_count() or 2))
    pool = ThreadPool(minthreads=0, maxthreads=max_threads, name="rumpus-verify")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool
