"""
Containing passwords that crossed the network unencrypted.

A client that sends a password in cleartext (an FTP ``PASS`` before TLS, a
login form or ``Authorization`` header on plain HTTP) has exposed it to
anyone on the path.  We cannot unsend the bytes, but we can find out whether
it was the account's real password (argon2id, off the reactor thread) and,
if so, quarantine the account until an administrator resets the password
(``--exposed-password quarantine``) or only record it (``alert``).  The
password itself is never logged, and nothing in any reply reveals whether it
was right.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class ExposureGuard:
    """
    Checks cleartext credentials and quarantines exposed accounts.

    @ivar pending: checks still running, so tests and shutdown can wait.
    """

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.pending: set[defer.Deferred[Any]] = set()

    def check(
        self,
        *,
        protocol: str,
        client: str,
        user: str | None,
        password: str,
        software: str | None = None,
    ) -> defer.Deferred[bool]:
        """
        Was C{password} the real password of C{user}?  If so, contain it.

        @returns: a Deferred firing with True when the password was real.
        """
        audit = self.server.audit
        event = f"{protocol}.cleartext_password"
        if not user or not password:
            audit.record(event, client=client, account=user, software=software,
                         protocol=protocol,
                         outcome="no-user" if not user else "empty")
            return defer.succeed(False)
        d: defer.Deferred[bool] = self.server.checker.check_password(user, password)

        def checked(exposed: bool) -> Any:
            audit.record(event, client=client, account=user, software=software,
                         protocol=protocol,
                         outcome="real-password" if exposed else "not-the-password")
            if not exposed:
                return False
            action = self.server.config.exposed_password
            audit.record("account.password_exposed", client=client, account=user,
                         software=software, action=action, protocol=protocol)
            if action != "quarantine":
                return True
            moment = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
            reason = (f"password sent unencrypted from {client} at "
                      f"{moment.strftime('%Y-%m-%d %H:%M:%S UTC')}")
            locked = self.server.run_in_thread(self.server.store.lock, user, reason)

            def quarantined(ignored: Any) -> bool:
                audit.record("account.quarantined", client=client, account=user,
                             protocol=protocol, reason=reason)
                return True

            return locked.addCallback(quarantined)

        def failed(failure: Failure) -> bool:
            _log.failure("checking an exposed password failed", failure)
            return False

        d.addCallback(checked).addErrback(failed)
        self.pending.add(d)
        d.addBoth(self._forget, d)
        return d

    def _forget(self, result: Any, d: defer.Deferred[Any]) -> Any:
        self.pending.discard(d)
        return result
