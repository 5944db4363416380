"""
Replies that a client does not read stop the commands that would make more.

FTP lets a client send its commands without waiting for the replies
(pipelining), and most commands are answered at once.  A client that sends
thousands of commands and reads nothing made the server buffer every reply:
an attacker measured four logged-in connections pipelining ``HELP`` (6 bytes
in, 387 out) grow the server from 296 to 1,220 MiB in 7 seconds, and an
honest login took 25-39 s meanwhile; before login, on the plain port, four
connections did the same (68 -> 273 MiB, an honest login 16.5 s).

So a control connection stops executing commands while more than
L{REPLY_BACKLOG_LIMIT} bytes of its replies wait to be sent (held in the
current read by L{rumpus_secure.direct_write}, or in the transport's
buffer), stops reading from the socket, and goes on once the kernel has taken
them: the transport tells L{ReplyGate} (a streaming producer registered on
the control connection) when its buffer drained.  The limit is Twisted's own
send buffer size (64 KiB), so a full buffer and a paused gate agree.  What a
connection holds is then one read of commands (at most 64 KiB of lines, the
socket's read size) and about 64 KiB of replies, plus one long reply (``STAT``
of a folder, capped at L{rumpus_secure.ftp.files.STAT_MAX_ENTRIES} lines).  A
client that never reads is closed by the idle timeout like any silent one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: Bytes of unsent replies above which a connection's next command waits.
REPLY_BACKLOG_LIMIT = 64 * 1024

#: Commands one connection executes in one turn of the reactor (one read,
#: or one round of its queue) before the others get theirs.
COMMANDS_PER_TURN = 32


def output_backlog(transport: Any) -> int:
    """
    Bytes written to C{transport} (and the transports under it: a TLS layer
    over TCP) that are not yet sent.
    """
    total = 0
    for _ in range(4):
        if transport is None:
            break
        total += getattr(transport, "_held_bytes", 0)
        buffered = getattr(transport, "dataBuffer", None)
        if buffered is not None:
            total += (len(buffered) - getattr(transport, "offset", 0)
                      + getattr(transport, "_tempDataLen", 0))
        transport = getattr(transport, "transport", None)
    return total


@implementer(IPushProducer)
class ReplyGate:
    """
    Registered on a control connection's transport as a streaming producer:
    paused while the transport's send buffer is full, and C{on_drained} is
    called when it has drained.
    """

    def __init__(self, on_drained: Callable[[], None]) -> None:
        self.paused = False
        self._on_drained = on_drained

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._on_drained()

    def stopProducing(self) -> None:
        self.paused = True


class BoundedPipelining:
    """
    The control protocol's side of both bounds (a mixin): its replies'
    backlog and its commands per turn.

    Expects the control protocol's C{_gate} (a L{ReplyGate} calling
    L{_go_on}), C{transport}, C{reactor}, C{paused} (LineReceiver's),
    C{_reading_paused}, C{_closing}, C{_busy} and C{_drain}.
    """

    _gate: ReplyGate
    _held_back = False
    _turn_commands = 0
    _gate_registered = False

    def _start_reply_gate(self) -> None:
        """Register the gate on the transport (at connectionMade)."""
        register = getattr(self.transport, "registerProducer", None)  # type: ignore[attr-defined]
        if register is not None:
            try:
                register(self._gate, True)
                self._gate_registered = True
            except RuntimeError:
                pass  # a producer is already registered: no gate

    def _stop_reply_gate(self) -> None:
        """
        Unregister the gate before closing: a registered producer keeps a
        TLS close waiting (Twisted's TLS layer sends close_notify once it is
        unregistered).
        """
        if self._gate_registered:
            self._gate_registered = False
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def _hold_input(self) -> None:
        """
        Stop reading the socket, and stop cutting lines out of what was read:
        the rest stays in LineReceiver's buffer as one piece (cut line by
        line into the queue, 64 KiB of 6-byte commands cost 11,000 copies of
        up to 64 KiB each).  L{_drain} goes on with it.
        """
        self.paused = True
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _must_wait(self) -> bool:
        """
        Whether the next command waits (L{rumpus_secure.ftp.reply_backlog}):
        for more than L{REPLY_BACKLOG_LIMIT} bytes of replies to be sent, or
        for the next turn of the reactor after L{COMMANDS_PER_TURN} commands,
        so that a client pipelining thousands of commands takes its turn
        with everyone else.  If so, input is held and L{_go_on} resumes.
        """
        self._turn_commands += 1
        if (self._turn_commands <= COMMANDS_PER_TURN and not self._gate.paused
                and output_backlog(self.transport) <= REPLY_BACKLOG_LIMIT):
            return False
        self._held_back = True
        self._hold_input()
        if not self._gate.paused:
            # The next turn, or the end of the read holding the replies.
            self.reactor.callLater(0, self._go_on)
        return True

    def _go_on(self) -> None:
        """
        A new turn of the reactor, or the transport's buffer drained (the
        gate resumed): go on with the waiting commands.
        """
        if self._closing or not self._held_back or self._gate.paused:
            return
        if output_backlog(self.transport) > REPLY_BACKLOG_LIMIT:
            self.reactor.callLater(0.1, self._go_on)
            return
        self._held_back = False
        if not self._busy:
            self._drain()
