"""
The ACME client's parts without a CA: the schedule, the back-off, the
service on a Clock with a fake issuance, HTTP-01 answers bound to their
name, the configuration rules and what ``check`` says.

Against a real CA (Pebble): tests/integration/test_acme_pebble.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.task import Clock

from rumpus_secure.acme import schedule
from rumpus_secure.acme.challenges import ChallengeResponder
from rumpus_secure.acme.check import acme_results
from rumpus_secure.acme.client import AcmeFailure, AcmeSettings, Issued, _answer
from rumpus_secure.acme.service import AcmeService
from rumpus_secure.acme.store import AcmeStore, new_key_pem, prepare_files
from rumpus_secure.audit import MemoryAuditLog
from rumpus_secure.config import ConfigError, ServerConfig, build_config
from rumpus_secure.selfcheck import Status
from rumpus_secure.web.redirect import build_http_site
from tests.test_web_support import HTTPDriver, make_server

NAMES = ("files.example.org", "www.example.org")
START = datetime(2030, 1, 1, tzinfo=UTC)


# -- schedule ------------------------------------------------------------------


def test_renewal_30_days_before_expiry_or_at_two_thirds():
    day = timedelta(days=1)
    assert schedule.renewal_time(START, START + 90 * day) == START + 60 * day
    assert schedule.renewal_time(START, START + 365 * day) == START + 335 * day
    assert schedule.renewal_time(START, START + 6 * day) == START + 4 * day
    six = timedelta(seconds=6)
    assert schedule.renewal_time(START, START + six) == START + timedelta(seconds=4)


def test_backoff_doubles_up_to_the_cap():
    assert [schedule.backoff(n) for n in (1, 2, 3, 4)] == [120, 240, 480, 960]
    assert schedule.backoff(20) == schedule.BACKOFF_MAX == 6 * 3600
    assert schedule.backoff(10_000) == schedule.BACKOFF_MAX


def test_failing_attempts_stay_under_five_an_hour():
    # Let's Encrypt: 5 failed validations per account, name and hour.
    times, now = [0.0], 0.0
    for failures in range(1, 40):
        now += schedule.backoff(failures)
        times.append(now)
    for start in times:
        assert sum(start <= t < start + 3600 for t in times) <= 5


def test_retry_after_and_rate_limits_win_when_longer():
    assert schedule.retry_delay(1, None, False) == 120
    assert schedule.retry_delay(1, 600, False) == 600
    assert schedule.retry_delay(5, 10, False) == 1920
    assert schedule.retry_delay(1, None, True) == schedule.RATE_LIMIT_MIN
    assert schedule.retry_delay(1, 7200, True) == 7200


def test_parse_retry_after():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert schedule.parse_retry_after("120", now) == 120
    assert schedule.parse_retry_after("Tue, 01 Jan 2030 12:10:00 GMT", now) == 600
    assert schedule.parse_retry_after("Tue, 01 Jan 2030 11:00:00 GMT", now) == 0
    assert schedule.parse_retry_after("999999999", now) == 7 * 86400
    assert schedule.parse_retry_after("soon", now) is None
    assert schedule.parse_retry_after(None, now) is None


# -- the service on a Clock --------------------------------------------------------


def make_cert(not_before: datetime, lifetime: timedelta, *, self_signed: bool = False
              ) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    issuer = subject if self_signed else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_before + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def now_thread(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


class FakeCA:
    """
    Stands in for L{obtain_certificate}: fails with the queued failures,
    then issues certificates of C{lifetime} from the clock's time.
    """

    def __init__(self, clock: Clock, lifetime: timedelta) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.failures: list[AcmeFailure] = []
        self.calls = 0

    def __call__(self, settings: AcmeSettings, store: AcmeStore,
                 responder: ChallengeResponder) -> Issued:
        self.calls += 1
        if self.calls > 50:
            raise RuntimeError("ordering in a loop")
        if self.failures:
            raise self.failures.pop(0)
        when = datetime.fromtimestamp(self.clock.seconds(), UTC)
        cert, key = make_cert(when, self.lifetime)
        return Issued(cert, key, "https://ca.example/acct/1")


@pytest.fixture
def acme(tmp_path: Path):
    clock = Clock()
    clock.advance(START.timestamp())
    store = AcmeStore(tmp_path / "acme")
    cert, key = make_cert(START - timedelta(days=1), timedelta(days=800), self_signed=True)
    store.ensure_directory()
    store.cert_path.write_bytes(cert)
    store.key_path.write_bytes(key)
    installed: list[bytes] = []
    ca = FakeCA(clock, timedelta(days=90))
    audit = MemoryAuditLog()
    service = AcmeService(
        AcmeSettings("https://ca.example/dir", NAMES), store, ChallengeResponder(),
        clock=clock, run_in_thread=now_thread,
        install=lambda: installed.append(store.cert_path.read_bytes()) or True,
        audit=audit, obtain=ca,
    )
    service.clock_ = clock
    service.installed = installed
    service.ca = ca
    service.audit_ = audit
    yield service
    service.stopService()
    assert clock.getDelayedCalls() == []


def started(service: AcmeService) -> Clock:
    service.startService()
    clock: Clock = service.clock_  # type: ignore[attr-defined]
    clock.advance(0)
    return clock


def test_first_certificate_is_ordered_at_once_and_installed(acme):
    clock = started(acme)
    assert acme.ca.calls == 1
    assert len(acme.installed) == 1
    served = x509.load_pem_x509_certificate(acme.installed[0])
    assert served.issuer != served.subject
    assert not acme.serving_placeholder
    [entry] = acme.audit_.named("acme.attempt")
    assert entry["outcome"] == "ok" and entry["names"] == list(NAMES)
    # Next: 60 days on (two thirds of 90 days = 30 days before expiry).
    assert acme.next_attempt == START + timedelta(days=60)
    clock.advance(timedelta(days=60).total_seconds() - 1)
    assert acme.ca.calls == 1
    clock.advance(1)
    assert acme.ca.calls == 2 and len(acme.installed) == 2
    assert acme.store.read_status()["serving"] == "acme"


def test_a_stored_certificate_is_renewed_when_due_or_when_names_were_added(acme):
    issued, key = make_cert(START - timedelta(days=10), timedelta(days=90))
    acme.store.cert_path.write_bytes(issued)
    acme.store.key_path.write_bytes(key)
    started(acme)
    assert acme.ca.calls == 0 and not acme.serving_placeholder
    assert acme.next_attempt == START + timedelta(days=50)
    acme.stopService()
    acme.settings = AcmeSettings("https://ca.example/dir", NAMES + ("ftp.example.org",))
    started(acme)
    assert acme.ca.calls == 1


def test_a_certificate_due_on_arrival_does_not_loop(acme):
    # Valid for 5 more minutes, but past two thirds of its 30 on arrival.
    acme.ca.lifetime = timedelta(minutes=30)
    acme.ca.clock = Clock()
    acme.ca.clock.advance((START - timedelta(minutes=25)).timestamp())
    clock = started(acme)
    assert acme.ca.calls == 1
    assert acme.next_attempt == START + timedelta(seconds=60)
    clock.advance(59)
    assert acme.ca.calls == 1


def test_failures_back_off_and_keep_the_served_certificate(acme):
    acme.ca.failures = [AcmeFailure("down", "network"), AcmeFailure("down", "network"),
                        AcmeFailure("down", "network")]
    clock = started(acme)
    placeholder = acme.store.cert_path.read_bytes()
    assert acme.ca.calls == 1 and acme.installed == []
    for calls, wait in ((2, 120), (3, 240)):
        clock.advance(wait - 1)
        assert acme.ca.calls == calls - 1
        clock.advance(1)
        assert acme.ca.calls == calls
    assert acme.store.cert_path.read_bytes() == placeholder
    status = acme.store.read_status()
    assert status["failures"] == 3 and status["last_error"] == "down"
    assert status["serving"] == "self-signed"
    clock.advance(480)
    assert acme.ca.calls == 4 and len(acme.installed) == 1 and acme.failures == 0
    assert [e["outcome"] for e in acme.audit_.named("acme.attempt")] == [
        "failed", "failed", "failed", "ok"]


def test_retry_after_is_respected_even_by_sighup(acme):
    acme.ca.failures = [AcmeFailure("busy", "serverInternal", retry_after=900)]
    clock = started(acme)
    assert acme.next_attempt == START + timedelta(seconds=900)
    clock.advance(450)
    assert acme.retry_soon() is False
    clock.advance(449)
    assert acme.ca.calls == 1
    clock.advance(1)
    assert acme.ca.calls == 2 and acme.failures == 0


def test_rate_limit_without_retry_after_waits_an_hour(acme):
    acme.ca.failures = [AcmeFailure("too many", "rateLimited")]
    clock = started(acme)
    assert acme.next_attempt == START + timedelta(seconds=3600)
    assert acme.retry_soon() is False
    clock.advance(3599)
    assert acme.ca.calls == 1
    clock.advance(1)
    assert acme.ca.calls == 2


def test_sighup_retries_an_ordinary_failure_at_once(acme):
    acme.ca.failures = [AcmeFailure("validation failed", "validation")]
    clock = started(acme)
    assert acme.retry_soon() is True
    clock.advance(0)
    assert acme.ca.calls == 2 and acme.failures == 0
    assert acme.retry_soon() is False


def test_renewal_failure_keeps_the_old_certificate_and_warns(acme, tmp_path):
    clock = started(acme)
    first = acme.store.cert_path.read_bytes()
    acme.ca.failures = [AcmeFailure("the CA refused: no", "unauthorized")]
    clock.advance(timedelta(days=60).total_seconds())
    assert acme.store.cert_path.read_bytes() == first and acme.failures == 1
    config = ServerConfig(data_dir=tmp_path, acme_directory="https://ca.example/dir",
                          public_host=NAMES[0])
    [result] = acme_results(config, now=START + timedelta(days=61))
    assert result.status is Status.WARN
    assert "renewal failing" in result.detail and "the CA refused: no" in result.detail
    [expired] = acme_results(config, now=START + timedelta(days=91))
    assert expired.status is Status.FAIL


def test_a_certificate_the_tls_layer_refuses_is_not_left_in_place(acme):
    served = acme.store.cert_path.read_bytes()
    acme.install = lambda: False
    started(acme)
    assert acme.failures == 1 and "refused by the TLS layer" in acme.last_error
    assert acme.store.cert_path.read_bytes() == served
    assert acme.serving_placeholder


def test_check_without_acme_and_before_any_attempt(tmp_path):
    assert acme_results(ServerConfig(data_dir=tmp_path)) == []
    config = ServerConfig(data_dir=tmp_path, acme_directory="https://ca.example/dir",
                          public_host=NAMES[0])
    [result] = acme_results(config)
    assert result.status is Status.WARN and "no attempt" in result.detail


def test_metrics_gauges(acme):
    from rumpus_secure.acme.assembly import watch_acme
    from rumpus_secure.metrics import Metrics

    metrics = Metrics(acme.clock_)
    watch_acme(metrics, acme)
    acme.ca.failures = [AcmeFailure("down", "network")]
    started(acme)
    sample = metrics.registry.get_sample_value
    assert sample("rumpus_acme_failures") == 1
    assert sample("rumpus_acme_self_signed") == 1
    acme.clock_.advance(120)
    assert sample("rumpus_acme_failures") == 0
    assert sample("rumpus_acme_self_signed") == 0


# -- HTTP-01 answers -----------------------------------------------------------------


def test_challenge_answered_only_for_its_own_name(tmp_path):
    server = make_server(tmp_path, acme_directory="https://ca.example/dir",
                         public_host=NAMES[0])
    server.acme_responder = responder = ChallengeResponder()
    responder.add(NAMES[0], "tok_en-1", "tok_en-1.thumbprint")
    site = build_http_site(server, server.reactor)
    path = b"/.well-known/acme-challenge/tok_en-1"
    ours = HTTPDriver(site, host=NAMES[0].encode() + b":80", origin=None)
    assert ours.get(path).status == 200
    assert ours.get(path).body == b"tok_en-1.thumbprint"
    for host in (b"evil.example.org", b"www.example.org", b"127.0.0.1:80"):
        other = HTTPDriver(site, host=host, origin=None)
        assert other.get(path).status == 404, host
    assert ours.get(b"/.well-known/acme-challenge/other").status == 404
    responder.remove("tok_en-1")
    assert ours.get(path).status == 404


def authorization(name: str, status: Any = messages.STATUS_PENDING
                  ) -> messages.AuthorizationResource:
    challenge = messages.ChallengeBody(
        chall=challenges.HTTP01(token=b"t" * 32), uri="https://ca.example/chall/1",
        status=messages.STATUS_PENDING)
    return messages.AuthorizationResource(
        uri="https://ca.example/authz/1",
        body=messages.Authorization(
            identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name),
            challenges=[challenge], status=status))


class RecordingClient:
    def __init__(self) -> None:
        self.answered: list[Any] = []

    def answer_challenge(self, challenge: Any, response: Any) -> None:
        self.answered.append(challenge)


def account_key() -> Any:
    import josepy as jose

    return jose.JWKEC(key=serialization.load_pem_private_key(new_key_pem(), None))


def test_an_authorization_for_a_name_we_do_not_serve_is_not_answered():
    client, responder = RecordingClient(), ChallengeResponder()
    settings = AcmeSettings("https://ca.example/dir", NAMES)
    with pytest.raises(AcmeFailure) as caught:
        _answer(client, authorization("intruder.example.net"), settings,  # type: ignore[arg-type]
                account_key(), responder)
    assert caught.value.problem == "refused-name"
    assert client.answered == [] and len(responder) == 0
    token = _answer(client, authorization(NAMES[1]), settings, account_key(),  # type: ignore[arg-type]
                    responder)
    assert token is not None and len(client.answered) == 1
    assert responder.answer(token, NAMES[1]) is not None
    assert responder.answer(token, NAMES[0]) is None


# -- configuration and files -------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"http": "none"}, "needs the --http listener"),
    ({"http-redirect": "off"}, "--http-redirect off"),
    ({"cert": "/c.pem", "key": "/k.pem"}, "drop --cert"),
    ({"public-host": "127.0.0.1"}, "public host name"),
    ({"public-host": "localhost"}, "public host name"),
    ({"acme-directory": "http://ca.example/dir"}, "https:// URL"),
    ({"acme-email": "nobody"}, "e-mail address"),
    ({"acme-names": "10.0.0.1"}, "is an address"),
    ({"acme-names": "bad_name.example"}, "not a host name"),
])
def test_bad_acme_configuration_is_refused(options, message):
    given = {"acme-directory": "https://ca.example/dir", "public-host": NAMES[0]}
    given.update(options)
    with pytest.raises(ConfigError, match=message):
        build_config(given)


def test_acme_names_and_settings():
    config = build_config({"acme-directory": "https://ca.example/dir",
                           "public-host": "Files.Example.org",
                           "acme-names": "www.example.org, WWW.example.org.,files.example.org"})
    assert config.acme_names == ("www.example.org", "files.example.org")
    settings = AcmeSettings.from_config(config)
    assert settings.names == ("files.example.org", "www.example.org")


def test_placeholder_then_issued_certificate_served_at_start(tmp_path):
    cert, key, placeholder = prepare_files(tmp_path, NAMES[0])
    assert placeholder and cert == tmp_path / "acme" / "cert.pem"
    assert cert.read_bytes() == (tmp_path / "tls" / "cert.pem").read_bytes()
    assert oct(cert.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "acme").stat().st_mode & 0o777) == "0o700"
    issued, issued_key = make_cert(datetime.now(UTC) - timedelta(days=1), timedelta(days=90))
    store = AcmeStore(tmp_path / "acme")
    store.write_pending(issued, issued_key)
    store.install_pending()
    assert prepare_files(tmp_path, NAMES[0]) == (cert, key, False)
    # Expired while the server was down: back to a self-signed one, no crash.
    old, old_key = make_cert(datetime.now(UTC) - timedelta(days=100), timedelta(days=90))
    store.write_pending(old, old_key)
    store.install_pending()
    assert prepare_files(tmp_path, NAMES[0])[2] is True
    assert store.current_certificate() is None


# -- what the CA says about waiting reaches the schedule -----------------------------------


class _RefusingCA:
    """
    A directory on loopback whose newAccount answers 429 rateLimited with
    Retry-After, as Let's Encrypt does.
    """

    def __init__(self, retry_after: str) -> None:
        import http.server
        import json
        import threading

        retry = retry_after

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Replay-Nonce", "bm9uY2Vub25jZQ")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                body = json.dumps({"newNonce": base + "/nonce", "newAccount": base + "/acct",
                                   "newOrder": base + "/order"}).encode()
                self._send(200, body, {"Content-Type": "application/json"})

            def do_HEAD(self) -> None:
                self._send(200, b"", {})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                                   "detail": "too many new accounts"}).encode()
                self._send(429, body, {"Content-Type": "application/problem+json",
                                       "Retry-After": retry})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_rate_limit_and_retry_after_come_from_the_ca_response(tmp_path):
    from rumpus_secure.acme.client import obtain_certificate

    ca = _RefusingCA("7200")
    try:
        with pytest.raises(AcmeFailure) as caught:
            obtain_certificate(AcmeSettings(ca.url, NAMES), AcmeStore(tmp_path / "acme"),
                               ChallengeResponder())
    finally:
        ca.close()
    failure = caught.value
    assert failure.problem == "rateLimited" and failure.rate_limited
    assert failure.retry_after == 7200
    assert "too many new accounts" in failure.reason
    assert schedule.retry_delay(1, failure.retry_after, failure.rate_limited) == 7200


def test_unreachable_directory_is_a_network_failure(tmp_path):
    from rumpus_secure.acme.client import obtain_certificate
    from tests.server_process import free_port

    with pytest.raises(AcmeFailure) as caught:
        obtain_certificate(AcmeSettings(f"https://127.0.0.1:{free_port()}/dir", NAMES),
                           AcmeStore(tmp_path / "acme"), ChallengeResponder())
    assert caught.value.problem == "network"
    assert "cannot reach the ACME directory" in caught.value.reason


def test_signals_in_a_loop_make_no_more_than_five_attempts_an_hour(acme):
    """
    SIGHUP is also the reload signal: a deploy hook sending it in a loop
    must not burn the CA's limit of five failed validations an hour.
    """
    acme.ca.failures = [AcmeFailure("validation failed", "validation")] * 20
    clock = started(acme)
    for _ in range(10):
        acme.retry_soon()
        clock.advance(2)
    assert acme.ca.calls == 5
    clock.advance(3600)  # an hour later the operator may signal again
    assert acme.retry_soon() is True
