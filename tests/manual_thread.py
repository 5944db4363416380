"""
A stand-in for C{run_in_thread} whose calls run only when a test says so.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer


class ManualThread:
    """
    Records each call; L{run_next} runs the oldest and fires its Deferred
    with the result, or with the failure it raised.

    @ivar calls: C{(function, args, deferred)} not run yet, oldest first.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((function, args, d))
        return d

    def run_next(self) -> None:
        function, args, d = self.calls.pop(0)
        try:
            result = function(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)
