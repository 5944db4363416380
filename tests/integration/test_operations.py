"""
Operating the real server: the quick start, the first-start password file,
the pid file, and ``rumpus-secure check`` with no options (issue #13 part 4).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_process import (
    LISTENERS,
    ServerProcess,
    free_port,
    port_accepts,
    subprocess_env,
)

pytestmark = pytest.mark.integration


def _free_listeners() -> dict[str, int]:
    return {name: free_port() for name in LISTENERS}


def _quick_start(folder: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    """
    The README's start command, ``twistd -n rumpus-secure``, word for word,
    in C{folder}; only the ports come from a config file named by
    RUMPUS_SECURE_CONFIG, so the test never takes the real default ports.
    """
    config = folder.parent / f"{folder.name}.toml"
    config.write_text("".join(
        f'{name} = "tcp:{port}:interface=127.0.0.1"\n' for name, port in ports.items()
    ))
    env = subprocess_env()
    env["RUMPUS_SECURE_CONFIG"] = str(config)
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return subprocess.Popen(
        [*twistd, "-n", "rumpus-secure"], cwd=folder, env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _wait_for(ports: dict[str, int], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not all(port_accepts(p) for p in ports.values()):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=15)
    return out


def test_quick_start_password_file_and_no_pid_file(tmp_path: Path) -> None:
    """
    Followed literally in a fresh folder, the quick start gives a server
    whose admin password can be found, and writes no twistd.pid: a second
    instance from the same folder (its own data directory) starts too.
    """
    first_dir = tmp_path / "fresh"
    first_dir.mkdir()
    ports = _free_listeners()
    first = _quick_start(first_dir, ports)
    try:
        _wait_for(ports, first)
        saved = first_dir / "rumpus-data" / "initial-admin-password"
        assert saved.stat().st_mode & 0o777 == 0o600
        password = saved.read_text().strip()
        assert len(password) == 20
        assert not (first_dir / "twistd.pid").exists()
        # The password opens the account (implicit FTPS with ftplib).
        from tests.integration.clients import implicit_ftps

        ftp = implicit_ftps(ports["ftps"])
        try:
            assert ftp.login("admin", password).startswith("230")
        finally:
            ftp.close()
        # A second server from the same folder is not refused for a pid file.
        (first_dir / "second").mkdir()
        other_ports = _free_listeners()
        config = tmp_path / "second.toml"
        config.write_text(f'data-dir = "{first_dir / "second" / "data"}"\n' + "".join(
            f'{name} = "tcp:{port}:interface=127.0.0.1"\n'
            for name, port in other_ports.items()))
        env = subprocess_env()
        env["RUMPUS_SECURE_CONFIG"] = str(config)
        second = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "rumpus-secure"], cwd=first_dir, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(other_ports, second)
        finally:
            _stop(second)
    finally:
        out = _stop(first)
    assert password in out and str(saved) in out
    # The admin sets a password: the file goes.
    env = subprocess_env()
    result = subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "user", "passwd", "admin",
         "--generate-password"], cwd=first_dir, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not saved.exists()


def test_failed_first_start_leaves_the_password_file(tmp_path: Path) -> None:
    """
    The first start fails (a port in use) after it made the admin: the
    password stays in the file, and the next start says where it is.
    """
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = _free_listeners()
        ports["https"] = busy.getsockname()[1]
        process = _quick_start(tmp_path, ports)
        out, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "cannot listen for https" in out
    saved = tmp_path / "rumpus-data" / "initial-admin-password"
    password = saved.read_text().strip()
    assert password in out
    ports = _free_listeners()
    process = _quick_start(tmp_path, ports)
    try:
        _wait_for(ports, process)
    finally:
        out = _stop(process)
    assert str(saved) in out and password not in out
    assert saved.read_text().strip() == password


def test_check_with_no_options_checks_the_running_server(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, public_host="127.0.0.1") as server:
        # The ports accept as soon as they are bound; the record follows.
        path = server.data_dir / "listeners.json"
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "no listener record"
            time.sleep(0.05)
        record = json.loads(path.read_text())
        assert record["pid"] == server.process.pid
        assert {label: bound["port"] for label, bound in record["listening"].items()} == (
            server.ports)
        # Only --data-dir (as every admin command): the probes reach the
        # server's own free ports, so every check passes.
        result = server.cli("check", check=False)
        assert "Checking the server recorded in" in result.stdout
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0 failed," in result.stdout and "0 skipped" in result.stdout
    # A clean stop removes the record; check then falls back to the options.
    assert not (server.data_dir / "listeners.json").exists()


@pytest.mark.parametrize("argv", [
    ["audit", "--data-dir", "/nonexistent"],
    ["--data-dir", "/nonexistent", "audit"],
    ["--data-dir", "/nonexistent", "user", "add", "carol", "--generate-password"],
])
def test_admin_command_on_a_wrong_data_dir_is_an_error(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", *argv],
        capture_output=True, text=True, env=subprocess_env(), timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "no accounts database at /nonexistent/accounts.sqlite3" in result.stderr
    assert not os.path.exists("/nonexistent")
