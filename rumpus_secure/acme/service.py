"""
The ACME service: obtain the first certificate, renew it, back off on
failure, install each new certificate through the reload path.

Start-up reads the certificate in ``DATA-DIR/acme/``: none issued yet (the
self-signed placeholder is served) means an attempt at once; otherwise the
next attempt is at its renewal time (L{rumpus_secure.acme.schedule}).  Each
attempt runs L{obtain_certificate} in a thread; on success the new pair is
renamed into place and L{rumpus_secure.reload.ReloadService.reload} is
called with trigger ``acme``: new connections on every TLS port get the new
certificate, open sessions keep the context they were made from.  On
failure the served certificate stays, the next attempt is backed off, and
``check`` (through ``status.json``) and the metrics show the failure.

Every attempt is one ``acme.attempt`` audit event with its outcome
(``ok``/``failed``), the reason and when the next attempt is due.
"""

from __future__ import annotations

from collections import deque

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from rumpus_secure.acme.challenges import ChallengeResponder
from rumpus_secure.acme.client import AcmeFailure, AcmeSettings, Issued, obtain_certificate
from rumpus_secure.acme.schedule import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    renewal_time,
    retry_delay,
)
from rumpus_secure.acme.store import AcmeStore

_log = Logger()

#: Seconds at least between a certificate's arrival and the next order.
MIN_REORDER = 60.0

#: Attempts in the last hour after which a signal starts no other:
#: Let's Encrypt's limit of failed validations an hour.
SIGNAL_RETRIES_PER_HOUR = 5


class AcmeService(service.Service):
    """
    Keeps the served certificate issued and renewed by an ACME CA.

    :param install: renames the pending pair into place and reloads; returns
        whether the new certificate is now served (on the reactor thread).
    :param run_in_thread: runs blocking work, returning a L{Deferred}.
    :param obtain: the blocking issuance (L{obtain_certificate}; tests
        replace it).
    :param first: seconds of the first back-off; doubled per failure.
    :param longest: the longest back-off.
    """

    def __init__(
        self,
        settings: AcmeSettings,
        store: AcmeStore,
        responder: ChallengeResponder,
        *,
        clock: IReactorTime,
        run_in_thread: Callable[..., Deferred[Any]],
        install: Callable[[], bool],
        audit: Any = None,
        obtain: Callable[..., Issued] = obtain_certificate,
        first: float = BACKOFF_FIRST,
        longest: float = BACKOFF_MAX,
    ) -> None:
        self.setName("acme")
        self.settings = settings
        self.store = store
        self.responder = responder
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.install = install
        self.audit = audit
        self.obtain = obtain
        self.first = first
        self.longest = longest
        #: Failed attempts since the last success.
        self.failures = 0
        self.attempts = 0
        self.last_error: str | None = None
        self.last_attempt: datetime | None = None
        #: When the attempts of the last hour started (signal retries).
        self._attempt_times: deque[datetime] = deque(maxlen=SIGNAL_RETRIES_PER_HOUR)
        self.last_success: datetime | None = None
        #: The certificate issued to us and served, or L{None} (placeholder).
        self.certificate: x509.Certificate | None = None
        self.next_attempt: datetime | None = None
        self._call: IDelayedCall | None = None
        self._busy = False
        self._ca_wait_until: datetime | None = None
        #: Fires after each attempt with its outcome (for tests).
        self.observers: list[Callable[[bool], None]] = []

    # -- life -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._call = self.clock.callLater(0, self._start)

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _start(self) -> None:
        self._call = None
        d = self.run_in_thread(self.store.current_certificate)
        d.addCallback(self._found)
        d.addErrback(self._unreadable)

    def _unreadable(self, failure: Any) -> None:
        _log.failure("ACME: reading the served certificate failed; ordering a new one",
                     failure)
        self._found(None)

    def _found(self, certificate: x509.Certificate | None) -> None:
        self.certificate = certificate
        if certificate is None:
            _log.warn(
                "ACME: no certificate from {directory} yet; serving a self-signed"
                " certificate for {names} until it arrives.",
                directory=self.settings.directory, names=", ".join(self.settings.names),
            )
            self._schedule(0)
        elif missing := set(self.settings.names) - _dns_names(certificate):
            _log.info("ACME: the certificate does not cover {missing}; ordering a new one",
                      missing=", ".join(sorted(missing)))
            self._schedule(0)
        else:
            self._schedule_renewal(certificate)

    @property
    def serving_placeholder(self) -> bool:
        return self.certificate is None

    # -- scheduling -----------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.next_attempt = self._now() + timedelta(seconds=delay)
        self._call = self.clock.callLater(delay, self.attempt_now)

    def _schedule_renewal(self, certificate: x509.Certificate, *,
                          just_issued: bool = False) -> None:
        due = renewal_time(certificate.not_valid_before_utc,
                           certificate.not_valid_after_utc)
        delay = max(0.0, (due - self._now()).total_seconds())
        if just_issued:
            # A certificate that is due as soon as it is issued (backdated,
            # or a clock far off) must not make us order again at once, in
            # a loop: at most one order a minute (a third of the lifetime
            # for certificates shorter than three minutes).
            lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
            delay = max(delay, min(MIN_REORDER, lifetime.total_seconds() / 3))
        if delay > 0:
            _log.info("ACME: certificate valid until {not_after}; renewal due {due}",
                      not_after=certificate.not_valid_after_utc.isoformat(),
                      due=due.isoformat())
        self._schedule(delay)

    def retry_soon(self) -> bool:
        """
        Try again now if the last attempt failed (``SIGHUP``, after the
        operator fixed the cause), unless the CA asked us to wait longer
        (C{Retry-After}, rate limits) or an attempt is running.

        :returns: whether an attempt was started.
        """
        if self._busy or not self.running:
            return False
        if self.failures == 0 and self.certificate is not None:
            return False
        if self._ca_wait_until is not None and self._now() < self._ca_wait_until:
            _log.info("ACME: not retrying before {when}, as the CA asked",
                      when=self._ca_wait_until.isoformat())
            return False
        now = self._now()
        recent = [t for t in self._attempt_times if (now - t).total_seconds() < 3600]
        if len(recent) >= SIGNAL_RETRIES_PER_HOUR:
            # SIGHUP is also the certificate-reload signal: a deploy hook
            # sending it in a loop made 7 orders in 18 s; Let's Encrypt
            # allows 5 failed validations an hour before it blocks us.
            _log.info("ACME: {count} attempts in the last hour; not retrying on the "
                      "signal", count=len(recent))
            return False
        _log.info("ACME: retrying now (signal)")
        self._schedule(0)
        return True

    # -- one attempt ---------------------------------------------------------------

    def attempt_now(self) -> Deferred[bool]:
        """
        Try to obtain and install a certificate now; fires with success.
        """
        self._call = None
        if self._busy:
            return Deferred.fromCoroutine(_false())
        return Deferred.fromCoroutine(self._attempt())

    async def _attempt(self) -> bool:
        self._busy = True
        self.attempts += 1
        self.last_attempt = self._now()
        self._attempt_times.append(self.last_attempt)
        try:
            try:
                issued: Issued = await self.run_in_thread(
                    self.obtain, self.settings, self.store, self.responder)
                await self.run_in_thread(
                    self.store.write_pending, issued.fullchain_pem, issued.key_pem)
            except AcmeFailure as failure:
                return self._failed(failure)
            except Exception as e:  # noqa: BLE001
                _log.failure("ACME: the attempt failed unexpectedly")
                return self._failed(AcmeFailure(f"internal error: {e}", "internal"))
            if not self.running:
                return False
            try:
                self.store.install_pending()
            except OSError as e:
                return self._failed(AcmeFailure(
                    f"cannot put the new certificate in place: {e}", "install"))
            if not self.install():
                # The files must say what is served, for the next start.
                self.store.restore_previous()
                return self._failed(AcmeFailure(
                    "the issued certificate was refused by the TLS layer", "install"))
            return self._succeeded(issued)
        finally:
            self._busy = False

    def _succeeded(self, issued: Issued) -> bool:
        certificate = x509.load_pem_x509_certificate(issued.fullchain_pem)
        self.certificate = certificate
        self.failures = 0
        self.last_error = None
        self._ca_wait_until = None
        self.last_success = self._now()
        self._schedule_renewal(certificate, just_issued=True)
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":").upper()
        _log.info(
            "ACME: installed a certificate for {names} from {issuer}, valid until"
            " {not_after}",
            names=", ".join(self.settings.names),
            issuer=certificate.issuer.rfc4514_string(),
            not_after=certificate.not_valid_after_utc.isoformat(),
        )
        self._record(outcome="ok", account=issued.account,
                     serial=format(certificate.serial_number, "x"),
                     fingerprint=fingerprint,
                     not_after=certificate.not_valid_after_utc.isoformat())
        self._finish(True)
        return True

    def _failed(self, failure: AcmeFailure) -> bool:
        self.failures += 1
        self.last_error = failure.reason
        delay = retry_delay(self.failures, failure.retry_after, failure.rate_limited,
                            first=self.first, longest=self.longest)
        self._schedule(delay)
        self._ca_wait_until = (
            self._now() + timedelta(seconds=delay)
            if failure.retry_after is not None or failure.rate_limited else None
        )
        kept = self.certificate
        _log.warn(
            "ACME: attempt {attempt} for {names} failed ({problem}): {reason}; next"
            " attempt in {delay:.0f} s; still serving the {kept} certificate",
            attempt=self.failures, names=", ".join(self.settings.names),
            problem=failure.problem, reason=failure.reason, delay=delay,
            kept="self-signed" if kept is None else "current",
        )
        self._record(outcome="failed", problem=failure.problem, reason=failure.reason,
                     failures=self.failures, retry_after=failure.retry_after)
        self._finish(False)
        return False

    def _record(self, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(
                "acme.attempt", directory=self.settings.directory,
                names=list(self.settings.names), attempt=self.attempts,
                next_attempt=self.next_attempt.isoformat() if self.next_attempt else None,
                **fields,
            )

    def _finish(self, ok: bool) -> None:
        d = self.run_in_thread(self.store.write_status, self.status())
        d.addErrback(lambda f: _log.failure("writing the ACME status failed", f))
        for observer in list(self.observers):
            observer(ok)

    def status(self) -> dict[str, Any]:
        """
        What ``check`` and the metrics report (JSON-ready).
        """
        cert = self.certificate

        def iso(when: datetime | None) -> str | None:
            return when.isoformat() if when is not None else None

        return {
            "directory": self.settings.directory,
            "names": list(self.settings.names),
            "serving": "self-signed" if cert is None else "acme",
            "failures": self.failures,
            "last_error": self.last_error,
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "next_attempt": iso(self.next_attempt),
            "not_after": iso(cert.not_valid_after_utc) if cert is not None else None,
        }


def _dns_names(certificate: x509.Certificate) -> set[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return {name.lower() for name in san.value.get_values_for_type(x509.DNSName)}


async def _false() -> bool:
    return False
