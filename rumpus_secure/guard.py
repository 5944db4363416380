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

Use from a protocol (the FTP control connection does exactly this; the web
side calls the same methods with C{protocol="https"})::

    ban = guard.check(host, "ftp")          # None, or a Ban: refuse
    over = guard.connection_opened(host)     # None, or a LimitExceeded
    ...
    guard.connection_closed(host)            # only if connection_opened said None
    ban = guard.offence(host, "login_failed", protocol="ftp", account=name)
    d = guard.delayed(reply)                 # the reply after the failure delay
"""

from __future__ import annotations

import ipaddress
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

#: Seconds between reads of the stored bans (L{Guard.sync}): how soon a ban
#: lifted with C{rumpus-secure ban lift} lets the address in again.
SYNC_INTERVAL = 5.0


def normalise_address(host: str) -> str:
    """
    One text form per address: IPv4-mapped IPv6 becomes IPv4, zones go.
    """
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
    weights: Mapping[str, int] = field(default_factory=lambda: dict(WEIGHTS))

    @classmethod
    def from_config(cls, config: Any) -> GuardSettings:
        return cls(
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
        self._scores: dict[str, deque[tuple[float, int]]] = {}
        self._bans: dict[str, Ban] = {}
        self._quiet: dict[tuple[str, str], tuple[float, int]] = {}
        self._connections: dict[str, int] = {}
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
        try:
            address = ipaddress.ip_address(normalise_address(host))
        except ValueError:
            return False
        return any(address in network for network in self._safe)

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
        weight = self.settings.weights.get(kind, 0)
        if weight <= 0 or self.settings.threshold <= 0:
            return None
        address = normalise_address(host)
        if self.is_safe(address) or self.is_banned(address) is not None:
            return None
        now = self._clock.seconds()
        events = self._scores.pop(address, None) or deque()
        self._scores[address] = events  # most recent last: eviction order
        while events and events[0][0] <= now - self.settings.window:
            events.popleft()
        events.append((now, weight))
        score = sum(w for _, w in events)
        if score < self.settings.threshold:
            self._bound()
            return None
        del self._scores[address]
        return self._ban(address, kind, protocol, account, score, now)

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
                            if not ev or ev[-1][0] <= cutoff]:
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
        if settings.max_connections and self.total_connections >= settings.max_connections:
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


def iso_utc(moment: float) -> str:
    """
    C{moment} (a Unix time) as ISO 8601 UTC, to the second.
    """
    return (datetime.fromtimestamp(moment, timezone.utc)
            .isoformat(timespec="seconds").replace("+00:00", "Z"))
