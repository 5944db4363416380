"""
Long file work (a whole-file HASH) on its own small pool, one job per account.

Why: the reactor's thread pool (10 threads) serves every short disk and
database call: a login's home lookup, listings, the web manager's file work.
A HASH of a 768 MiB file keeps a thread for about two seconds; ten of them,
sent by one logged-in user, took all ten threads, and another user's login
plus ``NLST`` went from 0.11 s to 8.9 s (issue #12, attack 5).

Now such work runs on a pool of its own (L{DEFAULT_THREADS} threads) and each
account has at most L{DEFAULT_PER_ACCOUNT} job running; its other jobs wait
in line (a session sends one command at a time, and sessions per account are
limited, so the line is bounded).  The shared pool stays free for short
work, and one account cannot take the long-work pool from the others either.
A job whose client went away while it waited is not started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from rumpus_secure.serial import RunInThread

T = TypeVar("T")

#: Threads for long work: hashing reads at disk or page-cache speed and
#: hashlib releases the GIL, so two jobs use two cores without starving the
#: reactor.
DEFAULT_THREADS = 2

#: Long jobs one account may have running at once.
DEFAULT_PER_ACCOUNT = 1


class GoneAway(Exception):
    """The client that asked for the job left before it could start."""


class LongWork:
    """
    A bounded pool for long file work, with a per-account limit.

    :param reactor: the reactor (C{callFromThread}, shutdown trigger).
    :param run_in_thread: run jobs with this instead of the pool's own
        threads (tests run them synchronously).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        threads: int = DEFAULT_THREADS,
        per_account: int = DEFAULT_PER_ACCOUNT,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self._reactor = reactor
        self._threads = threads
        self.per_account = per_account
        self._run_in_thread = run_in_thread
        self._pool: ThreadPool | None = None
        self._trigger: Any = None
        self._accounts: dict[str, defer.DeferredSemaphore] = {}

    def run(
        self,
        account: str,
        function: Callable[..., T],
        *args: Any,
        wanted: Callable[[], bool] | None = None,
    ) -> defer.Deferred[T]:
        """
        Run C{function(*args)} in a long-work thread once C{account} may.

        :param wanted: asked when the job's turn comes; if it says False the
            job is not run and the Deferred fails with L{GoneAway}.
        """
        semaphore = self._accounts.get(account)
        if semaphore is None:
            semaphore = self._accounts[account] = defer.DeferredSemaphore(self.per_account)

        def start() -> defer.Deferred[T]:
            if wanted is not None and not wanted():
                return defer.fail(GoneAway())
            return self._in_thread(function, *args)

        def release(result: Any) -> Any:
            if semaphore.tokens == semaphore.limit and not semaphore.waiting:
                self._accounts.pop(account, None)
            return result

        return semaphore.run(start).addBoth(release)

    def running(self, account: str) -> int:
        """Jobs of C{account} running now."""
        semaphore = self._accounts.get(account)
        return 0 if semaphore is None else semaphore.limit - semaphore.tokens

    def waiting(self, account: str) -> int:
        """Jobs of C{account} waiting for their turn."""
        semaphore = self._accounts.get(account)
        return 0 if semaphore is None else len(semaphore.waiting)

    def _in_thread(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self._run_in_thread is not None:
            return self._run_in_thread(function, *args)
        if self._pool is None:
            self._pool = ThreadPool(0, self._threads, name="rumpus-long-work")
            self._pool.start()
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self.stop)
        return threads.deferToThreadPool(self._reactor, self._pool, function, *args)

    def stop(self) -> None:
        """Stop the pool's threads (at reactor shutdown)."""
        pool, self._pool = self._pool, None
        trigger, self._trigger = self._trigger, None
        if pool is not None:
            pool.stop()
        if trigger is not None and self._reactor.running:
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # already fired: this is the shutdown
