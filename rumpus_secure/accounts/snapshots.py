"""
What a repeat login reads, kept in memory while the account is unchanged.

A warm repeat login (the verifier cache holds the password, so no
argon2id) still read the database three times in two thread hand-offs:
the login method (C{account_auth}), the account row, the two-factor row
(L{rumpus_secure.accounts.cert_checker},
L{rumpus_secure.accounts.checker}).  L{AccountSnapshots} keeps those three
answers per account after a successful password login, and
L{rumpus_secure.accounts.cert_checker.CertificateAwareChecker} decides a
repeat login from them on the reactor thread: a verifier cache hit is one
HMAC-SHA256 and a dict lookup, microseconds.

With the watcher's file signal (L{rumpus_secure.accounts.change_signal},
which has the numbers) a warm login's server CPU went from 2.75 to about
1.6 ms; this module's share on the reactor is about 1% of its samples
(py-spy: the snapshot look-up, one HMAC, one C{read()} of the inotify
descriptor).

A snapshot is used only while it is as good as a read made now:

 - the account watcher (L{rumpus_secure.accounts.watch}) tells the
   snapshots of every change it reads, of any kind and any account, and
   the snapshot of that account is dropped; when changes may have been
   missed (its first read, a lost log) every snapshot is dropped;
 - a snapshot is used only when the watcher vouches that nothing was
   written to the database since its last read started
   (L{AccountWatcher.current}: its inotify signal is quiet, no read is
   running), so a change committed but not read yet sends the login the
   slow way, which reads the database as before;
 - a snapshot filled by a login is kept only if nothing was dropped
   between the moment that login started reading (L{capture}, before its
   first read) and the moment it is kept (L{put}): a change read meanwhile
   may concern what the login read before it.

What is not kept is never decided here: accounts with another login method
than C{password} (client certificates), two-factor accounts, app
passwords, the web, unknown users and wrong passwords (no cache hit) all
go the slow way, unchanged.  Snapshots are bounded (least recently used
first out) and filled only by logins that gave the right password.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: Accounts kept at most.
DEFAULT_SIZE = 4096


@dataclass(frozen=True)
class AccountSnapshot:
    """
    One account as a successful login read it.

    @ivar account: the account row (L{rumpus_secure.accounts.store.Account}).
    @ivar auth_mode: its login method (C{password} only, today).
    @ivar two_factor: whether two-factor login is on.
    """

    account: Any
    auth_mode: str
    two_factor: bool


def _key(name: str) -> str:
    # Wider than the store's name matching (exact): a change logged under
    # any spelling drops every spelling's snapshot.
    return name.casefold()


class AccountSnapshots:
    """
    Snapshots of accounts, dropped on every change the watcher reads.

    @param watcher: the server's L{rumpus_secure.accounts.watch.AccountWatcher}.
    """

    def __init__(self, watcher: Any, size: int = DEFAULT_SIZE) -> None:
        self._watcher = watcher
        self.size = size
        self._entries: OrderedDict[str, AccountSnapshot] = OrderedDict()
        #: Moves on every drop.
        self.generation = 0
        self.used = 0
        watcher.observe(self)

    def capture(self) -> int:
        """Call before a login's first read; give the result to L{put}."""
        return self.generation

    def put(self, generation: int, snapshot: AccountSnapshot) -> bool:
        """
        Keep C{snapshot} unless something was dropped since C{generation}.
        """
        if generation != self.generation or self.size <= 0:
            return False
        key = _key(snapshot.account.name)
        self._entries[key] = snapshot
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True

    def get(self, name: str) -> AccountSnapshot | None:
        """
        The snapshot of account C{name}, if it is as good as a read now.
        """
        # The watcher first, for every name: the work before the slow way
        # does not depend on whether the account logged in lately.
        if self._watcher.current() is None:
            return None
        entry = self._entries.get(_key(name))
        if entry is None or entry.account.name != name:
            return None
        self._entries.move_to_end(_key(name))
        self.used += 1
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    # -- IChangeObserver ------------------------------------------------------

    def account_changed(self, name: str) -> None:
        self.generation += 1
        self._entries.pop(_key(name), None)

    def everything_changed(self) -> None:
        self.generation += 1
        self._entries.clear()


def attach_snapshots(checker: Any, watcher: Any) -> AccountSnapshots | None:
    """
    Give the server's checker snapshots fed by C{watcher}, where the
    watcher can vouch for them (an inotify signal on the SQLite file); the
    PostgreSQL store and filesystems without events keep the slow way.
    """
    if watcher is None or getattr(watcher, "signal", None) is None:
        return None
    if not hasattr(checker, "snapshots"):
        return None
    snapshots = AccountSnapshots(watcher)
    checker.snapshots = snapshots
    return snapshots
