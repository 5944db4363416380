"""
Audit trail: security events as structured records.

Every security-relevant event (a refused cleartext login, an exposed password,
a ban, a login) goes through an L{IAuditLog}.  The JSON-lines backend appends
one object per line to ``DATA-DIR/audit.log``; the memory backend keeps them in
a list for tests.  Fields are plain JSON values; a password never appears here
(callers never pass one, and L{_FORBIDDEN} keys are dropped defensively).

With several nodes (C{--node-id}), each record names its node (C{node}), and
C{--audit-log -} writes the same JSON lines to standard output instead of a
file, for journald and log shippers that collect every node's stream;
C{rumpus-secure audit} merges the files (or standard input) back into one
report (L{rumpus_secure.report}).

Observers (L{AuditObservers.add_observer}) see every cleaned record after it
is written: the transfer console line, the ``xferlog`` writer and the
Prometheus counters (L{rumpus_secure.metrics}) are built on the event stream
instead of on calls scattered through the protocols.  An observer that fails
is logged and never stops the record or the other observers.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import Interface, implementer

_log = Logger()

_FORBIDDEN = frozenset({"password", "pass", "passwd", "secret", "credentials"})


class IAuditLog(Interface):
    """
    Where security events go.
    """

    def record(event: str, **fields: Any) -> None:
        """
        Record one event.

        @param event: a short dotted name such as ``ftp.cleartext_user``.
        @param fields: JSON-serialisable details: ``client``, ``account``,
            ``protocol``, ``tls``, ``software``, ``outcome``, ...
        """


def _now_iso(clock: Callable[[], float] | None) -> str:
    if clock is None:
        moment = datetime.now(timezone.utc)
    else:
        moment = datetime.fromtimestamp(clock(), timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Field names seen and not forbidden (names are chosen by our code, not
#: by clients; bounded anyway).
_ALLOWED: set[str] = set()

#: One encoder for every line: json.dumps(..., sort_keys=True) builds a new
#: JSONEncoder per call.  Same output.
_ENCODER = json.JSONEncoder(sort_keys=True)


def _clean(event: str, fields: dict[str, Any], clock: Callable[[], float] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"time": _now_iso(clock), "event": event}
    for key, value in fields.items():
        if value is None:
            continue
        if key not in _ALLOWED:
            if key.lower() in _FORBIDDEN:
                continue
            if len(_ALLOWED) < 1024:
                _ALLOWED.add(key)
        if type(value) is str:
            pass
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif not isinstance(value, (str, int, float, bool, list, dict)):
            value = str(value)
        entry[key] = value
    return entry


AuditObserver = Callable[[dict[str, Any]], None]


class AuditObservers:
    """
    The observers of an audit log (a mixin of both backends).
    """

    _observers: tuple[AuditObserver, ...] = ()

    def add_observer(self, observer: AuditObserver) -> None:
        """
        Call C{observer} with each recorded entry (a dict with ``time``,
        ``event`` and the cleaned fields), on the recording thread.
        """
        self._observers = self._observers + (observer,)

    def _notify(self, entry: dict[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(entry)
            except Exception:  # noqa: BLE001 (an observer must not stop the audit)
                _log.failure("audit observer {observer!r} failed on {event}",
                             observer=observer, event=entry.get("event"))


@implementer(IAuditLog)
class MemoryAuditLog(AuditObservers):
    """
    Keeps events in memory; for tests.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._clock = clock

    def record(self, event: str, **fields: Any) -> None:
        entry = _clean(event, fields, self._clock)
        self.events.append(entry)
        self._notify(entry)

    def named(self, event: str) -> list[dict[str, Any]]:
        """
        The recorded events with this name.
        """
        return [e for e in self.events if e["event"] == event]


#: Seconds between checks that ``audit.log`` is still the file held open
#: (moved away by logrotate, or deleted: the next record starts a new one).
REOPEN_CHECK = 1.0


@implementer(IAuditLog)
class JSONLinesAuditLog(AuditObservers):
    """
    Appends one JSON object per line to a file, rotating it by size.

    Writes are small appends to a file opened in append mode, done under a
    lock so threads (the password checker) can record too.  When the file
    grows past C{max_bytes} it is renamed to ``audit.log.1`` (older ones
    shift up to C{keep}) and a new file is started.

    The file stays open between records: opening, checking and closing it
    for each one cost four system calls per record, eight per login
    (bench/logins.py).  At most every L{REOPEN_CHECK} seconds the path is
    looked at again, and when it names another file (logrotate moved it, or
    it was deleted) the next record goes to a new file; the records of that
    second are in the moved file, none is lost.  Other processes (the admin
    command) append with O_APPEND too, so every line stays whole.

    @param monotonic: the clock of the checks (C{time.monotonic}).
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 5,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        node: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._keep = keep
        self._clock = clock
        self._monotonic = monotonic
        self._node = node
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._closer: Callable[[], Any] = _nothing
        self._identity: tuple[int, int] | None = None
        self._size = 0
        self._checked = 0.0

    def record(self, event: str, **fields: Any) -> None:
        entry = _clean(event, fields, self._clock)
        if self._node is not None:
            entry.setdefault("node", self._node)
        self._write(event, entry)
        self._notify(entry)

    def _write(self, event: str, entry: dict[str, Any]) -> None:
        line = _ENCODER.encode(entry) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            try:
                fd = self._open_for(len(data))
                os.write(fd, data)
                self._size += len(data)
            except OSError as e:
                self._close()
                # The audit trail must never take the server down; say so loudly.
                _log.error(
                    "cannot write audit event {event} to {path}: {error}",
                    event=event, path=str(self.path), error=e.strerror,
                )

    def _open_for(self, incoming: int) -> int:
        """The descriptor to append C{incoming} bytes to (under the lock)."""
        now = self._monotonic()
        if self._fd is not None and now - self._checked >= REOPEN_CHECK:
            self._checked = now
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._close()
            else:
                if (st.st_dev, st.st_ino) != self._identity:
                    self._close()
                else:
                    self._size = st.st_size  # other processes append too
        if self._fd is not None and self._size + incoming > self._max_bytes:
            self._close()
        if self._fd is None:
            self._rotate_if_needed(incoming)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            # Closed with the log, if nobody closes it first.
            self._closer = weakref.finalize(self, _close_quietly, fd)
            st = os.fstat(fd)
            self._fd, self._identity, self._size = fd, (st.st_dev, st.st_ino), st.st_size
            self._checked = now
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            self._fd = None
            self._closer()

    def close(self) -> None:
        """Close the file (a later record opens it again)."""
        with self._lock:
            self._close()

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self._max_bytes:
            return
        for n in range(self._keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _nothing() -> None:
    pass


@implementer(IAuditLog)
class StreamAuditLog(JSONLinesAuditLog):
    """
    One JSON object per line on a file descriptor (standard output for
    C{--audit-log -}), never rotated: journald or the log shipper keeps it.

    Each line goes out in one C{write} under the lock, so lines from
    threads never interleave (a line is far below C{PIPE_BUF}, 4096 bytes,
    so a pipe never splits one either).  twistd replaces C{sys.stdout} by a
    logger in the foreground; the descriptor is written directly, so the
    lines stay bare JSON.
    """

    def __init__(self, fd: int = 1, clock: Callable[[], float] | None = None,
                 node: str | None = None) -> None:
        super().__init__(Path("-"), clock=clock, node=node)
        self.fd = fd

    def _write(self, event: str, entry: dict[str, Any]) -> None:
        data = (_ENCODER.encode(entry) + "\n").encode("utf-8")
        with self._lock:
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError as e:
                _log.error("cannot write audit event {event} to standard output: "
                           "{error}", event=event, error=e.strerror)


def open_audit_log(path: Path | None, data_dir: Path, node: str | None = None,
                   clock: Callable[[], float] | None = None) -> JSONLinesAuditLog:
    """
    The C{--audit-log}: a file (default C{DATA-DIR/audit.log}) or, for
    ``-``, standard output.
    """
    if path is not None and str(path) == "-":
        return StreamAuditLog(1, clock=clock, node=node)
    return JSONLinesAuditLog(path if path is not None else data_dir / "audit.log",
                             clock=clock, node=node)


def read_lines(lines: Any) -> list[dict[str, Any]]:
    """
    The events in an iterable of JSON lines (standard input); lines that are
    not a JSON object (another program's output in the same journal) are
    skipped.
    """
    events = []
    for line in lines:
        # Bare lines, or journalctl's "date host twistd[pid]: {...}".
        start = line.find("{")
        if start < 0:
            continue
        text = line[start:].strip()
        try:
            event = json.loads(text)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def read_events(path: Path) -> list[dict[str, Any]]:
    """
    Read every event from an audit log and its rotated files, oldest first.

    Lines that are not valid JSON (a torn write after a crash) are skipped.
    """
    path = Path(path)
    files = sorted(
        path.parent.glob(path.name + ".*"),
        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
        reverse=True,
    )
    files = [p for p in files if p.suffix[1:].isdigit()] + [path]
    events = []
    for p in files:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            continue
    return events
