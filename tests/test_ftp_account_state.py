"""
Open FTP sessions follow their account: lock, quarantine, delete, new
password, permissions (issue #11, part 2), driven in memory.

The control protocol runs on a StringTransport with the fake store; the
watcher reads an in-memory change log, and its reads run inline, so a
command waits for nothing.  Every test has a second session of another
account from the same address that must not be touched.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from rumpus_secure.accounts.watch import AccountWatcher
from rumpus_secure.vfs import ALL_PERMISSIONS

from .ftp_fakes import connect, make_server
from .test_account_watch import Log
from .test_ftp_files import DataClient, SocketSource, ThreadEngine, loopback_pair


class Client:
    """One logged-in control connection over a StringTransport."""

    def __init__(self, world: World, user: str, password: str,
                 peer: str = "192.0.2.7") -> None:
        self.world = world
        self.proto, self.transport, _ = connect(world.server, peer=peer,
                                                reactor=world.reactor)
        replies = self.send(f"USER {user}", f"PASS {password}")
        assert replies[-1].startswith("230 "), replies

    def send(self, *lines: str) -> list[str]:
        self.transport.clear()
        for line in lines:
            self.proto.dataReceived((line + "\r\n").encode("utf-8"))
            self.world.flush()
        return self.transport.lines()

    def replies(self) -> list[str]:
        return self.transport.lines()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def open_data(self, **client: Any) -> DataClient:
        [reply] = self.send("PASV")
        assert reply.startswith("227 "), reply
        server_end, client_end = loopback_pair()
        self.proto.data_source.close()
        self.proto.data_source = SocketSource(server_end)
        return DataClient(client_end, **client)


class World:
    """The fake server with a watcher on an in-memory change log."""

    def __init__(self, tmp_path: Path) -> None:
        self.server = make_server(tmp_path, ftp_security="allow-plain")
        self.server.store.add("bob", "bobs")
        self.engine = self.server.transfer_engine = ThreadEngine()  # type: ignore[attr-defined]
        self.log = Log()
        self.watcher = AccountWatcher(self.log, defer.maybeDeferred)
        self.server.account_watcher = self.watcher  # type: ignore[attr-defined]
        self.reactor = MemoryReactorClock()
        self.watcher.poll()

    def flush(self) -> None:
        for _ in range(5):
            self.engine.settle()
            self.reactor.advance(0)

    def change(self, name: str, kind: str, detail: str | None = None) -> None:
        """What the admin command does: a row in the log (nobody is told yet)."""
        self.log.add(name, kind, detail)
        if kind == "lock":
            self.server.store.lock(name, detail or "")
        elif kind == "perms":
            self.server.store.accounts[name].perms = frozenset((detail or "").split(","))
        elif kind == "delete":
            del self.server.store.accounts[name]

    def tick(self) -> None:
        """The watcher's timer fires."""
        self.watcher.poll()
        self.flush()


def events(world: World, name: str) -> list[dict[str, Any]]:
    return [e for e in world.server.audit.events if e["event"] == name]


def test_idle_session_of_a_locked_account_is_ended_by_the_timer(tmp_path: Path) -> None:
    world = World(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    alice.transport.clear()
    world.change("alice", "lock", "stolen laptop")
    world.tick()
    assert alice.replies() == ["421 Session ended: this account was locked "
                               "(stolen laptop)."]
    assert alice.closed
    [ended] = events(world, "ftp.session_ended")
    assert ended["account"] == "alice" and ended["reason"] == "lock"
    assert ended["detail"] == "stolen laptop" and ended["client"] == "192.0.2.7"
    assert bob.send("NOOP") == ["200 OK."] and not bob.closed
    assert world.watcher.sessions("alice") == 0
    assert world.watcher.sessions("bob") == 1


def test_next_command_after_a_lock_is_refused_without_waiting_for_the_timer(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    world.change("alice", "lock", "password sent unencrypted from 192.0.2.9")
    replies = alice.send("PWD")
    assert replies == ["421 Session ended: this account was locked (password sent "
                       "unencrypted from 192.0.2.9)."]
    assert alice.closed
    assert bob.send("PWD")[0].startswith("257 ")


def test_pipelined_commands_behind_the_change_are_not_executed(tmp_path: Path) -> None:
    world = World(tmp_path)
    alice = Client(world, "alice", "right")
    (alice.world.server.store.get("alice").home / "f").write_bytes(b"x")
    world.change("alice", "delete")
    alice.transport.clear()
    alice.proto.dataReceived(b"DELE f\r\nMKD d\r\nPWD\r\n")
    world.flush()
    assert alice.replies() == ["421 Session ended: this account was deleted."]
    home = tmp_path / "files" / "alice"
    assert (home / "f").exists() and not (home / "d").exists()


def test_new_password_ends_every_session_of_the_account(tmp_path: Path) -> None:
    world = World(tmp_path)
    first, second = Client(world, "alice", "right"), Client(world, "alice", "right")
    bob = Client(world, "bob", "bobs")
    world.change("alice", "password")
    world.tick()
    for session in (first, second):
        assert session.replies()[-1].startswith("421 Session ended: the password of "
                                                "this account was changed")
        assert session.closed
    assert len(events(world, "ftp.session_ended")) == 2
    # A login after the change stays.
    third = Client(world, "alice", "right")
    world.tick()
    assert third.send("NOOP") == ["200 OK."]
    assert bob.send("NOOP") == ["200 OK."]


def test_unlock_and_add_leave_the_session_alone(tmp_path: Path) -> None:
    world = World(tmp_path)
    alice = Client(world, "alice", "right")
    world.log.add("alice", "unlock")
    world.log.add("carol", "add")
    assert alice.send("NOOP") == ["200 OK."]


def test_permission_change_applies_to_the_next_command(tmp_path: Path) -> None:
    world = World(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    (tmp_path / "files" / "alice" / "f").write_bytes(b"data")
    (tmp_path / "files" / "bob" / "f").write_bytes(b"data")
    world.change("alice", "perms", "list,upload")
    client = alice.open_data()
    replies = alice.send("RETR f")
    assert replies[-1].startswith("550 "), replies
    assert client.data() == b""
    assert not alice.closed
    assert alice.proto.shell.perms == frozenset({"list", "upload"})
    [changed] = events(world, "ftp.session_perms_changed")
    assert changed["perms"] == "list,upload"
    # The other account keeps its rights.
    client = bob.open_data()
    assert bob.send("RETR f")[-1].startswith("226 ")
    assert client.data() == b"data"
    assert bob.proto.shell.perms == ALL_PERMISSIONS


def test_running_download_of_a_locked_account_is_aborted(tmp_path: Path) -> None:
    world = World(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    big = 32 * 1024 * 1024
    with open(tmp_path / "files" / "alice" / "big", "wb") as f:
        f.truncate(big)
    hold = threading.Event()
    client = alice.open_data(hold=hold)
    alice.transport.clear()
    alice.proto.dataReceived(b"RETR big\r\n")
    world.reactor.advance(0)
    assert alice.replies()[0].startswith("150 ")
    assert alice.proto._transfer is not None
    world.change("alice", "lock", "compromised")
    world.watcher.poll()   # the timer: the transfer is running, the session idle
    hold.set()
    world.flush()
    received = len(client.data())
    replies = alice.replies()
    assert replies[1:] == [
        f"426 Transfer aborted after {replies[1].split()[4]} bytes: this account "
        "was locked (compromised).",
        "421 Session ended: this account was locked (compromised).",
    ], replies
    assert received < big
    assert alice.closed
    [ended] = events(world, "ftp.session_ended")
    assert ended["command"] == "RETR" and ended["reason"] == "lock"
    assert ended["bytes"] == int(replies[1].split()[4]) < big
    assert bob.send("NOOP") == ["200 OK."]


def test_change_during_login_reaches_the_new_session(tmp_path: Path) -> None:
    """
    The lock lands while the password is checked: the session hears of it
    as soon as it is registered, even though the watcher read it before.
    """
    world = World(tmp_path)
    proto, transport, _ = connect(world.server, reactor=world.reactor)
    checking: list[defer.Deferred[bytes]] = []
    checker = world.server.checker
    real = checker.requestAvatarId

    def slow(credentials: Any) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        checking.append(d)
        return d

    checker.requestAvatarId = slow  # type: ignore[method-assign]
    proto.dataReceived(b"USER alice\r\nPASS right\r\n")
    world.flush()
    world.log.add("alice", "lock", "meanwhile")
    world.tick()                 # read while the password is being checked
    transport.clear()
    checking[0].callback(b"alice")
    world.flush()
    # (The watcher reads inline here, so the 421 even beats the 230.)
    assert transport.lines()[-1] == "421 Session ended: this account was locked (meanwhile)."
    assert transport.disconnecting
    checker.requestAvatarId = real  # type: ignore[method-assign]


def test_logout_and_rein_unregister_the_session(tmp_path: Path) -> None:
    world = World(tmp_path)
    first, second = Client(world, "alice", "right"), Client(world, "alice", "right")
    assert world.watcher.sessions("alice") == 2
    first.send("QUIT")
    first.proto.connectionLost(Failure(ConnectionDone()))
    assert world.watcher.sessions("alice") == 1
    assert second.send("REIN")[0].startswith("220 ")
    assert world.watcher.sessions("alice") == 0
    world.change("alice", "lock", "later")
    world.tick()
    assert second.send("NOOP") == ["200 OK."]  # logged out: nothing to end


def test_without_a_watcher_nothing_waits(tmp_path: Path) -> None:
    """Tests and tools that build the protocol without one keep working."""
    server = make_server(tmp_path, ftp_security="allow-plain")
    proto, transport, _ = connect(server)
    proto.dataReceived(b"USER alice\r\nPASS right\r\nNOOP\r\n")
    assert transport.lines()[-1] == "200 OK."
