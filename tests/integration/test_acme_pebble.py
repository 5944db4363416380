"""
The built-in ACME client against Pebble, the ACME test server.

The real server (``twistd rumpus-secure``) gets its certificate from Pebble
by HTTP-01 on its own HTTP listener; every name resolves to loopback
through Pebble's test DNS.  What is checked is what a user sees: the
certificate each TLS port serves (verified against Pebble's root for the
configured names), open FTPS sessions, the files in ``DATA-DIR/acme``, the
audit log, ``check`` and ``/metrics``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.clients import explicit_ftps, implicit_ftps, retrieve
from tests.pebble import Pebble
from tests.server_process import ServerProcess, free_port

pytestmark = pytest.mark.integration

HOST = "files.rumpus.test"
WAIT = 30.0


def audit_events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    if not server.audit_path.exists():
        return []
    entries = []
    for line in server.audit_path.read_text("utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("event") == event:
            entries.append(entry)
    return entries


def wait_for(condition: Callable[[], Any], what: str, server: ServerProcess,
             pebble: Pebble, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{server.log_text()}\n"
                         f"{pebble.logs()[-3000:]}")


def attempts(server: ServerProcess, outcome: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(server, "acme.attempt") if e["outcome"] == outcome]


def verified_context(root: x509.Certificate, alpn: list[str] | None = None) -> ssl.SSLContext:
    """
    A client context that trusts only Pebble's root and checks the name.
    """
    from cryptography.hazmat.primitives import serialization

    context = ssl.create_default_context(
        cadata=root.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def handshake(server: ServerProcess, port_name: str, context: ssl.SSLContext,
              name: str) -> x509.Certificate:
    """
    A TLS handshake with one port as a client that asked for C{name}.
    """
    port = server.ports[port_name]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if port_name == "ftp":
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220")
            raw.sendall(b"AUTH TLS\r\n")
            assert reader.readline().startswith(b"234")
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_by_pebble_everywhere(server: ServerProcess, pebble: Pebble,
                                names: list[str]) -> x509.Certificate:
    """
    Every TLS port serves a chain to Pebble's root that covers C{names}.
    """
    root = pebble.root()
    served = set()
    for port_name, alpn in (("ftp", ["ftp"]), ("ftps", ["ftp"]), ("https", ["http/1.1"])):
        for name in names:
            served.add(handshake(server, port_name, verified_context(root, alpn), name))
    assert len(served) == 1, "the ports serve different certificates"
    return served.pop()


def metric(server: ServerProcess, port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.fixture
def acme_server(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess, Pebble]]]:
    """
    Makes a server and its Pebble; both are stopped after the test.
    """
    made: list[tuple[ServerProcess, Pebble]] = []

    def make(validity: int | None = None, address: str = "127.0.0.1",
             **options: str) -> tuple[ServerProcess, Pebble]:
        server = ServerProcess(tmp_path, public_host=HOST, safe_list="127.0.0.0/8",
                               **options)
        pebble = Pebble(tmp_path / "pebble", server.http_port, validity=validity,
                        address=address)
        made.append((server, pebble))
        pebble.start()
        server.options.update({
            "acme-directory": pebble.directory_url,
            "acme-ca-bundle": str(pebble.ca_bundle),
            "acme-email": "ops@rumpus.test",
        })
        return server, pebble

    yield make
    for server, pebble in made:
        server.stop()
        pebble.stop()
        assert "Traceback" not in server.all_logs(), server.all_logs()


def test_issuance(acme_server: Any) -> None:
    """
    The first certificate comes from the CA for every name, is served on
    every TLS port, is kept in DATA-DIR/acme (0600), and a restart serves it
    again without ordering another one.
    """
    server, pebble = acme_server(acme_names="www.rumpus.test")
    with server:
        ok = wait_for(lambda: attempts(server, "ok"), "the certificate", server, pebble)
        cert = served_by_pebble_everywhere(server, pebble, [HOST, "www.rumpus.test"])
        assert format(cert.serial_number, "x") == ok[0]["serial"]
        reloads = audit_events(server, "tls.reload")
        assert [r["trigger"] for r in reloads] == ["acme"]
        assert "serving a self-signed certificate" in server.log_text()
        acme_dir = server.data_dir / "acme"
        assert stat.S_IMODE(acme_dir.stat().st_mode) == 0o700
        for name in ("account.key", "cert.pem", "key.pem", "status.json"):
            assert stat.S_IMODE((acme_dir / name).stat().st_mode) == 0o600, name
        check = server.cli("check", *server.arguments(), check=False).stdout
        line = next(line for line in check.splitlines() if line.startswith("ACME"))
        assert "PASS" in line and "valid until" in line, check
    with server:
        time.sleep(0.5)
        assert len(audit_events(server, "acme.attempt")) == 1
        again = served_by_pebble_everywhere(server, pebble, [HOST])
        assert again.serial_number == cert.serial_number
        assert "serving a self-signed" not in server.log_text()


def test_short_lived_certificate_is_renewed(acme_server: Any) -> None:
    """
    A certificate valid 12 s is renewed at two thirds of its life (8 s),
    before it expires, and the renewed one is served.
    """
    from datetime import datetime

    server, pebble = acme_server(validity=12)
    with server:
        issued = wait_for(lambda: (lambda ok: ok if len(ok) >= 2 else None)(
            attempts(server, "ok")), "a renewal", server, pebble)
        first, second = issued[0], issued[1]
        assert first["serial"] != second["serial"]
        gap = (datetime.fromisoformat(second["time"].replace("Z", "+00:00"))
               - datetime.fromisoformat(first["time"].replace("Z", "+00:00")))
        assert gap.total_seconds() >= 5, (first, second)
        served = handshake(server, "https", verified_context(pebble.root()), HOST)
        ok = attempts(server, "ok")
        serials = [e["serial"] for e in ok]
        index = serials.index(format(served.serial_number, "x"))
        assert index >= 1
        # Issued while the one before it was still valid.
        assert served.not_valid_before_utc < datetime.fromisoformat(
            ok[index - 1]["not_after"])
        triggers = [r["trigger"] for r in audit_events(server, "tls.reload")]
        assert len(triggers) >= 2 and set(triggers) == {"acme"}


def test_refused_then_retried_switches_every_port_keeps_open_sessions(
        acme_server: Any) -> None:
    """
    Pebble refuses the first order (the name does not lead to this server
    yet): the self-signed certificate stays, check and the metrics warn, the
    audit log has the attempt.  Once the name is fixed, SIGHUP retries; the
    new certificate is served on every TLS port while two FTPS sessions
    opened before it go on working with their old certificate.
    """
    metrics_port = free_port()
    server, pebble = acme_server(address="127.0.0.2",
                                 metrics=f"tcp:{metrics_port}:interface=127.0.0.1")
    with server:
        failed = wait_for(lambda: attempts(server, "failed"), "a refusal", server, pebble)
        assert failed[0]["problem"] == "validation", failed
        assert "127.0.0.2" in failed[0]["reason"] or "connect" in failed[0]["reason"]
        check = server.cli("check", *server.arguments(), check=False).stdout
        line = next(line for line in check.splitlines() if line.startswith("ACME"))
        assert "WARN" in line and "self-signed" in line and "failed" in line, check
        assert metric(server, metrics_port, "rumpus_acme_failures") == 1
        assert metric(server, metrics_port, "rumpus_acme_self_signed") == 1

        server.add_user("alice", "alice-password-1")
        sessions = [explicit_ftps(server.ftp_port), implicit_ftps(server.ftps_port)]
        for ftp in sessions:
            if not isinstance(ftp.sock, ssl.SSLSocket):
                ftp.auth()
            ftp.login("alice", "alice-password-1")
            ftp.prot_p()
        old = {ftp.sock.getpeercert(binary_form=True) for ftp in sessions}
        assert len(old) == 1

        pebble.resolve_to("127.0.0.1")
        os.kill(server.process.pid, signal.SIGHUP)  # type: ignore[union-attr]
        ok = wait_for(lambda: attempts(server, "ok"), "the retry", server, pebble)
        assert ok[0]["attempt"] == 2
        new = served_by_pebble_everywhere(server, pebble, [HOST])
        assert format(new.serial_number, "x") == ok[0]["serial"]

        for n, ftp in enumerate(sessions):
            assert ftp.voidcmd("NOOP").startswith("200")
            ftp.storbinary(f"STOR kept{n}.txt", io.BytesIO(b"still here %d" % n))
            assert retrieve(ftp, f"kept{n}.txt") == b"still here %d" % n
            assert ftp.sock.getpeercert(binary_form=True) in old
            ftp.quit()
        assert metric(server, metrics_port, "rumpus_acme_failures") == 0
        assert metric(server, metrics_port, "rumpus_acme_self_signed") == 0
        assert [e["outcome"] for e in audit_events(server, "acme.attempt")] == [
            "failed", "ok"]




def test_challenges_for_other_names_and_accounts_are_refused(acme_server: Any,
                                                             tmp_path: Path) -> None:
    """
    While the server gets its own certificate, another ACME account orders
    certificates whose names lead to this server: one for a name the server
    does not serve, one for the server's own name.  The server answers
    neither (it answers only its own pending tokens, for their own name), so
    Pebble refuses both; the server's own order goes through.
    """
    import threading

    from rumpus_secure.acme.challenges import ChallengeResponder
    from rumpus_secure.acme.client import AcmeFailure, AcmeSettings, obtain_certificate
    from rumpus_secure.acme.store import AcmeStore

    server, pebble = acme_server()
    outcomes: dict[str, Any] = {}

    def intrude(name: str) -> None:
        settings = AcmeSettings(pebble.directory_url, (name,), ca_bundle=pebble.ca_bundle)
        try:
            obtain_certificate(settings, AcmeStore(tmp_path / f"intruder-{name}"),
                               ChallengeResponder())
        except AcmeFailure as failure:
            outcomes[name] = failure
        else:
            outcomes[name] = "issued"

    with server:
        threads = [threading.Thread(target=intrude, args=(name,))
                   for name in ("intruder.rumpus.test", HOST)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        wait_for(lambda: attempts(server, "ok"), "the server's own certificate",
                 server, pebble)
    for name in ("intruder.rumpus.test", HOST):
        failure = outcomes[name]
        assert isinstance(failure, AcmeFailure), (name, failure)
        assert failure.problem == "validation", (name, failure)
        assert "404" in failure.reason, (name, failure.reason)
    assert attempts(server, "failed") == []
