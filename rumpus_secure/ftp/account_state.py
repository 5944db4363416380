"""
An FTP session stays bound to the state of its account.

Twisted's FTP (and ours, before this) checked the account once, at login:
an FTPS session went on downloading after its account was locked, even
after it was deleted.  L{AccountBoundSession} (a mixin of the control
protocol) registers each logged-in session with the server's
L{rumpus_secure.accounts.watch.AccountWatcher} and acts on every change of
its account:

 - locked (by ``user lock`` or by quarantine of an exposed password),
   deleted, or its password set (``user passwd``; the web does the same to
   its sessions): a running transfer is aborted with ``426`` and the reason,
   then ``421`` with the reason, and the connection closes.  Audited as
   ``ftp.session_ended`` with C{reason} (the kind of change) and, when a
   transfer was cut, its command and byte count.
 - permissions changed: the session's filesystem gets the new set; the next
   command obeys it (a transfer already running finishes).

Before each command of a logged-in session (and before the password check
of a login) the command waits for a read of the change log that started
after it arrived (L{AccountWatcher.fresh}): a command sent after the admin
command returned is never executed with the old account state.  An idle
session is told by the watcher's timer within about a second.

While nothing was written to the accounts database since the watcher's
last read started (L{AccountWatcher.current}, an inotify signal; issue
#18), that read is as good as a new one and the command runs at once, on
the reactor thread: no hand-off to the watcher's thread and no SQLite
query.  Per 4 KiB upload of a logged-in FTPS session (C{PASV} and C{STOR}
with their data connection, 200 in a row, C{strace -c -f} of the server):
C{fcntl} 12.1 -> 0, C{futex} 100.2 -> 72.6, system calls 204.5 -> 157.9.
"""

from __future__ import annotations

from typing import Any

from rumpus_secure.accounts.store import AccountChange, format_permissions
from rumpus_secure.accounts.watch import Watch

#: Changes that end the account's open sessions.
ENDING = frozenset({"lock", "delete", "password", "unknown", "cert-del", "auth"})


def end_reason(change: AccountChange) -> str:
    """
    Why the session ends, one line for the client (no line breaks: the
    lock reason is cleaned by the store).
    """
    if change.kind == "lock":
        return f"this account was locked ({change.detail or 'no reason given'})"
    if change.kind == "delete":
        return "this account was deleted"
    if change.kind == "password":
        return "the password of this account was changed; log in with the new one"
    if change.kind == "cert-del":
        return "a client certificate of this account was removed"
    if change.kind == "auth":
        return f"the login method of this account is now {change.detail}; log in again"
    return "the state of this account could not be checked; log in again"


class AccountBoundSession:
    """
    The control protocol's side of account changes (a mixin).

    Expects the control protocol's C{session_factory}, C{shell}, C{account},
    C{_transfer}, C{_closing}, C{_dispatch}, C{_audit}, C{sendLine} and
    C{close}.
    """

    _account_watch: Watch | None = None
    _login_seq: int | None = None
    _account_ended: str | None = None

    def _account_watcher(self) -> Any:
        return getattr(self.session_factory.shared,  # type: ignore[attr-defined]
                       "account_watcher", None)

    def _dispatch_when_current(self, verb: str, argument: str | None) -> Any:
        """
        L{_dispatch}, once the account's latest state is known.

        Only a logged-in session's commands and PASS wait (a Deferred is
        returned); PASS records the C{seq} its login starts from, so a
        change made while the password is checked still reaches the new
        session.
        """
        if self._account_ended is not None:
            return None  # ending: a 421 is on its way
        watcher = self._account_watcher()
        bound = self._account_watch is not None
        if watcher is None or not (bound or verb == "PASS"):
            return self._dispatch(verb, argument)  # type: ignore[attr-defined]

        def go(seq: int) -> Any:
            if self._closing or self._account_ended is not None:  # type: ignore[attr-defined]
                return None
            if not bound:
                self._login_seq = seq
            return self._dispatch(verb, argument)  # type: ignore[attr-defined]

        seq = watcher.current()
        if seq is not None:
            # Nothing written since the last read started: as good as a
            # read now, without the thread (accounts.change_signal).
            return go(seq)
        return watcher.fresh().addCallback(go)

    def _bind_account(self, name: str) -> None:
        """
        Start hearing of changes to account C{name} (at login).
        """
        watcher = self._account_watcher()
        since, self._login_seq = self._login_seq, None
        if watcher is None or since is None:
            return
        self._account_watch = watcher.watch(name, self, since)

    def _unbind_account(self) -> None:
        """
        Stop hearing of account changes (logout, REIN, connection lost).
        """
        watch, self._account_watch = self._account_watch, None
        if watch is not None:
            watch.cancel()

    # -- IChangeListener ---------------------------------------------------

    def account_changed(self, change: AccountChange) -> None:
        if self._closing or self._account_ended is not None:  # type: ignore[attr-defined]
            return
        if change.kind == "perms":
            self._replace_perms(change)
        elif change.kind in ENDING:
            self._end_for_account(change)

    def _replace_perms(self, change: AccountChange) -> None:
        shell = self.shell  # type: ignore[attr-defined]
        if shell is None:
            return
        perms = frozenset(p for p in (change.detail or "").split(",") if p)
        shell.fs.perms = perms
        self._audit("ftp.session_perms_changed",  # type: ignore[attr-defined]
                    account=self.account,  # type: ignore[attr-defined]
                    perms=format_permissions(perms) or "none")

    def _end_for_account(self, change: AccountChange) -> None:
        """
        Abort a running transfer (426), then 421 and close; audited.
        """
        reason = end_reason(change)
        self._account_ended = reason
        account = self.account  # type: ignore[attr-defined]
        self._unbind_account()
        transfer = self._transfer  # type: ignore[attr-defined]

        def finish(ignored: Any = None) -> None:
            fields: dict[str, Any] = {}
            if transfer is not None:
                fields = {"command": transfer.verb, "bytes": transfer.bytes}
            self._audit("ftp.session_ended", account=account,  # type: ignore[attr-defined]
                        reason=change.kind, detail=change.detail, **fields)
            if not self._closing:  # type: ignore[attr-defined]
                self.sendLine(f"421 Session ended: {reason}.")  # type: ignore[attr-defined]
                self.close()  # type: ignore[attr-defined]

        if transfer is None:
            finish()
        else:
            transfer.end(reason).addCallback(finish)
