"""
Two-factor login (issue #15, part 1): the TOTP window, replay refusal,
recovery codes, the secret sealed at rest, and the checker's rules for
two-factor accounts and app passwords on each channel.

Every promise is per account: each test runs a second account beside the
first, and its codes and app passwords must neither help nor hurt.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin

from rumpus_secure.accounts import app_passwords
from rumpus_secure.accounts.checker import (
    ArgonChecker,
    ChannelCredentials,
    LockedAccountError,
    TwoFactorRequired,
)
from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.accounts.secretbox import SecretBox, SecretBoxError
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.accounts.totp import (
    TwoFactor,
    code_at,
    matching_step,
    new_secret,
    recovery_digest,
)

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
T0 = 1_800_000_000.0  # a step boundary: 1.8e9 / 30 is whole


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> SQLiteAccountStore:
    s = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files", hasher=CHEAP)
    s.add("alice", "alice pw")
    s.add("bob", "bob pw")
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 5)


@pytest.fixture
def factor(store: SQLiteAccountStore, tmp_path: Path, clock: Clock) -> TwoFactor:
    return TwoFactor(store, SecretBox(tmp_path / "secret.key"), clock=clock)


def enrol(factor: TwoFactor, name: str, clock: Clock) -> tuple[str, list[str]]:
    secret = factor.pending_secret(name)
    codes = factor.confirm(name, code_at(secret, clock.now))
    assert codes is not None
    return secret, codes


# -- the window -----------------------------------------------------------------


@pytest.mark.parametrize("offset, accepted", [
    (-61, False), (-32, False), (-31, True), (0, True), (29, True), (58, True),
    (59, False), (95, False),
])
def test_window_is_one_step_either_side(offset: int, accepted: bool) -> None:
    secret = new_secret()
    now = T0 + 1  # inside step T0/30
    code = code_at(secret, now + offset)
    step = matching_step(secret, code, now)
    assert (step is not None) is accepted
    if accepted:
        assert step == int((now + offset) // 30)


def test_malformed_codes_never_match() -> None:
    secret = new_secret()
    good = code_at(secret, T0)
    for bad in ("", "12345", "1234567", "abcdef", good[:-1] + "x", good + "0"):
        assert matching_step(secret, bad, T0) is None
    assert matching_step(secret, f" {good[:3]} {good[3:]} ", T0) == int(T0 // 30)


def test_only_steps_after_the_last_one_used() -> None:
    secret = new_secret()
    step = int(T0 // 30)
    assert matching_step(secret, code_at(secret, T0), T0, after_step=step) is None
    assert matching_step(secret, code_at(secret, T0), T0, after_step=step - 1) == step


# -- enrolment, replay and recovery, per account ---------------------------------


def test_enrolment_needs_a_right_code(factor: TwoFactor, clock: Clock) -> None:
    secret = factor.pending_secret("alice")
    assert factor.pending_secret("alice") == secret  # a reload shows the same QR
    assert factor.confirm("alice", "000000" if code_at(secret, clock.now) != "000000"
                          else "111111") is None
    assert not factor.status("alice").enabled
    codes = factor.confirm("alice", code_at(secret, clock.now))
    assert codes is not None and len(codes) == 10 and len(set(codes)) == 10
    status = factor.status("alice")
    assert status.enabled and status.on and status.recovery_left == 10
    assert not factor.status("bob").on


def test_a_code_works_once_per_account(factor: TwoFactor, clock: Clock) -> None:
    secret, _ = enrol(factor, "alice", clock)
    # The enrolment used this step: its code is spent.
    assert factor.verify("alice", code_at(secret, clock.now)) is None
    clock.now += 30
    code = code_at(secret, clock.now)
    assert factor.verify("alice", code) == "code"
    assert factor.verify("alice", code) is None  # replayed
    # An earlier step's code, still inside the window, is refused too.
    assert factor.verify("alice", code_at(secret, clock.now - 30)) is None
    # Bob, same moment, own secret: his codes are his own.
    bob_secret, _ = enrol(factor, "bob", clock)
    assert factor.verify("bob", code) is None or bob_secret == secret
    clock.now += 30
    assert factor.verify("bob", code_at(bob_secret, clock.now)) == "code"
    assert factor.verify("alice", code_at(bob_secret, clock.now)) is None
    assert factor.verify("alice", code_at(secret, clock.now)) == "code"


def test_recovery_codes_work_once(factor: TwoFactor, clock: Clock,
                                  store: SQLiteAccountStore) -> None:
    _, codes = enrol(factor, "alice", clock)
    _, bob_codes = enrol(factor, "bob", clock)
    assert factor.verify("alice", codes[3].upper()) == "recovery"
    assert factor.verify("alice", codes[3]) is None
    assert factor.verify("alice", bob_codes[0]) is None  # another account's
    assert factor.status("alice").recovery_left == 9
    assert factor.status("bob").recovery_left == 10
    with sqlite3.connect(store.path) as db:
        stored = {bytes(r[0]) for r in db.execute("SELECT digest FROM recovery_codes")}
    assert recovery_digest(codes[0]) in stored
    assert not any(c.encode() in b"".join(stored) for c in codes)


def test_reset_forgets_and_requires(factor: TwoFactor, clock: Clock,
                                    store: SQLiteAccountStore) -> None:
    secret, codes = enrol(factor, "alice", clock)
    store.reset_two_factor("alice")
    status = factor.status("alice")
    assert status.required and not status.enabled and status.on
    clock.now += 30
    assert factor.verify("alice", code_at(secret, clock.now)) is None
    assert factor.verify("alice", codes[0]) is None
    assert factor.pending_secret("alice") != secret


def test_delete_forgets_second_factors(factor: TwoFactor, clock: Clock,
                                       store: SQLiteAccountStore) -> None:
    enrol(factor, "alice", clock)
    store.add_app_password("alice", "abcdefghij", "laptop", "hash")
    store.delete("alice")
    store.add("alice", "new pw")
    assert not factor.status("alice").on
    assert store.app_passwords("alice") == []


# -- the secret at rest -------------------------------------------------------------


def test_secret_is_sealed_with_a_private_key_file(factor: TwoFactor, clock: Clock,
                                                  store: SQLiteAccountStore,
                                                  tmp_path: Path) -> None:
    secret, _ = enrol(factor, "alice", clock)
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    raw = store.path.read_bytes() + (store.path.parent / "accounts.sqlite3-wal").read_bytes()
    assert secret.encode() not in raw
    row = store.two_factor("alice")
    box = SecretBox(key)
    assert box.open(row.secret, "totp:alice") == secret.encode()
    with pytest.raises(SecretBoxError):  # bound to its account
        box.open(row.secret, "totp:bob")
    with pytest.raises(SecretBoxError):  # another key
        SecretBox(tmp_path / "other.key").open(row.secret, "totp:alice")


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(SecretBoxError, match="readable by others"):
        SecretBox(key).seal(b"x", "c")


# -- the checker: channels, app passwords -------------------------------------------


@pytest.fixture
def checker(store: SQLiteAccountStore) -> ArgonChecker:
    from twisted.internet import reactor

    return ArgonChecker(store, reactor, hasher=CHEAP)


def creds(name: str, password: str, channel: str) -> ChannelCredentials:
    return ChannelCredentials(name.encode(), password.encode(), channel)


def add_app_password(store: SQLiteAccountStore, name: str) -> app_passwords.NewAppPassword:
    new = app_passwords.generate()
    store.add_app_password(name, new.ident, "client", hash_password(new.password, CHEAP))
    return new


@pytest_twisted.ensureDeferred
async def test_two_factor_account_main_password_only_on_the_web(
        checker: ArgonChecker, store: SQLiteAccountStore) -> None:
    store.set_two_factor_required("alice", True)
    assert await checker.requestAvatarId(creds("alice", "alice pw", "web")) == b"alice"
    for channel in ("ftps", "ftp"):
        with pytest.raises(TwoFactorRequired):
            await checker.requestAvatarId(creds("alice", "alice pw", channel))
    with pytest.raises(UnauthorizedLogin) as wrong:
        await checker.requestAvatarId(creds("alice", "wrong", "ftps"))
    assert not isinstance(wrong.value, TwoFactorRequired)  # no oracle for wrong ones
    # Bob, no second factor, same moment: his password works on FTPS.
    assert await checker.requestAvatarId(creds("bob", "bob pw", "ftps")) == b"bob"


@pytest_twisted.ensureDeferred
async def test_app_passwords_work_only_on_ftps_and_for_their_account(
        checker: ArgonChecker, store: SQLiteAccountStore) -> None:
    store.set_two_factor_required("alice", True)
    new = add_app_password(store, "alice")
    bobs = add_app_password(store, "bob")
    assert await checker.requestAvatarId(creds("alice", new.password, "ftps")) == b"alice"
    assert store.app_passwords("alice")[0].last_used is not None
    for channel in ("web", "ftp"):
        with pytest.raises(UnauthorizedLogin):
            await checker.requestAvatarId(creds("alice", new.password, channel))
    with pytest.raises(UnauthorizedLogin):  # bob's, for alice
        await checker.requestAvatarId(creds("alice", bobs.password, "ftps"))
    tampered = new.password[:-1] + ("a" if new.password[-1] != "a" else "b")
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(creds("alice", tampered, "ftps"))
    assert await checker.requestAvatarId(creds("bob", bobs.password, "ftps")) == b"bob"
    reader = store.change_reader()
    before = reader.latest()
    assert store.revoke_app_password("alice", new.ident)
    assert [c.kind for c in reader.since(before).changes] == ["password"]
    reader.close()
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(creds("alice", new.password, "ftps"))
    store.lock("bob", "test")
    with pytest.raises(LockedAccountError):
        await checker.requestAvatarId(creds("bob", bobs.password, "ftps"))


def test_app_password_form() -> None:
    new = app_passwords.generate()
    assert app_passwords.ident_of(new.password) == new.ident
    assert app_passwords.ident_of(new.password.upper()) == new.ident
    assert len(new.password) == len("rsap-") + 10 + 1 + 26
    for other in ("alice pw", "rsap-abc-def", new.password + "x"):
        assert app_passwords.ident_of(other) is None


@pytest_twisted.ensureDeferred
async def test_app_password_seen_in_cleartext_is_revoked(
        checker: ArgonChecker, store: SQLiteAccountStore) -> None:
    """
    The exposure check (plain FTP, plain HTTP) asks the checker whether a
    cleartext password was real: an app password is revoked instead, and the
    account is not quarantined for it; Bob's app password stays.
    """
    new = add_app_password(store, "alice")
    bobs = add_app_password(store, "bob")
    assert await checker.check_password("alice", new.password) is False
    assert store.app_password_hash("alice", new.ident) is None
    assert store.app_password_hash("bob", bobs.ident) is not None
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(creds("alice", new.password, "ftps"))
    assert await checker.check_password("alice", "alice pw") is True  # unchanged


def test_require_and_reset_move_the_password_time(tmp_path: Path) -> None:
    """Web sessions end on ``password_changed``: require and reset move it."""
    clock = Clock(T0)
    s = SQLiteAccountStore(tmp_path / "a.sqlite3", tmp_path / "f", hasher=CHEAP,
                           clock=clock)
    s.add("alice", "alice pw")
    s.add("bob", "bob pw")
    before_bob = s.get("bob").password_changed
    clock.now += 10
    s.set_two_factor_required("alice", True)
    assert s.get("alice").password_changed == T0 + 10
    clock.now += 10
    s.set_two_factor_required("alice", False)  # lifting it ends nothing
    assert s.get("alice").password_changed == T0 + 10
    clock.now += 10
    s.reset_two_factor("alice")
    assert s.get("alice").password_changed == T0 + 30
    assert s.get("bob").password_changed == before_bob
