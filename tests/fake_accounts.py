"""
Accounts without a database or hashing: the store and the checker that the
FTP and web tests drive their protocols with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from rumpus_secure.accounts.checker import LockedAccountError
from rumpus_secure.accounts.hashing import normalise_text
from rumpus_secure.vfs import ALL_PERMISSIONS


@dataclass
class FakeAccount:
    name: str
    home: Path
    password: str
    perms: frozenset[str] = ALL_PERMISSIONS
    locked: bool = False
    lock_reason: str | None = None
    password_changed: float = 0.0  # when the password was last set


class FakeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.accounts: dict[str, FakeAccount] = {}

    def add(self, name: str, password: str, perms: frozenset[str] = ALL_PERMISSIONS) -> FakeAccount:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        self.accounts[name] = FakeAccount(name, home, password, perms)
        return self.accounts[name]

    def get(self, name: str) -> FakeAccount | None:
        return self.accounts.get(name)

    def list(self) -> list[FakeAccount]:
        return list(self.accounts.values())

    def lock(self, name: str, reason: str) -> None:
        self.accounts[name] = replace(self.accounts[name], locked=True, lock_reason=reason)


@implementer(ICredentialsChecker)
class FakeChecker:
    """
    Checks against L{FakeStore}; the real one hashes in a thread.

    @ivar checked: C{(name, password)} of every L{check_password} call.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.checked: list[tuple[str, str]] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        # As the real checker: bytes that are not UTF-8 are read as latin-1.
        name = normalise_text(credentials.username)
        account = self.store.get(name)
        if account is None or account.password != normalise_text(credentials.password):
            return defer.fail(UnauthorizedLogin())
        if account.locked:
            return defer.fail(LockedAccountError(name, account.lock_reason))
        return defer.succeed(name.encode("utf-8"))

    def check_password(self, name: str, password: str, threadpool: Any = None,
                       cache: Any = None) -> defer.Deferred[bool]:
        self.checked.append((name, password))
        account = self.store.get(name)
        return defer.succeed(account is not None and account.password == password)
