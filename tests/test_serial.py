"""
Store calls in a thread, one at a time, in order.
"""

from __future__ import annotations

from rumpus_secure.serial import SerialCalls
from tests.manual_thread import ManualThread


def test_calls_run_in_order_one_at_a_time_and_survive_a_failure() -> None:
    def boom() -> None:
        raise OSError("disk gone")

    thread = ManualThread()
    calls = SerialCalls(thread, "test")
    first = calls.call(lambda x: x * 2, 21)
    second = calls.call(boom)
    third = calls.call(lambda: "after")
    flushed = calls.flushed()
    assert len(thread.calls) == 1  # the next waits for the one before
    thread.run_next()
    assert first.result == 42 and len(thread.calls) == 1
    thread.run_next()
    assert second.result is None  # logged, and the chain goes on
    thread.run_next()
    assert third.result == "after" and flushed.called and thread.calls == []
