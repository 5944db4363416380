"""
The FTP control connection: TLS upgrade, the pre-login policy, login.

L{ControlProtocol} extends Twisted's L{twisted.protocols.ftp.FTP} with what
Twisted lacks (the file and transfer commands are the L{FileCommands} mixin
of L{rumpus_secure.ftp.files}):

 - RFC 4217: AUTH TLS/SSL, PBSZ, PROT, CCC (refused), REIN (never drops TLS);
 - the pre-login TLS policy of L{rumpus_secure.ftp.policy};
 - cleartext-credential containment: a cleartext USER is refused, nothing else
   is executed, a PASS sent anyway is checked off the reactor thread and an
   exposed password quarantines its account;
 - the cross-protocol (ALPACA) defence;
 - its own command loop, which never executes bytes that arrived behind
   AUTH TLS and uses the injected reactor (Twisted's uses the global one).
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any

from OpenSSL import SSL
from twisted.cred import error as cred_error
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger, LogLevel
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.checker import (
    ChannelCredentials,
    LockedAccountError,
    TwoFactorRequired,
)
from rumpus_secure.ftp import data as data_channel
from rumpus_secure.ftp.account_state import AccountBoundSession
from rumpus_secure.ftp.files import FileCommands
from rumpus_secure.ftp.passive import PortPool
from rumpus_secure.ftp.transfer import TransferEngine
from rumpus_secure.db import StoreUnavailable
from rumpus_secure.guard import FTP_OFFENCES, LoginAttempt, normalise_address
from rumpus_secure.handshake import watch_handshake
from rumpus_secure.long_work import LongWork
from rumpus_secure.ftp.policy import (
    AUTH_MECHANISMS,
    ControlPolicy,
    Verdict,
    split_command,
)
from rumpus_secure.ftp.shell import IFileShell
from rumpus_secure.report import PROBE_ACCOUNT

_log = Logger()

#: Lines we queue while a command runs before we stop reading the socket.
MAX_PENDING_LINES = 32

#: Seconds a closing connection may take to send its last reply (and TLS
#: close_notify) before it is cut.
CLOSE_GRACE = 5.0

#: Commands after which a pending REST offset still applies: the transfer
#: commands, and those that set a transfer up (clients send PASV or TYPE
#: between REST and RETR).
_KEEP_RESTART = frozenset({"REST", "RETR", "STOR", "APPE", "STOU",
                           "PASV", "EPSV", "PORT", "EPRT", "TYPE"})

#: Commands that need no login.
_SESSIONLESS = frozenset(
    {"AUTH", "FEAT", "SYST", "NOOP", "QUIT", "HELP", "CLNT", "HOST", "PBSZ",
     "PROT", "CCC", "REIN", "USER", "PASS", "ACCT", "OPTS"}
)


def _peer_host(transport: Any) -> str:
    try:
        host = transport.getPeer().host
    except Exception:
        return "?"
    return normalise_address(host)


@implementer(IHandshakeListener)
class ControlProtocol(AccountBoundSession, FileCommands, ftp.FTP):
    """
    One FTP control connection (plain port or implicit FTPS port).
    """

    _encoding = "utf-8"
    MAX_LENGTH = 8192
    #: Commands end at LF, with or without CR before it: a client that sends
    #: bare LF is answered (it hung before), and an LF inside a CRLF line
    #: can no longer smuggle a second line into the echo of a reply.
    delimiter = b"\n"

    def __init__(self, session_factory: "ControlFactory") -> None:
        self.session_factory = session_factory
        self.reactor = session_factory.reactor
        self.policy: ControlPolicy = session_factory.policy
        self.config = session_factory.config
        self.audit = session_factory.audit
        self.implicit = session_factory.implicit
        self.secure = self.implicit
        self.tls_version: str | None = None
        self.prot = "P" if self.implicit else "C"
        self.pbsz_done = self.implicit
        self.client_software: str | None = None
        self.account: str | None = None
        self.passivePortRange = session_factory.passive_port_range
        self._pending: deque[str] = deque()
        self._busy = False
        self._drain_call: Any = None
        self._reading_paused = False
        self._watch: _CleartextWatch | None = None
        self._closing = False
        self._user: str | None = None
        self.workingDirectory: list[str] = []
        self.guard: Any = session_factory.guard
        self._counted_host: str | None = None
        self._session_account: str | None = None
        self._line_timer: Any = None
        self._last_host = "?"
        self.tls_context_in_use: Any = None
        self._login_timer: Any = None
        self._abort_timer: Any = None
        self._handshake_deadline: Any = None

    # -- plumbing -------------------------------------------------------

    def callLater(self, period: float, func: Any) -> Any:
        return self.reactor.callLater(period, func)

    @property
    def client_host(self) -> str:
        """
        The client's address; still known once the connection is gone (the
        audit of a transfer that ends after it said ``?``).
        """
        if self.transport is not None:
            self._last_host = _peer_host(self.transport)
        return self._last_host

    def _audit(self, event: str, *, scored: bool = True, **fields: Any) -> None:
        """
        Record C{event}; an offence (L{FTP_OFFENCES}) also goes to the guard
        unless C{scored} is false.
        """
        self.audit.record(
            event,
            client=self.client_host,
            protocol="ftps-implicit" if self.implicit else "ftp",
            tls=self.tls_version,
            software=self.client_software,
            **fields,
        )
        kind = FTP_OFFENCES.get(event)
        if kind is not None and self.guard is not None and scored:
            self.guard.offence(self.client_host, kind, protocol=self._protocol_name,
                               account=fields.get("account"))

    @property
    def _protocol_name(self) -> str:
        return "ftps-implicit" if self.implicit else "ftp"

    def sendLine(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if self._closing:
            return  # after close() (a 421, QUIT): nothing more, even a late reply
        if self.transport is not None and not self._transport_gone():
            if b"\r" in line or b"\n" in line:
                # A reply line never breaks: text echoed from the client
                # (a verb, a path) cannot forge a reply line of its own.
                line = line.replace(b"\r", b" ").replace(b"\n", b" ")
            self.transport.write(line + b"\r\n")

    def _transport_gone(self) -> bool:
        return self.transport is None or getattr(self.transport, "disconnected", False)

    def close(self) -> None:
        """
        Stop executing commands and close after what we wrote is sent.
        """
        self._closing = True
        self.disconnected = True
        self._pending.clear()
        self._cancel_login_timer()
        if self.transport is not None:
            self.transport.loseConnection()
            if self._abort_timer is None:
                # A TLS connection closes only once its close_notify is
                # written; a client that keeps sending (a line that never
                # ends) must not keep it open: cut it after a grace.
                self._abort_timer = self.reactor.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if self.transport is not None and not self._transport_gone():
            self.transport.abortConnection()

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        self.state = self.UNAUTH
        self.setTimeout(self.timeOut)
        # Replies are small writes that answer the client's last line:
        # with Nagle's algorithm on, a reply written while the previous
        # one waits for the client's (delayed, up to 40 ms) ACK is held
        # back until that ACK comes: 40 ms added to every transfer's 226.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass
        if self._refused_by_guard():
            return
        self._start_login_timer()
        if not self.implicit and self.policy.plain_port_closed:
            self.sendLine(self.policy.implicit_only_greeting())
            self._audit("ftp.plain_port_refused", outcome="closed")
            self.close()
            return
        if not self.implicit:
            self.sendLine(self._greeting())
        # On the implicit port the greeting waits for handshakeCompleted: a
        # client that speaks plaintext there never sees a banner.

    def _refused_by_guard(self) -> bool:
        """
        Greet a banned address, or one over a connection limit, with 421.

        On the implicit port the 421 goes out once the handshake is done.
        """
        guard = self.guard
        if guard is None:
            return False
        host = self.client_host
        ban = guard.check(host, self._protocol_name)
        if ban is not None:
            reply = "421 " + guard.message(ban)
        else:
            over = guard.connection_opened(host, self._protocol_name)
            if over is None:
                self._counted_host = host
                guard.not_logged_in(self, self.reactor.seconds(), self._evicted)
                return False
            if over.scope == "address":
                reply = (f"421 Too many connections from your address "
                         f"(limit {over.limit}); try again later.")
            else:
                reply = (f"421 Too many connections to this server "
                         f"(limit {over.limit}); try again later.")
        self.sendLine(reply)
        self.close()
        return True

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

    # -- login deadline ---------------------------------------------------

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

    def _greeting(self) -> str:
        if self.secure or self.policy.mode == "allow-plain":
            return "220 rumpus-secure FTP server ready."
        return (
            "220 rumpus-secure FTP server ready. TLS is required: send "
            "AUTH TLS before logging in."
        )

    def handshakeCompleted(self) -> None:
        self._cancel_handshake_deadline()
        connection = self._tls_connection()
        if connection is not None:
            self.tls_version = connection.get_protocol_version_name()
            # Kept: data connections resume this context's sessions, and a
            # transfer may still be set up after the control connection has
            # gone (its transport is None then).
            self.tls_context_in_use = connection.get_context()
        self._audit("ftp.tls_established", outcome="ok",
                    mode="implicit" if self.implicit else "explicit")
        if self.implicit and not self._closing:
            self.sendLine(self._greeting())

    def _tls_connection(self) -> SSL.Connection | None:
        try:
            handle = self.transport.getHandle()
        except Exception:
            return None
        return handle if isinstance(handle, SSL.Connection) else None

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(SSL.Error) is not None:
            _log.info(
                "TLS handshake with {client} failed: {error}",
                client=self.client_host, error=reason.getErrorMessage(),
            )
            self._audit("ftp.tls_failed", outcome="refused",
                        error=reason.getErrorMessage()[:200])
        self._closing = True
        self._cancel_login_timer()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        if self.guard is not None:
            self.guard.logged_in_or_gone(self)
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self._cancel_line_timer()
        self._cancel_handshake_deadline()
        self._end_session()
        if self._counted_host is not None:
            self.guard.connection_closed(self._counted_host)
            self._counted_host = None
        if self._watch is not None:
            self._watch.connection_lost()
        self.close_data()
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        self.sendLine("421 Idle timeout: closing the control connection.")
        self.close()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._closing:
            return  # once: not one audit event per 16 KiB that follows
        self.sendLine("500 Command line too long; closing.")
        self._audit("ftp.protocol_garbage", reason="line too long")
        self.close()

    # -- the command loop -------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        text = line.decode("utf-8", "surrogateescape").rstrip("\r")
        # Telnet IP/DM bytes some clients put before ABOR.
        text = text.lstrip("\udcff\udcf4\udcf2")  # noqa: B005 (a set of bytes)
        if self._watch is not None:
            self._watch.line(text)
            return
        if self._busy:
            if self.state == self.AUTHED and self.urgent_command(*split_command(text)):
                return  # ABOR or STAT during a transfer
            self._pending.append(text)
            if len(self._pending) >= MAX_PENDING_LINES and not self._reading_paused:
                self._reading_paused = True
                self.transport.pauseProducing()
            return
        self._handle(text)

    def _has_buffered_input(self) -> bool:
        return bool(self._pending) or bool(getattr(self, "_buffer", b""))

    def _handle(self, text: str) -> None:
        verdict = self.policy.verdict(text, self.secure)
        verb, argument = split_command(text)
        if verdict is Verdict.CROSS_PROTOCOL:
            self._audit("ftp.cross_protocol", command=verb[:16], outcome="closed")
            self.close()
            return
        if verdict is Verdict.CLEARTEXT_LOGIN:
            self._cleartext_login(verb, argument)
            return
        if verdict is not Verdict.EXECUTE:
            self._audit("ftp.refused_before_tls", command=verb[:16])
            if verb == "CCC":
                self.sendLine("533 CCC: the control connection is not protected.")
            else:
                self.sendLine(self.policy.refusal(verdict, verb))
            return
        self._execute(verb, argument)

    def _execute(self, verb: str, argument: str | None) -> None:
        if verb not in _KEEP_RESTART:
            # A REST offset applies to the next transfer (RFC 3659 section
            # 5); kept across other commands (LIST, CWD, SIZE...) it cut a
            # later, unrelated STOR short.
            self._rest = 0
        # Waits for the account's latest state (rumpus_secure.ftp.account_state).
        result = defer.maybeDeferred(self._dispatch_when_current, verb, argument)
        result.addCallbacks(self._replied, self._failed, errbackArgs=(verb[:16],))
        result.addErrback(self._reply_failed)
        done: list[bool] = []
        result.addBoth(done.append)
        # Not result.called: a Deferred waiting on one its callback returned
        # (a delayed login failure) is called but not finished.
        if done:
            return
        self._busy = True
        result.addBoth(self._finished)

    def _finished(self, ignored: Any) -> None:
        # Resume on the next turn of the reactor, not inside whatever fired
        # the command's Deferred (a data connection's connectionMade, say).
        if not self._closing:
            self._drain_call = self.reactor.callLater(0, self._drain)

    def _drain(self) -> None:
        self._drain_call = None
        self._busy = False
        while self._pending and not self._busy and not self._closing:
            text = self._pending.popleft()
            if self._watch is not None:
                self._watch.line(text)
                continue
            self._handle(text)
        if self._reading_paused and not self._busy and not self._closing:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resumeProducing()

    def _replied(self, result: Any) -> None:
        if isinstance(result, tuple):
            self.reply(*result)
        elif isinstance(result, str) and result[:3].isdigit() and len(result) > 3:
            self.sendLine(result)
        elif result is not None:
            self.reply(result)

    def _failed(self, failure: Failure, verb: str = "?") -> None:
        if failure.check(ftp.FTPCmdError):
            self.sendLine(failure.value.response())
        elif failure.check(_MissingArgument):
            self.sendLine(f"501 {failure.value.args[0]} needs an argument.")
        else:
            # A bug, not the client's fault: a short reply, and a log line
            # that a client without an account cannot turn into a flood.
            self.session_factory.shared.errors.report(
                verb, failure, authenticated=self.account is not None)
            self.sendLine("451 Local error: the command could not be completed.")

    def _reply_failed(self, failure: Failure) -> None:
        _log.failure("could not reply to an FTP command", failure,
                     level=LogLevel.error)
        self.close()

    def _dispatch(self, verb: str, argument: str | None) -> Any:
        if verb not in _SESSIONLESS:
            if self.state in (self.UNAUTH, self.INAUTH):
                return "530 Please log in with USER and PASS first."
            if self.state == self.RENAMING and verb != "RNTO":
                self.state = self.AUTHED
                return "503 RNTO must follow RNFR."
        method = getattr(self, "ftp_" + verb, None)
        if method is None:
            return f"502 Command {verb[:32]} not implemented."
        takes, needs = _arguments_of(method)
        if argument is not None and not takes:
            if argument.strip():
                return f"501 {verb} takes no argument."
            argument = None  # "NOOP " with a trailing space
        if argument is None:
            if needs:
                raise _MissingArgument(verb)
            return method()
        return method(argument)

    # -- RFC 4217 ---------------------------------------------------------

    def ftp_AUTH(self, mechanism: str) -> str | None:
        mechanism = mechanism.strip().upper()
        if not self.policy.explicit_tls_offered and not self.secure:
            return "534 AUTH is not offered here. " + self.policy.how_to_connect()
        if self.secure:
            return "503 The connection is already protected by TLS."
        if mechanism not in AUTH_MECHANISMS:
            return "504 Only AUTH TLS is supported."
        if self._has_buffered_input():
            # Bytes sent behind AUTH in the clear would otherwise be read as
            # if they came inside TLS (the STARTTLS injection, CVE-2011-0411).
            self._audit("ftp.auth_injection", outcome="closed")
            self.sendLine("503 Spurious data after AUTH command; closing.")
            self.close()
            return None
        self.sendLine("234 AUTH TLS successful; start the TLS handshake.")
        self._reset_session()
        if AUTH_MECHANISMS[mechanism] == "P":
            self.prot = "P"
            self.pbsz_done = True
        self.secure = True
        self.transport.startTLS(self.session_factory.tls_context)
        # The handshake gets its own deadline, not the 600 s idle timeout.
        tls = self.session_factory.shared.tls
        in_flight = getattr(tls, "handshakes_in_flight", None)
        self._handshake_deadline = watch_handshake(
            self.reactor, self.transport, self.config.handshake_timeout,
            self._handshake_timed_out,
            in_flight(self.reactor) if in_flight is not None else None,
        )
        return None

    def _handshake_timed_out(self) -> None:
        self._audit("ftp.tls_timeout", outcome="closed")

    def _cancel_handshake_deadline(self) -> None:
        deadline, self._handshake_deadline = self._handshake_deadline, None
        if deadline is not None:
            deadline.cancel()

    def _reset_session(self) -> None:
        """
        Forget login and transfer state (RFC 4217 section 4.2, and REIN).
        """
        self.close_data()
        self._end_session()
        if self.shell is not None and getattr(self, "logout", None):
            self.logout()
        self.shell = None
        self.state = self.UNAUTH
        self._user = None
        self.account = None
        self.binary = True
        self.workingDirectory = []
        self.prot = "P" if self.implicit else "C"
        self.pbsz_done = self.implicit
        self._start_login_timer()

    def ftp_PBSZ(self, size: str) -> str:
        if not self.secure:
            return "503 PBSZ is only valid after AUTH TLS."
        if not size.strip().isdigit():
            return "501 PBSZ needs a number; use PBSZ 0."
        self.pbsz_done = True
        return "200 PBSZ=0"

    def ftp_PROT(self, level: str) -> str:
        level = level.strip().upper()
        if not self.secure:
            return "503 PROT is only valid after AUTH TLS."
        if not self.pbsz_done:
            return "503 Send PBSZ 0 before PROT."
        if level in ("S", "E"):
            return f"536 Protection level {level} is not supported; use PROT P."
        if level not in ("C", "P"):
            return f"504 Unknown protection level {level[:8]!r}; use PROT P."
        self.prot = level
        if level == "C" and self.config.data_tls == "required":
            return ("200 Protection level C set, but this server transfers "
                    "only encrypted data: send PROT P before transferring.")
        return f"200 Protection level {level} set."

    def ftp_CCC(self) -> str:
        self._audit("ftp.ccc_refused")
        return "534 CCC refused by policy: the control connection stays encrypted."

    def ftp_REIN(self) -> str:
        self._reset_session()
        if self.secure:
            return ("220 Session reinitialized; log in again (the connection "
                    "stays encrypted).")
        return "220 Session reinitialized; log in again."

    # -- session-free commands -------------------------------------------

    def ftp_FEAT(self) -> None:
        features = []
        if self.policy.explicit_tls_offered and not self.implicit:
            features += ["AUTH TLS", "AUTH SSL"]
        features += ["PBSZ", "PROT", "CLNT", "HOST", "PASV"] + self.file_features()
        self.sendLine("211-Features:")
        for feature in sorted(features):
            self.sendLine(" " + feature)
        self.sendLine("211 End")

    def ftp_SYST(self) -> str:
        return "215 UNIX Type: L8"

    def ftp_NOOP(self) -> str:
        return "200 OK."

    def ftp_HELP(self, topic: str = "") -> None:
        commands = sorted(
            name[4:] for name in dir(self) if name.startswith("ftp_")
        )
        self.sendLine("214-The following commands are recognized:")
        for start in range(0, len(commands), 10):
            self.sendLine(" " + " ".join(commands[start:start + 10]))
        self.sendLine("214 " + self.policy.how_to_connect())

    def ftp_CLNT(self, software: str) -> str:
        self.client_software = software.strip()[:128]
        return "200 Noted."

    def ftp_HOST(self, host: str) -> str:
        return "220 Host accepted."

    def ftp_OPTS(self, option: str) -> str:
        name, _, value = option.strip().partition(" ")
        if name.upper() == "UTF8" and value.strip().upper() in ("ON", ""):
            return "200 UTF8 is always on."
        if name.upper() in ("MLST", "HASH"):
            return self.file_options(name.upper(), value)
        return f"501 Option {name[:32]} not understood."

    def ftp_QUIT(self) -> None:
        self.sendLine("221 Goodbye.")
        self.close()

    def ftp_ACCT(self, account: str) -> str:
        return "202 ACCT not needed on this server."

    # -- login ---------------------------------------------------------

    def ftp_USER(self, username: str) -> str:
        if self.state not in (self.UNAUTH, self.INAUTH):
            return "503 Already logged in; send REIN to log in as another user."
        username = username.strip()
        if not username:
            return "501 USER needs a user name."
        self._user = username
        self.state = self.INAUTH
        return f"331 Password required for {username[:64]}."

    def ftp_PASS(self, password: str = "") -> Any:
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
        # The channel decides whether app passwords count (FTPS only) and
        # refuses a two-factor account's main password (accounts.checker).
        creds = ChannelCredentials(name.encode("utf-8", "surrogateescape"),
                                   password.encode("utf-8", "surrogateescape"),
                                   "ftps" if self.secure else "ftp")
        # The mind is the server: the realm does its disk work in its threads.
        d = self.session_factory.portal.login(creds, self.session_factory.shared.server,
                                              IFileShell)

        def logged_in(result: Any) -> Any:
            ban = attempt.succeeded() if attempt is not None else None
            if watch is None:
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
            self._audit("ftp.login", account=name, outcome="failed")
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
        self._audit("ftp.login", account=name, outcome="ok")
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

    # -- slow clients ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # closing: nothing more is read, buffered or executed
        super().dataReceived(data)
        self._watch_partial_line(b"\n" in data)

    def _watch_partial_line(self, completed_a_line: bool) -> None:
        """
        Close a connection whose started command line does not finish in time.

        The clock starts when a line is started and is not reset by further
        bytes of the same line (a slowloris sends one byte at a time).
        """
        timeout = self.config.line_timeout
        if not getattr(self, "_buffer", b"") or self._closing or timeout <= 0:
            self._cancel_line_timer()
            return
        if self._line_timer is not None and completed_a_line:
            self._cancel_line_timer()
        if self._line_timer is None:
            self._line_timer = self.reactor.callLater(timeout, self._line_timed_out)

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None and self._line_timer.active():
            self._line_timer.cancel()
        self._line_timer = None

    def _line_timed_out(self) -> None:
        self._line_timer = None
        self._audit("ftp.slow_line", outcome="closed")
        self.sendLine("421 Command line not completed in time; closing.")
        self.close()

    # -- cleartext credentials -----------------------------------------

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
        self._watch = _CleartextWatch(self, user, unscored=probe)
        if verb == "PASS":
            self._watch.line(f"PASS {argument or ''}")
        # What is still queued came in the clear behind the USER: watch it too.
        while self._pending:
            self._watch.line(self._pending.popleft())

    # -- transfers under PROT -----------------------------------------

    def _data_refusal(self) -> str | None:
        if self.prot == "P" or not self.secure:
            return None
        if self.config.data_tls == "required":
            self._audit("ftp.prot_c_refused", account=self.account)
            return ("521 Data connections must be encrypted on this server: "
                    "send PBSZ 0 and PROT P, then retry.")
        return None

    # -- data connections (delegated) ---------------------------------

    def ftp_PASV(self) -> Any:
        return data_channel.passive(self, extended=False)

    def ftp_EPSV(self, protocol: str = "") -> Any:
        return data_channel.extended_passive(self, protocol)

    def ftp_PORT(self, address: str) -> Any:
        return data_channel.active(self, address, extended=False)

    def ftp_EPRT(self, address: str) -> Any:
        return data_channel.active(self, address, extended=True)


class _MissingArgument(Exception):
    pass


_ARGUMENTS: dict[Any, tuple[bool, bool]] = {}


def _arguments_of(method: Any) -> tuple[bool, bool]:
    """
    Whether an C{ftp_*} method accepts an argument, and whether it needs
    one (cached per function).

    C{NOOP x} must get 501, not a C{TypeError} from calling C{ftp_NOOP("x")};
    and a C{TypeError} raised inside a handler must not pass for a missing
    argument.
    """
    function = getattr(method, "__func__", method)
    known = _ARGUMENTS.get(function)
    if known is None:
        positional = [
            p for p in inspect.signature(method).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        known = _ARGUMENTS[function] = (
            bool(positional),
            any(p.default is p.empty and p.kind is not p.VAR_POSITIONAL
                for p in positional))
    return known


class ErrorReports:
    """
    Log unexpected errors in command handlers without letting clients flood.

    Why: before this, every such error was logged at critical level with a
    traceback (about 500 bytes a line of input): 200 lines sent by a client
    without an account gave 100 KB of log.  Now each verb is logged at most
    once per C{interval} seconds, at error level; the traceback only for
    logged-in sessions (a client with an account is accountable and rare); a
    count of what was left out comes with the next line.  The command's
    argument is never logged: it may be a password.
    """

    def __init__(self, clock: Any, interval: float = 60.0) -> None:
        self._clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        #: Every error reported, logged or not.
        self.count = 0

    def report(self, verb: str, failure: Failure, *, authenticated: bool) -> None:
        self.count += 1
        now = self._clock.seconds()
        last = self._last.get(verb)
        if last is not None and now - last < self.interval:
            self._suppressed[verb] = self._suppressed.get(verb, 0) + 1
            return
        if len(self._last) > 256:  # bounded: verbs are client-chosen
            self._last.clear()
        self._last[verb] = now
        skipped = self._suppressed.pop(verb, 0)
        if authenticated:
            _log.failure(
                "unexpected error in FTP command {verb} ({skipped} more not logged)",
                failure, level=LogLevel.error, verb=verb, skipped=skipped)
        else:
            _log.error(
                "unexpected error in FTP command {verb} before login: {error} "
                "({skipped} more not logged)",
                verb=verb, error=failure.type.__name__, skipped=skipped)


class _CleartextWatch:
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


class ControlFactory(protocol.ServerFactory):
    """
    Builds control connections for one listener (plain or implicit FTPS).
    """

    def __init__(self, shared: "FTPFactories", implicit: bool) -> None:
        self.shared = shared
        self.implicit = implicit
        self.reactor = shared.reactor
        self.config = shared.config
        self.policy = shared.policy
        self.audit = shared.audit
        self.portal = shared.portal
        self.passive_port_range = shared.passive_port_range
        self.timeOut = self.config.idle_timeout
        self.guard = shared.guard

    @property
    def tls_context(self) -> Any:
        # A TLS context per control connection: its data connections can
        # resume its session and nobody else's (tls.per_session_factory).
        return self.shared.tls.per_session_factory([b"ftp"])

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        p = ControlProtocol(self)
        p.factory = self
        p.timeOut = self.config.idle_timeout
        return p


class FTPFactories:
    """
    What the FTP listeners share: policy, accounts, TLS and pending checks.
    """

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.config = server.config
        self.audit = server.audit
        self.portal = server.portal
        self.tls = server.tls
        self.policy = ControlPolicy(
            mode=self.config.ftp_security,
            explicit_port=self.config.ftp_port,
            implicit_port=self.config.ftps_port,
        )
        if self.config.passive_ports:
            low, high = self.config.passive_ports
            self.passive_port_range: range = range(low, high + 1)
            self.port_pool: PortPool | None = PortPool(self.passive_port_range)
        else:
            self.passive_port_range = range(0, 1)
            self.port_pool = None
        self.exposure = server.exposure
        self.guard = getattr(server, "guard", None)
        self.account_watcher = getattr(server, "account_watcher", None)
        self.data_connect_timeout = self.config.data_connect_timeout
        self.engine = getattr(server, "transfer_engine", None) or TransferEngine(
            reactor, idle_timeout=self.config.data_idle_timeout)
        self.errors = ErrorReports(reactor)
        #: Whole-file HASH and other long work: not the shared thread pool.
        self.long_work: LongWork = getattr(server, "long_work", None) or LongWork(reactor)

    def plain(self) -> ControlFactory:
        return ControlFactory(self, implicit=False)

    def implicit(self) -> ControlFactory:
        return ControlFactory(self, implicit=True)


def build_ftp_factory(server: Any, reactor: Any) -> FTPFactories:
    """
    The FTP side of the server, for L{rumpus_secure.tap.makeService}.
    """
    return FTPFactories(server, reactor)


