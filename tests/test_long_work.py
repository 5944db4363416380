"""
Long file work (HASH) has its own pool and one job per account at a time,
so other users' logins and listings are not held up behind it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from rumpus_secure.long_work import GoneAway, LongWork

from .ftp_fakes import connect, make_server
from .manual_thread import ManualThread


def test_one_job_per_account_others_go_ahead() -> None:
    manual = ManualThread()
    work = LongWork(object(), run_in_thread=manual)
    first = work.run("alice", lambda: "a1")
    second = work.run("alice", lambda: "a2")
    bob = work.run("bob", lambda: "b1")
    # alice's second job waits for her first; bob's job does not wait.
    assert len(manual.calls) == 2
    assert work.running("alice") == 1 and work.waiting("alice") == 1
    manual.run_next()
    assert first.result == "a1"  # type: ignore[attr-defined]
    assert len(manual.calls) == 2  # bob's, then alice's second
    manual.run_next()
    manual.run_next()
    assert bob.result == "b1" and second.result == "a2"  # type: ignore[attr-defined]
    assert work.running("alice") == 0 and work.waiting("alice") == 0
    assert work._accounts == {}  # nothing kept for accounts with no work


def test_a_job_whose_client_left_is_not_run() -> None:
    manual = ManualThread()
    work = LongWork(object(), run_in_thread=manual)
    ran: list[str] = []
    work.run("alice", lambda: ran.append("first"))
    left = work.run("alice", lambda: ran.append("second"), wanted=lambda: False)
    manual.run_next()
    assert ran == ["first"] and not manual.calls
    failures: list[Any] = []
    left.addErrback(failures.append)
    assert failures[0].check(GoneAway)


@pytest_twisted.ensureDeferred
async def test_real_pool_runs_in_its_own_threads() -> None:
    from twisted.internet import reactor

    work = LongWork(reactor, threads=2)
    try:
        names = await defer.gatherResults([
            work.run(f"user{i}", lambda: threading.current_thread().name)
            for i in range(4)])
    finally:
        work.stop()
    assert all("rumpus-long-work" in name for name in names), names


def login(server: Any, name: str, password: str) -> tuple[Any, Any]:
    proto, transport, _ = connect(server)
    proto.dataReceived(f"USER {name}\r\nPASS {password}\r\n".encode())
    assert transport.lines()[-1].startswith("230 "), transport.lines()
    transport.clear()
    return proto, transport


def test_hash_leaves_the_shared_pool_to_other_users(tmp_path: Path) -> None:
    server = make_server(tmp_path, ftp_security="allow-plain")
    server.store.add("bob", "bobs")
    long_pool = ManualThread()
    server.long_work = LongWork(object(), run_in_thread=long_pool)
    content = b"x" * 100_000
    home = server.store.get("alice").home
    (home / "big").write_bytes(content)
    hashers = [login(server, "alice", "right") for _ in range(10)]
    for proto, _ in hashers:
        proto.dataReceived(b"HASH big\r\n")
    # One of alice's HASHes runs on the long-work pool; the other nine wait
    # there. None is on the shared pool (server.threaded records it).
    assert len(long_pool.calls) == 1
    assert server.long_work.waiting("alice") == 9
    shared_before = len(server.threaded)
    # Meanwhile bob (same address, other account) logs in and lists.
    bob, bob_transport = login(server, "bob", "bobs")
    bob.dataReceived(b"PWD\r\nSIZE nothing\r\n")
    assert [r[:3] for r in bob_transport.lines()] == ["257", "550"]
    assert len(server.threaded) > shared_before
    while long_pool.calls:
        long_pool.run_next()
    digest = hashlib.sha256(content).hexdigest()
    for _, transport in hashers:
        assert transport.lines() == [f"213 SHA-256 0-{len(content)} {digest} /big"]


def test_hash_of_a_client_that_left_is_skipped(tmp_path: Path) -> None:
    server = make_server(tmp_path, ftp_security="allow-plain")
    long_pool = ManualThread()
    server.long_work = LongWork(object(), run_in_thread=long_pool)
    (server.store.get("alice").home / "big").write_bytes(b"y" * 1000)
    first, _ = login(server, "alice", "right")
    second, second_transport = login(server, "alice", "right")
    first.dataReceived(b"HASH big\r\n")
    second.dataReceived(b"HASH big\r\n")
    second_transport.loseConnection()
    second.connectionLost()
    long_pool.run_next()
    assert not long_pool.calls  # the second HASH never reached a thread
    assert server.long_work.running("alice") == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_are_bounded(threads: int) -> None:
    work = LongWork(object(), threads=threads)
    assert work._threads == threads and work._pool is None
