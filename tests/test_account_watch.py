"""
The account change log (store) and the watcher that hands changes to the
open sessions, without a server.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from rumpus_secure.accounts import store as store_module
from rumpus_secure.accounts import watch as watch_module
from rumpus_secure.accounts.store import (
    AccountChange,
    ChangeBatch,
    SQLiteAccountStore,
)
from rumpus_secure.accounts.watch import AccountWatcher
from rumpus_secure.exposure import ExposureGuard
from tests.manual_thread import ManualThread

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteAccountStore:
    return SQLiteAccountStore(tmp_path / "data" / "accounts.sqlite3",
                              tmp_path / "files", hasher=CHEAP, clock=lambda: 1000.0)


def kinds(batch: ChangeBatch) -> list[tuple[str, str, str | None]]:
    return [(c.name, c.kind, c.detail) for c in batch.changes]


# -- the store's change log ------------------------------------------------


def test_every_write_logs_a_change_in_order(store: SQLiteAccountStore) -> None:
    reader = store.change_reader()
    assert reader.latest() == 0
    store.add("alice", "pw")
    store.add("bob", "pw")
    store.set_perms("alice", ["list", "download"])
    store.lock("alice", "stolen\nlaptop")
    store.unlock("alice")
    store.set_password("bob", "new")
    store.delete("bob")
    batch = reader.since(0)
    assert kinds(batch) == [
        ("alice", "add", None), ("bob", "add", None),
        ("alice", "perms", "list,download"), ("alice", "lock", "stolen laptop"),
        ("alice", "unlock", None), ("bob", "password", None), ("bob", "delete", None),
    ]
    seqs = [c.seq for c in batch.changes]
    assert seqs == sorted(seqs) and reader.latest() == seqs[-1]
    assert kinds(reader.since(seqs[4])) == kinds(batch)[5:]
    reader.close()


def test_rehash_and_refused_writes_log_nothing(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    reader = store.change_reader()
    before = reader.latest()
    stored = store.password_hash("alice")
    assert stored is not None
    assert store.replace_hash("alice", stored, stored + "x")
    with pytest.raises(store_module.AccountError):
        store.lock("Alice", "wrong case: no such account")
    with pytest.raises(store_module.AccountError):
        store.delete("nobody")
    assert reader.latest() == before


def test_a_change_made_by_another_connection_is_seen_by_an_open_reader(
        store: SQLiteAccountStore) -> None:
    """The admin command is another process: its own store, its own file handle."""
    store.add("alice", "pw")
    reader = store.change_reader()
    seen = reader.latest()
    other = SQLiteAccountStore(store.path, store.root, hasher=CHEAP)
    other.lock("alice", "by the admin")
    assert kinds(reader.since(seen)) == [("alice", "lock", "by the admin")]


def test_log_keeps_only_the_newest_rows(store: SQLiteAccountStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHANGES_KEPT", 3)
    store.add("alice", "pw")
    for n in range(5):
        store.lock("alice", f"reason {n}")
    batch = store.change_reader().since(0)
    assert len(batch.changes) == 3
    assert batch.oldest == batch.changes[0].seq == 4


def test_existing_database_gets_the_log(tmp_path: Path) -> None:
    """A database made before the change log gets the table on opening."""
    path = tmp_path / "accounts.sqlite3"
    SQLiteAccountStore(path, tmp_path / "files", hasher=CHEAP).add("alice", "pw")
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE account_changes")
    reopened = SQLiteAccountStore(path, tmp_path / "files", hasher=CHEAP)
    reopened.lock("alice", "later")
    assert kinds(reopened.change_reader().since(0)) == [("alice", "lock", "later")]


def test_quarantine_of_an_exposed_password_is_a_logged_change(
        store: SQLiteAccountStore) -> None:
    """exposure.py locks through the store, so the lock reaches the log too."""
    from twisted.internet import defer
    from twisted.internet.testing import MemoryReactorClock

    from rumpus_secure.audit import MemoryAuditLog
    from rumpus_secure.config import ServerConfig

    store.add("alice", "pw")
    seen = store.change_reader().latest()

    class Checker:
        def check_password(self, name: str, password: str) -> defer.Deferred[bool]:
            return defer.succeed(True)

    class Server:
        audit = MemoryAuditLog()
        checker = Checker()
        config = ServerConfig(data_dir=store.path.parent)

        def __init__(self) -> None:
            self.store = store

        def run_in_thread(self, f: Any, *a: Any) -> defer.Deferred[Any]:
            return defer.maybeDeferred(f, *a)

    ExposureGuard(Server(), MemoryReactorClock()).check(
        protocol="ftp", client="192.0.2.9", user="alice", password="pw")
    [change] = store.change_reader().since(seen).changes
    assert change.kind == "lock" and "unencrypted from 192.0.2.9" in (change.detail or "")


# -- the watcher -------------------------------------------------------------


class Log:
    """An in-memory change log with the reader's methods."""

    def __init__(self) -> None:
        self.changes: list[AccountChange] = []
        self.oldest_kept = 1
        self.queries = 0

    def add(self, name: str, kind: str, detail: str | None = None) -> int:
        seq = len(self.changes) + 1
        self.changes.append(AccountChange(seq, name, kind, detail, 0.0))
        return seq

    def latest(self) -> int:
        self.queries += 1
        return len(self.changes)

    def since(self, seq: int, limit: int = 1000) -> ChangeBatch:
        self.queries += 1
        kept = [c for c in self.changes if c.seq >= self.oldest_kept]
        return ChangeBatch([c for c in kept if c.seq > seq][:limit],
                           kept[0].seq if kept else 0)

    def close(self) -> None:
        pass


class Listener:
    def __init__(self) -> None:
        self.told: list[tuple[int, str, str | None]] = []

    def account_changed(self, change: AccountChange) -> None:
        self.told.append((change.seq, change.kind, change.detail))


def started(log: Log, thread: ManualThread) -> AccountWatcher:
    watcher = AccountWatcher(log, thread)
    watcher.poll()
    thread.run_next()
    return watcher


def test_changes_go_only_to_the_sessions_of_that_account() -> None:
    log, thread = Log(), ManualThread()
    log.add("alice", "add")
    watcher = started(log, thread)
    assert watcher.seq == 1
    a1, a2, b = Listener(), Listener(), Listener()
    watcher.watch("alice", a1, watcher.seq)
    watcher.watch("alice", a2, watcher.seq)
    watcher.watch("bob", b, watcher.seq)
    seq = log.add("alice", "lock", "why")
    watcher.poll()
    thread.run_next()
    assert a1.told == a2.told == [(seq, "lock", "why")]
    assert b.told == []


def test_fresh_waits_for_a_read_that_started_after_it() -> None:
    """
    A read already running when a command arrives may have missed a change
    committed just before the command: the command waits for the next read.
    """
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    alice = Listener()
    watcher.watch("alice", alice, watcher.seq)
    watcher.poll()                       # the timer's read starts...
    seq = log.add("alice", "lock", "x")  # ...the admin locks...
    fired: list[int] = []
    watcher.fresh().addCallback(fired.append)  # ...and a command arrives
    first = thread.calls[0]
    thread.calls[0] = (lambda *a: ChangeBatch([], 1), first[1], first[2])  # it saw nothing
    thread.run_next()
    assert fired == [] and alice.told == []
    thread.run_next()
    assert fired == [seq] and alice.told == [(seq, "lock", "x")]


def test_commands_arriving_during_a_read_share_the_next_one() -> None:
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    fired: list[int] = []
    for _ in range(100):
        watcher.fresh().addCallback(fired.append)
    assert len(thread.calls) == 1   # the first started a read; reads never overlap
    thread.run_next()
    assert len(fired) == 1          # the 99 others came after that read started
    assert len(thread.calls) == 1
    thread.run_next()
    assert len(fired) == 100 and not thread.calls
    assert log.queries == 3         # the start, then two reads for 100 commands


def test_a_session_hears_of_changes_read_before_it_registered() -> None:
    """
    The login began at seq 1; the watcher read a lock at seq 2 while the
    password was being checked; the session registers afterwards.
    """
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    login_seq = watcher.seq
    assert login_seq is not None
    seq = log.add("alice", "lock", "meanwhile")
    watcher.poll()
    thread.run_next()
    alice, other = Listener(), Listener()
    watcher.watch("alice", other, watcher.seq)  # logged in after the lock
    watcher.watch("alice", alice, login_seq)
    thread.run_next()
    assert alice.told == [(seq, "lock", "meanwhile")]
    assert other.told == []


def test_each_change_is_told_once() -> None:
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    early = Listener()
    watcher.watch("alice", early, watcher.seq)
    log.add("alice", "perms", "list")
    watcher.poll()
    thread.run_next()
    watcher.watch("alice", Listener(), 0)  # makes the watcher read back
    thread.run_next()
    assert early.told == [(1, "perms", "list")]


def test_cancelled_watch_hears_nothing() -> None:
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    alice = Listener()
    watch = watcher.watch("alice", alice, watcher.seq)
    watch.cancel()
    assert watcher.sessions("alice") == 0
    log.add("alice", "delete")
    watcher.poll()
    thread.run_next()
    assert alice.told == []


def test_lost_changes_end_the_sessions_that_needed_them() -> None:
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    alice = Listener()
    watcher.watch("alice", alice, watcher.seq)
    for _ in range(5):
        log.add("carol", "perms", "list")
    log.oldest_kept = 4  # rows 1-3 were dropped before we read them
    watcher.poll()
    thread.run_next()
    assert alice.told == [(3, "unknown", None)]


def test_more_than_a_batch_is_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "BATCH", 2)
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    alice = Listener()
    watcher.watch("alice", alice, watcher.seq)
    for n in range(5):
        log.add("alice", "perms", str(n))
    fired: list[int] = []
    watcher.fresh().addCallback(fired.append)
    while thread.calls:
        thread.run_next()
    assert [t[2] for t in alice.told] == ["0", "1", "2", "3", "4"]
    assert fired == [5]


def test_a_failed_read_is_logged_and_lets_the_command_go() -> None:
    log, thread = Log(), ManualThread()
    watcher = started(log, thread)
    fired: list[int] = []
    watcher.fresh().addCallback(fired.append)
    function, args, d = thread.calls.pop(0)
    d.errback(sqlite3.OperationalError("disk I/O error"))
    assert fired == [0]


def test_the_server_polls_the_log(tmp_path: Path) -> None:
    """makeService wires a timer that reads the log every POLL_INTERVAL."""
    from twisted.application.internet import TimerService

    from rumpus_secure.tap import makeService
    from tests.test_tap import Reactor, parse

    top = makeService(parse("--data-dir", str(tmp_path), "--ftp", "none", "--http", "none"),
                      reactor=Reactor())
    watcher = top.server.account_watcher  # type: ignore[attr-defined]
    timers = [s for s in top if isinstance(s, TimerService)
              and getattr(s.call[0], "__self__", None) is watcher]
    assert len(timers) == 1 and timers[0].step == watch_module.POLL_INTERVAL
