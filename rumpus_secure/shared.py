"""
What one node does reaches the others: bans, lifts, web sessions, accounts.

With C{--database postgresql://...} several nodes share one database.  A
ban made on node A must refuse that address at the greeting on node B
within a second, a logout on B must end the session on A, a password
change must reach every node's open sessions.  Two paths carry the news:

 - C{LISTEN}/C{NOTIFY}: L{Notifications} keeps one connection of its own,
   in a thread of its own, listening on the channels of
   L{rumpus_secure.db}; a writer's C{NOTIFY} arrives when it commits
   (measured on loopback with psycopg 3: 20 of 20 arrived, median 2.5 ms,
   max 10 ms; from a ban saved on one node to another node's guard
   refusing the address, median 2.6 ms, max 36 ms over 50 rounds on a
   loaded two-core machine, C{bench/scale_db.py}).  A notification only says "read the log": the reader then
   reads what changed since the last C{seq} it saw.
 - the periodic read, kept as the fallback for a lost connection or a lost
   notification (every L{FALLBACK_INTERVAL} seconds): the same incremental
   read, one indexed query that usually finds nothing.

L{StateFeed} is that reader for bans and web sessions (the C{state_changes}
log); account changes already have their reader,
L{rumpus_secure.accounts.watch.AccountWatcher}, whose C{poll} a
notification simply calls.  A change names a key (an address, a session);
the feed then reads the row as it is now, so ten changes of one ban cost
one read, and a missing row means "lifted" or "logged out".

Reads never overlap: a notification that arrives while a read runs asks
for one more read after it.  A read that fails (the database is down) is
logged once per outage and retried by the next notification or timer; the
node goes on with what it knew.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from rumpus_secure.db import ACCOUNTS_CHANNEL, STATE_CHANNEL, Database, StoreUnavailable

_log = Logger()

#: Seconds between fallback reads of the state log.
FALLBACK_INTERVAL = 5.0

#: Seconds between attempts to listen again after the connection was lost.
RELISTEN_DELAY = 1.0

#: Changes read at most at once.
BATCH = 1000


class StateFeed:
    """
    Applies the bans and web sessions changed by any node.

    @param database: the shared database.
    @param guard: the node's L{rumpus_secure.guard.Guard} (C{adopt}/C{forget}).
    @param sessions: the node's web L{SessionStore} (C{adopt}/C{drop}), or
        L{None} without an HTTPS site.
    @param run_in_thread: C{f(function, *args) -> Deferred}.
    """

    def __init__(self, database: Database, guard: Any, sessions: Any,
                 run_in_thread: Callable[..., defer.Deferred[Any]]) -> None:
        from rumpus_secure.accounts.pg import PGBanStore, PGSessions

        self.database = database
        self.guard = guard
        self.sessions = sessions
        self._bans = PGBanStore(database)
        self._web = PGSessions(database)
        self._run = run_in_thread
        self.seq: int | None = None
        self.reads = 0
        self._reading = False
        self._again = False
        self._failing = False

    def start_from_now(self, since: float) -> None:
        """
        Blocking, before the reactor runs: note where the log is, then read
        the bans and sessions again, so that nothing written between the
        node's first load and this moment is missed (what comes later is
        read from the log).
        """
        self.seq, _, _ = self._read(None)
        for ban in self._bans.load(since - self.guard.settings.ban_max_time):
            self.guard.adopt(ban)
        if self.sessions is not None:
            for key, session in self._web.load(since - self.sessions.idle,
                                               since - self.sessions.absolute):
                self.sessions.adopt(key, session)

    def poll(self) -> defer.Deferred[None] | None:
        """
        Read the log now, or once more after the read that runs.
        """
        if self._reading:
            self._again = True
            return None
        self._reading = True
        self.reads += 1
        d = self._run(self._read, self.seq)
        d.addCallback(self._apply)
        d.addErrback(self._failed)
        d.addBoth(self._done)
        return d

    def _read(self, since: int | None
              ) -> tuple[int, list[tuple[str, str, float, Any]], bool]:
        """
        In a thread: the changes after C{since} and the rows as they are now.
        """
        with self.database.connection() as conn:
            if since is None:
                latest = conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM state_changes").fetchone()[0]
                return int(latest), [], False
            rows = conn.execute(
                "SELECT seq, topic, key, at FROM state_changes WHERE seq > %s "
                "ORDER BY seq LIMIT %s", (since, BATCH)).fetchall()
        if not rows:
            return since, [], False
        last: dict[tuple[str, str], float] = {}
        for _, topic, key, at in rows:
            last[(topic, key)] = float(at)
        bans = self._bans.get([k for t, k in last if t == "ban"])
        wanted = {bytes.fromhex(k): k for t, k in last if t == "session"}
        sessions = self._web.get(list(wanted)) if wanted else {}
        found: list[tuple[str, str, float, Any]] = []
        for (topic, key), at in last.items():
            if topic == "ban":
                found.append((topic, key, at, bans.get(key)))
            elif topic == "session":
                found.append((topic, key, at, sessions.get(bytes.fromhex(key))))
        return int(rows[-1][0]), found, len(rows) >= BATCH

    def _apply(self, result: tuple[int, list[tuple[str, str, float, Any]], bool]) -> None:
        seq, found, full = result
        if self._failing:
            self._failing = False
            _log.info("the shared database answers again")
        for topic, key, at, row in found:
            if topic == "ban":
                if row is None:
                    self.guard.forget(key, at)
                else:
                    self.guard.adopt(row)
            elif topic == "session" and self.sessions is not None:
                if row is None:
                    self.sessions.drop(bytes.fromhex(key))
                else:
                    self.sessions.adopt(bytes.fromhex(key), row)
        self._again = self._again or full
        self.seq = seq

    def _failed(self, failure: Failure) -> None:
        if not self._failing:
            self._failing = True
            _log.warn("cannot read the shared bans and sessions: {error}",
                      error=str(failure.value))

    def _done(self, ignored: Any) -> None:
        self._reading = False
        if self._again:
            self._again = False
            self.poll()


class Notifications:
    """
    One connection that C{LISTEN}s, in a daemon thread of its own, and
    hands each notification to the reactor thread.

    @param handlers: channel name to a callable run in the reactor thread
        (with no arguments); each is also called after every (re)connection,
        since notifications sent while nobody listened are lost.
    @param call_from_thread: the reactor's C{callFromThread}.
    """

    def __init__(self, url: str, handlers: dict[str, Callable[[], Any]],
                 call_from_thread: Callable[..., Any],
                 relisten_delay: float = RELISTEN_DELAY) -> None:
        self.url = url
        self.handlers = handlers
        self._call = call_from_thread
        self._delay = relisten_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rumpus-listen",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel()
            except Exception:  # noqa: BLE001 (closing anyway)
                pass

    def _run(self) -> None:
        import psycopg

        from rumpus_secure.db import CONNECT_TIMEOUT

        lost = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=int(CONNECT_TIMEOUT)) as conn:
                    self._conn = conn
                    for channel in self.handlers:
                        conn.execute(f'LISTEN "{channel}"')
                    self.connected.set()
                    if lost:
                        self._call(_log.info, "listening to the shared database again")
                    lost = False
                    for channel in self.handlers:
                        self._call(self._dispatch, channel)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._call(self._dispatch, note.channel)
            except Exception as e:  # noqa: BLE001 (any failure: listen again)
                self.connected.clear()
                self._conn = None
                if self._stop.is_set():
                    return
                if not lost:
                    lost = True
                    self._call(_log.warn, "lost the shared database's notifications "
                               "({error}); reading every few seconds until it is back",
                               error=str(e).strip() or type(e).__name__)
                self._stop.wait(self._delay)

    def _dispatch(self, channel: str) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            try:
                handler()
            except Exception:  # noqa: BLE001 (never stop listening)
                _log.failure("handling a notification on {channel}", channel=channel)


def install(top: Any, server: Any, reactor: Any) -> None:
    """
    Wire the feeds into the service tree of a node with a shared database.
    """
    from twisted.application import service
    from twisted.application.internet import TimerService

    sessions = None
    if server.https_site is not None:
        sessions = server.https_site.app.sessions
    feed = StateFeed(server.database, server.guard, sessions, server.run_in_db)
    server.state_feed = feed
    try:
        feed.start_from_now(reactor.seconds())
    except StoreUnavailable as e:
        raise SystemExit(f"rumpus-secure: error: {e}") from None
    # Connections go back to the database before the process ends.
    reactor.addSystemEventTrigger("after", "shutdown", server.database.close)
    fallback = TimerService(FALLBACK_INTERVAL, feed.poll)
    fallback.clock = reactor
    fallback.setServiceParent(top)
    handlers: dict[str, Callable[[], Any]] = {STATE_CHANNEL: feed.poll}
    if server.account_watcher is not None:
        # fresh(), not poll(): a notice that arrives during a read gets a
        # read of its own after it.
        handlers[ACCOUNTS_CHANNEL] = server.account_watcher.fresh
    notifications = Notifications(server.database.url, handlers, reactor.callFromThread)
    server.notifications = notifications

    class Listening(service.Service):
        name = "shared-database-notifications"

        def startService(self) -> None:
            super().startService()
            notifications.start()

        def stopService(self) -> None:
            super().stopService()
            notifications.stop()

    Listening().setServiceParent(top)
