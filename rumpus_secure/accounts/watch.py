"""
Account changes reach the sessions that are already open.

A login checks the account once; an FTP session then lives for hours.  If
the administrator locks the account (or the server quarantines it, or the
password is reset, or the account is deleted, or its permissions change),
the open sessions must hear of it, although the change was most likely made
by another process (the ``rumpus-secure user`` command) writing the same
SQLite file.

L{AccountWatcher} is that hearing, one per server.  It reads the store's
change log (L{rumpus_secure.accounts.store.ChangeReader}: one indexed query
on a kept-open connection in a thread of its own; a read takes 30
microseconds median, and an FTPS C{NOOP} round trip goes from about 60 to
125-165 microseconds, C{bench/account_watch.py}) and hands each change to the sessions registered for that account.
Nothing scans all sessions: the registry maps an account name to its
sessions.

It reads in two cases:

 - every L{POLL_INTERVAL} seconds (a C{TimerService} in the server), so an
   idle session hears of a change within a second or so;
 - on demand, through L{AccountWatcher.fresh}: a session calls it before
   each command and waits for a read that I{started after} the command
   arrived, so a command sent after ``user lock`` returned is refused, never
   executed.  Reads never overlap: every command that arrives while one
   read runs shares the next one, so a thousand busy sessions cost one
   query at a time, not a thousand.

A session registers with the C{seq} the watcher had read when its login
began (L{AccountWatcher.fresh} before the password check), and is told of
every later change of its account exactly once, in order, even one that was
read before it registered: the next read goes back to the oldest C{seq} a
new registration asks for.

B{Reading only after a write} (issue #18).  The read before each command
cost a thread hand-off (a waker write and GIL ping-pong between the two
threads) and a SQLite query with its fcntl locks, to learn, almost always,
that nothing changed.  With a L{IChangeSignal} (inotify on the SQLite
files, L{rumpus_secure.accounts.change_signal}) the watcher knows for one
non-blocking C{read()} system call whether anything was written since its
last read I{started}; if not, that read is as good as one started now, and
L{current} / L{fresh} answer at once with its C{seq}.  The rules that keep
the promise above exactly as it was:

 - events are drained before a read starts, and the read first waits out
   a commit in progress (C{ChangeReader.settle}), because the event of a
   commit comes with its first C{write()}, before readers can see it;
 - an event seen while a read runs (or a read that failed, or could not
   wait for the writer) leaves the watcher unable to vouch until a later
   read completes;
 - every change read is also told to the observers (the login snapshots,
   L{rumpus_secure.accounts.snapshots}), whatever its account.

What a command pays for it (C{bench/account_watch.py}, same busy 2-core
machine, one run each): C{fresh()} median 29.3 microseconds, p99 1.27 ms,
through the thread; 1.6 and 1.8 microseconds with the signal quiet.  An
idle session still hears of a change from the timer within a second
(median 992 ms either way).

Without a signal (PostgreSQL, a network filesystem, no inotify) every
command waits for a read, as before.

If the log lost rows that a session still needed (more than
L{rumpus_secure.accounts.store.CHANGES_KEPT} changes between two reads),
the session is told ``kind="unknown"`` and should end: its account's state
cannot be vouched for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from rumpus_secure.accounts.change_signal import file_change_signal
from rumpus_secure.accounts.store import AccountChange, ChangeBatch, SQLiteAccountStore

_log = Logger()

#: Seconds between reads of the change log while nothing asks for one.
POLL_INTERVAL = 1.0

#: Changes read at most at once; more are read by the next read, at once.
BATCH = 1000


class IChangeListener(Protocol):
    def account_changed(self, change: AccountChange) -> None:
        """
        A change of the account this listener watches, with C{seq} above any
        it was told before.
        """


class IChangeObserver(Protocol):
    """
    Something that keeps what it read of accounts and must forget it when
    they change (L{rumpus_secure.accounts.snapshots}).
    """

    def account_changed(self, name: str) -> None:
        """A change of account C{name} (of any kind) was read."""

    def everything_changed(self) -> None:
        """Changes may have been missed (the first read, a lost log)."""


class IChangeSignal(Protocol):
    """
    Whether the store may have been written since the last call
    (L{rumpus_secure.accounts.change_signal.FileChangeSignal}).
    """

    def changed(self) -> bool: ...
    def close(self) -> None: ...


def _settled(settle: Callable[[], None] | None, read: Callable[..., Any],
             *args: Any) -> tuple[Any, bool]:
    """
    In the watcher's thread: wait out a commit in progress, then C{read}.

    The second value says whether the wait worked; if it did not (a
    read-only database, a writer that held the lock for the whole busy
    timeout), the read may miss a commit whose event was drained, so the
    watcher keeps reading for every command until a read settles.
    """
    settled = settle is not None  # a reader that cannot wait vouches for nothing
    if settle is not None:
        try:
            settle()
        except Exception:
            _log.failure("could not wait for the account database's writer; "
                         "reading the change log for every command until it works")
            settled = False
    return read(*args), settled


class Watch:
    """
    One session's registration; L{cancel} it when the session ends.

    @ivar seen: the C{seq} of the last change this session was told of (or
        the C{seq} read when its login began).
    """

    def __init__(self, watcher: AccountWatcher, name: str,
                 listener: IChangeListener, seen: int) -> None:
        self.watcher = watcher
        self.name = name
        self.listener = listener
        self.seen = seen
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.watcher._forget(self)


class ChangeSource(Protocol):
    def latest(self) -> int: ...
    def since(self, seq: int, limit: int = ...) -> ChangeBatch: ...
    def close(self) -> None: ...


class AccountWatcher:
    """
    Reads the account change log and tells the sessions concerned.

    @param reader: the store's L{ChangeReader} (or a fake with the same
        methods); used from one thread at a time.
    @param run_in_thread: C{f(function, *args) -> Deferred}.  Reads never
        overlap, so a one-thread pool (L{watch_thread_pool}) is enough.
    @ivar seq: the newest C{seq} read, L{None} before the first read.
    @ivar reads: how many reads were made (for tests and benchmarks).
    """

    def __init__(self, reader: ChangeSource,
                 run_in_thread: Callable[..., defer.Deferred[Any]],
                 signal: IChangeSignal | None = None) -> None:
        self.reader = reader
        self._run = run_in_thread
        self.signal = signal
        self.seq: int | None = None
        self.reads = 0
        self._watches: dict[str, set[Watch]] = {}
        self._observers: list[IChangeObserver] = []
        self._reading = False
        # Came while the running read ran, with nothing written since it
        # started: served by it if it settled (else by the next read).
        self._joined: list[defer.Deferred[int]] = []
        self._settled = True
        self._next: list[defer.Deferred[int]] = []
        self._back_to: int | None = None
        self._stopped = False
        # A write may have happened that no completed read covers.
        self._dirty = True

    # -- registry ---------------------------------------------------------

    def watch(self, name: str, listener: IChangeListener, since: int) -> Watch:
        """
        Tell C{listener} of every change of account C{name} after C{since}.

        @param since: the value L{fresh} fired with before the login's
            password was checked.
        """
        entry = Watch(self, name, listener, since)
        self._watches.setdefault(name, set()).add(entry)
        if self.seq is not None and since < self.seq:
            # Changes were read between the login's start and now: go back.
            self._back_to = since if self._back_to is None else min(self._back_to, since)
            self._read()
        return entry

    def _forget(self, entry: Watch) -> None:
        entries = self._watches.get(entry.name)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self._watches[entry.name]

    def sessions(self, name: str) -> int:
        """How many sessions are registered for C{name}."""
        return len(self._watches.get(name, ()))

    # -- reading ----------------------------------------------------------

    def poll(self) -> defer.Deferred[int] | None:
        """
        Read the log now unless a read is running or the signal vouches
        for the last one (the timer's call).
        """
        if self._reading or self._stopped:
            return None
        return self.fresh()

    def observe(self, observer: IChangeObserver) -> None:
        """
        Tell C{observer} of every change read (of any account), and when
        what was known before may be out of date (L{IChangeObserver}).
        """
        self._observers.append(observer)

    def _quiet(self) -> bool:
        """
        Whether the signal vouches that nothing was written since the
        running or last read started (drains its events).
        """
        if self.signal is None:
            return False
        if self.signal.changed():
            self._dirty = True
        return not self._dirty

    def current(self) -> int | None:
        """
        The newest C{seq}, if it is as good as a read started now: no read
        is running or due and the signal says nothing was written since the
        last read started; else L{None} (then call L{fresh}).
        """
        if (self.seq is None or self._reading or self._next or self._stopped
                or self._back_to is not None):
            return None
        return self.seq if self._quiet() else None

    def fresh(self) -> defer.Deferred[int]:
        """
        Fire, with the newest C{seq}, after a read that started after this
        call, once every change it found has been handed out; or at once
        when L{current} vouches for the last read.

        Never fails: a read that fails is logged and the Deferred fires
        with the last C{seq} known (the timer retries).
        """
        seq = self.current()
        if seq is not None:
            return defer.succeed(seq)
        d: defer.Deferred[int] = defer.Deferred()
        if self._reading and self._quiet():
            # Nothing was written since the running read started: it will do.
            self._joined.append(d)
        else:
            self._next.append(d)
            self._read()
        return d

    def _read(self) -> None:
        if self._reading or self._stopped:
            return
        self._reading = True
        waiting, self._next = self._next, []
        self._settled = True
        since = self.seq
        if since is not None and self._back_to is not None:
            since, self._back_to = min(since, self._back_to), None
        self.reads += 1
        read: tuple[Any, ...] = ((self.reader.latest,) if since is None
                                 else (self.reader.since, since, BATCH))
        if self.signal is None:
            d = self._run(*read)
        else:
            # Events drained before the read starts are covered by it (the
            # read first waits out a commit in progress, settle()); any
            # later event marks it dirty again.
            self.signal.changed()
            self._dirty = False
            d = self._run(_settled, getattr(self.reader, "settle", None), *read)
            d.addCallback(self._unpack)
        if since is None:
            d.addCallback(self._started)
        else:
            d.addCallback(self._deliver, since)
        d.addErrback(self._failed)
        d.addBoth(self._done, waiting)

    def _unpack(self, result: tuple[Any, bool]) -> Any:
        value, settled = result
        if not settled:
            self._dirty = True
            self._settled = False
        return value

    def _started(self, latest: int) -> bool:
        self.seq = latest
        # Whatever was learnt before the first read may be out of date.
        self._tell_observers(None)
        return False

    def _tell_observers(self, name: str | None) -> None:
        for observer in self._observers:
            try:
                if name is None:
                    observer.everything_changed()
                else:
                    observer.account_changed(name)
            except Exception:
                _log.failure("an observer failed to handle an account change")

    def _deliver(self, batch: ChangeBatch, since: int) -> bool:
        if batch.oldest > since + 1:
            self._lost(batch.oldest - 1)
        for change in batch.changes:
            if self._observers:
                self._tell_observers(change.name)
            for entry in list(self._watches.get(change.name, ())):
                if entry.active and change.seq > entry.seen:
                    entry.seen = change.seq
                    self._tell(entry, change)
        if batch.changes:
            self.seq = max(self.seq or 0, batch.changes[-1].seq)
        return len(batch.changes) >= BATCH

    def _lost(self, before: int) -> None:
        """Changes up to C{before} are gone from the log: end who needed them."""
        _log.warn("account changes up to {seq} were dropped from the log before "
                  "they were read; ending the sessions they may concern", seq=before)
        self._tell_observers(None)
        for entries in list(self._watches.values()):
            for entry in list(entries):
                if entry.active and entry.seen < before:
                    entry.seen = before
                    self._tell(entry, AccountChange(before, entry.name, "unknown",
                                                    None, 0.0))

    def _tell(self, entry: Watch, change: AccountChange) -> None:
        try:
            entry.listener.account_changed(change)
        except Exception:
            _log.failure("a session failed to handle a change of account {account}",
                         account=change.name)

    def _failed(self, failure: Failure) -> bool:
        _log.failure("could not read the account change log", failure)
        self._dirty = True
        self._settled = False
        return False

    def _done(self, more: bool, waiting: list[defer.Deferred[int]]) -> None:
        self._reading = False
        joined, self._joined = self._joined, []
        if more or not self._settled:
            # The read may have missed a commit made before they came (it
            # could not wait for the writer): they wait for the next read.
            self._next = joined + self._next
        else:
            waiting = waiting + joined
        if more:
            # The log holds more than one batch: the waiters wait for the rest.
            self._next = waiting + self._next
            waiting = []
        seq = self.seq or 0
        for d in waiting:
            d.callback(seq)
        if (more or self._next or self._back_to is not None) and not self._stopped:
            self._read()

    def stop(self) -> None:
        """
        No more reads (the server stops); whoever waits is let go.
        """
        self._stopped = True
        waiting, self._next = self._next, []
        if self.signal is not None:
            self.signal.close()
        for d in waiting:
            d.callback(self.seq or 0)


def watch_thread_pool(reactor: IReactorCore) -> ThreadPool:
    """
    One thread for the watcher's reads, started and stopped with C{reactor}.

    Every FTP command waits for a read, so reads must not queue behind the
    shared pool's file work (ten threads that a few slow disks can fill).
    """
    pool = ThreadPool(minthreads=1, maxthreads=1, name="rumpus-account-watch")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool


def build_watcher(store: Any, reactor: Any) -> AccountWatcher:
    """
    The server's watcher on C{store}'s change log, with its own thread.
    """
    pool = watch_thread_pool(reactor)

    def run(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, pool, function, *args)

    signal = None
    path = getattr(store, "path", None)
    if isinstance(store, SQLiteAccountStore) and path is not None:
        signal = file_change_signal(path)
        if signal is not None:
            _log.info("account changes: file events on {path}; commands wait for a "
                      "read of the change log only after a write", path=str(path))
        else:
            _log.info("no file events for {path}: the account change log is read "
                      "before every command", path=str(path))
    watcher = AccountWatcher(store.change_reader(), run, signal)
    if signal is not None:
        reactor.addSystemEventTrigger("during", "shutdown", signal.close)
    return watcher


