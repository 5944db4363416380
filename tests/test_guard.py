"""
The abuse guard on a fake clock: scores, windows, bans, escalation, limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from rumpus_secure.accounts.bans import Ban, MemoryBanStore, SQLiteBanStore
from rumpus_secure.audit import MemoryAuditLog
from rumpus_secure.config import build_config
from rumpus_secure.guard import Guard, GuardSettings, normalise_address
from tests.manual_thread import ManualThread

START = 1_800_000_000.0


def make_guard(
    clock: Clock | None = None, store: Any = None, audit: Any = None, **settings: Any
) -> Guard:
    values: dict[str, Any] = {"threshold": 5, "window": 60.0, "ban_time": 100.0,
                              "ban_max_time": 1000.0}
    values.update(settings)
    if clock is None:
        clock = Clock()
        clock.advance(START)
    return Guard(GuardSettings(**values), clock, store=store,
                 audit=audit if audit is not None else MemoryAuditLog())


def fail(guard: Guard, host: str, times: int = 1, kind: str = "login_failed") -> Ban | None:
    ban = None
    for _ in range(times):
        ban = guard.offence(host, kind, protocol="ftp") or ban
    return ban


def test_score_below_threshold_does_not_ban() -> None:
    guard = make_guard()
    assert fail(guard, "192.0.2.1", 4) is None
    assert guard.is_banned("192.0.2.1") is None


def test_threshold_bans_and_audits() -> None:
    audit = MemoryAuditLog()
    guard = make_guard(audit=audit)
    ban = fail(guard, "192.0.2.1", 5)
    assert ban is not None and ban.level == 0 and ban.reason == "login_failed"
    assert ban.until == START + 100
    assert guard.is_banned("192.0.2.1") == ban
    assert guard.is_banned("192.0.2.2") is None
    [event] = audit.named("guard.ban")
    assert event["client"] == "192.0.2.1" and event["seconds"] == 100
    assert event["score"] == 5


def test_weights_differ_by_offence() -> None:
    guard = make_guard()
    assert guard.offence("192.0.2.1", "protocol_garbage", protocol="ftp") is not None
    assert fail(guard, "192.0.2.2", 1, kind="cleartext_login") is None
    assert fail(guard, "192.0.2.2", 1, kind="cleartext_login") is not None
    assert guard.offence("192.0.2.3", "no such offence", protocol="ftp") is None


def test_old_offences_fall_out_of_the_window() -> None:
    clock = Clock()
    clock.advance(START)
    guard = make_guard(clock)
    fail(guard, "192.0.2.1", 4)
    clock.advance(61)
    assert fail(guard, "192.0.2.1", 4) is None
    clock.advance(30)
    assert fail(guard, "192.0.2.1", 1) is not None


def test_ban_expires() -> None:
    clock = Clock()
    clock.advance(START)
    guard = make_guard(clock)
    fail(guard, "192.0.2.1", 5)
    clock.advance(99)
    ban = guard.is_banned("192.0.2.1")
    assert ban is not None and ban.minutes_left(clock.seconds()) == 1
    clock.advance(1)
    assert guard.is_banned("192.0.2.1") is None
    assert guard.bans() == []


def test_repeat_offenders_get_doubling_bans_up_to_the_maximum() -> None:
    clock = Clock()
    clock.advance(START)
    guard = make_guard(clock)
    lengths = []
    for _ in range(6):
        ban = fail(guard, "192.0.2.1", 5)
        assert ban is not None
        lengths.append(ban.until - clock.seconds())
        clock.advance(ban.until - clock.seconds())
    assert lengths == [100, 200, 400, 800, 1000, 1000]


def test_escalation_resets_after_a_quiet_period() -> None:
    clock = Clock()
    clock.advance(START)
    guard = make_guard(clock)
    fail(guard, "192.0.2.1", 5)
    clock.advance(100 + 1000)
    ban = fail(guard, "192.0.2.1", 5)
    assert ban is not None and ban.level == 0


def test_offences_while_banned_do_not_extend() -> None:
    guard = make_guard()
    ban = fail(guard, "192.0.2.1", 5)
    assert fail(guard, "192.0.2.1", 20) is None
    assert guard.is_banned("192.0.2.1") == ban


def test_safe_list_is_never_banned() -> None:
    guard = make_guard(safe_list=("10.0.0.0/8", "2001:db8::/32"))
    assert fail(guard, "10.1.2.3", 50) is None
    assert fail(guard, "2001:db8::5", 50) is None
    assert guard.is_banned("10.1.2.3") is None
    assert guard.is_safe("::ffff:10.9.9.9")
    assert not guard.is_safe("192.0.2.1")


def test_ipv4_mapped_addresses_are_the_same_client() -> None:
    guard = make_guard()
    fail(guard, "::ffff:192.0.2.1", 3)
    fail(guard, "192.0.2.1", 2)
    assert guard.is_banned("::ffff:192.0.2.1") is not None
    assert guard.is_banned("192.0.2.1") is not None
    assert normalise_address("fe80::1%eth0") == "fe80::1"
    assert normalise_address("not an address") == "not an address"


def test_threshold_zero_turns_banning_off() -> None:
    guard = make_guard(threshold=0)
    assert fail(guard, "192.0.2.1", 100) is None


def test_check_audits_refusals_quietly() -> None:
    clock = Clock()
    clock.advance(START)
    audit = MemoryAuditLog()
    guard = make_guard(clock, audit=audit)
    assert guard.check("192.0.2.1", "ftp") is None
    fail(guard, "192.0.2.1", 5)
    for _ in range(10):
        assert guard.check("192.0.2.1", "https") is not None
    assert len(audit.named("guard.refused")) == 1
    clock.advance(61)
    guard.check("192.0.2.1", "https")
    refused = audit.named("guard.refused")
    assert len(refused) == 2 and refused[1]["suppressed"] == 9
    assert refused[1]["protocol"] == "https"


def test_message_counts_minutes() -> None:
    clock = Clock()
    clock.advance(START)
    guard = make_guard(clock, ban_time=900.0)
    ban = fail(guard, "192.0.2.1", 5)
    assert ban is not None
    assert guard.message(ban) == (
        "Too many failed attempts from your address; try again in 15 minutes.")
    clock.advance(899)
    assert guard.message(ban).endswith("try again in 1 minute.")


def test_lift_ends_a_ban() -> None:
    store = MemoryBanStore()
    guard = make_guard(store=store)
    fail(guard, "192.0.2.1", 5)
    assert "192.0.2.1" in store.bans
    assert guard.lift("192.0.2.1")
    assert guard.is_banned("192.0.2.1") is None
    assert store.bans == {}
    assert not guard.lift("192.0.2.1")


# -- persistence --------------------------------------------------------


def test_bans_survive_a_new_guard_on_the_same_database(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    clock = Clock()
    clock.advance(START)
    first = make_guard(clock, store=SQLiteBanStore(path))
    ban = fail(first, "192.0.2.1", 5)
    assert ban is not None
    assert first.flushed().called

    clock.advance(10)
    second = make_guard(clock, store=SQLiteBanStore(path))
    assert second.load() == 1
    assert second.is_banned("192.0.2.1") == ban
    # Its history still counts: the next ban doubles.
    clock.advance(90)
    again = fail(second, "192.0.2.1", 5)
    assert again is not None and again.level == 1
    third = make_guard(clock, store=SQLiteBanStore(path))
    third.load()
    assert third.is_banned("192.0.2.1") == again


def test_sqlite_store_load_prune_delete(tmp_path: Path) -> None:
    store = SQLiteBanStore(tmp_path / "accounts.sqlite3")
    store.save(Ban("192.0.2.1", 100.0, 0, "login_failed", 0.0))
    store.save(Ban("192.0.2.2", 300.0, 2, "tls_failed", 200.0))
    store.save(Ban("192.0.2.2", 400.0, 3, "tls_failed", 300.0))
    assert [b.address for b in store.load(50.0)] == ["192.0.2.1", "192.0.2.2"]
    assert store.load(150.0) == [Ban("192.0.2.2", 400.0, 3, "tls_failed", 300.0)]
    assert store.prune(150.0) == 1
    store.delete("192.0.2.2")
    assert store.load(0.0) == []


def test_bans_table_lives_in_the_account_database(tmp_path: Path) -> None:
    from rumpus_secure.accounts.store import SQLiteAccountStore

    accounts = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files")
    bans = SQLiteBanStore(accounts.path)
    bans.save(Ban("192.0.2.1", 100.0, 0, "login_failed", 0.0))
    assert SQLiteBanStore(accounts.path).load(0.0)
    assert accounts.list() == []


def test_writes_go_through_run_in_thread_in_order() -> None:
    calls: list[Any] = []
    store = MemoryBanStore()

    def run(function: Any, *args: Any) -> Any:
        from twisted.internet import defer

        calls.append(function.__name__)
        return defer.maybeDeferred(function, *args)

    clock = Clock()
    clock.advance(START)
    guard = Guard(GuardSettings(threshold=1), clock, store=store, run_in_thread=run)
    guard.offence("192.0.2.1", "login_failed", protocol="ftp")
    guard.lift("192.0.2.1")
    assert calls == ["save", "delete"]


def test_sync_takes_in_a_ban_lifted_by_the_admin_command() -> None:
    store, audit = MemoryBanStore(), MemoryAuditLog()
    guard = make_guard(store=store, audit=audit)
    fail(guard, "192.0.2.1", 5)
    fail(guard, "192.0.2.2", 5)
    store.delete("192.0.2.1")  # what `rumpus-secure ban lift` does
    guard.sync()
    assert guard.is_banned("192.0.2.1") is None
    assert guard.is_banned("192.0.2.2") is not None
    [lifted] = audit.named("guard.lifted")
    assert lifted["client"] == "192.0.2.1" and lifted["by"] == "admin"
    # Lifted means forgotten: the next offences start from nothing.
    assert fail(guard, "192.0.2.1", 4) is None


def test_sync_never_drops_a_ban_it_has_not_seen_stored() -> None:
    """
    The read waits for the writes issued before it, and a ban made while
    the read runs is newer than the read: neither is taken for lifted.
    """
    thread = ManualThread()
    clock = Clock()
    clock.advance(START)
    store = MemoryBanStore()
    guard = Guard(GuardSettings(threshold=1), clock, store=store, run_in_thread=thread)
    guard.offence("192.0.2.1", "login_failed", protocol="ftp")  # save queued
    synced = guard.sync()
    clock.advance(1)
    thread.run_next()  # the save
    guard.offence("192.0.2.9", "login_failed", protocol="ftp")  # during the read
    thread.run_next()  # the read: sees .1, not .9
    assert synced.called
    assert guard.is_banned("192.0.2.1") is not None
    assert guard.is_banned("192.0.2.9") is not None


def test_sync_survives_a_store_that_fails() -> None:
    class Broken(MemoryBanStore):
        def load(self, since: float) -> list[Ban]:
            raise OSError("disk gone")

    guard = make_guard(store=Broken())
    fail(guard, "192.0.2.1", 5)
    d = guard.sync()
    assert d.called and d.result is None  # a LoopingCall keeps running
    assert guard.is_banned("192.0.2.1") is not None


# -- limits -------------------------------------------------------------


def test_connection_limits_per_address_and_total() -> None:
    guard = make_guard(max_connections=5, max_connections_per_ip=2,
                       safe_list=("127.0.0.0/8",))
    assert guard.connection_opened("192.0.2.1") is None
    assert guard.connection_opened("::ffff:192.0.2.1") is None
    over = guard.connection_opened("192.0.2.1")
    assert over is not None and (over.scope, over.limit) == ("address", 2)
    assert guard.connections("192.0.2.1") == 2
    guard.connection_closed("192.0.2.1")
    assert guard.connection_opened("192.0.2.1") is None
    # The safe list is exempt from the per-address limit, not the total.
    assert guard.connection_opened("127.0.0.1") is None
    assert guard.connection_opened("127.0.0.1") is None
    assert guard.connection_opened("127.0.0.1") is None
    total = guard.connection_opened("127.0.0.1")
    assert total is not None and (total.scope, total.limit) == ("total", 5)
    assert guard.total_connections == 5
    for _ in range(3):
        guard.connection_closed("127.0.0.1")
    assert guard.connections("127.0.0.1") == 0 and guard.total_connections == 2


def test_limits_of_zero_mean_none() -> None:
    guard = make_guard(max_connections=0, max_connections_per_ip=0,
                       max_sessions_per_account=0)
    for _ in range(1000):
        assert guard.connection_opened("192.0.2.1") is None
        assert guard.session_started("alice")


def test_sessions_per_account() -> None:
    guard = make_guard(max_sessions_per_account=2)
    assert guard.session_started("alice")
    assert guard.session_started("alice")
    assert not guard.session_started("alice")
    assert guard.session_started("bob")
    guard.session_ended("alice")
    assert guard.session_started("alice")
    assert guard.sessions("alice") == 2


def test_delayed_uses_the_clock() -> None:
    clock = Clock()
    guard = make_guard(clock, login_failure_delay=1.5)
    results: list[str] = []
    guard.delayed("530").addCallback(results.append)
    clock.advance(1.4)
    assert results == []
    clock.advance(0.1)
    assert results == ["530"]
    assert clock.getDelayedCalls() == []
    immediate = make_guard(login_failure_delay=0.0).delayed("x")
    assert immediate.called


def test_settings_from_config() -> None:
    config = build_config({"ban-threshold": "7", "ban-window": "30", "ban-time": "60",
                           "ban-max-time": "10", "safe-list": "10.0.0.0/8",
                           "max-connections-per-ip": "3"})
    settings = GuardSettings.from_config(config)
    assert (settings.threshold, settings.window, settings.ban_time) == (7, 30.0, 60.0)
    assert settings.ban_max_time == 60.0  # never shorter than one ban
    assert settings.safe_list == ("10.0.0.0/8",)
    assert settings.max_connections_per_ip == 3
    defaults = GuardSettings.from_config(build_config({}))
    assert defaults.threshold == 15 and defaults.max_connections == 500
    assert defaults.max_connections_per_ip == 20
    assert defaults.max_sessions_per_account == 10
    assert defaults.login_failure_delay == 1.0


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_bad_limits_are_config_errors(value: str) -> None:
    from rumpus_secure.config import ConfigError

    with pytest.raises(ConfigError, match="max-connections"):
        build_config({"max-connections": value})
