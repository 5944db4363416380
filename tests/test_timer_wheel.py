"""
L{rumpus_secure.timer_wheel}: coarse deadlines that still hold their bound,
and the control connection's idle, close and line deadlines on it.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from rumpus_secure.timer_wheel import RESOLUTION, TimerWheel
from tests.ftp_fakes import connect, make_server


def test_fires_within_the_stated_bound() -> None:
    """
    A deadline fires no earlier than asked and at most one resolution after.
    """
    for start in (0.0, 0.3, 7.99):
        clock = Clock()
        clock.advance(start)
        wheel = TimerWheel(clock)
        fired: list[float] = []
        wheel.schedule(10.25, lambda: fired.append(clock.seconds()))
        step = 0.05
        while not fired and clock.seconds() < start + 20:
            clock.advance(step)
        assert fired, start
        assert start + 10.25 <= fired[0] + 1e-6 <= start + 10.25 + RESOLUTION + step


def test_reset_later_moves_only_that_timer() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[str] = []
    a = wheel.schedule(30, lambda: fired.append("a"))
    wheel.schedule(30, lambda: fired.append("b"))
    clock.advance(20)
    a.reset(30)  # now due at 50
    clock.advance(10)
    assert fired == ["b"]
    clock.advance(19)
    assert fired == ["b"]
    clock.advance(1)
    assert fired == ["b", "a"]
    assert not a.active() and len(wheel) == 0
    assert clock.getDelayedCalls() == []


def test_reset_earlier_fires_earlier() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[float] = []
    timer = wheel.schedule(100, lambda: fired.append(clock.seconds()))
    clock.advance(1)
    timer.reset(5)
    clock.advance(5)
    assert fired == [6]


def test_cancel_leaves_nothing_pending() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[int] = []
    timers = [wheel.schedule(5 + n, lambda n=n: fired.append(n)) for n in range(3)]
    timers[1].cancel()
    timers[1].cancel()  # twice: nothing
    clock.advance(10)
    assert fired == [0, 2]
    assert clock.getDelayedCalls() == []
    late = wheel.schedule(3, lambda: fired.append(9))
    late.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(5)
    assert fired == [0, 2]


def test_a_failing_timer_does_not_stop_the_others() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    wheel.schedule(1, boom)
    wheel.schedule(1, lambda: fired.append("after"))
    clock.advance(1)
    assert fired == ["after"]


def test_timers_set_while_firing() -> None:
    """
    A timer's function may start others (a 421 starts the close deadline).
    """
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[float] = []
    wheel.schedule(2, lambda: wheel.schedule(5, lambda: fired.append(clock.seconds())))
    clock.advance(2)
    assert fired == []
    clock.advance(5)
    assert fired == [7]
    assert clock.getDelayedCalls() == []


def test_many_timers_one_reactor_call() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    for n in range(1000):
        wheel.schedule(600 + n % 7, lambda: None)
    assert len(clock.getDelayedCalls()) == 1
    assert len(wheel) == 1000


# -- the control connection's deadlines on the wheel ------------------------


def test_idle_connection_closes_within_the_bound_and_others_do_not_extend_it(
        tmp_path: Path) -> None:
    """
    A connection idle past the timeout is closed within one resolution of
    its deadline, however busy a second connection (same address, same
    wheel) is meanwhile.
    """
    server = make_server(tmp_path, idle_timeout=30.0, login_timeout=0)
    idle, idle_transport, reactor = connect(server)
    busy, busy_transport, _ = connect(server, reactor=reactor)
    reactor.advance(0.5)
    idle.dataReceived(b"NOOP\r\n")  # idle's deadline: 30.5
    for _ in range(70):
        reactor.advance(0.5)
        busy.dataReceived(b"NOOP\r\n")
        if idle_transport.disconnecting:
            break
    assert idle_transport.disconnecting
    assert 30.5 <= reactor.seconds() <= 30.5 + RESOLUTION
    assert idle_transport.lines()[-1].startswith("421 Idle timeout")
    assert not busy_transport.disconnecting


def test_every_command_moves_the_idle_deadline(tmp_path: Path) -> None:
    server = make_server(tmp_path, idle_timeout=30.0, login_timeout=0)
    proto, transport, reactor = connect(server)
    for _ in range(10):
        reactor.advance(20)
        proto.dataReceived(b"NOOP\r\n")
    assert not transport.disconnecting
    reactor.advance(29)
    assert not transport.disconnecting
    reactor.advance(1 + RESOLUTION)
    assert transport.disconnecting
