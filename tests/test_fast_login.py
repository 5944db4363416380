"""
The fast path of repeat logins and session commands (issue #18): the
account watcher vouches for its last read while the accounts file is
unchanged (accounts.change_signal), and a warm repeat login is decided
from a snapshot (accounts.snapshots) without a thread.

Every change below is made by a second store on the same SQLite file (what
the ``rumpus-secure user`` command is: another process, another
connection) between two steps, and must be obeyed by the very next step;
another account's logins go on, on the fast path, in the same window.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.failure import Failure

from rumpus_secure.accounts.cert_checker import (
    CertificateAwareChecker,
    CertificateCredentials,
    CertificateRefused,
)
from rumpus_secure.accounts.change_signal import (
    FileChangeSignal,
    file_change_signal,
    filesystem_type,
    is_remote,
)
from rumpus_secure.accounts.checker import (
    ArgonChecker,
    LockedAccountError,
    TwoFactorRequired,
)
from rumpus_secure.accounts.client_certs import CertificateLogin, ClientCertStore
from rumpus_secure.accounts.snapshots import (
    AccountSnapshot,
    AccountSnapshots,
    attach_snapshots,
)
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.accounts.verifier_cache import VerifierCache
from rumpus_secure.accounts.watch import AccountWatcher
from tests.manual_thread import ManualThread
from tests.test_account_watch import Listener, Log

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

needs_inotify = pytest.mark.skipif(
    not hasattr(os, "uname") or os.uname().sysname != "Linux",
    reason="inotify is Linux's")


# -- the signal, on a real SQLite file ----------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> SQLiteAccountStore:
    s = SQLiteAccountStore(tmp_path / "data" / "accounts.sqlite3", tmp_path / "files",
                           hasher=CHEAP)
    s.add("alice", "alice-pw")
    s.add("bob", "bob-pw")
    return s


def admin(store: SQLiteAccountStore) -> SQLiteAccountStore:
    """The admin command: its own store (own connections) on the same file."""
    return SQLiteAccountStore(store.path, store.root, hasher=CHEAP)


@needs_inotify
def test_signal_sees_another_connections_commit_and_not_reads(
        store: SQLiteAccountStore) -> None:
    reader = store.change_reader()
    reader.latest()
    other = admin(store)
    signal = FileChangeSignal(store.path)
    assert signal.changed() is False
    # Reads, and the watcher's wait for a writer, write nothing.
    reader.settle()
    reader.since(0)
    store.get("alice")
    assert signal.changed() is False
    other.lock("alice", "by the admin")
    assert signal.changed() is True
    assert signal.changed() is False  # drained
    signal.close()


@needs_inotify
def test_signal_follows_a_wal_file_made_anew(store: SQLiteAccountStore) -> None:
    """The last connection's close removes the -wal; the next write makes a new one."""
    signal = FileChangeSignal(store.path)
    store._connections.close_this_thread()
    wal = Path(str(store.path) + "-wal")
    assert not wal.exists()
    signal.changed()
    admin(store).lock("alice", "x")
    assert wal.exists()
    assert signal.changed() is True
    # The new -wal file is watched too.
    db = sqlite3.connect(store.path)  # keeps the -wal in place
    signal.changed()
    admin(store).unlock("alice")
    assert signal.changed() is True
    db.close()
    signal.close()


@needs_inotify
def test_signal_gives_up_when_its_directory_goes(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    signal = FileChangeSignal(directory / "accounts.sqlite3")
    directory.rmdir()
    assert signal.changed() is True
    assert signal.changed() is True  # from now on, always: read every time


def test_no_signal_on_network_filesystems(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      f"server:/export {tmp_path} nfs4 rw 0 0\n")
    assert filesystem_type(tmp_path / "data", str(mounts)) == "nfs4"
    assert filesystem_type(Path("/etc"), str(mounts)) == "ext4"
    assert is_remote("nfs4") and is_remote("fuse.sshfs") and is_remote(None)
    assert not is_remote("ext4") and not is_remote("tmpfs")


def test_no_signal_without_inotify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rumpus_secure.accounts import change_signal

    def missing(self: Any) -> None:
        raise OSError("inotify is not available")

    monkeypatch.setattr(change_signal._Inotify, "__init__", missing)
    assert file_change_signal(tmp_path / "accounts.sqlite3") is None


# -- the watcher with a signal --------------------------------------------------


class FakeSignal:
    def __init__(self) -> None:
        self.pending = False
        self.closed = False

    def changed(self) -> bool:
        pending, self.pending = self.pending, False
        return pending

    def close(self) -> None:
        self.closed = True


class Settling(Log):
    def __init__(self) -> None:
        super().__init__()
        self.settles = 0
        self.fail_settle = False

    def settle(self) -> None:
        self.settles += 1
        if self.fail_settle:
            raise sqlite3.OperationalError("attempt to write a readonly database")


def quiet_watcher() -> tuple[Settling, ManualThread, FakeSignal, AccountWatcher]:
    log, thread, signal = Settling(), ManualThread(), FakeSignal()
    watcher = AccountWatcher(log, thread, signal)
    watcher.poll()
    thread.run_next()
    return log, thread, signal, watcher


def fired_now(d: defer.Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_quiet_signal_vouches_for_the_last_read() -> None:
    log, thread, signal, watcher = quiet_watcher()
    assert log.settles == 1  # the first read waited out a writer too
    for _ in range(50):
        assert fired_now(watcher.fresh()) == [0]
        assert watcher.current() == 0
        watcher.poll()
    assert thread.calls == [] and watcher.reads == 1


def test_a_write_makes_the_next_command_wait_for_a_read() -> None:
    log, thread, signal, watcher = quiet_watcher()
    alice = Listener()
    watcher.watch("alice", alice, watcher.seq or 0)
    seq = log.add("alice", "lock", "x")
    signal.pending = True          # the commit's write() queued an event
    assert watcher.current() is None
    fired = fired_now(watcher.fresh())
    assert fired == [] and alice.told == []
    thread.run_next()
    assert alice.told == [(seq, "lock", "x")] and fired == [seq]
    assert log.settles == 2
    assert fired_now(watcher.fresh()) == [seq]  # quiet again
    assert thread.calls == []


def test_the_event_stays_until_a_read_has_covered_it() -> None:
    """An event drained by current() (no read then) still makes the next fresh() read."""
    log, thread, signal, watcher = quiet_watcher()
    signal.pending = True
    assert watcher.current() is None   # drained here...
    assert watcher.current() is None   # ...and still not vouched for
    assert fired_now(watcher.fresh()) == []
    thread.run_next()
    assert watcher.current() == 0


def test_a_write_during_a_read_needs_the_next_read() -> None:
    log, thread, signal, watcher = quiet_watcher()
    signal.pending = True
    first = fired_now(watcher.fresh())      # a read starts
    joined = fired_now(watcher.fresh())     # nothing written since: shares it
    signal.pending = True                   # a write while it runs
    later = fired_now(watcher.fresh())
    thread.run_next()
    assert first == [0] and joined == [0] and later == []
    assert len(thread.calls) == 1
    thread.run_next()
    assert later == [0]


def test_a_read_that_could_not_wait_for_the_writer_vouches_for_nothing() -> None:
    log, thread, signal, watcher = quiet_watcher()
    log.fail_settle = True
    signal.pending = True
    d = fired_now(watcher.fresh())
    thread.run_next()
    assert d == [0]                      # the command goes, as after any read
    assert watcher.current() is None     # but the next one reads again
    fired_now(watcher.fresh())
    assert len(thread.calls) == 1


def test_a_failed_read_vouches_for_nothing() -> None:
    log, thread, signal, watcher = quiet_watcher()
    signal.pending = True
    d = fired_now(watcher.fresh())
    _function, _args, deferred = thread.calls.pop(0)
    deferred.errback(sqlite3.OperationalError("disk I/O error"))
    assert d == [0] and watcher.current() is None


def test_without_a_signal_every_command_reads() -> None:
    log, thread = Log(), ManualThread()
    watcher = AccountWatcher(log, thread)
    watcher.poll()
    thread.run_next()
    assert watcher.current() is None
    fired_now(watcher.fresh())
    assert len(thread.calls) == 1


def test_stopping_closes_the_signal() -> None:
    _log, _thread, signal, watcher = quiet_watcher()
    watcher.stop()
    assert signal.closed


# -- snapshots -----------------------------------------------------------------


class Account:
    def __init__(self, name: str) -> None:
        self.name = name


class Vouching:
    def __init__(self) -> None:
        self.vouch = True
        self.observers: list[Any] = []

    def observe(self, observer: Any) -> None:
        self.observers.append(observer)

    def current(self) -> int | None:
        return 7 if self.vouch else None


def test_snapshot_kept_only_if_nothing_changed_while_it_was_read() -> None:
    watcher = Vouching()
    snapshots = AccountSnapshots(watcher)
    generation = snapshots.capture()
    snapshots.account_changed("carol")   # any account: the read may be older
    assert not snapshots.put(generation, AccountSnapshot(Account("alice"), "password", False))
    assert snapshots.get("alice") is None
    assert snapshots.put(snapshots.capture(),
                         AccountSnapshot(Account("alice"), "password", False))
    assert snapshots.get("alice") is not None
    assert snapshots.get("Alice") is None          # the store matches names exactly
    watcher.vouch = False
    assert snapshots.get("alice") is None          # not vouched for: slow way
    watcher.vouch = True
    snapshots.account_changed("ALICE")             # any spelling drops it
    assert snapshots.get("alice") is None
    snapshots.put(snapshots.capture(), AccountSnapshot(Account("bob"), "password", False))
    snapshots.everything_changed()
    assert len(snapshots) == 0


def test_snapshots_are_bounded() -> None:
    snapshots = AccountSnapshots(Vouching(), size=2)
    for name in ("a", "b", "c"):
        snapshots.put(snapshots.capture(), AccountSnapshot(Account(name), "password", False))
    assert len(snapshots) == 2 and snapshots.get("a") is None


# -- the checker, on a real file, changes by another connection ---------------------


class CountingPool:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.after: dict[str, Any] = {}

    def callInThreadWithCallback(self, on_result: Any, function: Any, *args: Any) -> None:
        name = getattr(function, "__name__", "?")
        self.calls.append(name)
        try:
            result = function(*args)
        except BaseException:  # noqa: BLE001 - handed over, as a thread pool does
            on_result(False, Failure())
            return
        hook = self.after.pop(name, None)
        if hook is not None:
            hook()
        on_result(True, result)


class CountingReactor:
    def __init__(self, pool: CountingPool) -> None:
        self.pool = pool

    def callFromThread(self, function: Any, *args: Any) -> None:
        function(*args)

    def getThreadPool(self) -> CountingPool:
        return self.pool


class Rig:
    """The server's checker and watcher over a real file; `other` is the admin."""

    def __init__(self, store: SQLiteAccountStore) -> None:
        self.store = store
        self.certs = ClientCertStore(store)
        self.other = admin(store)
        self.pool = CountingPool()
        reactor = CountingReactor(self.pool)
        self.reads = 0
        self.watcher = AccountWatcher(store.change_reader(), self._run,
                                      FileChangeSignal(store.path))
        inner = ArgonChecker(store, reactor, threadpool=self.pool,  # type: ignore[arg-type]
                             hasher=CHEAP, cache=VerifierCache())
        self.checker = CertificateAwareChecker(inner, CertificateLogin(self.certs, None),
                                               reactor)
        assert attach_snapshots(self.checker, self.watcher) is not None
        self.watcher.poll()

    def _run(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        self.reads += 1
        return defer.maybeDeferred(function, *args)

    def login(self, name: str, password: str, channel: str = "ftps") -> Any:
        """As the FTP PASS does: the watcher first, then the checker."""
        [_seq] = fired_now(self.watcher.fresh())
        [result] = fired_now(self.checker.requestAvatarId(
            CertificateCredentials(name.encode(), password.encode(), None, channel)))
        return result.value if isinstance(result, Failure) else result

    def fast(self, name: str, password: str) -> Any:
        """A login that must take no thread and read nothing."""
        calls, reads, fast = len(self.pool.calls), self.reads, self.checker.fast_logins
        result = self.login(name, password)
        assert (len(self.pool.calls), self.reads) == (calls, reads), self.pool.calls
        assert self.checker.fast_logins == fast + 1
        return result


@pytest.fixture
def rig(store: SQLiteAccountStore) -> Rig:
    r = Rig(store)
    yield r
    r.watcher.stop()


@needs_inotify
def test_warm_repeat_login_takes_no_thread(rig: Rig) -> None:
    assert rig.login("alice", "alice-pw") == b"alice"      # argon2id, in threads
    assert rig.pool.calls == ["check", "_login"]
    for _ in range(3):
        avatar = rig.fast("alice", "alice-pw")
        assert avatar == b"alice" and avatar.account.name == "alice"
    # Wrong passwords and unknown users go the slow way, with the same work.
    calls = len(rig.pool.calls)
    assert isinstance(rig.login("alice", "wrong"), UnauthorizedLogin)
    assert isinstance(rig.login("nobody", "alice-pw"), UnauthorizedLogin)
    assert len(rig.pool.calls) == calls + 4
    # The web asks for a code next: never decided here.
    calls = len(rig.pool.calls)
    assert rig.login("alice", "alice-pw", channel="web") == b"alice"
    assert len(rig.pool.calls) == calls + 2


def lock(rig: Rig) -> None:
    rig.other.lock("alice", "laptop stolen")


def new_password(rig: Rig) -> None:
    rig.other.set_password("alice", "new-pw")


def delete(rig: Rig) -> None:
    rig.other.delete("alice")


def two_factor(rig: Rig) -> None:
    rig.other.set_two_factor_required("alice", True)


def cert_only(rig: Rig) -> None:
    ClientCertStore(rig.other).set_auth_mode("alice", "cert")


@needs_inotify
@pytest.mark.parametrize("change, refused", [
    (lock, LockedAccountError), (new_password, UnauthorizedLogin),
    (delete, UnauthorizedLogin), (two_factor, TwoFactorRequired),
    (cert_only, CertificateRefused),
])
def test_change_by_another_connection_is_obeyed_by_the_next_login(
        rig: Rig, change: Any, refused: type) -> None:
    for name in ("alice", "bob"):
        rig.login(name, f"{name}-pw")
    rig.fast("alice", "alice-pw")
    rig.fast("bob", "bob-pw")
    change(rig)
    result = rig.login("alice", "alice-pw")
    assert isinstance(result, refused), result
    assert isinstance(rig.login("alice", "alice-pw"), refused)  # and stays so
    # Bob, same moment, other account: still on the fast path.
    assert rig.fast("bob", "bob-pw") == b"bob"


@needs_inotify
def test_permission_change_reaches_the_next_login(rig: Rig) -> None:
    rig.login("alice", "alice-pw")
    assert rig.fast("alice", "alice-pw").account.perms == store_all_perms(rig)
    rig.other.set_perms("alice", ["list"])
    avatar = rig.login("alice", "alice-pw")          # re-read (and argon2id again)
    assert avatar.account.perms == frozenset({"list"})
    assert rig.fast("alice", "alice-pw").account.perms == frozenset({"list"})


def store_all_perms(rig: Rig) -> frozenset[str]:
    account = rig.store.get("alice")
    assert account is not None
    return frozenset(account.perms)


@needs_inotify
def test_change_read_while_a_login_reads_is_not_kept(rig: Rig) -> None:
    """
    The admin locks alice after the login read her row but before the
    snapshot is kept, and the watcher reads the lock at once: keeping the
    snapshot would let the next login in with a lock already read.
    """
    def meanwhile() -> None:
        lock(rig)
        fired_now(rig.watcher.fresh())

    rig.pool.after["_login"] = meanwhile
    assert rig.login("alice", "alice-pw") == b"alice"  # decided before the lock
    assert rig.watcher.current() is not None             # the lock was read
    assert isinstance(rig.login("alice", "alice-pw"), LockedAccountError)


@needs_inotify
def test_unread_change_sends_the_login_the_slow_way(rig: Rig) -> None:
    """Without the watcher in between: the snapshot is not vouched for."""
    rig.login("alice", "alice-pw")
    rig.fast("alice", "alice-pw")
    lock(rig)
    [result] = fired_now(rig.checker.requestAvatarId(
        CertificateCredentials(b"alice", b"alice-pw", None, "ftps")))
    assert isinstance(result.value, LockedAccountError)


@needs_inotify
def test_app_passwords_and_refused_certificates_go_the_slow_way(rig: Rig) -> None:
    from rumpus_secure.accounts import app_passwords
    from rumpus_secure.accounts.hashing import hash_password

    rig.login("alice", "alice-pw")
    new = app_passwords.generate()
    rig.other.add_app_password("alice", new.ident, "laptop",
                               hash_password(new.password, CHEAP))
    for _ in range(2):
        calls = len(rig.pool.calls)
        assert rig.login("alice", new.password) == b"alice"
        assert len(rig.pool.calls) == calls + 2  # its own row, every time
    rig.other.revoke_app_password("alice", new.ident)
    assert isinstance(rig.login("alice", new.password), UnauthorizedLogin)
    # The revocation changed the account's credentials: read again once.
    rig.login("alice", "alice-pw")
    rig.fast("alice", "alice-pw")
    # A refused certificate marks the credentials uncached: never fast.
    creds = CertificateCredentials(b"alice", b"alice-pw", None, "ftps")
    creds.uncached = True  # type: ignore[attr-defined]
    calls = len(rig.pool.calls)
    fired_now(rig.checker.requestAvatarId(creds))
    assert len(rig.pool.calls) == calls + 2


def test_pg_and_eventless_watchers_get_no_snapshots() -> None:
    log, thread = Log(), ManualThread()
    watcher = AccountWatcher(log, thread)
    checker = CertificateAwareChecker(object(), None, None)  # type: ignore[arg-type]
    assert attach_snapshots(checker, watcher) is None
    assert checker.snapshots is None


@needs_inotify
def test_settle_waits_out_a_commit_whose_write_was_seen(store: SQLiteAccountStore) -> None:
    """
    The event comes with the writer's first write(), before its commit is
    visible: a read that starts then must wait for the commit (settle), or
    it would clear the signal without seeing the change.
    """
    import threading

    reader = store.change_reader()
    before = reader.latest()
    signal = FileChangeSignal(store.path)
    writer = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA cache_size=1")  # spill pages to the -wal before commit
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
    for _ in range(64):
        writer.execute("INSERT INTO ballast VALUES (zeroblob(8192))")
    writer.execute("INSERT INTO account_changes (name, kind, detail, at) "
                   "VALUES ('alice', 'lock', 'in flight', 0)")
    assert signal.changed() is True          # written, not committed
    assert reader.latest() == before         # and not visible
    settled = threading.Event()

    def settle() -> None:
        reader.settle()
        settled.set()

    waiting = threading.Thread(target=settle)
    waiting.start()
    assert not settled.wait(0.3)             # held until the commit
    writer.execute("COMMIT")
    waiting.join(10)
    assert settled.is_set()
    assert reader.latest() == before + 1
    writer.close()
    signal.close()


# -- a logged-in FTP session, in memory ---------------------------------------------


def session_world(tmp_path: Path) -> Any:
    """The in-memory server of test_ftp_account_state, its watcher on a signal."""
    from tests.test_ftp_account_state import World

    world = World(tmp_path)
    world.log = Settling()
    world.signal = FakeSignal()
    world.watcher = AccountWatcher(world.log, defer.maybeDeferred, world.signal)
    world.server.account_watcher = world.watcher
    world.watcher.poll()
    return world


def test_session_commands_take_no_read_until_a_write(tmp_path: Path) -> None:
    from tests.test_ftp_account_state import Client

    world = session_world(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    reads = world.watcher.reads
    for _ in range(20):
        assert alice.send("NOOP") == ["200 OK."]
        assert bob.send("PWD")[0].startswith("257 ")
    assert world.watcher.reads == reads
    # The admin locks alice between two commands: the write's event is
    # queued before the admin command returns.
    world.change("alice", "lock", "between two commands")
    world.signal.pending = True
    assert alice.send("NOOP") == ["421 Session ended: this account was locked "
                                  "(between two commands)."]
    assert world.watcher.reads == reads + 1
    assert bob.send("NOOP") == ["200 OK."] and not bob.closed
    assert world.watcher.reads == reads + 1  # quiet again: no read for bob


def test_session_permission_change_reaches_the_next_command(tmp_path: Path) -> None:
    from tests.test_ftp_account_state import Client

    world = session_world(tmp_path)
    alice, bob = Client(world, "alice", "right"), Client(world, "bob", "bobs")
    assert alice.send("MKD one")[0].startswith("257 ")
    world.change("alice", "perms", "list")
    world.signal.pending = True
    assert alice.send("MKD two")[0].startswith("550 ")
    assert bob.send("MKD two")[0].startswith("257 ")


def test_session_without_a_signal_reads_before_every_command(tmp_path: Path) -> None:
    from tests.test_ftp_account_state import Client, World

    world = World(tmp_path)
    alice = Client(world, "alice", "right")
    reads = world.watcher.reads
    for _ in range(3):
        alice.send("NOOP")
    assert world.watcher.reads == reads + 3


@needs_inotify
def test_a_dropped_signal_gives_its_inotify_instance_back(tmp_path: Path) -> None:
    """Servers built and thrown away (tests do, by the hundred) leak no instance."""
    import gc

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):  # more than the default 128 instances per user
        signal = FileChangeSignal(tmp_path / "accounts.sqlite3")
        del signal
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_command_that_joined_an_unsettled_read_waits_for_the_next() -> None:
    """
    It came after the read started, maybe after a commit the read could
    not wait for (its event drained before the read): the next read serves it.
    """
    log, thread, signal, watcher = quiet_watcher()
    log.fail_settle = True
    signal.pending = True
    first = fired_now(watcher.fresh())
    joined = fired_now(watcher.fresh())
    thread.run_next()
    assert first == [0] and joined == []
    log.fail_settle = False
    seq = log.add("alice", "lock", "x")
    thread.run_next()
    assert joined == [seq]
