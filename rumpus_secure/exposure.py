"""
Containing passwords that crossed the network unencrypted.

A client that sends a password in cleartext (an FTP ``PASS`` before TLS, a
login form or ``Authorization`` header on plain HTTP) has exposed it to
anyone on the path.  We cannot unsend the bytes, but we can find out whether
it was the account's real password (argon2id, off the reactor thread) and,
if so, quarantine the account until an administrator resets the password
(``--exposed-password quarantine``) or only record it (``alert``).  The
password itself is never logged, and nothing in any reply reveals whether it
was right.

B{No window.}  Whoever sniffed the password races us: a TLS login with it
made while the check runs must not get in.  So every login (FTP and web)
takes a L{LoginWatch} on its account before its own verification and, once
that succeeded, waits for every exposure check of the account that was
pending at any moment in between; if one of them quarantined the account,
the login is refused as locked.  A login with no check pending pays
nothing.  The protocols also answer the cleartext request only after the
check (HTTP ``403``, FTP ``530``), so a client never learns "refused" while
its password is still usable.

B{Exposure checks never delay honest logins.}  Anyone can send cleartext
credentials, each costing an argon2id verification (about 20 ms of CPU and
19 MiB).  A flood of them on the login pool made an honest FTPS login take
11 s instead of 0.07 s.  Here the checks run in a pool of their own
(L{EXPOSURE_THREADS}, 1 thread: at most one core), one address at a time
round-robin (an address never has more than L{PER_ADDRESS_RUNNING} check
running, so a flooding address cannot starve another's), with at most
L{PER_ADDRESS_QUEUED} waiting per address (more are recorded as not
checked).  Identical (account, password) pairs are checked once: a pair
already waiting shares that check, and results are remembered per state of
the account's password (L{rumpus_secure.accounts.verifier_cache}), keyed by
an HMAC under a per-process secret.  The cleartext password itself is kept
only until its check has run.  The protocols also score cleartext
credentials as an offence (L{rumpus_secure.guard}), so a flood ends in a ban
after five requests, and a banned address's credentials are not checked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from datetime import datetime, timezone
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from rumpus_secure.accounts.hashing import normalise_text

_log = Logger()

#: Threads that verify cleartext passwords (their own pool).
EXPOSURE_THREADS = 1

#: Checks of one address running at once.
PER_ADDRESS_RUNNING = 1

#: Checks of one address waiting; more are recorded and dropped.
PER_ADDRESS_QUEUED = 16

#: Checks waiting in all; more are recorded and dropped.
MAX_QUEUED = 1024


class _Job:
    """
    One pending check of one (account, password) pair.
    """

    def __init__(self, key: bytes, name: str, password: str | None, client: str,
                 protocol: str, software: str | None) -> None:
        self.key = key
        self.name = name
        self.password = password  # dropped when its check starts
        self.client = client
        self.protocol = protocol
        self.software = software
        self.requests = 1
        self.quarantined: str | None = None
        self.result: bool | None = None
        self._waiting: list[defer.Deferred[bool]] = []

    def wait(self) -> defer.Deferred[bool]:
        """
        A Deferred of its own that fires with the outcome (True: the
        password was real).
        """
        if self.result is not None:
            return defer.succeed(self.result)
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiting.append(d)
        return d

    def finish(self, result: bool) -> None:
        self.result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)


class LoginWatch:
    """
    A login's view of the exposure checks of its account.

    Take it (L{ExposureGuard.watch}) before verifying the password, and call
    L{outcome} once the verification succeeded, or L{close} otherwise.
    """

    def __init__(self, guard: ExposureGuard, name: str) -> None:
        self._guard = guard
        self.name = name
        self.jobs: set[_Job] = set(guard._by_account.get(name, ()))

    async def outcome(self) -> str | None:
        """
        Wait for every check of the account seen since the watch began.

        @returns: the lock reason if one of them quarantined the account,
            else L{None}.  Fires at once when no check was pending.
        """
        try:
            seen: set[_Job] = set()
            while self.jobs - seen:
                for job in list(self.jobs - seen):
                    seen.add(job)
                    await job.wait()
            for job in seen:
                if job.quarantined is not None:
                    return job.quarantined
            return None
        finally:
            self.close()

    def close(self) -> None:
        watches = self._guard._watches.get(self.name)
        if watches is not None:
            watches.discard(self)
            if not watches:
                del self._guard._watches[self.name]


class ExposureGuard:
    """
    Checks cleartext credentials and quarantines exposed accounts.

    @param threadpool: where the checks' argon2id runs (see
        L{exposure_thread_pool}); L{None} leaves the choice to the checker.
    @param cache: remembers check results per password state, or L{None}.
    @ivar pending: Deferreds of the checks not finished, so tests and
        shutdown can wait.
    """

    def __init__(self, server: Any, reactor: Any, threadpool: Any = None,
                 cache: Any = None, running: int = EXPOSURE_THREADS) -> None:
        self.server = server
        self.reactor = reactor
        self.pending: set[defer.Deferred[Any]] = set()
        self._threadpool = threadpool
        self._cache = cache
        self._max_running = max(1, running)
        self._secret = secrets.token_bytes(32)
        self._queues: dict[str, deque[_Job]] = {}
        self._turns: deque[str] = deque()
        self._in_turns: set[str] = set()
        self._queued = 0
        self._running: dict[str, int] = {}
        self._running_total = 0
        self._by_key: dict[bytes, _Job] = {}
        self._by_account: dict[str, set[_Job]] = {}
        self._watches: dict[str, set[LoginWatch]] = {}
        self.checks_run = 0

    # -- logins ----------------------------------------------------------------

    def watch(self, name: str | bytes) -> LoginWatch:
        """
        Start watching account C{name}'s exposure checks for one login.
        """
        key = normalise_text(name)
        watch = LoginWatch(self, key)
        self._watches.setdefault(key, set()).add(watch)
        return watch

    def checking(self, name: str | bytes) -> bool:
        """
        Is an exposure check of account C{name} pending?
        """
        return bool(self._by_account.get(normalise_text(name)))

    # -- checks ----------------------------------------------------------------

    def check(
        self,
        *,
        protocol: str,
        client: str,
        user: str | None,
        password: str,
        software: str | None = None,
    ) -> defer.Deferred[bool]:
        """
        Was C{password} the real password of C{user}?  If so, contain it.

        @returns: a Deferred firing with True when the password was real,
            once the account is quarantined (never fails).
        """
        audit = self.server.audit
        event = f"{protocol}.cleartext_password"
        if not user or not password:
            audit.record(event, client=client, account=user, software=software,
                         protocol=protocol,
                         outcome="no-user" if not user else "empty")
            return defer.succeed(False)
        name = normalise_text(user)
        key = self._key(name, normalise_text(password))
        job = self._by_key.get(key)
        if job is not None:
            job.requests += 1
            return job.wait()
        queue = self._queues.setdefault(client, deque())
        if len(queue) >= PER_ADDRESS_QUEUED or self._queued >= MAX_QUEUED:
            audit.record(event, client=client, account=name, software=software,
                         protocol=protocol, outcome="not-checked-too-many")
            if not queue:
                del self._queues[client]
            return defer.succeed(False)
        job = _Job(key, name, password, client, protocol, software)
        self._by_key[key] = job
        self._by_account.setdefault(name, set()).add(job)
        for watch in self._watches.get(name, ()):
            watch.jobs.add(job)
        queue.append(job)
        self._queued += 1
        d = job.wait()
        self.pending.add(d)
        d.addBoth(self._forget, d)
        self._offer(client)
        self._pump()
        return d

    def _forget(self, result: Any, d: defer.Deferred[Any]) -> Any:
        self.pending.discard(d)
        return result

    def _offer(self, client: str) -> None:
        """
        Give C{client} a turn if it has checks waiting and room to run one.
        """
        if (self._queues.get(client) and client not in self._in_turns
                and self._running.get(client, 0) < PER_ADDRESS_RUNNING):
            self._turns.append(client)
            self._in_turns.add(client)

    def _key(self, name: str, password: str) -> bytes:
        message = (name.encode("utf-8", "surrogatepass") + b"\0"
                   + password.encode("utf-8", "surrogatepass"))
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _pump(self) -> None:
        """
        Start checks while there is room: one address at a time, in turn.
        """
        while self._turns and self._running_total < self._max_running:
            client = self._turns.popleft()
            self._in_turns.discard(client)
            queue = self._queues.get(client)
            if not queue:
                self._queues.pop(client, None)
                continue
            job = queue.popleft()
            self._queued -= 1
            if not queue:
                del self._queues[client]
            self._running[client] = self._running.get(client, 0) + 1
            self._running_total += 1
            self._offer(client)
            self._run(job)

    def _run(self, job: _Job) -> None:
        password, job.password = job.password, None
        self.checks_run += 1
        checker = self.server.checker
        options: dict[str, Any] = {}
        if self._threadpool is not None:
            options["threadpool"] = self._threadpool
        if self._cache is not None:
            options["cache"] = self._cache
        d = defer.maybeDeferred(checker.check_password, job.name, password, **options)
        del password
        d.addCallback(self._checked, job)
        d.addErrback(self._failed, job)
        d.addBoth(self._finished, job)

    def _checked(self, exposed: bool, job: _Job) -> Any:
        audit = self.server.audit
        audit.record(f"{job.protocol}.cleartext_password", client=job.client,
                     account=job.name, software=job.software, protocol=job.protocol,
                     outcome="real-password" if exposed else "not-the-password",
                     requests=job.requests if job.requests > 1 else None)
        if not exposed:
            return False
        action = self.server.config.exposed_password
        audit.record("account.password_exposed", client=job.client, account=job.name,
                     software=job.software, action=action, protocol=job.protocol)
        if action != "quarantine":
            return True
        moment = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        reason = (f"password sent unencrypted from {job.client} at "
                  f"{moment.strftime('%Y-%m-%d %H:%M:%S UTC')}")
        locked = self.server.run_in_thread(self.server.store.lock, job.name, reason)

        def quarantined(ignored: Any) -> bool:
            job.quarantined = reason
            audit.record("account.quarantined", client=job.client, account=job.name,
                         protocol=job.protocol, reason=reason)
            return True

        return locked.addCallback(quarantined)

    def _failed(self, failure: Failure, job: _Job) -> bool:
        _log.failure("checking an exposed password failed", failure)
        return False

    def _finished(self, exposed: bool, job: _Job) -> None:
        if self._by_key.get(job.key) is job:
            del self._by_key[job.key]
        jobs = self._by_account.get(job.name)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._by_account[job.name]
        count = self._running.get(job.client, 0) - 1
        if count > 0:
            self._running[job.client] = count
        else:
            self._running.pop(job.client, None)
        self._running_total -= 1
        self._offer(job.client)
        job.finish(bool(exposed))
        self._pump()


def exposure_thread_pool(reactor: Any, threads: int = EXPOSURE_THREADS) -> Any:
    """
    The exposure checks' own thread pool, started and stopped with C{reactor}.
    """
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=threads, name="rumpus-exposure")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool


def build_exposure_guard(server: Any, reactor: Any) -> ExposureGuard:
    """
    The server's exposure guard: its own thread pool and result memory.
    """
    from rumpus_secure.accounts.verifier_cache import VerifierCache

    return ExposureGuard(server, reactor, threadpool=exposure_thread_pool(reactor),
                         cache=VerifierCache(ttl=600.0, size=4096))
