"""
Homes on a local filesystem open on the reactor thread; every other home,
a missing one, or one after the mount table changed, opens in a thread
(rumpus_secure.ftp.local_homes, rumpus_secure.ftp.realm).
"""

from __future__ import annotations

import os
import select
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from rumpus_secure.accounts.checker import AccountId
from rumpus_secure.ftp.local_homes import LocalHomes, MountWatch, local_homes
from rumpus_secure.ftp.realm import FTPRealm
from rumpus_secure.ftp.shell import IFileShell


class FakeWatch:
    """A mount watch whose changes the test makes."""

    def __init__(self) -> None:
        self.pending = False

    def changed(self) -> bool:
        pending, self.pending = self.pending, False
        return pending


@dataclass
class Account:
    name: str
    home: Path
    perms: frozenset[str] = frozenset({"list", "download"})


@dataclass
class Mind:
    """The server object: counts the work sent to a thread."""

    in_thread: list[str] = field(default_factory=list)

    def run_in_thread(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        self.in_thread.append(function.__name__)
        return defer.maybeDeferred(function, *args)


class NoStore:
    def get(self, name: str) -> Any:
        raise AssertionError("the realm must use the account the checker read")


def homes(fstype: str = "ext4") -> tuple[LocalHomes, FakeWatch]:
    watch = FakeWatch()
    return LocalHomes(watch, fstype=lambda path: fstype), watch  # type: ignore[arg-type]


async def login(realm: FTPRealm, mind: Mind, account: Account) -> Any:
    _, shell, _ = await realm.requestAvatar(AccountId.of(account), mind, IFileShell)
    return shell


@pytest_twisted.ensureDeferred
async def test_a_local_home_opens_in_a_thread_once_then_on_the_reactor(tmp_path: Path) -> None:
    """
    The first login of a home decides in the thread; the next ones open it
    here.  A second account's home is decided on its own.
    """
    local, _ = homes("ext4")
    realm = FTPRealm(NoStore(), local_homes=local)
    alice = Account("alice", tmp_path / "alice")
    bob = Account("bob", tmp_path / "bob")
    mind = Mind()
    shell = await login(realm, mind, alice)
    assert shell.fs.home == alice.home and alice.home.is_dir()
    assert mind.in_thread == ["_open_home"]
    shell = await login(realm, mind, alice)
    assert shell.fs.home == alice.home and mind.in_thread == ["_open_home"]
    await login(realm, mind, bob)
    assert mind.in_thread == ["_open_home", "_open_home"]
    await login(realm, mind, bob)
    assert mind.in_thread == ["_open_home", "_open_home"]


@pytest_twisted.ensureDeferred
async def test_a_home_on_a_network_filesystem_always_opens_in_a_thread(tmp_path: Path) -> None:
    for fstype in ("nfs4", "fuse.glusterfs", "autofs", "cifs", None):
        local, _ = homes(fstype)  # type: ignore[arg-type]
        realm = FTPRealm(NoStore(), local_homes=local)
        mind = Mind()
        alice = Account("alice", tmp_path / "alice")
        for _ in range(3):
            await login(realm, mind, alice)
        assert mind.in_thread == ["_open_home"] * 3, fstype


@pytest_twisted.ensureDeferred
async def test_a_mount_table_change_sends_every_home_back_to_the_thread(tmp_path: Path) -> None:
    local, watch = homes("ext4")
    realm = FTPRealm(NoStore(), local_homes=local)
    mind = Mind()
    alice = Account("alice", tmp_path / "alice")
    bob = Account("bob", tmp_path / "bob")
    for account in (alice, bob, alice, bob):
        await login(realm, mind, account)
    assert len(mind.in_thread) == 2
    watch.pending = True  # something was mounted (over a home, maybe)
    await login(realm, mind, alice)
    await login(realm, mind, bob)
    assert len(mind.in_thread) == 4
    await login(realm, mind, alice)
    assert len(mind.in_thread) == 4


@pytest_twisted.ensureDeferred
async def test_a_home_removed_between_two_logins_is_made_again_in_the_thread(
        tmp_path: Path) -> None:
    """
    The reactor-thread open never makes a home: a home removed after its
    first login is made anew, in the thread, by the next login; a parallel
    account's home keeps opening on the reactor thread.
    """
    local, _ = homes("ext4")
    realm = FTPRealm(NoStore(), local_homes=local)
    mind = Mind()
    alice = Account("alice", tmp_path / "alice")
    bob = Account("bob", tmp_path / "bob")
    await login(realm, mind, alice)
    await login(realm, mind, bob)
    shutil.rmtree(alice.home)
    shell = await login(realm, mind, alice)
    assert alice.home.is_dir() and shell.fs.home == alice.home
    await login(realm, mind, bob)
    assert mind.in_thread == ["_open_home"] * 3


@pytest_twisted.ensureDeferred
async def test_a_home_now_on_another_device_is_forgotten(tmp_path: Path) -> None:
    """
    A home whose path leads to another device than the one recorded (a
    symlink in its path re-pointed) goes back to the thread.
    """
    local, _ = homes("ext4")
    realm = FTPRealm(NoStore(), local_homes=local)
    mind = Mind()
    alice = Account("alice", tmp_path / "alice")
    await login(realm, mind, alice)
    local._devices[str(alice.home)] += 1  # as if it had been on another device
    await login(realm, mind, alice)
    assert mind.in_thread == ["_open_home", "_open_home"]
    await login(realm, mind, alice)
    assert mind.in_thread == ["_open_home", "_open_home"]


def test_a_change_while_deciding_leaves_the_home_undecided(tmp_path: Path) -> None:
    """The mount table changed while the thread looked: nothing is remembered."""
    watch = FakeWatch()

    def fstype(path: Path) -> str:
        watch.pending = True  # a mount lands while the thread resolves
        return "ext4"

    local = LocalHomes(watch, fstype=fstype)  # type: ignore[arg-type]
    local.learn(tmp_path)
    assert not local.known(tmp_path)


def test_the_homes_remembered_are_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("rumpus_secure.ftp.local_homes.MAX_HOMES", 3)
    local, _ = homes("ext4")
    for index in range(7):
        home = tmp_path / str(index)
        home.mkdir()
        local.learn(home)
        assert len(local._devices) <= 3


@pytest_twisted.ensureDeferred
async def test_without_local_homes_every_open_is_in_a_thread(tmp_path: Path) -> None:
    realm = FTPRealm(NoStore(), local_homes=None)
    mind = Mind()
    alice = Account("alice", tmp_path / "alice")
    for _ in range(2):
        await login(realm, mind, alice)
    assert mind.in_thread == ["_open_home"] * 2


def test_mount_watch_reports_what_poll_reports() -> None:
    results: list[list[Any]] = [[], [(0, select.POLLPRI)], []]

    class Poll:
        def register(self, fd: int, mask: int) -> None:
            assert mask & select.POLLPRI

        def unregister(self, fd: int) -> None:
            pass

        def poll(self, timeout: int) -> list[Any]:
            assert timeout == 0  # never waits
            return results.pop(0)

    watch = MountWatch(os.devnull, poller=Poll)
    assert [watch.changed(), watch.changed(), watch.changed()] == [False, True, False]
    watch.close()
    assert watch.changed()  # closed: never trusted


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/mounts")
def test_the_real_mount_table_is_quiet_without_mounts() -> None:
    """On Linux the watch opens, and says nothing changed when nothing did."""
    watch = MountWatch()
    assert watch.changed() is False
    assert watch.changed() is False
    watch.close()
    assert local_homes() is not None


@pytest_twisted.ensureDeferred
async def test_a_network_home_is_decided_once_per_mount_table(tmp_path: Path) -> None:
    """
    The mount table is read once for a home on NFS, not at each login (its
    logins still open it in the thread); a mount change decides again.
    """
    looked: list[Path] = []

    def fstype(path: Path) -> str:
        looked.append(path)
        return "nfs4"

    watch = FakeWatch()
    realm = FTPRealm(NoStore(), local_homes=LocalHomes(watch, fstype=fstype))  # type: ignore[arg-type]
    mind = Mind()
    alice = Account("alice", tmp_path / "alice")
    for _ in range(3):
        await login(realm, mind, alice)
    assert mind.in_thread == ["_open_home"] * 3 and looked == [alice.home]
    watch.pending = True
    await login(realm, mind, alice)
    assert mind.in_thread == ["_open_home"] * 4 and looked == [alice.home] * 2
