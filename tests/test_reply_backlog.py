"""
Replies a client does not read stop the commands that would make more
(rumpus_secure.ftp.reply_backlog).
"""

from __future__ import annotations

from pathlib import Path
from rumpus_secure.ftp.factory import FTPFactories
from rumpus_secure.ftp.reply_backlog import REPLY_BACKLOG_LIMIT, output_backlog

from .ftp_fakes import TLSStringTransport, connect, make_server

HELP = b"HELP\r\n"


class SlowReaderTransport(TLSStringTransport):
    """
    A transport whose peer reads nothing until L{drain}: what is written
    stays "unsent" in C{dataBuffer}, and the registered streaming producer
    is paused past Twisted's 64 KiB, as C{FileDescriptor} does.
    """

    bufferSize = 2 ** 16

    def __init__(self, peer: str = "192.0.2.7") -> None:
        super().__init__(peer)
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.dataBuffer += data
        if self.producer is not None and len(self.dataBuffer) > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self) -> None:
        self.sent += self.dataBuffer
        self.dataBuffer = b""
        if self.producer is not None:
            self.producer.resumeProducing()

    def replies(self) -> list[bytes]:
        return (self.sent + self.dataBuffer).split(b"\r\n")


def _help_replies(transport: SlowReaderTransport) -> int:
    return sum(1 for line in transport.replies() if line.startswith(b"214 "))



def test_unread_replies_stop_the_next_commands_and_nothing_is_lost(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    # Two connections from one address: one reads nothing, one is served.
    proto2, _, reactor = connect(server)
    transport = SlowReaderTransport()
    proto = FTPFactories(server, reactor).plain().buildProtocol(None)
    proto.makeConnection(transport)
    assert transport.producer is proto._gate

    commands = 5000
    proto.dataReceived(HELP * commands)
    reactor.advance(0)
    answered = _help_replies(transport)
    # Stopped once 64 KiB of replies waited: not 5,000 replies (1.9 MB).
    assert 0 < answered < commands
    assert output_backlog(transport) <= REPLY_BACKLOG_LIMIT + 1024
    assert transport.producerState == "paused"  # no more reading

    # Another connection from the same address is answered meanwhile.
    proto2.transport.clear()
    proto2.dataReceived(HELP)
    assert b"214 " in proto2.transport.value()

    # The client reads: the waiting commands go on, in order, none lost.
    rounds = 0
    while _help_replies(transport) < commands and rounds < 1000:
        transport.drain()
        reactor.advance(0.2)
        rounds += 1
    assert _help_replies(transport) == commands
    assert rounds > 1
    assert transport.producerState == "producing"  # reading again


def test_a_drained_buffer_alone_does_not_run_commands_twice(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    _, _, reactor = connect(server)
    proto = FTPFactories(server, reactor).plain().buildProtocol(None)
    transport = SlowReaderTransport()
    proto.makeConnection(transport)
    proto.dataReceived(HELP * 3)
    reactor.advance(0)
    transport.drain()
    transport.drain()
    reactor.advance(1)
    assert _help_replies(transport) == 3


def test_close_while_replies_wait_does_not_wait_for_the_reader(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    _, _, reactor = connect(server)
    proto = FTPFactories(server, reactor).plain().buildProtocol(None)
    transport = SlowReaderTransport()
    proto.makeConnection(transport)
    proto.dataReceived(HELP * 2000 + b"QUIT\r\n")
    reactor.advance(0)
    proto.close()
    # The gate is gone: a TLS layer would otherwise hold its close_notify
    # (and the close) until the producer is unregistered.
    assert transport.producer is None


def test_a_pipelining_client_takes_turns_with_the_others(tmp_path: Path) -> None:
    """
    Thousands of commands in one read run COMMANDS_PER_TURN at a time, one
    batch per turn of the reactor; the rest of the read is kept uncut (not
    one queued string per line); another client of the same address is
    answered in between; every command is answered, in order.
    """
    from rumpus_secure.ftp.reply_backlog import COMMANDS_PER_TURN
    server = make_server(tmp_path)
    flood, flood_transport, reactor = connect(server)
    other, other_transport, _ = connect(server, reactor=reactor)
    flood_transport.clear()
    flood.dataReceived(b"".join(b"HELP %d\r\n" % i for i in range(5000)))
    first = flood_transport.value().count(b"\r\n214 ")
    assert 0 < first <= COMMANDS_PER_TURN
    assert len(flood._pending) <= 1  # the rest waits as one buffer
    other_transport.clear()
    other.dataReceived(HELP)
    assert b"214 " in other_transport.value()
    turns, answered = 0, first
    while answered < 5000 and turns < 1000:
        # One turn: run the calls due now, not those they schedule.
        due = [c for c in reactor.getDelayedCalls() if c.getTime() <= reactor.seconds()]
        assert due, "the flood stalled"
        for call in due:
            reactor.calls.remove(call)
            call.func(*call.args, **call.kw)
        now = flood_transport.value().count(b"\r\n214 ")
        assert now - answered <= COMMANDS_PER_TURN
        answered, turns = now, turns + 1
    assert answered == 5000
    assert turns >= 5000 // COMMANDS_PER_TURN - 1
    assert flood_transport.producerState == "producing"
