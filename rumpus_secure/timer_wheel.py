"""
Coarse timers for many connections: the idle, close and line deadlines of
the FTP control connections.

Every control connection keeps an idle deadline (600 s), moved on by every
command, and gets a close deadline (5 s) when it closes, and a line deadline
(30 s) while a command line is incomplete.  As reactor C{DelayedCall}s that
is a call scheduled and one cancelled per connection for each deadline,
each a push onto the reactor's heap (ordered by a Python C{__lt__}, about
14 comparisons with 10,000 sessions held) and an object of its own; with
10,000 idle sessions the reactor's heap holds 10,000 of them.

A deadline that is only ever a limit does not need that precision.  A
L{TimerWheel} files timers in slots of L{TimerWheel.resolution} seconds
(1 s) and keeps one C{DelayedCall}, for its earliest slot.  Starting a
timer is a dictionary insert, cancelling one a dictionary delete, and
moving a deadline later (what every command does to the idle deadline) is
one assignment: the timer stays in its slot and is moved when that slot
comes due.

The bound: a timer fires no earlier than its deadline and at most one
resolution after it (plus however late the reactor runs).  Timers are
independent: one timer's resets never move another's deadline.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()

#: Seconds per slot: how late a deadline may fire.
RESOLUTION = 1.0

#: Clock readings this close count as equal: C{t + (d - t)} is not always
#: C{d} in floating point, and a deadline must not slip a whole slot for it.
_EPSILON = 1e-6


class WheelTimer:
    """
    One deadline of a L{TimerWheel}; the part of C{IDelayedCall} the
    control connection uses (C{active}, C{cancel}, C{reset}).
    """

    __slots__ = ("_wheel", "deadline", "_function", "_slot")

    def __init__(self, wheel: TimerWheel, deadline: float,
                 function: Callable[[], Any]) -> None:
        self._wheel = wheel
        self.deadline = deadline
        self._function: Callable[[], Any] | None = function
        self._slot = -1

    def active(self) -> bool:
        """
        Whether the timer will still fire.
        """
        return self._function is not None

    def cancel(self) -> None:
        """
        Never fire.  Cancelling a timer that fired or was cancelled does
        nothing.
        """
        if self._function is not None:
            self._function = None
            self._wheel._remove(self)

    def reset(self, seconds_later: float) -> None:
        """
        Fire C{seconds_later} seconds from now instead.
        """
        if self._function is None:
            return
        wheel = self._wheel
        self.deadline = wheel._clock.seconds() + seconds_later
        if wheel._slot_of(self.deadline) < self._slot:
            wheel._remove(self)
            wheel._file(self)
        # Later: stays in its slot, moved when that slot comes due.


class TimerWheel:
    """
    Timers filed in slots of C{resolution} seconds, run by one
    C{DelayedCall} of C{clock} (see the module docstring).
    """

    def __init__(self, clock: IReactorTime, resolution: float = RESOLUTION) -> None:
        self._clock = clock
        self.resolution = resolution
        self._slots: dict[int, dict[WheelTimer, None]] = {}
        self._due: list[int] = []  # slot numbers, a heap; may hold emptied ones
        self._call: Any = None
        self._call_slot: int | None = None
        self._firing = False

    def __len__(self) -> int:
        """
        Timers waiting to fire.
        """
        return sum(len(slot) for slot in self._slots.values())

    def schedule(self, seconds: float, function: Callable[[], Any]) -> WheelTimer:
        """
        Call C{function()} once, C{seconds} from now (at most one resolution
        later).
        """
        timer = WheelTimer(self, self._clock.seconds() + seconds, function)
        self._file(timer)
        return timer

    # -- the slots ------------------------------------------------------

    def _slot_of(self, deadline: float) -> int:
        # The first slot whose time is at or after the deadline.
        return math.ceil(deadline / self.resolution)

    def _file(self, timer: WheelTimer) -> None:
        number = self._slot_of(timer.deadline)
        timer._slot = number
        slot = self._slots.get(number)
        if slot is None:
            slot = self._slots[number] = {}
            heapq.heappush(self._due, number)
            if not self._firing and (self._call_slot is None or number < self._call_slot):
                self._arm(number)
        slot[timer] = None

    def _remove(self, timer: WheelTimer) -> None:
        slot = self._slots.get(timer._slot)
        if slot is not None:
            slot.pop(timer, None)
            if not slot:
                del self._slots[timer._slot]
                if not self._slots and not self._firing:
                    self._disarm()

    def _arm(self, number: int) -> None:
        delay = max(0.0, number * self.resolution - self._clock.seconds() - _EPSILON / 2)
        if self._call is not None and self._call.active():
            self._call.reset(delay)
        else:
            self._call = self._clock.callLater(delay, self._fire)
        self._call_slot = number

    def _disarm(self) -> None:
        # Nothing left to fire: no call left pending in the reactor.
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_slot = None
        self._due.clear()

    def _fire(self) -> None:
        self._call = None
        self._call_slot = None
        self._firing = True
        try:
            now = self._clock.seconds() + _EPSILON
            while self._due and self._due[0] * self.resolution <= now:
                slot = self._slots.pop(heapq.heappop(self._due), None)
                if not slot:
                    continue
                for timer in slot:
                    if timer._function is None:
                        continue
                    if timer.deadline > now:
                        self._file(timer)  # moved later since it was filed
                        continue
                    function, timer._function = timer._function, None
                    try:
                        function()
                    except Exception:  # noqa: BLE001 (one timer must not stop the rest)
                        _log.failure("timer {function!r} failed", function=function)
        finally:
            self._firing = False
        while self._due and self._due[0] not in self._slots:
            heapq.heappop(self._due)
        if self._due:
            self._arm(self._due[0])
        else:
            self._disarm()
