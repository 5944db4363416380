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
takes a L{LoginWatch} before its own verification and, once that succeeded,
waits for the exposure checks of I{the same password} that were pending at
any moment in between (none queued after that); if one of them quarantined
the account, the login is refused as locked.  Each pending check carries an
HMAC-SHA256 of (account, password) under a random per-process key held only
in memory, and a login compares its own (C{hmac.compare_digest}).  Waiting
for every check of the account let anyone who knew a user name delay its
logins: 120 cleartext guesses from 30 addresses made alice's TLS login take
4.15 s instead of 0.01 s, a 15 s flood 32 s.  A flood of wrong passwords
now delays nobody; a real exposure still makes the same-password login
wait and obey.  Names are matched case-insensitively, as the account store
makes them unique (C{USER CAROL} exposes carol).  The protocols also answer
the cleartext request only after the check (HTTP ``403``, FTP ``530``), so a
client never learns "refused" while its password is still usable.

B{A ban does not suppress the check.}  Someone sharing the victim's address
can get it banned with five cleartext logins; a PASS then read on a
connection opened before the ban is still checked (new FTP connections of a
banned address are refused at the greeting, so the work stays bounded by
the per-address connection limit and the queue's cap).  Candidates that are
not checked at all (queue full; HTTP credentials of a banned address) are
remembered as HMACs for L{UNCHECKED_TTL} seconds (at most
L{UNCHECKED_PER_ACCOUNT} per account, L{UNCHECKED_MAX} in all): a later
successful login with one of them proves the password exposed, so it is
refused as locked and the account quarantined.

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
after five requests.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
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

#: Seconds a cleartext candidate that was not checked is remembered.
UNCHECKED_TTL = 86400.0

#: Candidates not checked remembered per account; the oldest go first.
UNCHECKED_PER_ACCOUNT = 64

#: Candidates not checked remembered in all (32-byte HMACs: about 3 MiB).
UNCHECKED_MAX = 16384


def account_key(name: str | bytes) -> str:
    """
    One key per account however its name was typed: names are unique
    case-insensitively, so ``CAROL`` is carol's account.
    """
    return normalise_text(name).casefold()


class _Job:
    """
    One pending check of one (account, password) pair.
    """

    def __init__(self, key: bytes, name: str, password: str | None, client: str,
                 protocol: str, software: str | None) -> None:
        self.key = key
        self.name = name  # the account key (see account_key)
        self.account = name  # the stored spelling, once the check has looked
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
    A login's view of the exposure checks of its own password.

    Take it (L{ExposureGuard.watch}) before verifying the password, and call
    L{outcome} once the verification succeeded, or L{close} otherwise.  It
    waits only for checks of the I{same} (account, password) pair, matched
    by HMAC: checks pending when the watch began, or queued before
    L{outcome} was called; never one queued later.
    """

    def __init__(self, guard: ExposureGuard, name: str, key: bytes | None,
                 login_name: str | None = None) -> None:
        self._guard = guard
        self.name = name
        self.key = key
        self.login_name = login_name or name  # as the login spelled it
        self.jobs: set[_Job] = {job for job in guard._by_account.get(name, ())
                                if self.matches(job)}

    def matches(self, job: _Job) -> bool:
        """
        Is C{job} a check of this login's password?
        """
        if self.key is None:
            return True  # no password given: every check of the account
        return hmac.compare_digest(job.key, self.key)

    async def outcome(self) -> str | None:
        """
        Wait for the checks of this login's password seen since the watch
        began (and no later one); then look whether the password is a
        cleartext candidate that could not be checked.

        @returns: the lock reason if the password was found exposed and the
            account quarantined, else L{None}.  Fires at once when no check
            was pending and no candidate matches.
        """
        try:
            jobs = set(self.jobs)
            self.close()  # frozen: a check queued from now on is not waited for
            for job in jobs:
                await job.wait()
            for job in jobs:
                if job.quarantined is not None:
                    return job.quarantined
            if self.key is not None:
                return await self._guard._unchecked_login(self.name, self.key,
                                                          self.login_name)
            return None
        finally:
            self.close()

    def settled(self) -> bool:
        """
        Would L{outcome} find nothing now: no check of this password seen,
        no unchecked cleartext candidate of the account?  Then it is closed
        here and its outcome is L{None}, without running it (a warm repeat
        login saves a coroutine and its Deferreds; issue #18).
        """
        if self.jobs or self._guard._unchecked_by_account.get(self.name):
            return False
        self.close()
        return True

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
        #: HMACs of cleartext candidates that were not checked: key ->
        #: (account key, expiry, client, protocol, software).
        self._unchecked: OrderedDict[bytes, tuple[str, float, str, str, str | None]] = (
            OrderedDict())
        self._unchecked_by_account: dict[str, deque[bytes]] = {}
        self.checks_run = 0

    # -- logins ----------------------------------------------------------------

    def watch(self, name: str | bytes, password: str | bytes | None = None) -> LoginWatch:
        """
        Start watching the exposure checks of C{password} for one login of
        account C{name}.

        Only the HMAC of the pair is kept.  Without a password the login
        waits for every check of the account pending now (the old rule;
        anyone who knows the name can make that wait long).
        """
        account = account_key(name)
        key = None if password is None else self._key(account, normalise_text(password))
        watch = LoginWatch(self, account, key, normalise_text(name))
        self._watches.setdefault(account, set()).add(watch)
        return watch

    def checking(self, name: str | bytes) -> bool:
        """
        Is an exposure check of account C{name} pending?
        """
        return bool(self._by_account.get(account_key(name)))

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
        name = account_key(user)
        key = self._key(name, normalise_text(password))
        job = self._by_key.get(key)
        if job is not None:
            job.requests += 1
            return job.wait()
        queue = self._queues.setdefault(client, deque())
        if len(queue) >= PER_ADDRESS_QUEUED or self._queued >= MAX_QUEUED:
            if not queue:
                del self._queues[client]
            self._remember_unchecked(event, name, key, client, protocol, software,
                                     "not-checked-too-many")
            return defer.succeed(False)
        job = _Job(key, name, password, client, protocol, software)
        self._by_key[key] = job
        self._by_account.setdefault(name, set()).add(job)
        for watch in self._watches.get(name, ()):
            if watch.matches(job):
                watch.jobs.add(job)
        queue.append(job)
        self._queued += 1
        d = job.wait()
        self.pending.add(d)
        d.addBoth(self._forget, d)
        self._offer(client)
        self._pump()
        return d

    def not_checked(self, *, protocol: str, client: str, user: str | None,
                    password: str, outcome: str, software: str | None = None,
                    record: bool = True) -> None:
        """
        Credentials seen in cleartext that will not be checked (C{outcome}
        says why, e.g. ``not-checked-banned``): audit (unless not
        C{record}: the caller already records quietly), and remember their
        HMAC so that a later login with them proves the exposure.
        """
        event = f"{protocol}.cleartext_password"
        if not user or not password:
            if record:
                self.server.audit.record(event, client=client, account=user,
                                         software=software, protocol=protocol,
                                         outcome=outcome)
            return
        name = account_key(user)
        self._remember_unchecked(event, name, self._key(name, normalise_text(password)),
                                 client, protocol, software, outcome if record else None)

    def _remember_unchecked(self, event: str, name: str, key: bytes, client: str,
                            protocol: str, software: str | None,
                            outcome: str | None) -> None:
        """
        Audit a candidate not checked (when C{outcome} is given) and keep
        its HMAC for L{UNCHECKED_TTL} seconds, at most
        L{UNCHECKED_PER_ACCOUNT} per account and L{UNCHECKED_MAX} in all
        (the oldest go).
        """
        if outcome is not None:
            self.server.audit.record(event, client=client, account=name,
                                     software=software, protocol=protocol,
                                     outcome=outcome)
        if key in self._unchecked:
            self._drop_unchecked(key)
        self._unchecked[key] = (name, self.reactor.seconds() + UNCHECKED_TTL, client,
                                protocol, software)
        keys = self._unchecked_by_account.setdefault(name, deque())
        keys.append(key)
        while len(keys) > UNCHECKED_PER_ACCOUNT:
            self._drop_unchecked(keys[0])
        while len(self._unchecked) > UNCHECKED_MAX:
            self._drop_unchecked(next(iter(self._unchecked)))

    def _drop_unchecked(self, key: bytes) -> None:
        entry = self._unchecked.pop(key, None)
        if entry is None:
            return
        keys = self._unchecked_by_account.get(entry[0])
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._unchecked_by_account[entry[0]]

    def _unchecked_login(self, name: str, key: bytes,
                         login_name: str) -> defer.Deferred[str | None]:
        """
        A login of account C{name} just succeeded with the password whose
        HMAC is C{key}: if that password was seen in cleartext and not
        checked, the login proves it real.  Contain it now.

        @returns: the lock reason if the account was quarantined, else
            L{None}.
        """
        found = None
        for candidate in self._unchecked_by_account.get(name, ()):
            if hmac.compare_digest(candidate, key):
                found = candidate
        if found is None:
            return defer.succeed(None)
        _, expires, client, protocol, software = self._unchecked[found]
        self._drop_unchecked(found)
        if expires <= self.reactor.seconds():
            return defer.succeed(None)
        audit = self.server.audit
        audit.record(f"{protocol}.cleartext_password", client=client, account=login_name,
                     software=software, protocol=protocol,
                     outcome="real-password-proven-by-login")
        return self._contain(login_name, client, protocol, software)

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
        # One C call (hmac.new(...).digest() is a few Python calls more).
        return hmac.digest(self._secret, message, "sha256")

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

        # Held only until the check takes it (a closure over the local name
        # would outlive a "del").
        held = [password]
        del password

        def check(account: str) -> Any:
            job.account = account
            password = held.pop()
            if app_password_ident(password) is not None:
                # Its own outcome and event (not "not-the-password"): the
                # admin must see that an app password was exposed.
                found = self.server.run_in_thread(
                    contain_app_password, self.server.store, account, password)

                def checked(ident: str | None) -> Any:
                    if ident is not None:
                        return ("app-password", ident)
                    return checker.check_password(account, password, **options)

                return found.addCallback(checked)
            return checker.check_password(account, password, **options)

        # The stored spelling of the name first: USER CAROL is carol.
        d = self.server.run_in_thread(stored_name, self.server.store, job.name)
        d.addCallback(check)
        d.addCallback(self._checked, job)
        d.addErrback(self._failed, job)
        d.addBoth(self._finished, job)

    def _checked(self, exposed: Any, job: _Job) -> Any:
        audit = self.server.audit
        if isinstance(exposed, tuple):
            _, ident = exposed
            audit.record(f"{job.protocol}.cleartext_password", client=job.client,
                         account=job.account, software=job.software,
                         protocol=job.protocol, outcome="app-password",
                         app_password=ident,
                         requests=job.requests if job.requests > 1 else None)
            audit.record("account.app_password_exposed", client=job.client,
                         account=job.account, app_password=ident, action="revoked",
                         software=job.software, protocol=job.protocol)
            return False  # the main password was not exposed: no quarantine
        audit.record(f"{job.protocol}.cleartext_password", client=job.client,
                     account=job.account, software=job.software, protocol=job.protocol,
                     outcome="real-password" if exposed else "not-the-password",
                     requests=job.requests if job.requests > 1 else None)
        if not exposed:
            return False

        def quarantined(reason: str | None) -> bool:
            job.quarantined = reason
            return True

        return self._contain(job.account, job.client, job.protocol,
                             job.software).addCallback(quarantined)

    def _contain(self, account: str, client: str, protocol: str,
                 software: str | None) -> defer.Deferred[str | None]:
        """
        The password of C{account} was exposed: record it, and quarantine
        the account unless C{--exposed-password alert}.

        @returns: the lock reason, or L{None} when only recorded.
        """
        audit = self.server.audit
        action = self.server.config.exposed_password
        audit.record("account.password_exposed", client=client, account=account,
                     software=software, action=action, protocol=protocol)
        if action != "quarantine":
            return defer.succeed(None)
        moment = datetime.fromtimestamp(self.reactor.seconds(), timezone.utc)
        reason = (f"password sent unencrypted from {client} at "
                  f"{moment.strftime('%Y-%m-%d %H:%M:%S UTC')}")
        locked = self.server.run_in_thread(self.server.store.lock, account, reason)

        def quarantined(ignored: Any) -> str:
            audit.record("account.quarantined", client=client, account=account,
                         protocol=protocol, reason=reason)
            return reason

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


def app_password_ident(password: str) -> str | None:
    from rumpus_secure.accounts.app_passwords import ident_of

    return ident_of(normalise_text(password))


def contain_app_password(store: Any, name: str, password: str) -> str | None:
    """
    In a thread: if C{password} (seen in cleartext) is one of C{name}'s app
    passwords, revoke it (they are for FTPS only; the revocation ends the
    FTP sessions that used it) and return its id; otherwise L{None}.
    """
    from rumpus_secure.accounts.hashing import verify_password

    password = normalise_text(password)
    ident = app_password_ident(password)
    reader = getattr(store, "app_password_hash", None)
    if ident is None or reader is None:
        return None
    stored = reader(name, ident)
    if stored is None or not verify_password(stored, password.strip().lower()):
        return None
    store.revoke_app_password(name, ident)
    _log.warn("app password {ident} of {account} was sent unencrypted: revoked",
              ident=ident, account=name)
    return ident


def stored_name(store: Any, name: str) -> str:
    """
    In a thread: how the account store spells account C{name}, found
    case-insensitively (names are unique that way), or C{name} itself when
    there is no such account (the check then costs the dummy hash as usual).
    """
    account = store.get(name)
    if account is not None:
        return str(account.name)
    listing = getattr(store, "list", None)
    for account in (listing() if listing is not None else ()):
        if account_key(account.name) == name:
            return str(account.name)
    return name


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
