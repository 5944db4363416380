"""
Logging in on the FTP control connection: USER/PASS, the login deadline, and
the containment of a password sent in the clear.

A mixin of L{rumpus_secure.ftp.control.ControlProtocol}.  The rules a login
obeys are the guard's and the exposure guard's, made per address and per
account, never per connection (round 3):

 - an attempt counts from the moment its check starts, at most a few checks
   per address run at once, and the ban is looked at again when a check
   succeeds (L{rumpus_secure.guard}, C{begin_login});
 - a login waits for a pending check of I{its own} password sent in the
   clear, and obeys it (L{rumpus_secure.exposure});
 - a connection must log in within C{--login-timeout} (30 s), and while it
   has not, a full server may give its slot to a newcomer: 520 connections
   that only read the greeting once locked everyone out for the 600 s idle
   timeout;
 - a cleartext USER is refused without saying whether the user exists,
   nothing after it is executed, and a PASS sent anyway is read
   (L{CleartextWatch}) so that an exposed real password quarantines its
   account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.python.failure import Failure

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.checker import LockedAccountError, TwoFactorRequired
from rumpus_secure.db import StoreUnavailable
from rumpus_secure.ftp.policy import Verdict, split_command
from rumpus_secure.ftp.shell import IFileShell
from rumpus_secure.guard import LoginAttempt
from rumpus_secure.report import PROBE_ACCOUNT

if TYPE_CHECKING:
    from rumpus_secure.ftp.control import ControlProtocol


class LoginCommands:
    """
    USER, PASS and the login deadline (a mixin).
    """

    def _evicted(self) -> None:
        """
        The server is full and this connection has not logged in: give its
        slot to a newcomer (L{rumpus_secure.guard.Guard.not_logged_in}).
        """
        if self._counted_host is not None and self.guard is not None:
            self.guard.connection_closed(self._counted_host)
            self._counted_host = None
        self._audit("ftp.evicted", outcome="closed", scored=False)
        self.sendLine("421 The server is full and this connection has not logged "
                      "in; closing. Log in right after connecting.")
        self.close()

    def _start_login_timer(self) -> None:
        timeout = self.config.login_timeout
        if timeout > 0 and self._login_timer is None and not self._closing:
            self._login_timer = self.reactor.callLater(timeout, self._login_timed_out)

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.state == self.AUTHED or self._closing:
            return
        self._audit("ftp.login_timeout", outcome="closed", scored=False)
        self.sendLine(f"421 Not logged in within {self.config.login_timeout:.0f} s; "
                      "closing.")
        self.close()

    def _logged_in(self) -> None:
        """
        The session is logged in: no login deadline, and not evictable.
        """
        self._cancel_login_timer()
        if self.guard is not None:
            self.guard.logged_in_or_gone(self)

    def ftp_USER(self, username: str) -> str:
        if self.state not in (self.UNAUTH, self.INAUTH):
            return "503 Already logged in; send REIN to log in as another user."
        username = username.strip()
        if not username:
            return "501 USER needs a user name."
        self._user = username
        self.state = self.INAUTH
        return self._user_reply(f"331 Password required for {username[:64]}.")

    def ftp_PASS(self, password: str = "") -> Any:
        if (already := self._pass_after_certificate_login()) is not None:
            return already
        if self.state != self.INAUTH or self._user is None:
            return "503 Send USER first."
        name, self._user = self._user, None
        self.state = self.UNAUTH
        if self.guard is None:
            return self._verify(name, password, None)
        # Verified only when this address has a verification slot, and
        # counted as a failed attempt from then on (see rumpus_secure.guard).
        starting = self.guard.begin_login(self.client_host, self._protocol_name, name)
        return starting.addCallback(self._attempt_started, name, password)

    def _attempt_started(self, attempt: Any, name: str, password: str) -> Any:
        if isinstance(attempt, Ban):
            # Banned before or while it waited: the password is not checked.
            self._turn_away(attempt)
            return None
        if self._closing:
            attempt.abandoned()
            return None
        return self._verify(name, password, attempt)

    def _verify(self, name: str, password: str, attempt: LoginAttempt | None) -> Any:
        """
        Check the password; answer 230, 530 (after the failure delay) or 421.
        """
        exposure = getattr(self.session_factory.shared, "exposure", None)
        watch = exposure.watch(name, password) if exposure is not None else None
        # The credentials carry the channel (app passwords count on FTPS
        # only; a two-factor account's main password is refused here) and
        # the connection's client certificate (accounts.cert_checker).
        creds = self._login_credentials(name, password)
        # The mind is the server: the realm does its disk work in its threads.
        d = self.session_factory.portal.login(creds, self.session_factory.shared.server,
                                              IFileShell)

        def logged_in(result: Any) -> Any:
            ban = attempt.succeeded() if attempt is not None else None
            if watch is None or watch.settled():
                return self._accept(name, result, ban, None)
            # A check of a password this account sent in cleartext may be
            # pending: its outcome decides (rumpus_secure.exposure).
            outcome = defer.Deferred.fromCoroutine(watch.outcome())
            return outcome.addCallback(lambda reason: self._accept(name, result, ban, reason))

        def refused(failure: Failure) -> Any:
            if watch is not None:
                watch.close()
            if failure.check(TwoFactorRequired):
                # The main password was right: not a failed guess.
                ban = attempt.succeeded() if attempt is not None else None
                if ban is not None:
                    self._turn_away(ban)
                    return None
                self._audit("ftp.login", account=name, outcome="needs-app-password")
                return ("530 Login refused: this account uses two-factor login, so "
                        "its password works only on the web. Create an app password "
                        "on the web (Account page) and use it here over FTPS.")
            if failure.check(LockedAccountError):
                # The password was right: not a failed guess.
                ban = attempt.succeeded() if attempt is not None else None
                if ban is not None:
                    self._turn_away(ban)
                    return None
                reason = getattr(failure.value, "reason", None) or "locked"
                self._audit("ftp.login", account=name, outcome="locked")
                return self._locked_reply(reason)
            if failure.check(StoreUnavailable):
                # The shared database is down: not the client's fault, no
                # offence, and never "wrong password".
                if attempt is not None:
                    attempt.abandoned()
                self._audit("ftp.login", account=name, outcome="unavailable")
                self.sendLine("421 Service not available, try again later.")
                self.close()
                return None
            if not failure.check(cred_error.UnauthorizedLogin,
                                 cred_error.UnhandledCredentials):
                if attempt is not None:
                    attempt.abandoned()  # no verdict on the password
                return failure
            self._audit("ftp.login", account=name, outcome="failed",
                        **self._login_audit_fields(failure))
            ban = attempt.failed() if attempt is not None else None
            return self._login_failed(ban)

        return d.addCallbacks(logged_in, refused)

    @staticmethod
    def _locked_reply(reason: str) -> str:
        return (f"530 Login refused: this account is locked ({reason}). "
                "Ask your administrator to unlock it or reset the password.")

    def _accept(self, name: str, result: Any, ban: Any, locked: str | None) -> Any:
        """
        The password was right: log in, unless the address was banned or the
        account quarantined while it was being checked.
        """
        interface, avatar, logout = result
        if ban is None and self.guard is not None and locked is not None:
            ban = self.guard.check(self.client_host, self._protocol_name)
        if ban is not None:
            logout()
            self._audit("ftp.login", account=name, outcome="banned-meanwhile")
            self._turn_away(ban)
            return None
        if locked is not None:
            logout()
            self._audit("ftp.login", account=name, outcome="locked")
            return self._locked_reply(locked)
        if self._closing:
            logout()  # the client left while its password was checked
            return None
        if self.guard is not None:
            if not self.guard.session_started(name):
                logout()
                self._audit("ftp.login", account=name, outcome="too-many-sessions")
                limit = self.guard.settings.max_sessions_per_account
                self.sendLine(f"421 Too many sessions for this account "
                              f"(limit {limit}); try again later.")
                self.close()
                return None
            self._session_account = name
        self.shell = avatar
        self.logout = logout
        self.account = name
        self.workingDirectory = []
        self.state = self.AUTHED
        self._logged_in()
        self._bind_account(name)
        self._audit("ftp.login", account=name, outcome="ok", **self._login_audit_fields())
        return f"230 Welcome, {name[:64]}: logged in."

    def _turn_away(self, ban: Any) -> None:
        """
        Tell a banned client how long its ban lasts (421), then close.
        """
        assert self.guard is not None
        self.sendLine("421 " + self.guard.message(ban))
        self.close()

    def _login_failed(self, ban: Any) -> Any:
        """
        Answer a failed login after the delay (421 and close if banned).

        The failure was counted when its verification began.  The command loop
        waits for the reply, so pipelined guesses on this connection wait
        too; other connections are not held up.
        """
        guard = self.guard
        if guard is None:
            return "530 Login incorrect."
        if ban is None:
            return guard.delayed("530 Login incorrect.")
        return guard.delayed(None).addCallback(lambda ignored: self._turn_away(ban))

    def _end_session(self) -> None:
        self._unbind_account()
        if self._session_account is not None and self.guard is not None:
            self.guard.session_ended(self._session_account)
        self._session_account = None

    def _cleartext_login(self, verb: str, argument: str | None) -> None:
        """
        Refuse a login sent without TLS, then watch for a PASS sent anyway.
        """
        user = (argument or "").strip() if verb == "USER" else None
        # The self-check's probe (rumpus-secure check) carries no password:
        # it costs nothing unless a PASS follows it.
        probe = user == PROBE_ACCOUNT
        self._audit("ftp.cleartext_user", account=user, command=verb,
                    outcome="refused", scored=not probe)
        self.sendLine(self.policy.refusal(Verdict.CLEARTEXT_LOGIN, verb))
        self._watch = CleartextWatch(self, user, unscored=probe)
        if verb == "PASS":
            self._watch.line(f"PASS {argument or ''}")
        # What is still queued came in the clear behind the USER: watch it too.
        while self._pending:
            self._watch.line(self._pending.popleft())


class CleartextWatch:
    """
    After a cleartext USER: execute nothing, catch a PASS, then close.

    The connection stays open for the grace period so that a client which
    pipelined ``USER``/``PASS`` (or sends PASS without reading our reply) has
    its password read by us rather than left in a socket buffer; we need it
    to tell whether the real password was exposed.  The PASS is answered
    (``530``) and the connection closed only once that check is done, so
    nothing tells the client "refused" while its password still logs in
    (see L{rumpus_secure.exposure}).  Whatever happens, the reply never says
    whether the user exists or the password was right.

    @param unscored: the USER was the self-check's probe and was not scored
        as an offence; a PASS or another USER after it is.
    """

    def __init__(self, control: ControlProtocol, user: str | None,
                 unscored: bool = False) -> None:
        self._control = control
        self._user = user
        self._unscored = unscored
        self._done = False
        self._timer = control.reactor.callLater(
            control.config.cleartext_grace, self._expire
        )

    def _score(self) -> None:
        """
        Count the cleartext login the probe's USER did not count.
        """
        control = self._control
        if self._unscored and control.guard is not None:
            self._unscored = False
            control.guard.offence(control.client_host, "cleartext_login",
                                  protocol=control._protocol_name, account=self._user)

    def line(self, text: str) -> None:
        if self._done:
            return
        verb, argument = split_command(text)
        if verb == "USER" and argument:
            self._user = argument.strip()
            if self._user != PROBE_ACCOUNT:
                self._score()
            self._control.sendLine(
                self._control.policy.refusal(Verdict.CLEARTEXT_LOGIN, verb))
            return
        if verb != "PASS":
            # Never executed; a short answer so the client is not left waiting.
            self._control.sendLine(
                self._control.policy.refusal(Verdict.NEEDS_TLS, verb[:16] or "command"))
            return
        self._score()
        self._stop_timer()
        self._done = True
        control = self._control
        # Checked even when the address is banned meanwhile: a connection
        # opened before the ban may carry a victim's real password (its
        # neighbour behind the same address got the ban).  New connections
        # of a banned address are refused at the greeting, so the work stays
        # bounded by the connection limit and the exposure queue's cap.
        checked = control.session_factory.shared.exposure.check(
            protocol="ftp", client=control.client_host, user=self._user,
            password=argument or "", software=control.client_software,
        )
        checked.addBoth(self._answer)

    def _answer(self, ignored: Any) -> None:
        control = self._control
        control.sendLine(control.policy.refusal(Verdict.CLEARTEXT_LOGIN, "PASS"))
        control.close()

    def _expire(self) -> None:
        self._timer = None
        if not self._done:
            self._done = True
            self._control.close()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connection_lost(self) -> None:
        self._done = True
        self._stop_timer()
