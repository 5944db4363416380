"""
Blocking store calls run in a thread, one at a time, in the order issued.

The guard's bans and the web sessions are written from the reactor thread
through a thread pool; two writes in flight at once could land in either
order, and a later state (a logout, a lifted ban) could lose to an earlier
one.  L{SerialCalls} chains them instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

#: C{run_in_thread(function, *args) -> Deferred}: how the server runs
#: blocking work off the reactor thread (L{rumpus_secure.tap.Server}).
RunInThread = Callable[..., "defer.Deferred[Any]"]


class SerialCalls:
    """
    @param run_in_thread: C{f(function, *args) -> Deferred}; L{None} runs
        the calls inline (tests, tools).
    @param what: named in the log line when a call fails.
    """

    def __init__(self, run_in_thread: RunInThread | None,
                 what: str) -> None:
        self._run = run_in_thread or defer.maybeDeferred
        self._what = what
        self._tail: defer.Deferred[Any] = defer.succeed(None)

    def call(self, function: Callable[..., Any], *args: Any,
             what: str | None = None) -> defer.Deferred[Any]:
        """
        Run C{function(*args)} after every call issued before.

        @param what: for the log line, instead of the one given at creation.
        @returns: fires with its result, or L{None} after logging a failure
            (a failure never stops the calls after it).
        """
        def run(ignored: Any) -> defer.Deferred[Any]:
            return self._run(function, *args)

        def failed(failure: Failure) -> None:
            _log.failure("could not {what}", failure, what=what or self._what)

        result: defer.Deferred[Any] = defer.Deferred()
        self._tail = self._tail.addCallback(run).addErrback(failed)
        self._tail.addBoth(lambda value: (result.callback(value), None)[1])
        return result

    def flushed(self) -> defer.Deferred[None]:
        """
        Fire when the calls issued so far are done.
        """
        done: defer.Deferred[None] = defer.Deferred()
        self._tail.addBoth(lambda value: (done.callback(None), value)[1])
        return done
