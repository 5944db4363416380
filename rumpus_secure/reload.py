"""
Certificate reload without a restart.

L{ReloadService} re-reads the certificate and key when the files change
(checked every C{--cert-check-interval} seconds on the injected clock) and at
once on ``SIGHUP``.  New connections get the new certificate; connections
already open keep theirs, because L{TLSContextSource.reload} builds new
contexts instead of changing the ones in use.  A broken new pair (key not
matching, expired, not PEM) is refused: the old certificate stays in service,
and the reason goes to the log and to the audit trail as ``tls.reload`` with
``outcome`` ``failed``.

The same periodic check warns once a day (the first time a day after
start-up, which warns on its own) while the certificate expires within 30
days, so a long-running server does not go quietly from "valid" to
"expired" between restarts.

With ``--acme-directory`` the ACME service installs each new certificate
by calling L{ReloadService.reload} with trigger ``acme`` (after renaming
the new files into place), and ``SIGHUP`` also retries a failed ACME
attempt at once (L{ReloadService.signal_hooks}).

``SIGHUP``: twistd itself uses ``SIGUSR1`` (log rotation) and the reactor
``SIGINT``/``SIGTERM``/``SIGCHLD``; still, whatever handler was installed
before ours is called after ours and put back when the service stops.  The
Python signal handler only schedules the reload with C{callFromThread}, so
the work happens on the reactor thread between events, never in the middle
of one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rumpus_secure.certificates import EXPIRY_WARNING

_log = Logger()

#: Seconds between two "expires soon" warnings.
EXPIRY_NAG_INTERVAL = 24 * 3600.0

SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class ReloadService(service.Service):
    """
    Reloads the TLS certificate on file change and on ``SIGHUP``.

    :param tls: the L{rumpus_secure.tls.TLSContextSource} every port uses.
    :param clock: schedules the periodic file check.
    :param interval: seconds between file checks; 0 for none (signal only).
    :param audit: an L{rumpus_secure.audit.IAuditLog} for ``tls.reload``.
    :param reactor: runs the signal-triggered reload on the reactor thread
        (C{callFromThread}); L{None} means no signal handler is installed.
    :param signum: the signal that triggers a reload.
    """

    def __init__(
        self,
        tls: Any,
        clock: IReactorTime,
        interval: float = 60.0,
        *,
        audit: Any = None,
        reactor: Any = None,
        signum: int = signal.SIGHUP,
    ) -> None:
        self.setName("tls-reload")
        self.tls = tls
        self.clock = clock
        self.interval = interval
        self.audit = audit
        self.reactor = reactor
        self.signum = signum
        self._loop: LoopingCall | None = None
        self._previous: SignalHandler = None
        self._installed = False
        self._last_nag: float | None = None
        #: Also run (on the reactor thread) on each signal, after the reload:
        #: the ACME service retries a failed renewal at once.
        self.signal_hooks: list[Callable[[], Any]] = []

    # -- service life -----------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._loop = LoopingCall(self.check_files)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: _log.failure("certificate file check stopped", f)
            )
        if self.reactor is not None:
            self._install_signal_handler()
        # Start-up has just warned about the certificate; the next reminder
        # is due a day from now.
        self._last_nag = self.clock.seconds()  # type: ignore[misc]

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._restore_signal_handler()
        return super().stopService()

    # -- what triggers a reload ---------------------------------------------

    def check_files(self) -> None:
        """
        Reload if the certificate or key file changed; warn near expiry.
        """
        try:
            if self.tls.files_changed():
                self.reload("file-change")
            self._nag_if_expiring()
        except Exception:  # noqa: BLE001
            # Keep checking: one bad turn must not end reloads for good.
            _log.failure("checking the certificate files failed")

    def reload(self, trigger: str) -> bool:
        """
        Reload now; audit the outcome.

        :param trigger: what asked for it (``signal``, ``file-change``).
        :returns: whether the new certificate is now in service.
        """
        ok = bool(self.tls.reload())
        info = self.tls.info
        if ok:
            for warning in info.warnings:
                _log.warn("certificate: {warning}", warning=warning)
            self._last_nag = None
            self._record(
                trigger=trigger, outcome="ok", subject=info.subject,
                fingerprint=info.sha256_fingerprint,
                not_after=info.not_after.isoformat(),
            )
        else:
            self._record(
                trigger=trigger, outcome="failed",
                reason=getattr(self.tls, "last_error", None),
                kept_fingerprint=info.sha256_fingerprint,
            )
        return ok

    def _record(self, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record("tls.reload", **fields)

    def _nag_if_expiring(self) -> None:
        now = self.clock.seconds()  # type: ignore[misc]
        if self._last_nag is not None and now - self._last_nag < EXPIRY_NAG_INTERVAL:
            return
        not_after = self.tls.info.not_after
        left = not_after - datetime.fromtimestamp(now, UTC)
        if left >= EXPIRY_WARNING:
            return
        self._last_nag = now
        if left.total_seconds() <= 0:
            _log.error(
                "The TLS certificate {subject} expired on {not_after}: clients"
                " refuse it. Replace the files; they are reloaded without a restart.",
                subject=self.tls.info.subject, not_after=not_after.isoformat(),
            )
        else:
            _log.warn(
                "The TLS certificate {subject} expires in {days} days"
                " ({not_after}): renew it; new files are picked up without a"
                " restart.",
                subject=self.tls.info.subject, days=left.days,
                not_after=not_after.isoformat(),
            )

    # -- SIGHUP -------------------------------------------------------------

    def _install_signal_handler(self) -> None:
        try:
            self._previous = signal.getsignal(self.signum)
            signal.signal(self.signum, self._on_signal)
        except ValueError:
            # Not the main thread (an embedding application): file checks only.
            _log.warn("Cannot install a SIGHUP handler outside the main thread;"
                      " certificate reload works by file change only.")
            return
        self._installed = True

    def _restore_signal_handler(self) -> None:
        if not self._installed:
            return
        self._installed = False
        try:
            if signal.getsignal(self.signum) == self._on_signal:
                previous = self._previous
                signal.signal(
                    self.signum, previous if previous is not None else signal.SIG_DFL
                )
        except ValueError:
            pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload, "signal")
        for hook in self.signal_hooks:
            self.reactor.callFromThread(hook)
        previous = self._previous
        # SIG_DFL would end the process (the default action of SIGHUP): we
        # are taking the signal over, so only a real handler is chained.
        if callable(previous):
            previous(signum, frame)
