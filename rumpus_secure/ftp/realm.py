"""
The FTP realm: an authenticated account becomes a jailed shell on its home.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from rumpus_secure.accounts.store import HOME_MODE
from rumpus_secure.ftp.shell import FileShell, IFileShell
from rumpus_secure.serial import RunInThread
from rumpus_secure.vfs import HomeUnavailable, JailedFS


def _run_here(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


@implementer(IRealm)
class FTPRealm:
    """
    Gives each login a L{FileShell} on the account's home directory.

    The account is the one the checker read (carried by its avatar ID,
    L{rumpus_secure.accounts.checker.AccountId}), or read from the store
    when the ID carries none; later changes reach the open session through
    the account watcher (L{rumpus_secure.ftp.account_state}), which starts
    from before the password check.  Opening the home (and creating it when
    it is missing, never otherwise) is disk work: it runs through the
    C{mind}'s ``run_in_thread`` (the server object the control connection
    passes to C{Portal.login}), so C{requestAvatar} returns a Deferred.

    It is the one thread hand-off left in a warm repeat login (issue #18:
    the account watcher and the checker decide on the reactor thread, see
    L{rumpus_secure.accounts.snapshots}), and it stays: homes may live on
    NFS or GlusterFS shared by several nodes, where opening a directory can
    block for seconds, and a cached descriptor would outlive a home that
    was removed or replaced (a new login must get the directory the path
    names now, made anew if missing).
    """

    def __init__(self, store: Any, *, fsync: bool = False) -> None:
        self.store = store
        self.fsync = fsync

    def requestAvatar(self, avatarId: bytes | str, mind: Any,
                      *interfaces: Any) -> defer.Deferred[tuple[Any, Any, Any]]:
        if IFileShell not in interfaces:
            raise NotImplementedError("only IFileShell avatars are served")
        if isinstance(avatarId, bytes):
            name = avatarId.decode("utf-8", "surrogateescape")
        else:
            name = avatarId
        run: RunInThread = getattr(mind, "run_in_thread", None) or _run_here

        def made(fs: JailedFS) -> tuple[Any, Any, Any]:
            shell = FileShell(fs, run, name)
            return IFileShell, shell, shell.logout

        account = getattr(avatarId, "account", None)
        return run(self._open_home, name, account).addCallback(made)

    def _open_home(self, name: str, account: Any = None) -> JailedFS:
        """Look the account up unless given, and open its home (in a thread)."""
        if account is None:
            account = self.store.get(name)
            if account is None:
                # Deleted between the password check and now.
                raise UnauthorizedLogin(f"no account {name!r}")
        home = account.home
        perms = frozenset(account.perms)
        try:
            return JailedFS(home, perms, fsync=self.fsync)
        except HomeUnavailable:
            home.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
            return JailedFS(home, perms, fsync=self.fsync)
