"""
The twisted.cred checker that applies each account's login method.

L{CertificateAwareChecker} wraps the password checker
(L{rumpus_secure.accounts.checker.ArgonChecker}) and is the server's one
checker, for the FTP portal and the web login alike: it reads the
account's login method (L{rumpus_secure.accounts.client_certs}) before the
password, so a C{cert} account never logs in with its password alone, even
on a server without C{--client-ca}.  The connection's certificate travels
in L{CertificateCredentials}; a refusal is a L{CertificateRefused} (an
C{UnauthorizedLogin}: protocols count it as a failed login) carrying its
reason for the audit.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from rumpus_secure.accounts import app_passwords
from rumpus_secure.accounts.checker import AccountId, LockedAccountError, account_stamp
from rumpus_secure.accounts.client_certs import (
    CertificateLogin,
    CertVerdict,
    ClientCA,
    PeerCertificate,
    client_cert_store,
)
from rumpus_secure.accounts.hashing import normalise_text
from rumpus_secure.accounts.snapshots import AccountSnapshot, AccountSnapshots
from rumpus_secure.accounts.store import SQLiteAccountStore


class CertificateRefused(UnauthorizedLogin):
    """
    The account's login method wants a certificate, and this one is refused.

    @ivar reason: one of L{REFUSALS}.
    """

    def __init__(self, name: str, reason: str, fingerprint: str | None) -> None:
        super().__init__(f"certificate refused for {name}: {reason}")
        self.name = name
        self.reason = reason
        self.fingerprint = fingerprint


class CertificateCredentials(UsernamePassword):
    """
    A user name, a password (maybe empty) and the certificate of the connection.
    """

    def __init__(self, username: bytes, password: bytes,
                 certificate: PeerCertificate | None, channel: str | None = None) -> None:
        super().__init__(username, password)
        self.certificate = certificate
        #: ``web``, ``ftps`` or ``ftp``: where app passwords count and a
        #: two-factor account's main password does not (accounts.checker).
        self.channel = channel
        #: Set by the checker when the certificate passed for the account.
        self.verdict: CertVerdict | None = None


@implementer(ICredentialsChecker)
class CertificateAwareChecker:
    """
    The login method of the account first, then (if it wants one) the password.

    Wraps the password checker (L{rumpus_secure.accounts.checker.ArgonChecker});
    everything else is delegated to it.  For C{cert} accounts the password
    is not looked at; for C{cert+password} both must pass; a refused
    certificate fails with L{CertificateRefused} only after the password
    check has run too, so that a refusal costs as long as a wrong password.
    """

    credentialInterfaces = (IUsernamePassword,)

    #: Repeat logins decided on the reactor thread
    #: (L{rumpus_secure.accounts.snapshots}); L{None}: every login reads.
    snapshots: AccountSnapshots | None = None

    def __init__(self, inner: Any, login: CertificateLogin, reactor: Any,
                 threadpool: Any = None) -> None:
        self._inner = inner
        self.login = login
        self._reactor = reactor
        self._threadpool = threadpool
        #: Logins decided from a snapshot (for tests and benchmarks).
        self.fast_logins = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        fast = self._from_snapshot(credentials)
        if fast is not None:
            return fast
        return ensureDeferred(self._request(credentials))

    def _from_snapshot(self, credentials: Any) -> Deferred[bytes] | None:
        """
        A repeat login decided without a thread, or L{None}: go the slow way.

        Exactly what L{ArgonChecker._login} decides on a verifier cache hit
        for a C{password} account without two-factor login, from a
        snapshot the watcher vouches for; anything else (no snapshot, no
        hit, an app password's shape, the web, credentials marked
        C{uncached}) is left to the slow way, which reads the database.
        """
        snapshots = self.snapshots
        cache = getattr(self._inner, "cache", None)
        if snapshots is None or cache is None or getattr(credentials, "uncached", False):
            return None
        channel = getattr(credentials, "channel", None)
        if channel == "web":
            return None
        name = normalise_text(credentials.username)
        password = normalise_text(credentials.password)
        if channel == "ftps" and app_passwords.ident_of(password) is not None:
            return None
        snapshot = snapshots.get(name)
        if snapshot is None or snapshot.auth_mode != "password" or snapshot.two_factor:
            return None
        account = snapshot.account
        if not cache.hit(name, password, account_stamp(account)):
            return None
        self.fast_logins += 1
        if account.locked:
            return fail(LockedAccountError(account.name, account.lock_reason))
        return succeed(AccountId.of(account, two_factor_off=True))

    def _keep(self, generation: int | None, mode: str, avatar_id: Any) -> None:
        """Keep what a successful password login read (accounts.snapshots)."""
        snapshots = self.snapshots
        account = getattr(avatar_id, "account", None)
        if (snapshots is None or generation is None or account is None
                or not getattr(avatar_id, "two_factor_off", False)):
            return
        snapshots.put(generation, AccountSnapshot(account, mode, False))

    async def _request(self, credentials: Any) -> bytes:
        name = normalise_text(credentials.username)
        presented = getattr(credentials, "certificate", None)
        pool = self._threadpool or self._reactor.getThreadPool()
        # Before the first read: a change read from now on drops the fill.
        generation = None if self.snapshots is None else self.snapshots.capture()
        verdict: CertVerdict = await deferToThreadPool(
            self._reactor, pool, self.login.check, name, presented)
        if verdict.mode == "password":
            avatar_id = await self._inner.requestAvatarId(credentials)
            self._keep(generation, verdict.mode, avatar_id)
            return avatar_id  # type: ignore[no-any-return]
        if verdict.refusal is not None:
            # The same work as a wrong password, and no cache either way
            # (accounts.checker): the refusal must not tell whether the
            # password was right.
            credentials.uncached = True
            if credentials.password:  # no password, nothing to hide (and no argon2)
                try:
                    await self._inner.requestAvatarId(credentials)
                except UnauthorizedLogin:
                    pass
            raise CertificateRefused(name, verdict.refusal, verdict.fingerprint)
        if isinstance(credentials, CertificateCredentials):
            credentials.verdict = verdict
        if verdict.mode == "cert+password":
            return await self._inner.requestAvatarId(credentials)
        account = await deferToThreadPool(self._reactor, pool,
                                          self.login.bindings.store.get, name)
        if account is None:
            raise CertificateRefused(name, "cert-not-bound", verdict.fingerprint)
        if account.locked:
            raise LockedAccountError(account.name, account.lock_reason)
        return str(account.name).encode("utf-8")


def build_certificate_checker(config: Any, store: SQLiteAccountStore, inner: Any,
                              reactor: Any, threadpool: Any = None
                              ) -> CertificateAwareChecker:
    """
    The server's checker: the login methods over C{inner} (always, so that a
    C{cert} account never logs in with its password alone, even without
    C{--client-ca}).

    @raises ValueError: the client CA or CRL file is unusable.
    """
    ca = None
    if getattr(config, "client_ca", None) is not None:
        ca = ClientCA(config.client_ca, config.client_crl, clock=reactor.seconds)
    return CertificateAwareChecker(inner, CertificateLogin(client_cert_store(store), ca),
                                   reactor, threadpool)
