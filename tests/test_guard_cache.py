"""
The verifier cache in the argon2 checker, and the guard's assembly in tap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock

from rumpus_secure import tap
from rumpus_secure.accounts.bans import Ban, SQLiteBanStore
from rumpus_secure.accounts.checker import ArgonChecker, LockedAccountError
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.accounts.verifier_cache import VerifierCache


class CountingHasher(PasswordHasher):
    """
    Cheap argon2 parameters; counts verifications.
    """

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: Any, password: Any) -> bool:  # type: ignore[override]
        self.verifications += 1
        return super().verify(hash, password)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def store(tmp_path: Path, hasher: CountingHasher) -> SQLiteAccountStore:
    s = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files", hasher=hasher)
    s.add("alice", "right")
    s.add("bob", "other")
    return s


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def checker(store: SQLiteAccountStore, hasher: CountingHasher, clock: FakeTime) -> ArgonChecker:
    cache = VerifierCache(ttl=300.0, size=100, clock=clock)
    return ArgonChecker(store, MemoryReactorClock(), hasher=hasher, cache=cache)


def test_repeat_login_skips_argon2(checker: ArgonChecker, hasher: CountingHasher) -> None:
    assert checker._login("alice", "right") == b"alice"
    assert hasher.verifications == 1
    for _ in range(5):
        assert checker._login("alice", "right") == b"alice"
    assert hasher.verifications == 1
    assert checker.cache is not None and checker.cache.hits == 5


def test_entries_expire(checker: ArgonChecker, hasher: CountingHasher,
                        clock: FakeTime) -> None:
    checker._login("alice", "right")
    clock.now += 299
    checker._login("alice", "right")
    assert hasher.verifications == 1
    clock.now += 302
    checker._login("alice", "right")
    assert hasher.verifications == 2


def test_wrong_password_is_never_cached(checker: ArgonChecker,
                                        hasher: CountingHasher) -> None:
    checker._login("alice", "right")
    for _ in range(3):
        with pytest.raises(UnauthorizedLogin):
            checker._login("alice", "wrong")
    assert hasher.verifications == 4
    with pytest.raises(UnauthorizedLogin):
        checker._login("nobody", "right")
    assert checker.cache is not None and len(checker.cache) == 1


def test_password_change_invalidates(checker: ArgonChecker, store: SQLiteAccountStore,
                                     hasher: CountingHasher) -> None:
    checker._login("alice", "right")
    store.set_password("alice", "new")
    with pytest.raises(UnauthorizedLogin):
        checker._login("alice", "right")
    assert checker._login("alice", "new") == b"alice"


def test_lock_invalidates_and_is_still_reported(checker: ArgonChecker,
                                                store: SQLiteAccountStore,
                                                hasher: CountingHasher) -> None:
    checker._login("alice", "right")
    store.lock("alice", "password sent unencrypted")
    before = hasher.verifications
    with pytest.raises(LockedAccountError):
        checker._login("alice", "right")
    assert hasher.verifications == before + 1
    store.unlock("alice")
    checker._login("alice", "right")
    checker._login("alice", "right")
    assert hasher.verifications == before + 2


def test_deleted_and_recreated_account_does_not_reuse_entry(
    checker: ArgonChecker, store: SQLiteAccountStore, hasher: CountingHasher,
) -> None:
    checker._login("alice", "right")
    store.delete("alice")
    store._clock = lambda: 5.0  # a different creation time, version 1 again
    store.add("alice", "other", home=Path("alice2"))
    with pytest.raises(UnauthorizedLogin):
        checker._login("alice", "right")


def test_cache_size_is_bounded_lru(clock: FakeTime) -> None:
    cache = VerifierCache(ttl=300.0, size=3, clock=clock)
    for n in range(3):
        cache.remember(f"user{n}", "pw", 1)
    assert cache.hit("user0", "pw", 1)  # now the most recently used
    cache.remember("user3", "pw", 1)
    assert len(cache) == 3
    assert not cache.hit("user1", "pw", 1)
    assert cache.hit("user0", "pw", 1)
    assert cache.hit("user3", "pw", 1)


def test_cache_never_holds_the_password(clock: FakeTime) -> None:
    cache = VerifierCache(clock=clock)
    cache.remember("alice", "hunter2-secret", 1)
    dump = repr(cache._entries) + repr(vars(cache))
    assert "hunter2" not in dump and b"hunter2" not in repr(cache._entries).encode()
    assert not cache.hit("alice", "hunter2-secreT", 1)
    assert not cache.hit("alice\0hunter2", "-secret", 1)
    assert not cache.hit("alice", "hunter2-secret", 2)
    # A miss on a changed stamp drops the entry for good.
    assert not cache.hit("alice", "hunter2-secret", 1)


def test_zero_ttl_caches_nothing(clock: FakeTime) -> None:
    cache = VerifierCache(ttl=0, clock=clock)
    cache.remember("alice", "pw", 1)
    assert len(cache) == 0


def test_without_a_cache_every_login_verifies(store: SQLiteAccountStore,
                                             hasher: CountingHasher) -> None:
    checker = ArgonChecker(store, MemoryReactorClock(), hasher=hasher)
    checker._login("alice", "right")
    checker._login("alice", "right")
    assert hasher.verifications == 2


# -- assembly -----------------------------------------------------------


class Reactor(MemoryReactorClock):
    def getThreadPool(self) -> Any:  # pragma: no cover
        raise AssertionError("no thread work expected")


def test_make_service_builds_the_guard_and_loads_bans(tmp_path: Path) -> None:
    data = tmp_path / "data"
    reactor = Reactor()
    reactor.advance(1_800_000_000)
    tap.makeService({"data-dir": str(data)}, reactor=reactor)
    SQLiteBanStore(data / "accounts.sqlite3").save(
        Ban("192.0.2.1", 1_800_000_600, 0, "login_failed", 1_800_000_000))

    top = tap.makeService({"data-dir": str(data), "ban-threshold": "4",
                           "login-cache-time": "60", "http-timeout": "45",
                           "safe-list": "127.0.0.0/8"}, reactor=reactor)
    server = top.server  # type: ignore[attr-defined]
    assert server.guard.settings.threshold == 4
    assert server.guard.is_banned("::ffff:192.0.2.1") is not None
    assert server.guard.is_safe("127.0.0.1")
    assert server.checker.cache.ttl == 60
    assert server.https_site.timeOut == 45 and server.http_site.timeOut == 45
    assert server.ftp_factory.guard is server.guard

    off = tap.makeService({"data-dir": str(data), "login-cache-time": "0"},
                          reactor=reactor)
    assert off.server.checker.cache is None  # type: ignore[attr-defined]
