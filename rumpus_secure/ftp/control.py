"""
The FTP control connection: one client's session, and its command loop.

L{ControlProtocol} extends Twisted's L{twisted.protocols.ftp.FTP} with what
Twisted lacks.  It is assembled from rooms of their own:

 - L{rumpus_secure.ftp.tls_commands}: RFC 4217 (AUTH TLS/SSL, PBSZ, PROT,
   CCC refused), the handshake deadline after AUTH;
 - L{rumpus_secure.ftp.login}: USER/PASS through the guard and the exposure
   guard, the login deadline, cleartext-credential containment;
 - L{rumpus_secure.ftp.client_cert_login}: certificate logins;
 - L{rumpus_secure.ftp.account_state}: the session follows its account;
 - L{rumpus_secure.ftp.files}: the file and transfer commands;
 - L{rumpus_secure.ftp.factory}: the listeners' factories.

What stays here is the connection itself: greeting and limits, the pre-login
TLS policy of L{rumpus_secure.ftp.policy}, the cross-protocol (ALPACA)
defence, and a command loop that never executes bytes that arrived behind
AUTH TLS, ends a command at LF with or without CR (so no LF inside a line can
forge a reply line), bounds what a client can queue (32 lines) or leave
unfinished (C{--line-timeout}), and uses the injected reactor (Twisted's
uses the global one).  It was one 1,142-line module before it was split.

Per command it stays cheap (issue #18: a repeat login is four commands): a
command answered at once is replied to without a Deferred (maybeDeferred
and five callbacks were 40% of a NOOP's 6.7 us in memory; now 4.3 us), a
command that leaves nothing queued does not wait a reactor turn, and the
idle, close and line deadlines live on a coarse timer wheel
(L{rumpus_secure.timer_wheel}) where moving the idle deadline per command
is one assignment.  Replies leave through L{rumpus_secure.direct_write}.
"""

from __future__ import annotations

import functools
import inspect
from collections import deque
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger, LogLevel
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from rumpus_secure.ftp import data as data_channel
from rumpus_secure.ftp.account_state import AccountBoundSession
from rumpus_secure.ftp.client_cert_login import ClientCertLogin
from rumpus_secure.ftp.files import FileCommands
from rumpus_secure.ftp.login import LoginCommands
from rumpus_secure.ftp.policy import ControlPolicy, Verdict, split_command
from rumpus_secure.ftp.reply_backlog import BoundedPipelining, ReplyGate
from rumpus_secure.ftp.tls_commands import TLSCommands
from rumpus_secure.guard import FTP_OFFENCES, normalise_address

if TYPE_CHECKING:
    from rumpus_secure.ftp.factory import ControlFactory
    from rumpus_secure.ftp.login import CleartextWatch

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


@functools.cache
def _command_names(cls: type) -> tuple[str, ...]:
    """
    The verbs C{cls} answers, for HELP: once per class (C{dir()} of the
    protocol took about a millisecond, for a 6-byte command).
    """
    return tuple(sorted(name[4:] for name in dir(cls) if name.startswith("ftp_")))


@implementer(IHandshakeListener)
class ControlProtocol(LoginCommands, TLSCommands, ClientCertLogin, AccountBoundSession,
                      BoundedPipelining,
                      FileCommands, ftp.FTP):
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
        # Replies the client has not read stop the next commands
        # (rumpus_secure.ftp.reply_backlog).
        self._gate = ReplyGate(self._go_on)
        self._watch: CleartextWatch | None = None
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
        #: The idle, close and line deadlines (coarse: see timer_wheel).
        self._timers = session_factory.shared.timers
        self._idle_timer: Any = None

    # -- plumbing -------------------------------------------------------

    def callLater(self, period: float, func: Any) -> Any:
        return self.reactor.callLater(period, func)

    # The idle timeout of TimeoutMixin (Twisted's FTP), on the timer wheel:
    # every command moves it, and there a move is one assignment.

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        timer = self._idle_timer
        if period is None:
            if timer is not None:
                timer.cancel()
                self._idle_timer = None
        elif timer is not None and timer.active():
            timer.reset(period)
        else:
            self._idle_timer = self._timers.schedule(period, self._idle_timed_out)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_timer is not None and self.timeOut is not None:
            self._idle_timer.reset(self.timeOut)

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        self.timeoutConnection()

    @property
    def client_host(self) -> str:
        """
        The client's address; still known once the connection is gone (the
        audit of a transfer that ends after it said ``?``).
        """
        # Asked about a dozen times a login; the peer of a connection does
        # not change (a PROXY header is read before this protocol exists).
        if self._last_host == "?" and self.transport is not None:
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
            self._stop_reply_gate()
            self.transport.loseConnection()
            if self._abort_timer is None:
                # A TLS connection closes only once its close_notify is
                # written; a client that keeps sending (a line that never
                # ends) must not keep it open: cut it after a grace.
                self._abort_timer = self._timers.schedule(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if self.transport is not None and not self._transport_gone():
            self.transport.abortConnection()

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        self.state = self.UNAUTH
        self.setTimeout(self.timeOut)
        self._start_reply_gate()
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

    def _greeting(self) -> str:
        if self.secure or self.policy.mode == "allow-plain":
            return "220 rumpus-secure FTP server ready."
        return (
            "220 rumpus-secure FTP server ready. TLS is required: send "
            "AUTH TLS before logging in."
        )

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        # Not reason.check(SSL.Error): it spells out the qualified names of
        # every class in the error's ancestry, on every connection's end.
        if isinstance(reason.value, SSL.Error):
            _log.info(
                "TLS handshake with {client} failed: {error}",
                client=self.client_host, error=reason.getErrorMessage(),
            )
            self._audit("ftp.tls_failed", outcome="refused",
                        error=reason.getErrorMessage()[:200])
        self._closing = True
        self._cancel_login_timer()
        if self._abort_timer is not None:
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
        if self._busy or self._held_back:
            if (self._busy and self.state == self.AUTHED
                    and self.urgent_command(*split_command(text))):
                return  # ABOR or STAT during a transfer
            self._pending.append(text)
            if len(self._pending) >= MAX_PENDING_LINES or self._held_back:
                self._hold_input()
            return
        if self._must_wait():
            self._pending.append(text)
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
        try:
            answer = self._dispatch_when_current(verb, argument)
        except BaseException:
            answer = Failure()
        if not isinstance(answer, (defer.Deferred, CoroutineType)):
            # Answered at once (most commands): no Deferred at all (it was
            # maybeDeferred and five callbacks per command).
            self._answer(answer, verb[:16])
            return
        if not isinstance(answer, defer.Deferred):
            answer = defer.Deferred.fromCoroutine(answer)
        waiting = False
        done = False

        def settle(outcome: Any) -> None:
            nonlocal done
            self._answer(outcome, verb[:16])
            done = True
            if waiting:
                self._finished(None)

        answer.addBoth(settle)
        # Not answer.called: a Deferred waiting on one its callback returned
        # (a delayed login failure) is called but not finished.
        if done:
            return
        waiting = True
        self._busy = True

    def _answer(self, outcome: Any, verb: str) -> None:
        """
        Reply with a command's outcome: a reply (L{_replied}) or a failure
        (L{_failed}); a failure to reply closes the connection.
        """
        try:
            if isinstance(outcome, Failure):
                self._failed(outcome, verb)
            else:
                self._replied(outcome)
        except BaseException:
            self._reply_failed(Failure())

    def _finished(self, ignored: Any) -> None:
        # Resume on the next turn of the reactor, not inside whatever fired
        # the command's Deferred (a data connection's connectionMade, say).
        if self._closing:
            return
        if not self._pending and not self._reading_paused:
            # Nothing waits to be executed or resumed: no turn to wait for.
            self._busy = False
            return
        self._drain_call = self.reactor.callLater(0, self._drain)

    def _drain(self) -> None:
        self._drain_call = None
        self._busy = False
        self._turn_commands = 0
        while self._pending and not self._busy and not self._closing:
            if self._held_back:
                return  # _go_on resumes
            if self._watch is None and self._must_wait():
                return
            text = self._pending.popleft()
            if self._watch is not None:
                self._watch.line(text)
                continue
            self._handle(text)
        if self._busy or self._closing or self._held_back:
            return
        if self.paused:
            # Lines wait, uncut, in LineReceiver's buffer: go on with them
            # (they may hold input again).
            self.paused = False
            self.dataReceived(b"")
            if self._busy or self._closing or self._held_back or self.paused:
                return
        if self._reading_paused:
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
        if argument is None and needs:
            raise _MissingArgument(verb)
        # What the command writes leaves in one segment, also when it runs
        # after a thread's answer rather than inside a read (direct_write).
        hold = getattr(self.transport, "hold_writes", None)
        release = hold() if hold is not None else None
        try:
            return method() if argument is None else method(argument)
        finally:
            if release is not None:
                release()

    def _reset_session(self) -> None:
        """
        Forget login and transfer state (RFC 4217 section 4.2, and REIN).
        """
        self._forget_certificate_login()
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
        commands = _command_names(type(self))
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

    # -- slow clients ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # closing: nothing more is read, buffered or executed
        if data:
            self._turn_commands = 0  # a new read: a new turn
        super().dataReceived(data)
        self._watch_partial_line(b"\n" in data)

    def _watch_partial_line(self, completed_a_line: bool) -> None:
        """
        Close a connection whose started command line does not finish in time.

        The clock starts when a line is started and is not reset by further
        bytes of the same line (a slowloris sends one byte at a time).
        """
        timeout = self.config.line_timeout
        if (not getattr(self, "_buffer", b"") or self._closing or timeout <= 0
                or self.paused):  # paused: whole lines wait their turn
            self._cancel_line_timer()
            return
        if self._line_timer is not None and completed_a_line:
            self._cancel_line_timer()
        if self._line_timer is None:
            self._line_timer = self._timers.schedule(timeout, self._line_timed_out)

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None:
            self._line_timer.cancel()
        self._line_timer = None

    def _line_timed_out(self) -> None:
        self._line_timer = None
        self._audit("ftp.slow_line", outcome="closed")
        self.sendLine("421 Command line not completed in time; closing.")
        self.close()

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


