"""
Prometheus metrics (``--metrics ENDPOINT``), served with prometheus_client.

Nothing here is called from the protocols.  Two sources cover every metric:

 - B{the audit stream.}  L{Metrics.observe} is an audit observer
   (L{rumpus_secure.audit.AuditObservers}): logins, TLS handshakes and their
   failures, commands refused before TLS, cleartext passwords, bans made,
   transfers and their bytes are all audited already, so counting them here
   needs no line in FTP, web or guard code, and a metric can never disagree
   with the audit log.
 - B{the live objects, read at scrape time}: sessions open (the control
   connections each FTP listener built, the web session store), bans active
   (the guard), passive ports in use (the port pool), certificate days to
   expiry (the TLS context source).  A scrape is answered on the reactor
   thread, the thread that changes those objects, so they are never read
   half-changed; a scrape costs well under a millisecond for this registry.

Two things are measured by wrapping instances at assembly time, as no
event says them: the HTTPS listener's channels become C{IHandshakeListener}s
(Twisted's public hook) to count web TLS handshakes, and L{Metrics.
instrument_checker} wraps the checker instance's ``requestAvatarId`` and
``check_password`` to count checks in flight (queued for, or running in,
the argon2id thread pool) and to time them (a histogram).

Each server has its own L{CollectorRegistry}, not prometheus_client's global
one, so that a process (the tests) can build several servers.  The page is
rendered by L{MetricsPage} rather than prometheus_client's
C{twisted.MetricsResource}, which runs the exposition in the global
reactor's thread pool: ours takes the injected reactor's thread and honours
the scraper's ``Accept`` header (OpenMetrics or the classic text format).

Label values that come from clients are bounded: FTP verbs outside the
known set count as ``other``, TLS failure reasons are mapped onto a handful
of kinds, so a hostile client cannot grow the number of time series.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Callable, Iterable

from OpenSSL import SSL
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server
from zope.interface import alsoProvides

_log = Logger()

#: FTP verbs that may appear as a label value; anything else is ``other``.
KNOWN_VERBS = frozenset(
    "ABOR ACCT ALLO APPE AUTH CCC CDUP CLNT CWD DELE EPRT EPSV FEAT HASH HELP "
    "HOST LIST MDTM MFMT MKD MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT "
    "PROT PWD QUIT REIN REST RETR RMD RNFR RNTO SITE SIZE STAT STOR STOU STRU "
    "SYST TYPE USER XCUP XCWD XMKD XPWD XRMD".split()
)

#: TLS failure reasons: the first pattern found in the error text wins.
TLS_REASONS: tuple[tuple[str, str], ...] = (
    ("http request", "http-request"),
    ("wrong version number", "not-tls"),
    ("unknown protocol", "not-tls"),
    ("unsupported protocol", "old-protocol-version"),
    ("version too low", "old-protocol-version"),
    ("no shared cipher", "no-shared-cipher"),
    ("no application protocol", "alpn-refused"),
    ("alpn", "alpn-refused"),
    ("certificate", "certificate"),
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("connection", "connection-lost"),
)

LOGIN_OUTCOMES = frozenset({"ok", "failed", "locked", "too-many-sessions"})

#: Password checks take 50-300 ms of argon2id; the buckets span a cache hit
#: (well under 1 ms) to a pool saturated by a burst (seconds).
CHECK_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: The start of an HTTP request line: plain HTTP sent to a TLS port.
HTTP_METHOD = re.compile(rb"[A-Z]{3,7} ")


def tls_reason(error: str | None) -> str:
    """
    A small fixed set of failure kinds for a TLS error text.
    """
    text = (error or "").lower()
    for needle, reason in TLS_REASONS:
        if needle in text:
            return reason
    return "other"


def ftp_verb(command: Any) -> str:
    verb = str(command or "").upper()
    return verb if verb in KNOWN_VERBS else "other"


def _ftp_protocol(entry: dict[str, Any]) -> str:
    """``ftp``, ``ftps-explicit`` or ``ftps-implicit`` for an FTP audit entry."""
    protocol = str(entry.get("protocol") or "ftp")
    if protocol == "ftp" and entry.get("tls"):
        return "ftps-explicit"
    return protocol if protocol in ("ftp", "ftps-explicit", "ftps-implicit") else "ftp"


class SessionCollector:
    """
    ``rumpus_sessions_open{protocol}``, counted from the live connections.

    FTP: every control connection an FTP listener's factory built that is
    still connected; one on the plain port counts as ``ftps-explicit`` once
    it has done AUTH TLS.  Web: the live logged-in sessions.
    """

    def __init__(self) -> None:
        self._ftp: weakref.WeakSet[Any] = weakref.WeakSet()
        self._web_stores: list[Any] = []

    def track_factory(self, factory: Any) -> None:
        """
        Remember every protocol C{factory} builds (it keeps no list itself).
        """
        build = factory.buildProtocol
        live = self._ftp

        def build_and_track(addr: Any) -> Any:
            protocol = build(addr)
            if protocol is None:
                return None
            live.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> Any:
                # Twisted never resets C{connected}: leave the set here.
                live.discard(protocol)
                return lost(reason)

            protocol.connectionLost = connection_lost
            return protocol

        factory.buildProtocol = build_and_track

    def track_web(self, sessions: Any) -> None:
        self._web_stores.append(sessions)

    def counts(self) -> dict[str, int]:
        counts = {"ftp": 0, "ftps-explicit": 0, "ftps-implicit": 0, "web": 0}
        for p in list(self._ftp):
            if not getattr(p, "connected", False):
                continue  # built, not yet connected
            if getattr(p, "implicit", False):
                counts["ftps-implicit"] += 1
            elif getattr(p, "secure", False):
                counts["ftps-explicit"] += 1
            else:
                counts["ftp"] += 1
        counts["web"] = sum(len(store) for store in self._web_stores)
        return counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "rumpus_sessions_open", "Sessions open now: FTP control connections, "
            "logged-in web sessions.", labels=["protocol"])
        for protocol, count in self.counts().items():
            family.add_metric([protocol], count)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("rumpus_sessions_open", "", labels=["protocol"])


class Metrics:
    """
    Every metric of one server, in its own registry.

    @param clock: an C{IReactorTime}; C{seconds()} times the password checks
        and ages the certificate.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.sessions = SessionCollector()
        registry.register(self.sessions)
        self.logins = Counter(
            "rumpus_logins", "Login attempts by protocol and outcome.",
            ["protocol", "outcome"], registry=registry)
        self.tls_handshakes = Counter(
            "rumpus_tls_handshakes", "TLS handshakes completed, by protocol and "
            "TLS version.", ["protocol", "version"], registry=registry)
        self.tls_failures = Counter(
            "rumpus_tls_handshake_failures", "TLS handshakes that failed, by "
            "protocol (ftp-data: a data connection) and reason.",
            ["protocol", "reason"], registry=registry)
        self.refused_before_tls = Counter(
            "rumpus_refused_before_tls", "FTP commands refused because TLS was "
            "not set up yet.", ["command"], registry=registry)
        self.cleartext_logins = Counter(
            "rumpus_cleartext_logins", "Logins started without TLS (FTP USER on "
            "a plain connection, credentials sent to the HTTP port).",
            ["protocol"], registry=registry)
        self.cleartext_passwords = Counter(
            "rumpus_cleartext_passwords", "Passwords caught in cleartext, by "
            "protocol and whether it was the account's real password.",
            ["protocol", "outcome"], registry=registry)
        self.bans = Counter(
            "rumpus_bans", "Address bans made, by reason.", ["reason"],
            registry=registry)
        self.transfers = Counter(
            "rumpus_transfers", "File transfers finished, by protocol, direction "
            "and outcome.", ["protocol", "direction", "outcome"], registry=registry)
        self.transfer_bytes = Counter(
            "rumpus_transfer_bytes", "Bytes of file transfers, by protocol, "
            "direction and outcome.", ["protocol", "direction", "outcome"],
            registry=registry)
        self.bans_active = Gauge(
            "rumpus_bans_active", "Addresses banned now.", registry=registry)
        self.passive_ports_in_use = Gauge(
            "rumpus_passive_ports_in_use", "Passive data ports taken and waiting "
            "for their client (with --passive-ports).", registry=registry)
        self.passive_ports = Gauge(
            "rumpus_passive_ports", "Size of the passive port range "
            "(--passive-ports; 0: any port).", registry=registry)
        self.password_checks_in_flight = Gauge(
            "rumpus_password_checks_in_flight", "Password checks queued for or "
            "running in the argon2id thread pool.", registry=registry)
        self.password_check_seconds = Histogram(
            "rumpus_password_check_seconds", "Time from asking for a password "
            "check to its answer (queue wait included).", buckets=CHECK_BUCKETS,
            registry=registry)
        self.certificate_days = Gauge(
            "rumpus_certificate_expiry_days", "Days until the served TLS "
            "certificate expires (negative: expired).", registry=registry)
        self._in_flight = 0
        self.password_checks_in_flight.set_function(lambda: self._in_flight)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "ftp.login": self._login,
            "web.login": self._login,
            "ftp.tls_established": self._tls_ok,
            "ftp.tls_failed": self._tls_failed,
            "ftp.data_tls_failed": self._tls_failed,
            "ftp.refused_before_tls": self._refused,
            "ftp.cleartext_user": self._cleartext_login,
            "web.cleartext_credentials": self._cleartext_login,
            "guard.ban": self._ban,
            "ftp.upload": self._transfer,
            "ftp.download": self._transfer,
            "web.upload": self._transfer,
            "web.download": self._transfer,
        }

    # -- the audit stream ---------------------------------------------------

    def observe(self, entry: dict[str, Any]) -> None:
        """
        An audit observer: count what C{entry} says happened.
        """
        event = str(entry.get("event", ""))
        handler = self._handlers.get(event)
        if handler is not None:
            handler(entry)
        elif event.endswith(".cleartext_password"):
            protocol = event.split(".", 1)[0]
            outcome = str(entry.get("outcome") or "unknown")
            if outcome not in ("real-password", "not-the-password", "no-user", "empty"):
                outcome = "unknown"
            self.cleartext_passwords.labels(
                "web" if protocol == "http" else "ftp", outcome).inc()

    def _login(self, entry: dict[str, Any]) -> None:
        event = entry["event"]
        protocol = "web" if event.startswith("web.") else _ftp_protocol(entry)
        outcome = str(entry.get("outcome") or "")
        self.logins.labels(protocol, outcome if outcome in LOGIN_OUTCOMES else "other").inc()

    def _tls_ok(self, entry: dict[str, Any]) -> None:
        mode = entry.get("mode")
        protocol = {"implicit": "ftps-implicit", "https": "https"}.get(
            str(mode), "ftps-explicit")
        version = str(entry.get("tls") or "unknown")
        if not re.fullmatch(r"TLSv1(\.[0-3])?|SSLv3", version):
            version = "unknown"
        self.tls_handshakes.labels(protocol, version).inc()

    def _tls_failed(self, entry: dict[str, Any]) -> None:
        if entry["event"] == "ftp.data_tls_failed":
            protocol = "ftp-data"
        elif entry.get("protocol") == "ftps-implicit":
            protocol = "ftps-implicit"
        else:
            protocol = "ftps-explicit"  # a handshake on the plain port: AUTH TLS
        self.tls_failures.labels(protocol, tls_reason(entry.get("error"))).inc()

    def _refused(self, entry: dict[str, Any]) -> None:
        self.refused_before_tls.labels(ftp_verb(entry.get("command"))).inc()

    def _cleartext_login(self, entry: dict[str, Any]) -> None:
        self.cleartext_logins.labels(
            "web" if entry["event"].startswith("web.") else "ftp").inc()

    def _ban(self, entry: dict[str, Any]) -> None:
        reason = re.sub(r"[^a-z_]", "", str(entry.get("reason") or ""))[:32]
        self.bans.labels(reason or "other").inc()

    def _transfer(self, entry: dict[str, Any]) -> None:
        event = entry["event"]
        direction = "upload" if event.endswith(".upload") else "download"
        if event.startswith("web."):
            protocol, outcome = "web", "complete"
            size = entry.get("size")
        else:
            protocol = _ftp_protocol(entry)
            outcome = re.sub(r"[^a-z-]", "", str(entry.get("outcome") or ""))[:20] or "other"
            size = entry.get("bytes")
        self.transfers.labels(protocol, direction, outcome).inc()
        if isinstance(size, int) and size > 0:
            self.transfer_bytes.labels(protocol, direction, outcome).inc(size)

    # -- HTTPS handshakes ----------------------------------------------------

    def track_https(self, tls_factory: Any) -> None:
        """
        Count the TLS handshakes of an HTTPS listener (its TLS wrapper factory).

        FTP handshakes are audited by the FTP protocol; the web's are not, so
        each HTTP channel is made an C{IHandshakeListener} (the public hook
        Twisted's TLS layer calls when the handshake is done) and its
        C{connectionLost} notes a TLS error that came before it.
        """
        build = tls_factory.buildProtocol

        def build_and_track(addr: Any) -> Any:
            tls = build(addr)
            channel = getattr(tls, "wrappedProtocol", None)
            if channel is not None:
                self._watch_channel(tls, channel)
            return tls

        tls_factory.buildProtocol = build_and_track

    def track_wrong_port(self, factory: Any, protocol: str) -> None:
        """
        Count clients that spoke plain text to a TLS port as failed
        handshakes (L{rumpus_secure.sniff} answers them before TLS starts).
        """
        observers = getattr(factory, "observers", None)
        if observers is None:
            return

        def wrong(first: bytes, client: str) -> None:
            reason = "http-request" if HTTP_METHOD.match(first) else "not-tls"
            self.tls_failures.labels(protocol, reason).inc()

        observers.append(wrong)

    def _watch_channel(self, tls: Any, channel: Any) -> None:
        state = {"done": False}
        already = IHandshakeListener.providedBy(channel)
        completed = getattr(channel, "handshakeCompleted", None)
        lost = channel.connectionLost

        def handshake_completed() -> None:
            state["done"] = True
            try:
                version = tls.getHandle().get_protocol_version_name()
            except Exception:  # noqa: BLE001 (a count must never break a connection)
                version = "unknown"
            self._tls_ok({"mode": "https", "tls": version})
            if already and completed is not None:
                completed()

        def connection_lost(reason: Any) -> Any:
            if not state["done"] and reason is not None and reason.check(SSL.Error):
                self.tls_failures.labels(
                    "https", tls_reason(reason.getErrorMessage())).inc()
            return lost(reason)

        if not already:
            alsoProvides(channel, IHandshakeListener)
        channel.handshakeCompleted = handshake_completed
        channel.connectionLost = connection_lost

    # -- live objects --------------------------------------------------------

    def watch_guard(self, guard: Any) -> None:
        self.bans_active.set_function(lambda: len(guard.bans()))

    def watch_port_pool(self, pool: Any) -> None:
        if pool is None:
            return
        self.passive_ports_in_use.set_function(lambda: len(pool.in_use))
        self.passive_ports.set(len(pool.ports))

    def watch_certificate(self, tls: Any) -> None:
        def days() -> float:
            not_after = tls.info.not_after.timestamp()
            return round((not_after - self.clock.seconds()) / 86400.0, 3)

        self.certificate_days.set_function(days)

    def instrument_checker(self, checker: Any) -> None:
        """
        Count and time C{checker}'s password checks (both entry points).
        """
        for name in ("requestAvatarId", "check_password"):
            original = getattr(checker, name, None)
            if original is not None:
                setattr(checker, name, self._timed(original))

    def _timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self.clock.seconds()
            self._in_flight += 1
            try:
                d = function(*args, **kwargs)
            except BaseException:
                self._in_flight -= 1
                raise

            def done(result: Any) -> Any:
                self._in_flight -= 1
                self.password_check_seconds.observe(
                    max(0.0, self.clock.seconds() - started))
                return result

            return d.addBoth(done)

        return timed


class MetricsPage(resource.Resource):
    """
    The exposition page: every path answers with the registry's metrics.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return body

    render_HEAD = render_GET


class QuietSite(server.Site):
    """
    The metrics site: no access log line per scrape, no factory noise.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        """A scrape every 15 s is not news."""


def metrics_site(metrics: Metrics, reactor: Any) -> server.Site:
    return QuietSite(MetricsPage(metrics.registry), reactor=reactor)


def build_metrics(server_state: Any, top: Any, reactor: Any) -> Metrics:
    """
    Wire the metrics to a server that makeService assembled.

    Finds the FTP listeners among C{top}'s services (the factories are
    wrapped in TLS on the implicit port), and reads the guard, the port
    pool, the certificate, the web sessions and the checker off
    C{server_state}.
    """
    metrics = Metrics(reactor)
    server_state.audit.add_observer(metrics.observe)
    for child in top:
        name = getattr(child, "name", None)
        if name in ("ftp", "ftps"):
            # The FTP factory sits inside the wrong-port sniffer and, on the
            # implicit port, the TLS wrapper.
            metrics.sessions.track_factory(_innermost(child.factory))
            if name == "ftps":
                metrics.track_wrong_port(child.factory, "ftps-implicit")
        elif name == "https":
            metrics.track_https(_tls_factory(child.factory))
            metrics.track_wrong_port(child.factory, "https")
    site = getattr(server_state, "https_site", None)
    app = getattr(site, "app", None)
    if app is not None and getattr(app, "sessions", None) is not None:
        metrics.sessions.track_web(app.sessions)
    if server_state.guard is not None:
        metrics.watch_guard(server_state.guard)
    ftp = getattr(server_state, "ftp_factory", None)
    metrics.watch_port_pool(getattr(ftp, "port_pool", None))
    metrics.watch_certificate(server_state.tls)
    metrics.instrument_checker(server_state.checker)
    return metrics


__all__ = ["Metrics", "MetricsPage", "build_metrics", "metrics_site", "tls_reason"]


def _innermost(factory: Any) -> Any:
    """
    The factory at the bottom of a chain of wrapping factories.
    """
    while getattr(factory, "wrappedFactory", None) is not None:
        factory = factory.wrappedFactory
    return factory


def _tls_factory(factory: Any) -> Any:
    """
    The TLS wrapper in a chain of wrapping factories (the outermost if none).
    """
    found = factory
    while factory is not None:
        if isinstance(factory, TLSMemoryBIOFactory):
            return factory
        factory = getattr(factory, "wrappedFactory", None)
    return found
