"""
Tests for L{rumpus_secure.selfcheck} and ``rumpus-secure check``: the pure
parts in memory, the probes against the real server.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from rumpus_secure.audit import read_events
from rumpus_secure.certificates import ensure_certificate
from rumpus_secure.cli import main
from rumpus_secure.config import build_config
from rumpus_secure.report import PROBE_ACCOUNT
from rumpus_secure.selfcheck import (
    CheckResult,
    SelfCheck,
    Status,
    Target,
    exit_status,
    format_results,
    target_for,
)
from tests.server_process import REPO, ServerProcess, free_port, subprocess_env


def test_targets() -> None:
    assert target_for("ftp", "tcp:2121", None) == Target("ftp", "127.0.0.1", 2121)
    assert target_for("ftp", "tcp:2121:interface=192.0.2.4", None) == Target(
        "ftp", "192.0.2.4", 2121
    )
    assert target_for("ftp", "tcp:port=21:interface=0.0.0.0", None) == Target(
        "ftp", "127.0.0.1", 21
    )
    assert target_for("ftp", "tcp6:2121:interface=\\:\\:", None) == Target(
        "ftp", "::1", 2121
    )
    assert target_for("ftp", "tcp6:2121:interface=2001\\:db8\\:\\:1", None) == Target(
        "ftp", "2001:db8::1", 2121
    )
    assert target_for("ftp", "haproxy:tcp:21", None) == Target(
        "ftp", "127.0.0.1", 21, proxy=True
    )
    assert target_for("ftp", "tcp:2121:interface=127.0.0.1", "192.0.2.9") == Target(
        "ftp", "192.0.2.9", 2121
    )
    assert isinstance(target_for("ftp", "unix:/run/ftp.sock", None), str)


def test_table_and_exit_status() -> None:
    results = [
        CheckResult("A", Status.PASS, "fine"),
        CheckResult("B", Status.SKIP, "listener disabled"),
        CheckResult("C", Status.WARN, "expires in 9 days"),
    ]
    text = format_results(results)
    assert text.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert "1 passed, 0 failed, 1 warnings, 1 skipped" in text
    assert exit_status(results) == 0
    assert exit_status(results, strict=True) == 1
    assert exit_status([*results, CheckResult("D", Status.FAIL, "no")]) == 1


def _certificate_results(
    tmp_path: Path, host: str, public_host: str, days_left: float
) -> dict[str, CheckResult]:
    info = ensure_certificate(tmp_path / host, host, None, None)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(info.cert_path.read_bytes())
    moment = cert.not_valid_after_utc - timedelta(days=days_left)
    check = SelfCheck(build_config({"public-host": public_host}), now=lambda: moment)
    check.certificates["https"] = cert.public_bytes(serialization.Encoding.DER)
    check.certificate_checks()
    return {r.name.split(":")[1].strip().split()[0]: r for r in check.results}


def test_certificate_rules(tmp_path: Path) -> None:
    good = _certificate_results(tmp_path, "files.example.com", "files.example.com", 400)
    assert good["covers"].status is Status.PASS
    assert good["expiry"].status is Status.PASS and "days left" in good["expiry"].detail
    wrong = _certificate_results(tmp_path, "other.example.com", "files.example.com", 10)
    assert wrong["covers"].status is Status.FAIL
    assert "other.example.com" in wrong["covers"].detail
    assert wrong["expiry"].status is Status.WARN
    gone = _certificate_results(tmp_path, "gone.example.com", "gone.example.com", -1)
    assert gone["expiry"].status is Status.FAIL


def test_nothing_listening(tmp_path: Path) -> None:
    port = free_port()
    out = io.StringIO()
    status = main(
        ["--data-dir", str(tmp_path), "check", "--ftp", f"tcp:{port}",
         "--ftps", "none", "--http", "none", "--https", "none"],
        stdout=out, stderr=io.StringIO(),
    )
    assert status == 1
    lines = out.getvalue().splitlines()
    assert any("FAIL" in line and f"127.0.0.1:{port}" in line for line in lines)
    assert any(line.startswith("FTPS") and "skip" in line for line in lines)
    assert any(line.startswith("Certificate") and "skip" in line for line in lines)


# -- the real server -------------------------------------------------------


def _check(server: ServerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "check", *server.arguments(), *extra],
        check=False, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=60,
    )


def _rows(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        if not line.strip():
            break
        name, status, detail = _split_row(line)
        rows[name] = (status, detail)
    return rows


def _split_row(line: str) -> tuple[str, str, str]:
    parts = [p for p in line.split("  ") if p]
    return parts[0].strip(), parts[1].strip(), "  ".join(parts[2:]).strip()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("check-default")) as server:
        yield server


@pytest.mark.integration
def test_all_pass_with_defaults(default_server: ServerProcess) -> None:
    result = _check(default_server)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert len(rows) == 12
    assert {status for status, _ in rows.values()} == {"PASS"}, result.stdout
    assert rows["HTTP: redirect to HTTPS"][1].startswith(
        f"301 to https://localhost:{default_server.https_port}/"
    )
    # The probe never logged in and never sent a password.
    events = read_events(default_server.audit_path)
    names = {e["event"] for e in events}
    assert "ftp.cleartext_password" not in names
    assert not [e for e in events if e["event"].endswith(".login")]
    assert [e["account"] for e in events if e["event"] == "ftp.cleartext_user"] == [
        PROBE_ACCOUNT
    ]
    report = default_server.cli("audit").stdout
    assert PROBE_ACCOUNT not in report and "1 probe by" in report


@pytest.mark.integration
def test_config_file_and_host(default_server: ServerProcess, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    options = default_server.options
    config.write_text(
        "".join(f'{name} = "{options[name]}"\n' for name in ("ftp", "ftps", "http", "https"))
    )
    result = subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--config", str(config), "check",
         "--host", "127.0.0.1"],
        check=False, capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_allow_plain_fails(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, ftp_security="allow-plain", http="none") as server:
        result = _check(server)
    assert result.returncode == 1, result.stdout
    rows = _rows(result.stdout)
    status, detail = rows["FTP: login without TLS refused"]
    assert status == "FAIL" and "plain login allowed" in detail
    assert rows["HTTP"][0] == "skip"
    others = {name: s for name, (s, _) in rows.items()
              if name not in ("FTP: login without TLS refused", "HTTP")}
    assert set(others.values()) == {"PASS"}, result.stdout


@pytest.mark.integration
def test_implicit_only(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, ftp_security="implicit-only") as server:
        result = _check(server)
    assert result.returncode == 0, result.stdout
    rows = _rows(result.stdout)
    assert rows["FTP: login without TLS refused"][0] == "PASS"
    assert rows["FTP: AUTH TLS"][0] == "skip"


@pytest.mark.integration
def test_wrong_public_host_fails(default_server: ServerProcess) -> None:
    result = _check(default_server, "--public-host", "files.example.com")
    assert result.returncode == 1
    rows = _rows(result.stdout)
    assert rows["Certificate: covers files.example.com"][0] == "FAIL"
    # The redirect goes to the server's configured host, not the one given.
    assert rows["HTTP: redirect to HTTPS"][0] in ("FAIL", "WARN")
