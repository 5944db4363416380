"""
Fair order of password verifications across addresses (round 3, finding
4), in memory: verifications start only when the guard says so and finish
when the test releases them, so the order in which they start is seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactor

from rumpus_secure.accounts.checker import ArgonChecker, verify_thread_pool
from rumpus_secure.config import ServerConfig
from rumpus_secure.guard import Guard, GuardSettings
from tests.ftp_fakes import connect
from tests.guard_fakes import HeldChecker, hold_logins
from tests.test_guard_ftp import guarded, send

EVE = [f"192.0.2.{i}" for i in range(1, 61)]
BOB_SIDE = "198.51.100.4"
SLOTS = 2


def started(checker: HeldChecker, before: int) -> list[str]:
    """
    The user names of the verifications started since C{before} were held.
    """
    return [c.username.decode() for c, _ in checker.held[before:]]


def flood(server: Any, reactor: Any, hosts: list[str], per_host: int = 4) -> list[Any]:
    transports = []
    for host in hosts:
        for i in range(per_host):
            proto, transport, _ = connect(server, implicit=True, reactor=reactor, peer=host)
            send(proto, transport, "USER eve", f"PASS wrong-{i}@{host}")
            transports.append(transport)
    return transports


def test_an_honest_login_goes_before_a_flood_from_many_addresses(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0,
                              max_verifying_total=SLOTS)
    server.store.add("eve", "eves-password")
    server.store.add("bob", "bobs-password")
    server.store.add("carol", "carols-password")
    checker = hold_logins(server)
    flood(server, reactor, EVE[:30])
    # An honest login from a fresh address in the middle of the flood, and
    # (same address, other account, in parallel) a second one.
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=BOB_SIDE)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    carol, carol_transport, _ = connect(server, implicit=True, reactor=reactor,
                                        peer=BOB_SIDE)
    send(carol, carol_transport, "USER carol", "PASS carols-password")
    flood(server, reactor, EVE[30:])
    # Only as many verifications run as the pool has threads.
    assert len(checker.held) == SLOTS == server.guard.verifying_total
    first = started(checker, 0)
    assert first == ["eve", "eve"]
    # The next two slots go to the honest address, ahead of 238 waiting.
    checker.release(0)
    reactor.advance(0)
    checker.release(0)
    reactor.advance(0)
    assert sorted(started(checker, 0)) == ["bob", "carol"]
    while checker.held:
        checker.release(0)
        reactor.advance(0)
    assert bob_transport.lines()[-1].startswith("230 ")
    assert carol_transport.lines()[-1].startswith("230 ")


def test_addresses_take_turns_and_failing_ones_wait(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0,
                              max_verifying_total=1)
    server.store.add("eve", "eves-password")
    checker = hold_logins(server)
    a, b, c = EVE[:3]
    flood(server, reactor, [a], per_host=3)   # one starts at once, two wait
    flood(server, reactor, [b], per_host=3)
    flood(server, reactor, [c], per_host=1)
    order = []
    while checker.held:
        [(credentials, _)] = checker.held
        order.append(credentials.password.decode().split("@")[1])
        checker.release(0)
        reactor.advance(0)
    # c (a single login) first; then b, which has not failed yet, before a,
    # which has; then a and b in turn as their failures mount.
    assert order == [a, c, b, a, b, a, b]


def test_no_limit_keeps_the_old_behaviour(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    server.store.add("eve", "eves-password")
    checker = hold_logins(server)
    flood(server, reactor, EVE[:5])
    assert len(checker.held) == 20  # 4 per address, no global limit


def test_the_server_limits_verifications_to_the_pool(tmp_path: Path) -> None:
    pool = verify_thread_pool(MemoryReactor())
    checker = ArgonChecker(object(), MemoryReactor(), threadpool=pool)  # type: ignore[arg-type]
    assert checker.slots == pool.max >= 2
    config = ServerConfig(data_dir=tmp_path, root=tmp_path / "files")
    settings = GuardSettings.from_config(config, verify_slots=checker.slots)
    assert settings.max_verifying_total == pool.max
    guard = Guard(settings, MemoryReactor())
    assert guard.settings.max_verifying_total == checker.slots


def test_waiting_logins_and_evictable_connections_are_kept_apart() -> None:
    # Logins waiting for a verification slot and connections that have not
    # logged in (evictable when the server is full) are different books.
    from twisted.internet.task import Clock

    clock = Clock()
    guard = Guard(GuardSettings(threshold=15, max_connections=1, max_verifying_per_ip=1),
                  clock)
    first = guard.begin_login("192.0.2.1", "ftp", "eve")
    second = guard.begin_login("192.0.2.1", "ftp", "eve")
    assert first.called and not second.called
    assert guard.waiting("192.0.2.1") == 1
    evicted: list[str] = []
    assert guard.connection_opened("192.0.2.2") is None
    guard.not_logged_in("idle", clock.seconds(), lambda: (
        evicted.append("idle"), guard.connection_closed("192.0.2.2")))
    clock.advance(10)
    assert guard.connection_opened("198.51.100.4") is None  # the idle one made room
    assert evicted == ["idle"]
    assert guard.waiting("192.0.2.1") == 1
    first.result.failed()
    assert second.called and guard.waiting("192.0.2.1") == 0
