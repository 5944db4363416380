"""
The account store keeps one SQLite connection per thread, and still sees
what another process (the admin command) wrote.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from rumpus_secure.accounts.connections import ThreadConnections
from rumpus_secure.accounts.store import SQLiteAccountStore

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _store(tmp_path: Path) -> SQLiteAccountStore:
    return SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "root", hasher=FAST)


def test_reads_reuse_one_connection_per_thread(tmp_path: Path) -> None:
    opened: list[sqlite3.Connection] = []
    store = _store(tmp_path)
    real = store._connect

    def counting() -> sqlite3.Connection:
        db = real()
        opened.append(db)
        return db

    store._connections = ThreadConnections(counting)
    store.add("alice", "correct horse")
    for _ in range(5):
        assert store.get("alice") is not None
        assert store.password_hash("alice") is not None
    assert len(opened) == 1

    def other_thread() -> None:
        assert store.get("alice") is not None

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(opened) == 2


def test_kept_connection_sees_another_writer(tmp_path: Path) -> None:
    """
    The server's kept connection sees the admin command's change at once.
    """
    server = _store(tmp_path)
    server.add("bob", "first password")
    before = server.get("bob")
    assert before is not None and not before.locked
    admin = _store(tmp_path)  # another store object: its own connections
    admin.lock("bob", "left the company")
    after = server.get("bob")
    assert after is not None and after.locked
    assert after.version == before.version + 1
    old_hash = server.password_hash("bob")
    admin.set_password("bob", "second password")
    assert server.password_hash("bob") != old_hash
    admin.delete("bob")
    assert server.get("bob") is None


def test_failed_write_leaves_no_transaction_open(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add("carol", "pw pw pw pw")
    with pytest.raises(Exception):
        store.add("carol", "again and again")  # duplicate: refused
    # The same (kept) connection must be usable and outside a transaction.
    with store._connections.connection() as db:
        assert not db.in_transaction
    store.lock("carol", "x")
    assert store.get("carol").locked  # type: ignore[union-attr]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """
    A connection must never cross fork() (twistd daemonising).
    """
    store = _store(tmp_path)
    store.add("dave", "pw pw pw pw")
    with store._connections.connection() as parent_db:
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            with store._connections.connection() as child_db:
                ok = child_db is not parent_db and store.get("dave") is not None
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    with store._connections.connection() as again:
        assert again is parent_db
