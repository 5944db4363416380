"""
A throwaway PostgreSQL cluster for the tests of the shared database.

L{PostgresCluster} runs Debian's ``initdb`` and ``pg_ctl`` (package
``postgresql``; the service need not run) on a free loopback port, in a
temporary directory whose socket directory is its own, with fsync off: it
starts in about a second and leaves nothing behind.  PostgreSQL refuses to
run as root, so as root the cluster belongs to the ``postgres`` system user
that the Debian package creates and its programs run through ``runuser``.

Without PostgreSQL (or psycopg) the tests that need it are skipped, or fail
with C{RUMPUS_REQUIRE_CLIENTS=1} (CI), like the real-client tests.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.server_process import free_port


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def require_postgres() -> Path:
    """
    The directory of initdb and pg_ctl, or skip (fail under CI).
    """
    problem = None
    bin_dir = _bin_dir()
    if bin_dir is None:
        problem = "PostgreSQL (initdb, pg_ctl) is not installed"
    else:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (pip install '.[postgres]')"
    if problem is None and os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            problem = "running as root and there is no 'postgres' user to run PostgreSQL"
    if problem is not None:
        if os.environ.get("RUMPUS_REQUIRE_CLIENTS") == "1":
            pytest.fail(problem + " and RUMPUS_REQUIRE_CLIENTS=1 is set")
        pytest.skip(problem)
    assert bin_dir is not None
    return bin_dir


class PostgresCluster:
    """
    One PostgreSQL server on 127.0.0.1:PORT with trust authentication for
    the user ``rumpus``.
    """

    _names = itertools.count(1)

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rumpus-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                cwd="/")
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}"
                               f"{result.stderr}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "rumpus", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        options = (f"-k {self.dir} -c listen_addresses=127.0.0.1 -p {self.port} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://rumpus@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """
        A new empty database; returns its URL.
        """
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
