"""
Unexpected errors in FTP command handlers: a short reply, and a log line that
cannot be turned into a flood.

Unauthenticated clients used to get C{451} plus a traceback logged at
critical level for inputs such as C{STOU /}: 200 lines of input made 100 KB
of log.  The causes are fixed; what remains unexpected is logged at error
level once per verb per L{ErrorReports} interval (60 s), with a count of
the ones skipped, a traceback only for logged-in sessions, and never the
command's argument (it may be a password).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

_log = Logger()


class ErrorReports:
    """
    Log unexpected errors in command handlers without letting clients flood.

    Why: before this, every such error was logged at critical level with a
    traceback (about 500 bytes a line of input): 200 lines sent by a client
    without an account gave 100 KB of log.  Now each verb is logged at most
    once per C{interval} seconds, at error level; the traceback only for
    logged-in sessions (a client with an account is accountable and rare); a
    count of what was left out comes with the next line.  The command's
    argument is never logged: it may be a password.
    """

    def __init__(self, clock: Any, interval: float = 60.0) -> None:
        self._clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        #: Every error reported, logged or not.
        self.count = 0

    def report(self, verb: str, failure: Failure, *, authenticated: bool) -> None:
        self.count += 1
        now = self._clock.seconds()
        last = self._last.get(verb)
        if last is not None and now - last < self.interval:
            self._suppressed[verb] = self._suppressed.get(verb, 0) + 1
            return
        if len(self._last) > 256:  # bounded: verbs are client-chosen
            self._last.clear()
        self._last[verb] = now
        skipped = self._suppressed.pop(verb, 0)
        if authenticated:
            _log.failure(
                "unexpected error in FTP command {verb} ({skipped} more not logged)",
                failure, level=LogLevel.error, verb=verb, skipped=skipped)
        else:
            _log.error(
                "unexpected error in FTP command {verb} before login: {error} "
                "({skipped} more not logged)",
                verb=verb, error=failure.type.__name__, skipped=skipped)
