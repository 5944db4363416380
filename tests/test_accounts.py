"""
Tests for the SQLite account store and argon2id hashing.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from zope.interface.verify import verifyObject

from rumpus_secure.accounts import hashing
from rumpus_secure.accounts.hashing import (
    DEFAULT_HASHER,
    dummy_hash,
    hash_password,
    needs_rehash,
    normalise_text,
    verify_password,
)
from rumpus_secure.accounts.store import (
    ALL_PERMISSIONS,
    AccountError,
    IAccountStore,
    SQLiteAccountStore,
    check_name,
    parse_permissions,
)

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class FakeClock:
    """
    A clock that moves only when told.
    """

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SQLiteAccountStore:
    return SQLiteAccountStore(
        tmp_path / "data" / "accounts.sqlite3", tmp_path / "files",
        hasher=CHEAP, clock=clock,
    )


# -- store ------------------------------------------------------------------


def test_provides_interface(store: SQLiteAccountStore) -> None:
    assert verifyObject(IAccountStore, store)


def test_add_and_get(store: SQLiteAccountStore, tmp_path: Path, clock: FakeClock) -> None:
    added = store.add("alice", "s3cret")
    got = store.get("alice")
    assert got == added
    assert got.name == "alice"
    assert got.home == tmp_path / "files" / "alice"
    assert got.perms == ALL_PERMISSIONS
    assert not got.locked and got.lock_reason is None
    assert got.created == got.changed == got.password_changed == clock.now
    assert got.version == 1


def test_get_unknown_and_exact_case(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    assert store.get("bob") is None
    assert store.get("ALICE") is None
    assert store.password_hash("ALICE") is None


def test_default_home_is_created_private(store: SQLiteAccountStore, tmp_path: Path) -> None:
    account = store.add("alice", "pw")
    assert account.home.is_dir()
    mode = stat.S_IMODE(account.home.stat().st_mode)
    assert mode & 0o027 == 0, oct(mode)


def test_absolute_home(store: SQLiteAccountStore, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere" / "deep" / "bob"
    account = store.add("bob", "pw", home=home)
    assert account.home == home
    assert home.is_dir()
    assert store.get("bob").home == home


def test_relative_home_is_under_root(store: SQLiteAccountStore, tmp_path: Path) -> None:
    account = store.add("carol", "pw", home=Path("team/shared"))
    assert account.home == tmp_path / "files" / "team" / "shared"


def test_relative_home_may_not_escape_root(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match=r"\.\."):
        store.add("carol", "pw", home=Path("../outside"))
    assert store.get("carol") is None


def test_home_that_cannot_be_created_adds_nothing(
    store: SQLiteAccountStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(AccountError, match="cannot create home directory"):
        store.add("dave", "pw", home=blocker / "home")
    assert store.get("dave") is None


def test_list_sorted(store: SQLiteAccountStore) -> None:
    for name in ("zed", "alice", "Bob"):
        store.add(name, "pw")
    assert [a.name for a in store.list()] == ["Bob", "alice", "zed"]


def test_duplicate_add(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    with pytest.raises(AccountError, match="'alice' already exists"):
        store.add("alice", "other")


def test_duplicate_differing_in_case(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    with pytest.raises(AccountError, match="'alice' already exists"):
        store.add("Alice", "other")


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "..", "-opt", "a/b", "a b", "a\x00b", "x" * 65, "é", "a:b", "a\nb"],
)
def test_bad_names(store: SQLiteAccountStore, name: str) -> None:
    with pytest.raises(AccountError, match="invalid account name"):
        store.add(name, "pw")


@pytest.mark.parametrize("name", ["a", "x" * 64, "a.b-c_d@e.org", "_svc", "@team", "007"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


def test_empty_password(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="empty password"):
        store.add("alice", "")
    assert store.get("alice") is None
    store.add("alice", "pw")
    with pytest.raises(AccountError, match="empty password"):
        store.set_password("alice", "")


def test_permissions(store: SQLiteAccountStore) -> None:
    account = store.add("alice", "pw", perms=["list", "download"])
    assert account.perms == {"list", "download"}
    assert store.get("alice").perms == {"list", "download"}
    store.set_perms("alice", ["upload"])
    assert store.get("alice").perms == {"upload"}
    store.set_perms("alice", [])
    assert store.get("alice").perms == frozenset()


def test_unknown_permission(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="unknown permission write: choose from list,"):
        store.add("alice", "pw", perms=["list", "write"])
    assert store.get("alice") is None


def test_parse_permissions_text() -> None:
    assert parse_permissions("list, Download,") == {"list", "download"}
    assert parse_permissions("") == frozenset()


def test_lock_and_unlock(store: SQLiteAccountStore, clock: FakeClock) -> None:
    store.add("alice", "pw")
    clock.now += 10
    store.lock("alice", "password seen\r\nin cleartext")
    locked = store.get("alice")
    assert locked.locked
    # One line: the reason goes into FTP replies.
    assert locked.lock_reason == "password seen in cleartext"
    assert locked.version == 2
    assert locked.changed == clock.now
    store.unlock("alice")
    unlocked = store.get("alice")
    assert not unlocked.locked and unlocked.lock_reason is None
    assert unlocked.version == 3


def test_lock_needs_reason(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    with pytest.raises(AccountError, match="reason"):
        store.lock("alice", "  ")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set_password("ghost", "pw"),
        lambda s: s.set_perms("ghost", ["list"]),
        lambda s: s.lock("ghost", "why"),
        lambda s: s.unlock("ghost"),
        lambda s: s.delete("ghost"),
    ],
)
def test_unknown_account(store: SQLiteAccountStore, call) -> None:
    with pytest.raises(AccountError, match="no account named 'ghost'"):
        call(store)


def test_set_password_changes_hash_and_clears_lock(
    store: SQLiteAccountStore, clock: FakeClock
) -> None:
    store.add("alice", "old")
    old_hash = store.password_hash("alice")
    store.lock("alice", "quarantined")
    clock.now += 60
    store.set_password("alice", "new")
    account = store.get("alice")
    assert not account.locked and account.lock_reason is None
    assert account.password_changed == clock.now
    assert account.version == 3
    new_hash = store.password_hash("alice")
    assert new_hash != old_hash
    assert verify_password(new_hash, "new", CHEAP)
    assert not verify_password(new_hash, "old", CHEAP)


def test_delete_keeps_home(store: SQLiteAccountStore) -> None:
    account = store.add("alice", "pw")
    (account.home / "keep.txt").write_text("data")
    store.delete("alice")
    assert store.get("alice") is None
    assert store.password_hash("alice") is None
    assert (account.home / "keep.txt").read_text() == "data"
    # The name can be used again.
    store.add("alice", "pw2")


def test_replace_hash_only_if_unchanged(store: SQLiteAccountStore) -> None:
    store.add("alice", "pw")
    stored = store.password_hash("alice")
    assert not store.replace_hash("alice", "not-the-hash", "x")
    assert store.replace_hash("alice", stored, "$new")
    assert store.password_hash("alice") == "$new"
    # A re-hash is not a change of the account.
    assert store.get("alice").version == 1


def test_database_file_wal_and_private(store: SQLiteAccountStore) -> None:
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode == 0o600
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_never_holds_a_password(store: SQLiteAccountStore) -> None:
    store.add("alice", "very-secret-pw")
    assert b"very-secret-pw" not in store.path.read_bytes()
    assert "very-secret-pw" not in repr(store.get("alice"))


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(AccountError, match="cannot create data directory"):
        SQLiteAccountStore(blocker / "data" / "accounts.sqlite3", tmp_path, hasher=CHEAP)


def test_reopen_sees_same_accounts(store: SQLiteAccountStore, tmp_path: Path) -> None:
    store.add("alice", "pw")
    again = SQLiteAccountStore(store.path, tmp_path / "files", hasher=CHEAP)
    assert again.get("alice") == store.get("alice")


def test_concurrent_adds_from_threads(tmp_path: Path) -> None:
    """
    Threads writing at once, through one store and through several, never
    see "database is locked".
    """
    path = tmp_path / "accounts.sqlite3"
    shared = SQLiteAccountStore(path, tmp_path / "files", hasher=CHEAP)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        own = SQLiteAccountStore(path, tmp_path / "files", hasher=CHEAP)
        try:
            start.wait()
            for i in range(6):
                target = shared if i % 2 else own
                target.add(f"user{n}-{i}", "pw")
                target.lock(f"user{n}-{i}", "test")
                target.list()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    accounts = shared.list()
    assert len(accounts) == 48
    assert all(a.locked for a in accounts)


def test_real_parameters_add_and_verify(tmp_path: Path) -> None:
    """
    With the production hasher (no injection), the stored hash is argon2id
    with the documented parameters.
    """
    store = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files")
    store.add("alice", "correct horse")
    stored = store.password_hash("alice")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "wrong horse")


# -- hashing ----------------------------------------------------------------


def test_default_parameters() -> None:
    assert (DEFAULT_HASHER.time_cost, DEFAULT_HASHER.memory_cost,
            DEFAULT_HASHER.parallelism) == (2, 19456, 1)  # OWASP argon2id, first setting


def test_hash_and_verify() -> None:
    stored = hash_password("pw", CHEAP)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "pw", CHEAP)
    assert verify_password(stored, b"pw", CHEAP)
    assert not verify_password(stored, "Pw", CHEAP)


def test_hash_empty_password_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("", CHEAP)


def test_verify_unknown_uses_dummy_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    class Recording(PasswordHasher):
        def verify(self, hash, password):  # type: ignore[override]
            seen.append(hash)
            return super().verify(hash, password)

    recording = Recording(time_cost=1, memory_cost=8, parallelism=1)
    assert verify_password(None, "anything", recording) is False
    assert seen == [dummy_hash(recording)]
    # The dummy uses the same parameters, so it costs the same.
    assert dummy_hash(recording).startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert dummy_hash(recording) == dummy_hash(recording)


def test_verify_garbage_hash_is_false() -> None:
    assert verify_password("not a hash", "pw", CHEAP) is False
    assert verify_password("", "pw", CHEAP) is False


def test_needs_rehash() -> None:
    other = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
    assert not needs_rehash(hash_password("pw", CHEAP), CHEAP)
    assert needs_rehash(hash_password("pw", other), CHEAP)
    assert not needs_rehash("garbage", CHEAP)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("plain", "plain"),
        (b"plain", "plain"),
        ("p\u00e4ss".encode("utf-8"), "p\u00e4ss"),
        # Twisted's FTP server decodes as latin-1: a UTF-8 client's ä arrives
        # as two characters and is repaired.
        ("p\u00e4ss".encode("utf-8").decode("latin-1"), "p\u00e4ss"),
        # A latin-1 client's ä: not UTF-8, kept as latin-1.
        (b"p\xe4ss", "p\u00e4ss"),
        ("p\u00e4ss", "p\u00e4ss"),
        ("\u20ac uro", "\u20ac uro"),
    ],
)
def test_normalise_text(given: str | bytes, expected: str) -> None:
    assert normalise_text(given) == expected


def test_password_from_any_protocol_matches() -> None:
    stored = hash_password("gr\u00fc\u00dfe", CHEAP)
    assert verify_password(stored, "gr\u00fc\u00dfe".encode("utf-8"), CHEAP)
    assert verify_password(stored, "gr\u00fc\u00dfe".encode("utf-8").decode("latin-1"), CHEAP)
    assert verify_password(stored, "gr\u00fc\u00dfe".encode("latin-1"), CHEAP)


def test_module_reexports() -> None:
    import rumpus_secure.accounts as accounts

    assert accounts.SQLiteAccountStore is SQLiteAccountStore
    assert hashing.DEFAULT_HASHER is DEFAULT_HASHER
    assert os.path.basename(accounts.__file__) == "__init__.py"
