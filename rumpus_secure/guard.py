"""
Abuse protection shared by FTP and web: scored offences, bans, limits.

One L{Guard} per server watches client addresses.  Offences (a failed
login, a login attempted before TLS, protocol garbage, a failed TLS
handshake) add their weight from L{WEIGHTS} to the address's score; scores
older than the window fall away.  When the score reaches the threshold the
address is banned for C{ban_time}; an address banned again within
C{ban_max_time} of its previous ban ending gets twice the previous ban time,
up to C{ban_max_time} (SFTPGo's defender and FileZilla Server's autobanner
work the same way).  Addresses in the safe list are never banned.

Bans are kept in an L{IBanStore} (the C{bans} table of the account
database), loaded once at start-up and written from a thread, so they
survive a restart.  The guard itself never blocks and never reads the wall
clock: time comes from the injected L{IReactorTime}.

The guard also counts connections per address and in total, and logged-in
sessions per account, and answers a failed login only after a short delay
that holds up nobody else.

B{Guesses in flight are guesses.}  A password check costs tens of
milliseconds in a thread; a guesser who sends a hundred at once must not get
a hundred verified before the first failure is scored.  So a login counts
as a failed attempt from the moment its verification I{starts}
(L{begin_login}): the score of an address is its offences plus its
verifications in flight.  A verification may start only while that total
stays within the threshold, and at most C{max_verifying_per_ip} (4) of an
address's verifications run at a time, FTP and web together; other logins
wait their turn (so one address cannot fill the verification pool either).
A success takes its count back; a failure keeps it, and the failure that
reaches the threshold bans the address and refuses everything still
waiting.  So however many guesses arrive together, at most C{threshold}
passwords from one address are verified per window, exactly as when they
come one by one.  When a verification succeeds the ban is looked at again
(L{LoginAttempt.succeeded}): a right password found after the address was
banned does not log in.

B{Fair turns at the verification pool.}  The pool is shared by every
address, and served first come first served it let 240 wrong passwords from
60 addresses (4 each, under the ban) hold up an honest login from another
address for 12 s.  So the guard starts no more verifications than the pool
has threads (C{max_verifying_total}, from the checker's C{slots}) and picks
the next itself (L{Guard._schedule}): per-address queues, the address with
the lowest score plus logins waiting first (fewer offences settled breaks a
tie), equals in turn.  A single login from an address with no offences goes
ahead of a flood; a flood spread one login per address is served in turn
with it, which is as fair as addresses allow.

B{The self-check is free.}  TLS handshake failures from a loopback address
are not offences: C{rumpus-secure check} runs on the server itself and fails
handshakes on purpose (old TLS versions, a wrong ALPN), and a failed
handshake carries no password guess.  Loopback is I{not} safe-listed as a
whole: behind a local proxy that does not pass the client address on (no
PROXY protocol), every client would appear as 127.0.0.1 and a safe list
would give them all unlimited guesses; here they get nothing but free
handshake failures.  The probe's cleartext C{USER rumpus-check-probe} is
free too (see L{rumpus_secure.ftp.control}); a password sent after it is
counted as usual.

Use from a protocol (the FTP control connection does exactly this; the web
side calls the same methods with C{protocol="https"})::

    ban = guard.check(host, "ftp")          # None, or a Ban: refuse
    over = guard.connection_opened(host)     # None, or a LimitExceeded
    ...
    guard.connection_closed(host)            # only if connection_opened said None
    attempt = await guard.begin_login(host, "ftp", name)   # a Ban: refuse
    ...verify...
    ban = attempt.succeeded()  # or attempt.failed(); a Ban: refuse anyway
    d = guard.delayed(reply)                 # the reply after the failure delay
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from rumpus_secure.accounts.bans import Ban, IBanStore
from rumpus_secure.serial import RunInThread, SerialCalls

_log = Logger()

#: What each offence adds to an address's score.
WEIGHTS: Mapping[str, int] = {
    "login_failed": 1,
    "cleartext_login": 3,
    "protocol_garbage": 5,
    "tls_failed": 1,
}

#: Audit events of the FTP control connection that are offences.
FTP_OFFENCES: Mapping[str, str] = {
    "ftp.cleartext_user": "cleartext_login",
    "ftp.cross_protocol": "protocol_garbage",
    "ftp.auth_injection": "protocol_garbage",
    "ftp.protocol_garbage": "protocol_garbage",
    "ftp.tls_failed": "tls_failed",
}

#: Addresses whose scores we remember at most; beyond this the oldest go.
MAX_TRACKED = 100_000

#: Seconds between two audit records of the same refusal for one address.
AUDIT_QUIET = 60.0

#: Doubling stops here whatever C{ban_max_time} says (2**20 x ban time).
MAX_LEVEL = 20

#: Password verifications that may run at once for one address (FTP and
#: web together); more wait.  Four covers a client that opens several
#: connections with the same credentials at once (FileZilla opens up to
#: three), and a quarter of the default verification pool.
MAX_VERIFYING_PER_IP = 4

#: Offences that a loopback address never scores: the self-check's
#: deliberate handshake failures (see the module docstring).
LOOPBACK_FREE = frozenset({"tls_failed"})

#: Seconds a connection that has not logged in keeps its slot against a
#: newcomer when the server is full (see Guard.not_logged_in).
EVICT_MIN_AGE = 2.0

#: Seconds between reads of the stored bans (L{Guard.sync}): how soon a ban
#: lifted with C{rumpus-secure ban lift} lets the address in again.
SYNC_INTERVAL = 5.0


def normalise_address(host: str) -> str:
    """
    One text form per address: IPv4-mapped IPv6 becomes IPv4, zones go.

    Remembered: a login asks about a dozen times, and parsing the address
    was a tenth of a repeat login's CPU (bench/logins.py).
    """
    return _normalise_address(str(host))


@functools.lru_cache(maxsize=4096)
def _normalise_address(host: str) -> str:
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(frozen=True)
class GuardSettings:
    """
    The guard's knobs; L{from_config} reads them from L{ServerConfig}.

    A threshold of 0 turns banning off; a limit of 0 means no limit.
    """

    threshold: int = 15
    window: float = 600.0
    ban_time: float = 900.0
    ban_max_time: float = 86400.0
    safe_list: tuple[str, ...] = ()
    login_failure_delay: float = 1.0
    max_connections: int = 500
    max_connections_per_ip: int = 20
    max_sessions_per_account: int = 10
    max_verifying_per_ip: int = MAX_VERIFYING_PER_IP
    weights: Mapping[str, int] = field(default_factory=lambda: dict(WEIGHTS))
    #: Verifications running at once in all: the size of the verification
    #: pool, so that the guard, not the pool's FIFO queue, picks the order
    #: (see L{Guard._schedule}); 0: no limit (the pool queues FIFO).
    max_verifying_total: int = 0

    @classmethod
    def from_config(cls, config: Any, verify_slots: int = 0) -> GuardSettings:
        return cls(
            max_verifying_total=verify_slots,
            threshold=config.ban_threshold,
            window=config.ban_window,
            ban_time=config.ban_time,
            ban_max_time=max(config.ban_max_time, config.ban_time),
            safe_list=tuple(config.safe_list),
            login_failure_delay=config.login_failure_delay,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            max_sessions_per_account=config.max_sessions_per_account,
        )


@dataclass
class _Mark:
    """
    One offence in an address's score: C{pending} while it is a login whose
    password is being verified; a refunded login weighs 0.
    """

    time: float
    weight: int
    pending: bool = False


@dataclass(frozen=True)
class LimitExceeded:
    """
    Why a connection is refused: C{scope} is ``address`` or ``total``.
    """

    scope: str
    limit: int


class Guard:
    """
    Per-address offence scores, bans, and connection and session limits.

    @param settings: thresholds, times and limits.
    @param clock: the reactor (or a L{twisted.internet.task.Clock}).
    @param store: where bans persist; L{None} keeps them in memory only.
    @param audit: an L{IAuditLog} for C{guard.*} events, or L{None}.
    @param run_in_thread: C{f(function, *args) -> Deferred} for store
        writes; L{None} runs them inline (tests, tools).
    """

    def __init__(
        self,
        settings: GuardSettings,
        clock: IReactorTime,
        store: IBanStore | None = None,
        audit: Any = None,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._store = store
        self._audit = audit
        self._serial = SerialCalls(run_in_thread, "store a ban")
        self._safe = tuple(ipaddress.ip_network(n, strict=False) for n in settings.safe_list)
        self._safe_known: dict[str, bool] = {}  # is_safe, by address
        self._scores: dict[str, deque[_Mark]] = {}
        self._verifying: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[LoginAttempt, defer.Deferred[Any]]]] = {}
        #: When each address with logins waiting last had (or asked for) a
        #: turn: the round-robin order among equals.
        self._turn: dict[str, int] = {}
        self._turns = itertools.count()
        self.verifying_total = 0
        self._bans: dict[str, Ban] = {}
        self._quiet: dict[tuple[str, str], tuple[float, int]] = {}
        self._connections: dict[str, int] = {}
        #: Connections not logged in yet, oldest first (see L{not_logged_in}).
        #: Not C{_not_logged_in}: that name is the queue of logins waiting
        #: to be verified (by address), and sharing it broke eviction.
        self._evictable: dict[object, tuple[float, Callable[[], None]]] = {}
        self.total_connections = 0
        self._sessions: dict[str, int] = {}

    # -- persistence --------------------------------------------------

    def load(self) -> int:
        """
        Read the stored bans; call once, before the reactor runs (it blocks).

        @returns: how many are still active.
        """
        if self._store is None:
            return 0
        now = self._clock.seconds()
        for ban in self._store.load(now - self.settings.ban_max_time):
            self._bans[ban.address] = ban
        return sum(1 for b in self._bans.values() if b.active(now))

    def _write(self, function: Callable[..., Any], *args: Any) -> None:
        # One write at a time, in order, so a later state never loses to an
        # earlier one in the thread pool.
        self._serial.call(function, *args)

    def sync(self) -> defer.Deferred[None]:
        """
        Take in the bans the admin command lifted (C{rumpus-secure ban lift}
        deletes the stored row): called every L{SYNC_INTERVAL} seconds.

        The read is queued behind the writes already issued, so a ban this
        server has just made is in the store before it is read; a ban made
        while the read runs is newer than the read and kept.  Never fails
        (a L{LoopingCall} would stop): errors are logged.
        """
        if self._store is None:
            return defer.succeed(None)
        store = self._store
        since = self._clock.seconds() - self.settings.ban_max_time
        # The bans already made, whose writes are queued before the read;
        # one made (or remade) while the read runs is a different object.
        known = dict(self._bans)

        def apply(stored: list[Ban] | None) -> None:
            if stored is None:
                return  # the read failed (logged): keep everything
            present = {ban.address for ban in stored}
            now = self._clock.seconds()
            for address, ban in list(self._bans.items()):
                if address in present or known.get(address) is not ban:
                    continue
                del self._bans[address]
                self._scores.pop(address, None)
                if ban.active(now):
                    _log.info("ban on {client} lifted by the administrator", client=address)
                    if self._audit is not None:
                        self._audit.record("guard.lifted", client=address, by="admin")

        def failed(failure: Failure) -> None:
            _log.failure("could not apply the stored bans", failure)

        reading = self._serial.call(store.load, since, what="read the stored bans")
        return reading.addCallback(apply).addErrback(failed)

    def flushed(self) -> defer.Deferred[None]:
        """
        Fire when the writes issued so far are done.
        """
        return self._serial.flushed()

    # -- bans -----------------------------------------------------------

    def is_safe(self, host: str) -> bool:
        host = normalise_address(host)
        known = self._safe_known.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self._safe)
            if len(self._safe_known) >= MAX_TRACKED:
                self._safe_known.clear()
            self._safe_known[host] = known
        return known

    def is_banned(self, host: str) -> Ban | None:
        """
        The address's active ban, or L{None}.  Records nothing.
        """
        ban = self._bans.get(normalise_address(host))
        if ban is None or not ban.active(self._clock.seconds()):
            return None
        if self.is_safe(ban.address):
            return None
        return ban

    def check(self, host: str, protocol: str) -> Ban | None:
        """
        L{is_banned}, and audit the refusal (C{guard.refused}) when banned.
        """
        ban = self.is_banned(host)
        if ban is not None:
            self._record_quietly(
                "guard.refused", ban.address, protocol=protocol,
                minutes_left=ban.minutes_left(self._clock.seconds()),
            )
        return ban

    def message(self, ban: Ban) -> str:
        """
        What to tell a banned client, without a protocol's reply code.
        """
        minutes = ban.minutes_left(self._clock.seconds())
        unit = "minute" if minutes == 1 else "minutes"
        return (f"Too many failed attempts from your address; try again in "
                f"{minutes} {unit}.")

    def offence(
        self, host: str, kind: str, *, protocol: str, account: str | None = None
    ) -> Ban | None:
        """
        Add offence C{kind} (a key of L{WEIGHTS}) to the address's score.

        @returns: the new ban if this offence caused one, else L{None}.
        """
        address = normalise_address(host)
        weight = self._weight(address, kind)
        if weight <= 0 or self.is_banned(address) is not None:
            return None
        self._events(address).append(_Mark(self._clock.seconds(), weight))
        return self._ban_if_over(address, kind, protocol, account)

    def _weight(self, address: str, kind: str) -> int:
        """
        What offence C{kind} from C{address} weighs: 0 when it is not scored.
        """
        weight = self.settings.weights.get(kind, 0)
        if weight <= 0 or self.settings.threshold <= 0 or self.is_safe(address):
            return 0
        if kind in LOOPBACK_FREE and _is_loopback(address):
            return 0
        return weight

    def _events(self, address: str) -> deque[_Mark]:
        """
        The address's marks within the window (and those still pending),
        moved to the end of the eviction order.
        """
        cutoff = self._clock.seconds() - self.settings.window
        events = self._scores.pop(address, None) or deque()
        if events and events[0].time <= cutoff:
            events = deque(m for m in events if m.pending or m.time > cutoff)
        self._scores[address] = events  # most recent last: eviction order
        return events

    def _forget(self, address: str, mark: _Mark) -> None:
        """
        Drop a refunded mark: it weighs nothing, and an address that logs
        in all day would otherwise make every login sum thousands of them.
        """
        events = self._scores.get(address)
        if events:
            for index in range(len(events) - 1, -1, -1):  # recent marks last
                if events[index] is mark:
                    del events[index]
                    return

    def _ban_if_over(self, address: str, reason: str, protocol: str,
                     account: str | None) -> Ban | None:
        """
        Ban C{address} if its settled offences reach the threshold.
        """
        events = self._events(address)
        score = sum(m.weight for m in events if not m.pending)
        if score < self.settings.threshold:
            self._bound()
            return None
        del self._scores[address]
        return self._ban(address, reason, protocol, account, score,
                         self._clock.seconds())

    # -- logins: guesses in flight ------------------------------------------

    def begin_login(
        self, host: str, protocol: str, account: str | None = None
    ) -> defer.Deferred[LoginAttempt | Ban]:
        """
        Wait until a login's password may be verified, and count it then.

        Fires with a L{LoginAttempt} when the password may be verified (call
        exactly one of its C{succeeded}, C{failed} or C{abandoned} when the
        verification ends), or with the L{Ban} that refuses it: the
        address's ban, or one made while it waited.
        """
        address = normalise_address(host)
        ban = self.check(address, protocol)
        if ban is not None:
            return defer.succeed(ban)
        attempt = LoginAttempt(self, address, protocol, account)
        queue = self._waiting.get(address)
        if not queue and self._may_start(address) and self._room():
            self._start(attempt)
            return defer.succeed(attempt)
        waiting: defer.Deferred[LoginAttempt | Ban] = defer.Deferred()
        self._waiting.setdefault(address, deque()).append((attempt, waiting))
        self._turn.setdefault(address, next(self._turns))
        return waiting

    def verifying(self, host: str) -> int:
        """
        How many of the address's password verifications are running.
        """
        return self._verifying.get(normalise_address(host), 0)

    def waiting(self, host: str) -> int:
        """
        How many of the address's logins wait to be verified.
        """
        return len(self._waiting.get(normalise_address(host), ()))

    def _may_start(self, address: str) -> bool:
        """
        May one more of the address's passwords be verified now?
        """
        if self.is_safe(address):
            return True
        limit = self.settings.max_verifying_per_ip
        if limit and self._verifying.get(address, 0) >= limit:
            return False
        weight = self._weight(address, "login_failed")
        if weight <= 0:
            return True
        score = sum(m.weight for m in self._events(address))
        return score + weight <= self.settings.threshold

    def _room(self) -> bool:
        """
        Is a verification slot free (see C{max_verifying_total})?
        """
        limit = self.settings.max_verifying_total
        return not limit or self.verifying_total < limit

    def _start(self, attempt: LoginAttempt) -> None:
        address = attempt.address
        self.verifying_total += 1
        self._verifying[address] = self._verifying.get(address, 0) + 1
        weight = self._weight(address, "login_failed")
        if weight > 0:
            attempt._mark = _Mark(self._clock.seconds(), weight, pending=True)
            self._events(address).append(attempt._mark)
            self._bound()

    def _ended(self, attempt: LoginAttempt, failed: bool) -> Ban | None:
        """
        A verification ended: settle or refund its mark, free its slot,
        ban if a failure reached the threshold, start the next ones waiting.
        """
        address = attempt.address
        self.verifying_total = max(0, self.verifying_total - 1)
        count = self._verifying.get(address, 0) - 1
        if count > 0:
            self._verifying[address] = count
        else:
            self._verifying.pop(address, None)
        mark = attempt._mark
        ban = None
        if mark is not None:
            mark.pending = False
            if not failed:
                mark.weight = 0
                self._forget(address, mark)
            elif self.is_banned(address) is None:
                ban = self._ban_if_over(address, "login_failed", attempt.protocol,
                                        attempt.account)
        self._schedule()
        return ban

    def _schedule(self) -> None:
        """
        Start waiting logins while there is room, the fairest first.

        The verification pool is shared by everyone, and served first come
        first served it let one guesser's 240 logins from 60 addresses hold
        up an honest login for 12 s.  So the guard starts no more than the
        pool has threads (C{max_verifying_total}) and picks the next login
        itself: from the address with the lowest L{_priority} (its offences,
        its verifications in flight and its logins waiting: an address
        that has been failing, or sends many logins at once, comes after
        one that sends a single login), equals in turn (round robin).
        """
        started = []
        while self._waiting and self._room():
            best: tuple[tuple[int, int, int], str] | None = None
            for address in list(self._waiting):
                ban = self.is_banned(address)
                if ban is not None:
                    self._refuse_waiting(address, ban)
                    continue
                if not self._may_start(address):
                    continue
                key = (*self._priority(address), self._turn.get(address, 0))
                if best is None or key < best[0]:
                    best = (key, address)
            if best is None:
                break
            address = best[1]
            queue = self._waiting[address]
            attempt, waiting = queue.popleft()
            if queue:
                self._turn[address] = next(self._turns)  # to the back
            else:
                del self._waiting[address]
                self._turn.pop(address, None)
            self._start(attempt)
            started.append((attempt, waiting))
        for attempt, waiting in started:
            waiting.callback(attempt)

    def _priority(self, address: str) -> tuple[int, int]:
        """
        Lower goes first: the address's score (offences and verifications
        in flight, see L{_may_start}) plus its logins waiting; among equals,
        the one with fewer offences settled.
        """
        if self.is_safe(address):
            return (0, 0)
        waiting = len(self._waiting.get(address, ()))
        events = self._events(address)
        settled = sum(m.weight for m in events if not m.pending)
        pending = sum(m.weight for m in events if m.pending)
        return (settled + pending + waiting, settled)

    def _refuse_waiting(self, address: str, ban: Ban) -> None:
        """
        The address was banned: every login still waiting is refused.
        """
        self._turn.pop(address, None)
        for _, waiting in self._waiting.pop(address, ()):
            waiting.callback(ban)

    def _ban(self, address: str, reason: str, protocol: str,
             account: str | None, score: int, now: float) -> Ban:
        previous = self._bans.get(address)
        level = 0
        if previous is not None and previous.until + self.settings.ban_max_time > now:
            level = min(previous.level + 1, MAX_LEVEL)
        duration = min(self.settings.ban_time * 2 ** level, self.settings.ban_max_time)
        ban = Ban(address=address, until=now + duration, level=level,
                  reason=reason, created=now)
        self._bans[address] = ban
        self._refuse_waiting(address, ban)
        if self._store is not None:
            self._write(self._store.save, ban)
        _log.warn(
            "banned {client} for {seconds:.0f} s (level {ban_level}): {reason}",
            client=address, seconds=duration, ban_level=level, reason=reason,
        )
        if self._audit is not None:
            self._audit.record(
                "guard.ban", client=address, protocol=protocol, account=account,
                reason=reason, score=score, level=level, seconds=int(duration),
                until=iso_utc(ban.until),
            )
        return ban

    def lift(self, host: str) -> bool:
        """
        End the address's ban now and forget its history.
        """
        address = normalise_address(host)
        self._scores.pop(address, None)
        ban = self._bans.pop(address, None)
        if ban is None:
            return False
        if self._store is not None:
            self._write(self._store.delete, address)
        if self._audit is not None:
            self._audit.record("guard.lifted", client=address)
        return True

    def adopt(self, ban: Ban) -> None:
        """
        Take in a ban that another node made or changed (the shared
        database's feed, L{rumpus_secure.shared}); nothing is written back.

        A ban this node made later than C{ban} is kept.
        """
        address = normalise_address(ban.address)
        mine = self._bans.get(address)
        if mine is not None and mine.created > ban.created:
            return
        new = mine is None or not mine.active(self._clock.seconds())
        self._bans[address] = ban
        self._scores.pop(address, None)
        if new and ban.active(self._clock.seconds()):
            _log.info("{client} banned on another node until {until}",
                      client=address, until=iso_utc(ban.until))

    def forget(self, address: str, at: float) -> bool:
        """
        Drop a ban that was lifted elsewhere at C{at} (another node, the
        admin command); a ban this node made after C{at} is kept.
        """
        address = normalise_address(address)
        ban = self._bans.get(address)
        if ban is None or ban.created > at:
            return False
        del self._bans[address]
        self._scores.pop(address, None)
        if ban.active(self._clock.seconds()):
            _log.info("ban on {client} lifted elsewhere", client=address)
        return True

    def bans(self) -> list[Ban]:
        """
        The active bans, soonest to end first.
        """
        now = self._clock.seconds()
        return sorted((b for b in self._bans.values() if b.active(now)),
                      key=lambda b: b.until)

    def _bound(self) -> None:
        """
        Keep memory bounded: drop stale scores and old bans when large.
        """
        if len(self._scores) > MAX_TRACKED:
            cutoff = self._clock.seconds() - self.settings.window
            for address in [a for a, ev in self._scores.items()
                            if not ev or ev[-1].time <= cutoff]:
                del self._scores[address]
            while len(self._scores) > MAX_TRACKED:
                del self._scores[next(iter(self._scores))]
        if len(self._bans) > MAX_TRACKED:
            cutoff = self._clock.seconds() - self.settings.ban_max_time
            for address in [a for a, b in self._bans.items() if b.until <= cutoff]:
                del self._bans[address]
            if self._store is not None:
                self._write(self._store.prune, cutoff)
        if len(self._quiet) > MAX_TRACKED:
            self._quiet.clear()

    def _record_quietly(self, event: str, address: str, **fields: Any) -> None:
        """
        Audit C{event} at most once per L{AUDIT_QUIET} seconds per address.
        """
        if self._audit is None:
            return
        now = self._clock.seconds()
        last, suppressed = self._quiet.get((event, address), (None, 0))
        if last is not None and now - last < AUDIT_QUIET:
            self._quiet[(event, address)] = (last, suppressed + 1)
            return
        self._quiet[(event, address)] = (now, 0)
        self._audit.record(event, client=address, suppressed=suppressed or None,
                           **fields)

    # -- the failure delay -----------------------------------------------

    def delayed(self, value: Any) -> defer.Deferred[Any]:
        """
        A Deferred firing with C{value} after the login failure delay.
        """
        delay = self.settings.login_failure_delay
        if delay <= 0:
            return defer.succeed(value)
        return deferLater(self._clock, delay, lambda: value)

    # -- connection and session limits ------------------------------------

    def connection_opened(self, host: str, protocol: str = "ftp") -> LimitExceeded | None:
        """
        Count a new connection, or say which limit it would break.

        Call L{connection_closed} later only when this returned L{None}.
        Safe-listed addresses are exempt from the per-address limit.
        """
        address = normalise_address(host)
        settings = self.settings
        over = None
        if (settings.max_connections and self.total_connections >= settings.max_connections
                and not self._evict_one_not_logged_in()):
            over = LimitExceeded("total", settings.max_connections)
        elif (settings.max_connections_per_ip
              and self._connections.get(address, 0) >= settings.max_connections_per_ip
              and not self.is_safe(address)):
            over = LimitExceeded("address", settings.max_connections_per_ip)
        if over is not None:
            self._record_quietly("guard.limit", address, protocol=protocol,
                                 scope=over.scope, limit=over.limit)
            return over
        self._connections[address] = self._connections.get(address, 0) + 1
        self.total_connections += 1
        return None

    # -- connections that have not logged in ---------------------------------
    #
    # A connection that only read the greeting holds a slot of
    # --max-connections until its login timeout: 520 such connections from
    # 26 addresses (under the per-address limit) locked every client out of
    # FTP and HTTPS.  When the server is full, the oldest of them that has
    # waited at least EVICT_MIN_AGE seconds gives its slot to the newcomer
    # (a burst of new clients does not push each other out).

    def not_logged_in(self, key: object, opened: float, evict: Callable[[], None]) -> None:
        """
        Note a counted connection that has not logged in yet.

        :param opened: when it was opened (the guard's clock).
        :param evict: ends it at once and releases its slot (by calling
            L{connection_closed}); called at most once.
        """
        self._evictable[key] = (opened, evict)

    def logged_in_or_gone(self, key: object) -> None:
        """
        The connection logged in or went away: it can no longer be evicted.
        """
        self._evictable.pop(key, None)

    def _evict_one_not_logged_in(self) -> bool:
        if not self._evictable:
            return False
        key, (opened, evict) = next(iter(self._evictable.items()))
        if self._clock.seconds() - opened < EVICT_MIN_AGE:
            return False
        del self._evictable[key]
        evict()
        return True

    def connection_closed(self, host: str) -> None:
        address = normalise_address(host)
        count = self._connections.get(address, 0)
        if count <= 1:
            self._connections.pop(address, None)
        else:
            self._connections[address] = count - 1
        self.total_connections = max(0, self.total_connections - 1)

    def connections(self, host: str) -> int:
        return self._connections.get(normalise_address(host), 0)

    def session_started(self, account: str) -> bool:
        """
        Count a logged-in session of C{account}; False if over the limit.

        Call L{session_ended} later only when this returned True.
        """
        limit = self.settings.max_sessions_per_account
        count = self._sessions.get(account, 0)
        if limit and count >= limit:
            return False
        self._sessions[account] = count + 1
        return True

    def session_ended(self, account: str) -> None:
        count = self._sessions.get(account, 0)
        if count <= 1:
            self._sessions.pop(account, None)
        else:
            self._sessions[account] = count - 1

    def sessions(self, account: str) -> int:
        return self._sessions.get(account, 0)


class LoginAttempt:
    """
    One login whose password is being verified; see L{Guard.begin_login}.

    It counts as a failed attempt until it ends; exactly one of
    L{succeeded}, L{failed} or L{abandoned} ends it and frees its
    verification slot (later calls do nothing).
    """

    def __init__(self, guard: Guard, address: str, protocol: str,
                 account: str | None) -> None:
        self._guard = guard
        self.address = address
        self.protocol = protocol
        self.account = account
        self._mark: _Mark | None = None
        self._ended = False

    def _end(self, failed: bool) -> Ban | None:
        if self._ended:
            return None
        self._ended = True
        return self._guard._ended(self, failed)

    def succeeded(self) -> Ban | None:
        """
        The password was right: take back the failure it counted as.

        @returns: the address's ban if it was banned meanwhile (by another
            guess in flight): then the login must be refused all the same.
        """
        self._end(failed=False)
        return self._guard.check(self.address, self.protocol)

    def failed(self) -> Ban | None:
        """
        The password was wrong: the failure stands.

        @returns: the address's ban, if any (perhaps caused by this failure).
        """
        self._end(failed=True)
        return self._guard.is_banned(self.address)

    def abandoned(self) -> None:
        """
        The password was never verified (the client left while the login
        waited): it counts for nothing.
        """
        self._end(failed=False)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def iso_utc(moment: float) -> str:
    """
    C{moment} (a Unix time) as ISO 8601 UTC, to the second.
    """
    return (datetime.fromtimestamp(moment, timezone.utc)
            .isoformat(timespec="seconds").replace("+00:00", "Z"))
