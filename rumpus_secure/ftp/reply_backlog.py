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
