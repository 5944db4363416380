"""
Servers shared by the integration tests, one per FTP policy.

Starting a server costs about a second (certificate generation, argon2 for
the first-run admin), so each policy gets one server for the whole session;
tests that change an account make a user of their own with L{UserFactory}.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_process import ServerProcess


@dataclass(frozen=True)
class User:
    name: str
    password: str
    home: Path


class UserFactory:
    """
    Makes accounts on a running server with the admin command.
    """

    _counter = itertools.count(1)

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def __call__(self, prefix: str = "user", perms: str | None = None) -> User:
        name = f"{prefix}{next(self._counter)}"
        password = secrets.token_urlsafe(12)
        self.server.add_user(name, password, perms=perms)
        return User(name, password, self.server.home(name))


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str,
           **options: str) -> Iterator[ServerProcess]:
    # These servers live for the whole session and the tests provoke them
    # on purpose (cleartext logins, garbage, wrong passwords) from 127.0.0.1;
    # the guard would ban that address half-way.  Ban behaviour is tested by
    # tests/test_guard*.py and by servers of their own.
    options.setdefault("safe_list", "127.0.0.0/8")
    server = ServerProcess(tmp_path_factory.mktemp(name), **options)
    with server:
        yield server
    # A crash while the tests ran would otherwise go unnoticed.
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """
    The default policy: require-tls, every listener on.
    """
    yield from _serve(tmp_path_factory, "require-tls", cleartext_grace="1")


@pytest.fixture(scope="session")
def implicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory, "implicit-only", ftp_security="implicit-only")


@pytest.fixture(scope="session")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory, "allow-plain", ftp_security="allow-plain",
                      data_tls="optional")


@pytest.fixture(scope="session")
def make_user(server: ServerProcess) -> UserFactory:
    return UserFactory(server)


@pytest.fixture(scope="session")
def user(make_user: UserFactory) -> User:
    """
    One account shared by the tests that only read or add distinct files.
    """
    return make_user("shared")
