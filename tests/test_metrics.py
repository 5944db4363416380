"""
The Prometheus metrics: counters fed by the audit stream, gauges that read
the live objects at scrape time, the password-check wrapper, and the page
served by makeService on a real loopback socket.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock

from rumpus_secure import tap
from rumpus_secure.audit import MemoryAuditLog
from rumpus_secure.ftp.passive import PortPool
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.metrics import Metrics, tls_reason
from rumpus_secure.web.sessions import SessionStore
from rumpus_secure.ftp.factory import FTPFactories
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock
from tests.ftp_fakes import TLSStringTransport, make_server


def wired(clock: Any = None) -> tuple[Metrics, MemoryAuditLog]:
    metrics = Metrics(clock or Clock())
    audit = MemoryAuditLog()
    audit.add_observer(metrics.observe)
    return metrics, audit


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_logins_by_protocol_and_outcome() -> None:
    metrics, audit = wired()
    audit.record("ftp.login", account="a", outcome="ok", protocol="ftp", tls="TLSv1.3")
    audit.record("ftp.login", account="a", outcome="failed", protocol="ftp", tls="TLSv1.3")
    audit.record("ftp.login", account="b", outcome="ok", protocol="ftps-implicit",
                 tls="TLSv1.2")
    audit.record("web.login", account="b", outcome="locked")
    audit.record("web.login", account="b", outcome="<script>")
    assert value(metrics, "rumpus_logins_total", protocol="ftps-explicit", outcome="ok") == 1
    assert value(metrics, "rumpus_logins_total", protocol="ftps-explicit",
                 outcome="failed") == 1
    assert value(metrics, "rumpus_logins_total", protocol="ftps-implicit", outcome="ok") == 1
    assert value(metrics, "rumpus_logins_total", protocol="web", outcome="locked") == 1
    assert value(metrics, "rumpus_logins_total", protocol="web", outcome="other") == 1


def test_tls_handshakes_by_version_and_failure_reason() -> None:
    metrics, audit = wired()
    audit.record("ftp.tls_established", tls="TLSv1.3", mode="explicit", protocol="ftp")
    audit.record("ftp.tls_established", tls="TLSv1.2", mode="implicit",
                 protocol="ftps-implicit")
    audit.record("ftp.tls_failed", protocol="ftps-implicit",
                 error="[('SSL routines', '', 'http request')]")
    audit.record("ftp.tls_failed", protocol="ftp", error="no shared cipher")
    audit.record("ftp.data_tls_failed", protocol="ftp", error="unsupported protocol")
    audit.record("ftp.tls_failed", protocol="ftp", error="\x1b[31m made up")
    assert value(metrics, "rumpus_tls_handshakes_total", protocol="ftps-explicit",
                 version="TLSv1.3") == 1
    assert value(metrics, "rumpus_tls_handshakes_total", protocol="ftps-implicit",
                 version="TLSv1.2") == 1
    failures = {(s.labels["protocol"], s.labels["reason"]): s.value
                for s in metrics.tls_failures.collect()[0].samples
                if s.name.endswith("_total")}
    assert failures == {("ftps-implicit", "http-request"): 1,
                        ("ftps-explicit", "no-shared-cipher"): 1,
                        ("ftp-data", "old-protocol-version"): 1,
                        ("ftps-explicit", "other"): 1}
    assert tls_reason(None) == "other"


def test_refused_commands_and_cleartext_passwords() -> None:
    metrics, audit = wired()
    audit.record("ftp.refused_before_tls", command="LIST", protocol="ftp")
    audit.record("ftp.refused_before_tls", command="X" * 16, protocol="ftp")
    audit.record("ftp.cleartext_user", account="alice", command="USER")
    audit.record("ftp.cleartext_password", account="alice", outcome="real-password")
    audit.record("ftp.cleartext_password", account="bob", outcome="not-the-password")
    audit.record("http.cleartext_password", account="carol", outcome="real-password")
    audit.record("web.cleartext_credentials", account="carol", kind="form")
    assert value(metrics, "rumpus_refused_before_tls_total", command="LIST") == 1
    assert value(metrics, "rumpus_refused_before_tls_total", command="other") == 1
    assert value(metrics, "rumpus_cleartext_logins_total", protocol="ftp") == 1
    assert value(metrics, "rumpus_cleartext_logins_total", protocol="web") == 1
    assert value(metrics, "rumpus_cleartext_passwords_total", protocol="ftp",
                 outcome="real-password") == 1
    assert value(metrics, "rumpus_cleartext_passwords_total", protocol="ftp",
                 outcome="not-the-password") == 1
    assert value(metrics, "rumpus_cleartext_passwords_total", protocol="web",
                 outcome="real-password") == 1


def test_bans_made_and_active_from_a_real_guard() -> None:
    clock = Clock()
    clock.advance(1_000_000)
    metrics, audit = wired(clock)
    guard = Guard(GuardSettings(threshold=3, ban_time=60), clock, audit=audit)
    metrics.watch_guard(guard)
    assert value(metrics, "rumpus_bans_active") == 0
    for _ in range(3):
        guard.offence("192.0.2.7", "login_failed", protocol="ftp", account="alice")
    # Another address, another account, in the same window: its own score.
    guard.offence("192.0.2.8", "login_failed", protocol="ftp", account="bob")
    assert value(metrics, "rumpus_bans_active") == 1
    assert value(metrics, "rumpus_bans_total", reason="login_failed") == 1
    clock.advance(61)
    assert value(metrics, "rumpus_bans_active") == 0  # read live at scrape time
    assert value(metrics, "rumpus_bans_total", reason="login_failed") == 1


def test_transfers_and_bytes_by_direction_and_outcome() -> None:
    metrics, audit = wired()
    audit.record("ftp.upload", account="a", protocol="ftps-implicit", bytes=100,
                 outcome="complete")
    audit.record("ftp.upload", account="a", protocol="ftps-implicit", bytes=40,
                 outcome="truncated")
    audit.record("ftp.download", account="b", protocol="ftp", tls="TLSv1.3",
                 bytes=7, outcome="complete")
    audit.record("web.upload", account="b", path="/x", size=9)
    audit.record("web.download", account="b", path="/x")
    labels = {"protocol": "ftps-implicit", "direction": "upload"}
    assert value(metrics, "rumpus_transfers_total", outcome="complete", **labels) == 1
    assert value(metrics, "rumpus_transfer_bytes_total", outcome="complete", **labels) == 100
    assert value(metrics, "rumpus_transfer_bytes_total", outcome="truncated", **labels) == 40
    assert value(metrics, "rumpus_transfer_bytes_total", protocol="ftps-explicit",
                 direction="download", outcome="complete") == 7
    assert value(metrics, "rumpus_transfer_bytes_total", protocol="web",
                 direction="upload", outcome="complete") == 9
    assert value(metrics, "rumpus_transfers_total", protocol="web",
                 direction="download", outcome="complete") == 1


def test_passive_ports_in_use() -> None:
    metrics = Metrics(Clock())
    pool = PortPool(range(50000, 50010))
    metrics.watch_port_pool(pool)
    assert value(metrics, "rumpus_passive_ports") == 10
    pool.taken(50001)
    pool.taken(50002)
    assert value(metrics, "rumpus_passive_ports_in_use") == 2
    pool.released(50001)
    assert value(metrics, "rumpus_passive_ports_in_use") == 1


def test_password_check_queue_depth_and_latency() -> None:
    clock = Clock()
    metrics = Metrics(clock)
    pending: list[defer.Deferred[Any]] = []

    class Checker:
        def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
            pending.append(defer.Deferred())
            return pending[-1]

        def check_password(self, name: str, password: str) -> defer.Deferred[Any]:
            return defer.fail(ValueError("store unreadable"))

    checker = Checker()
    metrics.instrument_checker(checker)
    first = checker.requestAvatarId("alice")
    checker.requestAvatarId("bob")
    assert value(metrics, "rumpus_password_checks_in_flight") == 2
    clock.advance(0.3)
    pending[0].callback(b"alice")
    assert value(metrics, "rumpus_password_checks_in_flight") == 1
    assert first.result == b"alice"  # the result passes through
    clock.advance(2.0)
    pending[1].errback(ValueError("wrong password"))
    failed = checker.check_password("carol", "x")
    failed.addErrback(lambda f: None)
    pending[1].addErrback(lambda f: None)
    assert value(metrics, "rumpus_password_checks_in_flight") == 0
    assert value(metrics, "rumpus_password_check_seconds_count") == 3
    assert value(metrics, "rumpus_password_check_seconds_sum") == pytest.approx(2.6)
    assert value(metrics, "rumpus_password_check_seconds_bucket", le="0.5") == 2


def test_certificate_days_to_expiry() -> None:
    clock = Clock()
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock.advance(now.timestamp())
    tls = SimpleNamespace(info=SimpleNamespace(not_after=now + timedelta(days=10)))
    metrics = Metrics(clock)
    metrics.watch_certificate(tls)
    assert value(metrics, "rumpus_certificate_expiry_days") == 10
    clock.advance(86400 * 3)
    assert value(metrics, "rumpus_certificate_expiry_days") == 7
    tls.info = SimpleNamespace(not_after=now + timedelta(days=100))  # reloaded
    assert value(metrics, "rumpus_certificate_expiry_days") == 97


def test_sessions_open_by_protocol(tmp_path: Path) -> None:
    """
    Counted from the real FTP factories' protocols at scrape time: plain,
    upgraded with AUTH TLS, implicit; and the web session store.
    """
    server = make_server(tmp_path)
    factories = FTPFactories(server, MemoryReactorClock())
    plain_factory, implicit_factory = factories.plain(), factories.implicit()
    metrics = Metrics(Clock())
    collector = metrics.sessions
    collector.track_factory(plain_factory)
    collector.track_factory(implicit_factory)

    def open_one(factory: Any) -> tuple[Any, TLSStringTransport]:
        proto = factory.buildProtocol(None)
        transport = TLSStringTransport()
        proto.makeConnection(transport)
        return proto, transport

    plain, _ = open_one(plain_factory)
    upgraded, upgraded_transport = open_one(plain_factory)
    implicit, _ = open_one(implicit_factory)
    web = SessionStore(Clock())
    web.create("alice")
    web.create("bob")
    collector.track_web(web)
    assert collector.counts() == {"ftp": 2, "ftps-explicit": 0, "ftps-implicit": 1,
                                  "web": 2}
    upgraded.dataReceived(b"AUTH TLS\r\n")
    assert upgraded_transport.tls_started is not None
    assert collector.counts()["ftps-explicit"] == 1
    plain.connectionLost(Failure(ConnectionDone()))
    assert collector.counts() == {"ftp": 0, "ftps-explicit": 1, "ftps-implicit": 1,
                                  "web": 2}
    assert metrics.registry.get_sample_value(
        "rumpus_sessions_open", {"protocol": "ftps-implicit"}) == 1


def test_each_server_has_its_own_registry() -> None:
    one, audit_one = wired()
    two, _ = wired()
    audit_one.record("ftp.login", outcome="ok", protocol="ftps-implicit")
    assert value(one, "rumpus_logins_total", protocol="ftps-implicit", outcome="ok") == 1
    assert value(two, "rumpus_logins_total", protocol="ftps-implicit", outcome="ok") is None


def _listener_port(top: Any, name: str) -> defer.Deferred[int]:
    [service] = [s for s in top if getattr(s, "name", None) == name]
    found: defer.Deferred[int] = defer.Deferred()

    def tell(port: Any) -> Any:
        found.callback(port.getHost().port)
        return port  # the service stops this port later

    service._waitingForPort.addCallback(tell)
    return found


@pytest_twisted.ensureDeferred
async def test_scrape_over_a_real_socket(tmp_path: Path) -> None:
    """
    makeService with --metrics serves the page with prometheus_client's
    text format; an FTP session that logs in shows up in it.
    """
    import treq
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    top = tap.makeService(
        {"data-dir": str(tmp_path), "ftp": "tcp:0:interface=127.0.0.1",
         "ftps": "none", "http": "none", "https": "none",
         "metrics": "tcp:0:interface=127.0.0.1", "login-failure-delay": "0"},
        reactor=reactor,
    )
    top.privilegedStartService()
    top.startService()
    try:
        metrics_port = await _listener_port(top, "metrics")
        ftp_port = await _listener_port(top, "ftp")
        url = f"http://127.0.0.1:{metrics_port}/metrics".encode()
        response = await treq.get(url)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        text = (await response.content()).decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"rumpus_sessions_open", "rumpus_logins", "rumpus_bans_active",
                "rumpus_certificate_expiry_days", "rumpus_passive_ports_in_use",
                "rumpus_password_check_seconds"} <= names

        def cleartext_user() -> None:
            import socket

            with socket.create_connection(("127.0.0.1", ftp_port), timeout=10) as s:
                s.recv(1024)
                s.sendall(b"PWD\r\n")
                s.recv(1024)

        await deferToThread(cleartext_user)
        response = await treq.get(url, headers={
            b"accept": [b"application/openmetrics-text; version=1.0.0"]})
        body = (await response.content()).decode()
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/openmetrics-text")
        assert 'rumpus_refused_before_tls_total{command="PWD"} 1.0' in body
        assert body.rstrip().endswith("# EOF")
    finally:
        await top.stopService()
