"""
Tests for the argon2 twisted.cred checker, on the real reactor (pytest-twisted).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.python import threadable
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from rumpus_secure.accounts import checker as checker_module
from rumpus_secure.accounts.checker import (
    ArgonChecker,
    LockedAccountError,
    verify_thread_pool,
)
from rumpus_secure.accounts.hashing import dummy_hash
from rumpus_secure.accounts.store import SQLiteAccountStore


class RecordingHasher(PasswordHasher):
    """
    Cheap argon2 parameters; records each verify and the thread it ran in.
    """

    def __init__(self, delay: float = 0.0, **params: int) -> None:
        params = {"time_cost": 1, "memory_cost": 8, "parallelism": 1, **params}
        super().__init__(**params)
        self.delay = delay
        self.calls: list[tuple[str, bool]] = []

    def verify(self, hash, password):  # type: ignore[override]
        self.calls.append((hash, threadable.isInIOThread()))
        if self.delay:
            time.sleep(self.delay)
        return super().verify(hash, password)


@pytest.fixture
def hasher() -> RecordingHasher:
    return RecordingHasher()


@pytest.fixture
def store(tmp_path: Path, hasher: RecordingHasher) -> SQLiteAccountStore:
    s = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files", hasher=hasher)
    s.add("alice", "right")
    return s


@pytest.fixture
def checker(store: SQLiteAccountStore, hasher: RecordingHasher) -> ArgonChecker:
    hasher.calls.clear()
    return ArgonChecker(store, global_reactor, hasher=hasher)


async def failure_of(d):
    """
    The exception a Deferred fails with; fails the test if it succeeds.
    """
    try:
        result = await d
    except Exception as e:  # noqa: BLE001 - returned for inspection
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


def test_provides_interface(checker: ArgonChecker) -> None:
    assert verifyObject(ICredentialsChecker, checker)


@pytest_twisted.ensureDeferred
async def test_right_password(checker: ArgonChecker) -> None:
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"right")) == b"alice"
    assert await checker.requestAvatarId(UsernamePassword("alice", "right")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_look_the_same(
    checker: ArgonChecker, hasher: RecordingHasher
) -> None:
    wrong = await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"nope")))
    unknown = await failure_of(checker.requestAvatarId(UsernamePassword(b"ghost", b"nope")))
    assert type(wrong) is UnauthorizedLogin
    assert type(unknown) is UnauthorizedLogin
    assert str(wrong) == str(unknown)
    # Timing symmetry, structurally: one argon2 verify each, and the
    # unknown user's is against the dummy hash made with the same parameters.
    assert len(hasher.calls) == 2
    assert hasher.calls[1][0] == dummy_hash(hasher)
    assert hasher.calls[0][0] != dummy_hash(hasher)


@pytest_twisted.ensureDeferred
async def test_invalid_name_still_does_the_work(
    checker: ArgonChecker, hasher: RecordingHasher
) -> None:
    error = await failure_of(checker.requestAvatarId(UsernamePassword(b"../etc", b"x")))
    assert type(error) is UnauthorizedLogin
    assert [h for h, _ in hasher.calls] == [dummy_hash(hasher)]


@pytest_twisted.ensureDeferred
async def test_verification_runs_off_the_reactor_thread(
    checker: ArgonChecker, hasher: RecordingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[bool] = []
    original = checker._store.password_hash

    def recording_read(name: str) -> str | None:
        reads.append(threadable.isInIOThread())
        return original(name)

    monkeypatch.setattr(checker._store, "password_hash", recording_read)
    assert threadable.isInIOThread()
    await checker.requestAvatarId(UsernamePassword(b"alice", b"right"))
    await failure_of(checker.requestAvatarId(UsernamePassword(b"ghost", b"x")))
    await checker.check_password("alice", "right")
    assert [in_io for _, in_io in hasher.calls] == [False, False, False]
    assert reads == [False, False, False]


@pytest_twisted.ensureDeferred
async def test_burst_of_logins_does_not_stall_the_reactor(
    store: SQLiteAccountStore,
) -> None:
    slow = RecordingHasher(delay=0.2)
    pool = ThreadPool(minthreads=0, maxthreads=4, name="test-verify")
    pool.start()
    try:
        checker = ArgonChecker(store, global_reactor, threadpool=pool, hasher=slow)
        logins = [
            checker.requestAvatarId(UsernamePassword(b"alice", b"right"))
            for _ in range(8)
        ]
        started = time.monotonic()
        await deferLater(global_reactor, 0.01, lambda: None)
        # The reactor ran a timer while every login was still verifying.
        assert time.monotonic() - started < 0.15
        assert not any(d.called for d in logins)
        results = await DeferredList(logins, consumeErrors=True)
        assert [r for _, r in results] == [b"alice"] * 8
        assert {in_io for _, in_io in slow.calls} == {False}
    finally:
        pool.stop()


@pytest_twisted.ensureDeferred
async def test_locked_account_revealed_only_after_right_password(
    checker: ArgonChecker, store: SQLiteAccountStore
) -> None:
    store.lock("alice", "password seen in cleartext")
    wrong = await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"nope")))
    assert type(wrong) is UnauthorizedLogin
    right = await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"right")))
    assert isinstance(right, LockedAccountError)
    assert isinstance(right, UnauthorizedLogin)
    assert right.reason == "password seen in cleartext"
    assert right.name == "alice"


@pytest_twisted.ensureDeferred
async def test_changes_are_seen_without_restart(
    checker: ArgonChecker, store: SQLiteAccountStore
) -> None:
    store.set_password("alice", "newer")
    await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"right")))
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"newer")) == b"alice"
    store.delete("alice")
    await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"newer")))


@pytest_twisted.ensureDeferred
async def test_set_password_unlocks(checker: ArgonChecker, store: SQLiteAccountStore) -> None:
    store.lock("alice", "quarantine")
    store.set_password("alice", "reset")
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"reset")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_non_ascii_password_from_any_decoding(
    checker: ArgonChecker, store: SQLiteAccountStore
) -> None:
    store.set_password("alice", "gr\u00fc\u00dfe")
    utf8 = "gr\u00fc\u00dfe".encode("utf-8")
    for password in (utf8, utf8.decode("latin-1"), "gr\u00fc\u00dfe"):
        creds = UsernamePassword(b"alice", password)
        assert await checker.requestAvatarId(creds) == b"alice"


@pytest_twisted.ensureDeferred
async def test_check_password(checker: ArgonChecker, store: SQLiteAccountStore) -> None:
    assert await checker.check_password("alice", "right") is True
    assert await checker.check_password(b"alice", b"right") is True
    assert await checker.check_password("alice", "wrong") is False
    assert await checker.check_password("ghost", "right") is False
    store.lock("alice", "quarantine")
    # A locked account's real password is still its real password.
    assert await checker.check_password("alice", "right") is True


@pytest_twisted.ensureDeferred
async def test_rehash_on_login(tmp_path: Path) -> None:
    old = RecordingHasher()
    new = RecordingHasher(time_cost=2)
    store = SQLiteAccountStore(tmp_path / "a.sqlite3", tmp_path / "files", hasher=old)
    store.add("alice", "right")
    before = store.get("alice")
    checker = ArgonChecker(store, global_reactor, hasher=new)
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"right")) == b"alice"
    assert "t=2," in store.password_hash("alice")
    assert store.get("alice") == before
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"right")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_no_rehash_after_wrong_password(tmp_path: Path) -> None:
    store = SQLiteAccountStore(
        tmp_path / "a.sqlite3", tmp_path / "files", hasher=RecordingHasher()
    )
    store.add("alice", "right")
    stored = store.password_hash("alice")
    checker = ArgonChecker(store, global_reactor, hasher=RecordingHasher(time_cost=2))
    await failure_of(checker.requestAvatarId(UsernamePassword(b"alice", b"wrong")))
    assert store.password_hash("alice") == stored


@pytest_twisted.ensureDeferred
async def test_real_parameters(tmp_path: Path) -> None:
    """
    The production hasher end to end (about 2 x 70 ms).
    """
    store = SQLiteAccountStore(tmp_path / "a.sqlite3", tmp_path / "files")
    store.add("alice", "right")
    checker = ArgonChecker(store, global_reactor)
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"right")) == b"alice"
    error = await failure_of(checker.requestAvatarId(UsernamePassword(b"nobody", b"x")))
    assert type(error) is UnauthorizedLogin


def test_verify_thread_pool_follows_the_reactor() -> None:
    reactor = MemoryReactor()
    pool = verify_thread_pool(reactor, max_threads=3)
    assert pool.max == 3
    assert not pool.started
    reactor.run()
    assert pool.started
    stops = reactor.triggers["during"]["shutdown"]
    assert len(stops) == 1
    stop, args, kwargs = stops[0]
    stop(*args, **kwargs)
    assert pool.joined


def test_verify_thread_pool_default_size() -> None:
    pool = verify_thread_pool(MemoryReactor())
    assert 2 <= pool.max <= 8


def test_module_uses_no_global_reactor() -> None:
    source = Path(checker_module.__file__).read_text()
    assert "from twisted.internet import reactor" not in source


class _NoReads:
    def get(self, name: str) -> None:
        raise AssertionError("the realm read the account again")


class _OneAccount:
    def __init__(self, account: Any) -> None:
        self.account = account
        self.looked_up: list[str] = []

    def get(self, name: str) -> Any:
        self.looked_up.append(name)
        return self.account


@pytest_twisted.ensureDeferred
async def test_the_realm_uses_the_account_the_checker_read(checker: ArgonChecker) -> None:
    """
    One read of the account per login: the avatar ID carries it to the FTP
    realm, which opens the home (made if missing) without asking the store.
    """
    import shutil

    from rumpus_secure.ftp.realm import FTPRealm
    from rumpus_secure.ftp.shell import IFileShell

    avatar_id = await checker.requestAvatarId(UsernamePassword(b"alice", b"right"))
    assert avatar_id == b"alice" and avatar_id.account.name == "alice"
    home = avatar_id.account.home
    shutil.rmtree(home)
    _, shell, _ = await FTPRealm(_NoReads()).requestAvatar(avatar_id, None, IFileShell)
    assert home.is_dir() and shell.fs.home == home
    assert shell.perms == frozenset(avatar_id.account.perms)
    # A plain name (another checker) is still looked up.
    store = _OneAccount(avatar_id.account)
    _, shell, _ = await FTPRealm(store).requestAvatar(b"alice", None, IFileShell)
    assert shell.fs.home == home and store.looked_up == ["alice"]


def test_uncached_credentials_neither_use_nor_fill_the_verifier_cache(
        store: SQLiteAccountStore, hasher: RecordingHasher) -> None:
    """
    A login refused whatever its password (a refused client certificate)
    pays a full verification, so a right password is not answered faster
    than a wrong one (an oracle for the password without the certificate);
    another login of the same account still uses the cache.
    """
    from rumpus_secure.accounts.verifier_cache import VerifierCache

    checker = ArgonChecker(store, global_reactor, hasher=hasher,
                           cache=VerifierCache(ttl=300.0, size=10))
    hasher.calls.clear()
    checker._login("alice", "right", None, uncached=True)
    checker._login("alice", "right", None, uncached=True)
    assert len(hasher.calls) == 2  # never answered from the cache
    checker._login("alice", "right")  # not filled by the uncached ones
    assert len(hasher.calls) == 3
    checker._login("alice", "right")  # an ordinary login fills and uses it
    assert len(hasher.calls) == 3
    checker._login("alice", "right", None, uncached=True)  # and does not use it
    assert len(hasher.calls) == 4
