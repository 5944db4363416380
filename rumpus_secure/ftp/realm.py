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
from rumpus_secure.ftp.local_homes import LocalHomes
from rumpus_secure.ftp.local_homes import local_homes as default_local_homes
from rumpus_secure.ftp.shell import FileShell, IFileShell
from rumpus_secure.serial import RunInThread
from rumpus_secure.vfs import HomeUnavailable, JailedFS


_DEFAULT: Any = object()


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

    It was the one thread hand-off left in a warm repeat login (issue #18:
    the account watcher and the checker decide on the reactor thread, see
    L{rumpus_secure.accounts.snapshots}).  It stays for homes that may live
    on NFS or GlusterFS shared by several nodes, where opening a directory
    can block for seconds; a home found on a local filesystem, with the
    mount table unchanged since, is opened on the reactor thread
    (L{rumpus_secure.ftp.local_homes}).  Either way the home is opened anew
    for each login (a cached descriptor would outlive a home that was
    removed or replaced: a new login must get the directory the path names
    now, made anew if missing, which happens in the thread).

    @param local_homes: the L{LocalHomes} deciding which homes open here;
        L{None} keeps every open in the thread.  By default one watching
        this process's mount table, where there is one.
    """

    def __init__(self, store: Any, *, fsync: bool = False,
                 local_homes: Any = _DEFAULT) -> None:
        self.store = store
        self.fsync = fsync
        self.local_homes: LocalHomes | None = (
            default_local_homes() if local_homes is _DEFAULT else local_homes)

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
        homes = self.local_homes
        if (account is not None and homes is not None and homes.known(account.home)
                and homes.check_open(account.home)):
            try:
                fs = JailedFS(account.home, frozenset(account.perms), fsync=self.fsync)
            except HomeUnavailable:
                pass  # gone since: made again in the thread
            else:
                return defer.succeed(made(fs))
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
            fs = JailedFS(home, perms, fsync=self.fsync)
        except HomeUnavailable:
            home.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
            fs = JailedFS(home, perms, fsync=self.fsync)
        if self.local_homes is not None:
            self.local_homes.learn(home)
        return fs
