"""
What an FTP session may do now: pure decisions, no sockets.

The control protocol asks L{ControlPolicy.verdict} about every command line
and acts on the answer; all the rules about TLS before login live here, so
they can be read (and tested) in one place.

Reply codes, and why:

 - A cleartext C{USER} or C{PASS} gets C{530} (not logged in): the login was
   refused, which every client understands and shows to its user; vsftpd does
   the same.  We close afterwards, so the text says to reconnect.
 - Any other command before TLS gets C{534} ("request denied for policy
   reasons", RFC 2228): the server understood the command and refuses it by
   policy, not because it is unknown or out of sequence.
 - C{PBSZ} and C{PROT} before TLS get C{503} (bad sequence): RFC 4217 section
   9 says they are only valid after a security exchange.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Commands a client may send before the control connection is protected.
#: CLNT and HOST are only recorded (CLNT tells us which client software the
#: user has; HOST is the virtual host name) and answered harmlessly.
ALLOWED_BEFORE_TLS = frozenset(
    {"AUTH", "FEAT", "SYST", "NOOP", "QUIT", "HELP", "CLNT", "HOST"}
)

#: Verbs of other line protocols.  A browser tricked into talking to the FTP
#: port (ALPACA, cross-protocol scripting) sends an HTTP request line; a
#: mail client sends SMTP.  Neither is ever FTP, so the connection is closed.
CROSS_PROTOCOL_VERBS = frozenset(
    {
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        "PATCH", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "STARTTLS",
    }
)

#: The security mechanisms of AUTH that mean TLS (RFC 4217 section 4; SSL,
#: TLS-C and TLS-P are the old names, TLS-P also asks for PROT P).
AUTH_MECHANISMS = {"TLS": "C", "TLS-C": "C", "SSL": "P", "TLS-P": "P"}

#: FTP policies (the --ftp-security option).
REQUIRE_TLS = "require-tls"
ALLOW_PLAIN = "allow-plain"
IMPLICIT_ONLY = "implicit-only"


class Verdict(enum.Enum):
    """
    What to do with one command line.
    """

    EXECUTE = "execute"
    CROSS_PROTOCOL = "cross-protocol"
    CLEARTEXT_LOGIN = "cleartext-login"
    NEEDS_TLS = "needs-tls"
    TLS_SEQUENCE = "tls-sequence"


def split_command(line: str) -> tuple[str, str | None]:
    """
    Split a command line into an upper-case verb and its argument.

    Only the first space separates; the argument keeps any other spaces, so a
    file name such as C{"my file.txt"} survives.
    """
    verb, sep, argument = line.partition(" ")
    return verb.upper(), (argument if sep else None)


def is_cross_protocol(line: str) -> bool:
    """
    Is this line from another protocol (HTTP, SMTP) rather than FTP?

    True for HTTP and SMTP verbs, a status line starting with C{HTTP/}, and a
    header line (its first word ends in a colon, e.g. C{"Host:"}).
    """
    if line.upper().startswith("HTTP/"):
        return True
    verb = line.split(" ", 1)[0]
    if verb.endswith(":"):
        return True
    return verb.upper() in CROSS_PROTOCOL_VERBS


@dataclass(frozen=True)
class ControlPolicy:
    """
    The control-channel rules for one listener.

    @ivar mode: one of L{REQUIRE_TLS}, L{ALLOW_PLAIN}, L{IMPLICIT_ONLY}.
    @ivar explicit_port: the port of the FTP control listener, for messages.
    @ivar implicit_port: the implicit FTPS port, for messages, or L{None}.
    """

    mode: str = REQUIRE_TLS
    explicit_port: int | None = None
    implicit_port: int | None = None

    @property
    def explicit_tls_offered(self) -> bool:
        """
        Does the plain control port offer AUTH TLS?
        """
        return self.mode != IMPLICIT_ONLY

    @property
    def plain_port_closed(self) -> bool:
        """
        Does the plain control port only say where to go and hang up?
        """
        return self.mode == IMPLICIT_ONLY

    def verdict(self, line: str, secure: bool) -> Verdict:
        """
        Decide about one command line received before or after TLS.
        """
        if is_cross_protocol(line):
            return Verdict.CROSS_PROTOCOL
        if secure or self.mode == ALLOW_PLAIN:
            return Verdict.EXECUTE
        verb, _ = split_command(line)
        if verb in ALLOWED_BEFORE_TLS:
            return Verdict.EXECUTE
        if verb in ("USER", "PASS", "ACCT"):
            return Verdict.CLEARTEXT_LOGIN
        if verb in ("PBSZ", "PROT", "CCC"):
            return Verdict.TLS_SEQUENCE
        return Verdict.NEEDS_TLS

    def how_to_connect(self) -> str:
        """
        One sentence that tells the user how to reach this server securely.
        """
        ways = []
        if self.explicit_tls_offered and self.explicit_port is not None:
            ways.append(f"explicit FTPS (AUTH TLS) on port {self.explicit_port}")
        elif self.explicit_tls_offered:
            ways.append("explicit FTPS (AUTH TLS)")
        if self.implicit_port is not None:
            ways.append(f"implicit FTPS on port {self.implicit_port}")
        if not ways:
            return "Use an FTP client with TLS."
        return "Use " + " or ".join(ways) + "."

    def refusal(self, verdict: Verdict, verb: str) -> str:
        """
        The reply line for a refused command: the code and what to do.
        """
        if verdict is Verdict.CLEARTEXT_LOGIN:
            return (
                "530 Login refused: this server requires FTP over TLS, so "
                "passwords are never accepted unencrypted. Reconnect with "
                "TLS. " + self.how_to_connect()
            )
        if verdict is Verdict.TLS_SEQUENCE:
            return f"503 {verb} is only valid after AUTH TLS."
        return (
            f"534 {verb} refused: this server requires FTP over TLS. Send "
            "AUTH TLS first. " + self.how_to_connect()
        )

    def implicit_only_greeting(self) -> str:
        """
        The only thing the plain port says in implicit-only mode.
        """
        where = (
            f"port {self.implicit_port}" if self.implicit_port else "the FTPS port"
        )
        return (
            "421 This server accepts only implicit FTPS (FTP over TLS from "
            f"the first byte) on {where}. Reconnect with ftps:// to {where}."
        )
