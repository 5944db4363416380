"""
Store calls in a thread, one at a time, in order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from rumpus_secure.serial import SerialCalls


def test_calls_run_in_order_one_at_a_time_and_survive_a_failure() -> None:
    started: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def thread(function: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        started.append((function, args, d))
        return d

    def finish() -> None:
        function, args, d = started.pop(0)
        try:
            d.callback(function(*args))
        except Exception:
            d.errback()

    def boom() -> None:
        raise OSError("disk gone")

    calls = SerialCalls(thread, "test")
    first = calls.call(lambda x: x * 2, 21)
    second = calls.call(boom)
    third = calls.call(lambda: "after")
    flushed = calls.flushed()
    assert len(started) == 1  # the next waits for the one before
    finish()
    assert first.result == 42 and len(started) == 1
    finish()
    assert second.result is None  # logged, and the chain goes on
    finish()
    assert third.result == "after" and flushed.called and started == []
