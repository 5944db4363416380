"""
The FTP realm: an authenticated account becomes a shell on its home.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.ftp import FTPShell, IFTPShell
from twisted.python.filepath import FilePath
from zope.interface import implementer
from twisted.cred.portal import IRealm


@implementer(IRealm)
class FTPRealm:
    """
    Gives each account a shell rooted at its home directory.

    The account is read from the store at login time, so a change made with
    the admin command (home, permissions) applies to the next login.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatar(self, avatarId: bytes | str, mind: Any, *interfaces: Any) -> Any:
        if IFTPShell not in interfaces:
            raise NotImplementedError("only IFTPShell avatars are served")
        name = avatarId.decode("utf-8", "surrogateescape") if isinstance(avatarId, bytes) else avatarId
        account = self.store.get(name)
        if account is None:
            raise KeyError(name)
        home = FilePath(str(account.home))
        if not home.exists():
            home.makedirs()
        shell = FTPShell(home)
        return IFTPShell, shell, lambda: None
