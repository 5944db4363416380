"""
The real server in a subprocess, for the integration tests.

L{ServerProcess} runs ``twistd -n rumpus-secure`` exactly as an operator
would (through the dropin in ``<repo>/twisted/plugins``), on free loopback
ports, and offers the admin command (``python -m rumpus_secure.cli``) on the
same data directory.  Nothing here imports the product: the tests see only
what a user sees, the sockets, the files and the output.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import pytest

REPO = Path(__file__).resolve().parent.parent

#: The four listeners, in the order they are passed to twistd.
LISTENERS = ("ftp", "ftps", "http", "https")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05

_PASSWORD = re.compile(r"created account 'admin' with password:\s*\n\s*(\S+)")


def subprocess_env() -> dict[str, str]:
    """
    The environment for anything we run: the repository first on the path,
    so the package and the twistd dropin are found whether or not the project
    is installed.
    """
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + existing if existing else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RUMPUS_SECURE_CONFIG", None)
    return env


def twistd_command(*args: str) -> list[str]:
    """
    The command line of ``twistd -n --pidfile= rumpus-secure ARGS``.
    """
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "rumpus-secure", *args,
    ]


def free_port() -> int:
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_tool(name: str) -> str:
    """
    The path of client program C{name}, or skip the test without it.

    With C{RUMPUS_REQUIRE_CLIENTS=1} in the environment (CI) a missing client
    fails the test instead, so a broken CI image cannot pass by skipping.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"client program {name!r} is not installed"
    if os.environ.get("RUMPUS_REQUIRE_CLIENTS") == "1":
        pytest.fail(message + " and RUMPUS_REQUIRE_CLIENTS=1 is set")
    pytest.skip(message)
    raise AssertionError("unreachable")


class ServerFailed(Exception):
    """
    The server did not start (or stop) as it should; the log is attached.
    """


class ServerProcess:
    """
    ``twistd -n rumpus-secure`` on free loopback ports.

    @param tmp_path: working directory of the server; the data directory is
        C{tmp_path / "data"} unless C{data_dir} is given.
    @param options: more server options, C{ftp_security="allow-plain"}
        becomes C{--ftp-security allow-plain}.  A listener set to L{None} or
        C{"none"} is disabled; by default each listener gets a free port.
    """

    def __init__(self, tmp_path: Path, data_dir: Path | None = None,
                 host: str = "127.0.0.1", **options: Any) -> None:
        self.tmp_path = Path(tmp_path)
        #: The loopback address the automatic listeners bind (several nodes
        #: run on 127.0.0.11, 127.0.0.12, ...).
        self.host = host
        self.data_dir = Path(data_dir) if data_dir is not None else self.tmp_path / "data"
        self.ports: dict[str, int] = {}
        self.options: dict[str, str] = {}
        for name in LISTENERS:
            value = options.pop(name, "auto")
            if value is None or value == "none":
                self.options[name] = "none"
            elif value == "auto":
                self.ports[name] = free_port()
                self.options[name] = f"tcp:{self.ports[name]}:interface={host}"
            else:
                self.options[name] = str(value)
        for key, value in options.items():
            self.options[key.replace("_", "-")] = str(value)
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_password: str | None = None
        self.starts = 0
        self.log_path: Path | None = None

    # -- ports ------------------------------------------------------------

    @property
    def ftp_port(self) -> int:
        return self.ports["ftp"]

    @property
    def ftps_port(self) -> int:
        return self.ports["ftps"]

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def https_port(self) -> int:
        return self.ports["https"]

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"

    def home(self, user: str) -> Path:
        """
        The default home directory of C{user}.
        """
        root = self.options.get("root")
        return (Path(root) if root else self.data_dir / "files") / user

    # -- life -------------------------------------------------------------

    def arguments(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        return args

    def start(self) -> ServerProcess:
        """
        Start the server and wait until every enabled port accepts.
        """
        if self.process is not None:
            raise RuntimeError("already running")
        self.starts += 1
        self.log_path = self.tmp_path / f"server-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                twistd_command(*self.arguments()),
                cwd=self.tmp_path, env=subprocess_env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        waiting = set(self.ports.values())
        while waiting:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"server exited with {self.process.returncode} during "
                    f"start-up:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(
                    f"ports {sorted(waiting)} not accepting after "
                    f"{START_TIMEOUT}s:\n{self.log_text()}"
                )
            waiting = {port for port in waiting if not port_accepts(port, self.host)}
            if waiting:
                time.sleep(POLL_INTERVAL)
        # Only this run's output: a restart must not find the old password.
        match = _PASSWORD.search(self.log_text())
        self.admin_password = match.group(1) if match is not None else None
        return self

    def stop(self) -> int | None:
        """
        SIGTERM, wait, then SIGKILL; returns the exit status.
        """
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        return process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """
        Everything the current (or last) run wrote on stdout and stderr.
        """
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")

    def all_logs(self) -> str:
        return "".join(
            (self.tmp_path / f"server-{n}.log").read_text("utf-8", "replace")
            for n in range(1, self.starts + 1)
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin command ----------------------------------------------------

    def cli(self, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """
        Run ``rumpus-secure --data-dir D [--root R] ARGS`` (the admin command).
        """
        argv = [sys.executable, "-m", "rumpus_secure.cli",
                "--data-dir", str(self.data_dir)]
        if "root" in self.options:
            argv += ["--root", self.options["root"]]
        if "database" in self.options:
            argv += ["--database", self.options["database"]]
        result = subprocess.run(
            argv + list(args), check=False, input=input, capture_output=True, text=True,
            cwd=self.tmp_path, env=subprocess_env(), timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"rumpus-secure {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def add_user(self, name: str, password: str,
                 perms: str | Iterable[str] | None = None) -> None:
        """
        ``user add NAME --password-stdin [--perms P]``.
        """
        extra: list[str] = []
        if perms is not None:
            extra = ["--perms", perms if isinstance(perms, str) else ",".join(perms)]
        self.cli("user", "add", name, "--password-stdin", *extra, input=password + "\n")

    def user_list(self) -> str:
        return self.cli("user", "list").stdout

    def locked_reason(self, name: str) -> str | None:
        """
        The lock reason shown by ``user list`` for C{name}, or L{None}.
        """
        for line in self.user_list().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                marker = line.find("yes: ")
                return line[marker + len("yes: "):] if marker >= 0 else None
        raise AssertionError(f"no account {name!r} in user list")


def run_twistd(tmp_path: Path, *args: str, timeout: float = 30.0
               ) -> subprocess.CompletedProcess[str]:
    """
    Run twistd rumpus-secure to completion (for start-up failures).
    """
    return subprocess.run(
        twistd_command(*args), check=False, cwd=tmp_path, env=subprocess_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
