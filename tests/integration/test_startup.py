"""
Bad start-up input: one clear line on stderr, a non-zero exit, no traceback.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
from pathlib import Path

import pytest

from tests.server_process import free_port, run_twistd

pytestmark = pytest.mark.integration


def _listeners(ftp: str | None = None) -> list[str]:
    return [
        "--ftp", ftp or f"tcp:{free_port()}:interface=127.0.0.1",
        "--ftps", "none", "--http", "none", "--https", "none",
    ]


def _assert_clean_failure(result: subprocess.CompletedProcess[str],
                          *words: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("rumpus-secure: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def test_bad_endpoint(tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "--data-dir", str(tmp_path / "d"),
                        *_listeners("nonsense:1"))
    _assert_clean_failure(result, "--ftp", "nonsense:1")


def test_malformed_toml(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('data-dir = "unterminated\n')
    result = run_twistd(tmp_path, "--config", str(config), *_listeners())
    _assert_clean_failure(result, str(config), "TOML")


def test_unknown_option(tmp_path: Path) -> None:
    result = run_twistd(tmp_path, "--data-dir", str(tmp_path / "d"),
                        "--no-such-option", "1", *_listeners())
    _assert_clean_failure(result, "no-such-option")


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / f"{name}.crt"
    key_path = tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_mismatched_cert_and_key(tmp_path: Path) -> None:
    cert_one, _ = _self_signed(tmp_path, "one")
    _, key_two = _self_signed(tmp_path, "two")
    result = run_twistd(tmp_path, "--data-dir", str(tmp_path / "d"),
                        "--cert", str(cert_one), "--key", str(key_two),
                        *_listeners())
    _assert_clean_failure(result)


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = run_twistd(tmp_path, "--data-dir", str(blocker / "data"), *_listeners())
    _assert_clean_failure(result, str(blocker / "data"))


def _port_in_use(tmp_path: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_twistd(tmp_path, "--data-dir", str(tmp_path / "d"),
                            *_listeners(f"tcp:{port}:interface=127.0.0.1"))
    return port, result


def test_port_in_use(tmp_path: Path) -> None:
    """
    One clear line on stderr that names the listener and the port, and exit 1.
    """
    port, result = _port_in_use(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if "rumpus-secure: error:" in line]
    assert len(errors) == 1, output
    assert f"cannot listen for ftp on tcp:{port}" in errors[0]
    assert "Address already in use" in errors[0]


def test_port_in_use_reported_on_stderr(tmp_path: Path) -> None:
    port, result = _port_in_use(tmp_path)
    _assert_clean_failure(result, "ftp", str(port))


def test_partial_uploads_left_by_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import time

    from tests.server_process import ServerProcess

    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    first = ServerProcess(tmp_path / "run1", data_dir=tmp_path / "data")
    with first:
        first.add_user("alice", "the-password-1")
        home = first.home("alice")
    (home / "docs").mkdir()
    stale = home / "docs" / (".rumpus-upload-" + "ab" * 16 + ".part")
    stale.write_bytes(b"half an upload")
    os.utime(stale, (time.time() - 3600,) * 2)
    kept = home / "docs" / "real.txt"
    kept.write_bytes(b"user data")
    second = ServerProcess(tmp_path / "run2", data_dir=tmp_path / "data")
    with second:
        assert second.log_path is not None
        deadline = time.monotonic() + 30
        while stale.exists() or "partial upload(s)" not in second.log_path.read_text():
            assert time.monotonic() < deadline, "the leftover was not removed"
            time.sleep(0.1)
        assert kept.read_bytes() == b"user data"
