"""
The PostgreSQL stores against a real (throwaway) PostgreSQL: migrations,
accounts and their change log, bans and web sessions that reach another
node, notifications, outages, copy from SQLite, the one-admin bootstrap.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from twisted.internet import defer
from twisted.internet.task import Clock

from rumpus_secure.accounts.bans import Ban, SQLiteBanStore
from rumpus_secure.accounts.store import AccountError, SQLiteAccountStore
from rumpus_secure.config import build_config
from rumpus_secure.db import (
    LATEST_VERSION,
    MIGRATIONS,
    Database,
    DatabaseError,
    StoreUnavailable,
    copy_sqlite,
    parse_database,
    redact,
)
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.web.sessions import Session, SessionStore, SQLiteSessions

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALL_VERSIONS = [m.version for m in MIGRATIONS]


def inline(function: Any, *args: Any) -> defer.Deferred[Any]:
    """run_in_thread for tests: at once, in this thread."""
    try:
        return defer.succeed(function(*args))
    except Exception:  # noqa: BLE001
        return defer.fail()


@pytest.fixture
def db(pg_url: str) -> Any:
    database = Database(pg_url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Any:
    from rumpus_secure.accounts.pg import PGAccountStore

    return PGAccountStore(db, tmp_path / "files", hasher=FAST)


# -- URLs and schema ----------------------------------------------------------


def test_database_option_values() -> None:
    assert parse_database(None) is None
    assert parse_database("sqlite") is None
    assert parse_database("postgresql://u@h/db") == "postgresql://u@h/db"
    for bad in ("mysql://h/db", "postgresql://h", "/var/db"):
        with pytest.raises(ValueError):
            parse_database(bad)
    assert redact("postgresql://u:secret@h:5433/db") == "postgresql://u:***@h:5433/db"
    assert "secret" not in redact("postgresql://u:secret@h/db")


def test_an_unmigrated_database_is_refused_until_migrated(pg_url: str) -> None:
    database = Database(pg_url)
    try:
        with pytest.raises(DatabaseError, match="db migrate"):
            database.check_schema()
        assert [m.version for m in database.migrate()] == ALL_VERSIONS
        assert database.migrate() == []  # twice is harmless
        database.check_schema()
        assert database.schema_version() == LATEST_VERSION
    finally:
        database.close()


def test_a_database_of_version_1_is_refused_until_migrated_and_keeps_its_data(
        pg_url: str) -> None:
    from rumpus_secure import db as db_module

    database = Database(pg_url)
    try:
        first = MIGRATIONS[0]
        with database.connection() as conn:
            conn.execute(db_module._VERSIONS_TABLE)
            conn.execute(first.sql)
            conn.execute("INSERT INTO schema_migrations VALUES (1, 'x', 0)")
            conn.execute("INSERT INTO accounts VALUES ('alice', 'h', '/h', 'list', "
                         "false, NULL, 1, 1, 1, 1)")
        with pytest.raises(DatabaseError, match="version 1.*db migrate"):
            database.check_schema()
        assert [m.version for m in database.migrate()] == ALL_VERSIONS[1:]
        database.check_schema()
        from rumpus_secure.accounts.pg import PGAccountStore

        store = PGAccountStore(database, Path("/nonexistent"))
        assert store.get("alice") is not None and store.two_factor("alice") is None
    finally:
        database.close()


def test_two_nodes_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    databases = [Database(pg_url) for _ in range(3)]
    applied: list[int] = []
    threads = [threading.Thread(target=lambda d=d: applied.extend(
        m.version for m in d.migrate())) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert applied == ALL_VERSIONS
    for database in databases:
        database.close()


def test_the_server_refuses_a_database_without_certificate_or_schema(
        pg_url: str, tmp_path: Path) -> None:
    from rumpus_secure.tap import open_shared_store
    from rumpus_secure.tls import ensure_certificate

    config = build_config({"database": pg_url, "data-dir": str(tmp_path)})
    with pytest.raises(SystemExit, match="--cert and --key"):
        open_shared_store(config)
    info = ensure_certificate(tmp_path, "localhost", None, None)
    config = build_config({"database": pg_url, "data-dir": str(tmp_path),
                           "cert": str(info.cert_path), "key": str(info.key_path)})
    with pytest.raises(SystemExit, match="db migrate"):
        open_shared_store(config)


# -- accounts -------------------------------------------------------------------


def test_accounts_behave_as_in_sqlite(store: Any) -> None:
    account = store.add("alice", "pw-1", perms="list,download")
    assert account.home.is_dir()
    with pytest.raises(AccountError, match="'alice' already exists"):
        store.add("ALICE", "pw-2")
    assert store.get("ALICE") is None  # lookups are exact
    assert store.get("alice").perms == frozenset({"list", "download"})
    old_hash = store.password_hash("alice")
    store.lock("alice", "seen\nin cleartext")
    locked = store.get("alice")
    assert locked.locked and locked.lock_reason == "seen in cleartext"
    assert locked.version == 2
    store.set_password("alice", "pw-3")
    after = store.get("alice")
    assert not after.locked and after.version == 3
    assert store.password_hash("alice") != old_hash
    assert not store.replace_hash("alice", old_hash, "x")
    store.add("bob", "pw")
    assert [a.name for a in store.list()] == ["alice", "bob"]
    store.delete("bob")
    with pytest.raises(AccountError, match="no account"):
        store.unlock("bob")
    kinds = [(c.name, c.kind) for c in store.change_reader().since(0).changes]
    assert kinds == [("alice", "add"), ("alice", "lock"), ("alice", "password"),
                     ("bob", "add"), ("bob", "delete")]
    assert store.change_reader().latest() == 5


def test_the_checker_reads_the_version_on_every_login(store: Any, db: Database,
                                                      tmp_path: Path) -> None:
    """
    Two nodes with verifier caches: a password changed through one is
    refused by the other's cache at once.
    """
    from rumpus_secure.accounts.checker import ArgonChecker
    from rumpus_secure.accounts.pg import PGAccountStore
    from rumpus_secure.accounts.verifier_cache import VerifierCache

    store.add("carol", "old-password")
    other = PGAccountStore(db, tmp_path / "files", hasher=FAST)
    node_b = ArgonChecker(other, None, hasher=FAST, cache=VerifierCache(ttl=300))  # type: ignore[arg-type]
    assert node_b._login("carol", "old-password") == b"carol"
    assert node_b._login("carol", "old-password") == b"carol"  # from the cache
    store.set_password("carol", "new-password")
    from twisted.cred.error import UnauthorizedLogin

    with pytest.raises(UnauthorizedLogin):
        node_b._login("carol", "old-password")


def test_an_unreachable_database_is_unavailable_never_a_wrong_password(
        tmp_path: Path) -> None:
    from rumpus_secure.accounts.checker import ArgonChecker
    from rumpus_secure.accounts.pg import PGAccountStore
    from tests.server_process import free_port

    database = Database(f"postgresql://rumpus@127.0.0.1:{free_port()}/none", timeout=1)
    store = PGAccountStore(database, tmp_path, hasher=FAST)
    checker = ArgonChecker(store, None, hasher=FAST)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        checker._login("alice", "anything")
    assert time.monotonic() - started < 5
    database.close()


def test_the_first_admin_is_made_once_however_many_nodes_start(
        db: Database, tmp_path: Path) -> None:
    from rumpus_secure.accounts.pg import PGAccountStore

    stores = [PGAccountStore(Database(db.url), tmp_path / "files", hasher=FAST)
              for _ in range(4)]
    made: list[bool] = []
    threads = [threading.Thread(target=lambda s=s: made.append(s.bootstrap("admin", "pw")))
               for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == [False, False, False, True]
    assert [a.name for a in stores[0].list()] == ["admin"]
    stores[0].delete("admin")
    assert not stores[0].bootstrap("admin", "pw")  # never again
    for s in stores:
        s.database.close()


# -- bans and sessions across nodes --------------------------------------------


def _node(db: Database, sessions: SessionStore | None = None) -> tuple[Guard, Any, Clock]:
    from rumpus_secure.accounts.pg import PGBanStore
    from rumpus_secure.shared import StateFeed

    clock = Clock()
    clock.advance(time.time())
    guard = Guard(GuardSettings(threshold=2, login_failure_delay=0), clock,
                  store=PGBanStore(db), run_in_thread=inline)
    feed = StateFeed(db, guard, sessions, inline)
    feed.poll()  # the first read learns where the log is
    return guard, feed, clock


def test_a_ban_and_its_lift_reach_the_other_node(db: Database) -> None:
    from rumpus_secure.accounts.pg import PGBanStore

    guard_a, feed_a, _ = _node(db)
    guard_b, feed_b, _ = _node(db)
    for _ in range(2):
        guard_a.offence("192.0.2.7", "login_failed", protocol="ftp")
    assert guard_a.is_banned("192.0.2.7") is not None
    assert guard_b.is_banned("192.0.2.7") is None
    feed_b.poll()
    assert guard_b.is_banned("192.0.2.7") is not None
    assert guard_b.is_banned("192.0.2.8") is None  # another address is not
    assert PGBanStore(db).delete("192.0.2.7")  # rumpus-secure ban lift
    feed_a.poll()
    feed_b.poll()
    assert guard_a.is_banned("192.0.2.7") is None
    assert guard_b.is_banned("192.0.2.7") is None
    assert feed_b.reads == 3


def test_a_lift_older_than_a_new_local_ban_keeps_the_ban(db: Database) -> None:
    guard, _, clock = _node(db)
    ban = Ban("192.0.2.9", clock.seconds() + 900, 0, "login_failed", clock.seconds())
    guard.adopt(ban)
    assert not guard.forget("192.0.2.9", at=clock.seconds() - 10)
    assert guard.is_banned("192.0.2.9") is ban
    older = Ban("192.0.2.9", clock.seconds() + 60, 0, "x", clock.seconds() - 100)
    guard.adopt(older)
    assert guard.is_banned("192.0.2.9") is ban
    assert guard.forget("192.0.2.9", at=clock.seconds() + 1)
    assert guard.is_banned("192.0.2.9") is None


def test_a_web_session_is_valid_on_every_node_and_a_logout_ends_it(db: Database) -> None:
    from rumpus_secure.accounts.pg import PGSessions

    clock = Clock()
    clock.advance(time.time())
    web_a = SessionStore(clock, persistence=PGSessions(db), run_in_thread=inline)
    web_b = SessionStore(clock, persistence=PGSessions(db), run_in_thread=inline)
    _, feed_a, _ = _node(db, web_a)
    _, feed_b, _ = _node(db, web_b)
    frank, _ = web_a.create("frank")
    grace, _ = web_a.create("grace")
    assert web_b.get(frank) is None
    feed_b.poll()
    assert web_b.get(frank).user == "frank"
    web_b.end(frank)  # logout on B
    feed_a.poll()
    assert web_a.get(frank) is None
    assert web_a.get(grace).user == "grace"  # the other session lives on


def test_a_notification_arrives_within_milliseconds(db: Database) -> None:
    from rumpus_secure.accounts.pg import PGBanStore
    from rumpus_secure.db import STATE_CHANNEL
    from rumpus_secure.shared import Notifications

    heard = threading.Event()
    calls: list[float] = []

    def handler() -> None:
        calls.append(time.monotonic())
        heard.set()

    listener = Notifications(db.url, {STATE_CHANNEL: handler},
                             lambda f, *a, **k: f(*a, **k))
    listener.start()
    try:
        assert listener.connected.wait(5)
        assert heard.wait(5)  # the read after (re)connecting
        heard.clear()
        sent = time.monotonic()
        PGBanStore(db).save(Ban("192.0.2.1", time.time() + 60, 0, "x", time.time()))
        assert heard.wait(1.0)
        assert calls[-1] - sent < 1.0
    finally:
        listener.stop()


# -- two-factor login and app passwords ---------------------------------------------


def _race(calls: list[Any]) -> list[Any]:
    """Run the calls in threads released at the same moment; their results."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_factor_state_behaves_as_in_sqlite(store: Any) -> None:
    from rumpus_secure.accounts.two_factor_store import ITwoFactorStore

    assert ITwoFactorStore.providedBy(store)
    store.add("alice", "pw", require_2fa=True)
    store.add("bob", "pw")
    row = store.two_factor("alice")
    assert row.required and row.secret is None and row.recovery_left == 0
    assert store.two_factor("bob") is None
    with pytest.raises(AccountError, match="no account"):
        store.set_pending_secret("carol", b"s")
    store.set_pending_secret("alice", b"sealed-1")
    assert store.two_factor("alice").pending == b"sealed-1"
    assert not store.enable_two_factor("alice", b"sealed-0", 100, [b"r1"])
    assert not store.enable_two_factor("bob", b"sealed-1", 100, [b"r1"])  # not Bob's
    version = store.get("alice").version
    assert store.enable_two_factor("alice", b"sealed-1", 100, [b"r1", b"r2"])
    row = store.two_factor("alice")
    assert (row.secret, row.pending, row.last_step, row.recovery_left) == (
        b"sealed-1", None, 100, 2)
    assert row.enabled is not None
    assert store.get("alice").version == version + 1  # cached verifications go stale
    # A code's step once, never an older one; Bob (no secret) never.
    assert not store.use_totp_step("alice", 100)
    assert store.use_totp_step("alice", 101)
    assert not store.use_totp_step("alice", 101)
    assert not store.use_totp_step("alice", 99)
    assert not store.use_totp_step("bob", 200)
    assert store.use_recovery_code("alice", b"r1")
    assert not store.use_recovery_code("alice", b"r1")
    assert not store.use_recovery_code("bob", b"r2")  # Alice's code is not Bob's
    assert store.two_factor("alice").recovery_left == 1
    before = {n: store.get(n).password_changed for n in ("alice", "bob")}
    store.reset_two_factor("alice")
    row = store.two_factor("alice")
    assert row.required and row.secret is None and row.recovery_left == 0
    # Reset and require end web sessions: password_changed moves (Alice's only).
    assert store.get("alice").password_changed > before["alice"]
    assert store.get("bob").password_changed == before["bob"]
    store.set_two_factor_required("bob", True)
    assert store.two_factor("bob").required
    assert store.get("bob").password_changed > before["bob"]
    changes = [(c.name, c.kind, c.detail) for c in store.change_reader().since(0).changes]
    assert changes[2:] == [
        ("alice", "2fa", "enrolment started"),
        ("alice", "password", "two-factor login turned on"),
        ("alice", "2fa", "code used"),
        ("alice", "2fa", "recovery code used"),
        ("alice", "password", "two-factor login reset"),
        ("bob", "password", "two-factor login required"),
    ]


def test_app_passwords_and_delete_take_the_rows_with_the_account(store: Any) -> None:
    store.add("alice", "pw")
    store.add("bob", "pw")
    store.add_app_password("alice", "a1", "phone", "hash-1")
    store.add_app_password("bob", "b1", "laptop", "hash-b")
    assert [p.id for p in store.app_passwords("alice")] == ["a1"]
    assert store.app_password_hash("alice", "a1") == "hash-1"
    assert store.app_password_hash("bob", "a1") is None  # ids are per account
    store.app_password_used("a1")
    assert store.app_passwords("alice")[0].last_used is not None
    assert store.app_passwords("bob")[0].last_used is None
    version = store.get("alice").version
    assert not store.revoke_app_password("bob", "a1")
    assert store.revoke_app_password("alice", "a1")
    assert store.get("alice").version == version + 1
    assert store.change_reader().since(0).changes[-1].kind == "password"
    store.add_app_password("alice", "a2", "phone", "hash-2")
    store.set_pending_secret("alice", b"s")
    assert store.enable_two_factor("alice", b"s", 5, [b"r"])
    store.delete("alice")
    with pytest.raises(AccountError, match="no account"):
        store.add_app_password("alice", "a3", "x", "h")
    # A new account of the same name inherits nothing.
    store.add("alice", "pw")
    assert store.two_factor("alice") is None and store.app_passwords("alice") == []
    with store.database.connection() as conn:
        left = conn.execute("SELECT count(*) FROM recovery_codes").fetchone()[0]
    assert left == 0
    assert store.app_password_hash("bob", "b1") == "hash-b"  # Bob keeps his


def test_a_totp_code_is_taken_once_across_nodes(pg_url: str, tmp_path: Path) -> None:
    """
    Two nodes offered the same code at the same moment: one login gets it.
    Bob's code, in the same moment, is his own business.
    """
    from rumpus_secure.accounts.pg import PGAccountStore

    databases = [Database(pg_url) for _ in range(2)]
    databases[0].migrate()
    try:
        nodes = [PGAccountStore(d, tmp_path / "files", hasher=FAST) for d in databases]
        for name in ("alice", "bob"):
            nodes[0].add(name, "pw")
            nodes[0].set_pending_secret(name, b"s-" + name.encode())
            assert nodes[0].enable_two_factor(name, b"s-" + name.encode(), 10, [])
        for step in range(11, 16):
            calls = [lambda n=n, s=step: n.use_totp_step("alice", s)
                     for n in nodes for _ in range(3)]
            calls.append(lambda s=step: nodes[1].use_totp_step("bob", s))
            results = _race(calls)
            assert sorted(results[:-1]) == [False] * 5 + [True], step
            assert results[-1] is True
        assert nodes[1].two_factor("alice").last_step == 15
    finally:
        for database in databases:
            database.close()


# -- share links ------------------------------------------------------------------


def _link(shares: Any, owner: str = "alice", **kw: Any) -> Any:
    values = dict(kind="download", path="/a.txt", expires=time.time() + 3600,
                  password_hash=None, max_uses=None, max_size=None, note="")
    values.update(kw)
    return shares.create(owner, **values)


def test_share_links_behave_as_in_sqlite(db: Database) -> None:
    from rumpus_secure.accounts.pg import PGShareStore
    from rumpus_secure.shares import IShareStore, ShareError

    shares = PGShareStore(db)
    assert IShareStore.providedBy(shares)
    first, token = _link(shares, note="n" * 2000, password_hash="argon")
    second, _ = _link(shares, max_uses=2)
    bobs, bob_token = _link(shares, owner="bob", kind="dropbox", path="/in", max_size=10)
    found, password_hash = shares.find(token)
    assert found == first and password_hash == "argon" and found.has_password
    assert len(found.note) == 1000
    assert shares.find(bob_token)[0].owner == "bob"
    assert shares.find("x" * 32) is None
    assert [s.id for s in shares.list("alice")] == [second.id, first.id]  # newest first
    assert {s.id for s in shares.list()} == {first.id, second.id, bobs.id}
    with pytest.raises(ShareError, match="unknown kind"):
        _link(shares, kind="other")
    assert shares.take_use(second.id) and shares.take_use(second.id)
    assert not shares.take_use(second.id)  # used up
    assert shares.get(second.id).uses == 2 and shares.get(second.id).last_used
    shares.refund_use(second.id)  # a drop-box file that was not stored
    assert shares.get(second.id).uses == 1 and shares.get(first.id).uses == 0
    shares.refund_use(first.id)  # never below zero
    assert shares.get(first.id).uses == 0
    assert shares.take_use(second.id)
    assert not shares.revoke(first.id, "no", owner="bob")  # not Bob's
    assert shares.revoke(first.id, "done\nwith it", owner="alice")
    assert not shares.revoke(first.id, "again")
    assert shares.get(first.id).revoked == "done with it"
    assert not shares.take_use(first.id)
    expired, _ = _link(shares, expires=time.time() - 1)
    assert not shares.take_use(expired.id)
    shares.record(bobs.id, "upload", "192.0.2.7", "f.txt", 5)
    shares.record(bobs.id, "upload", "192.0.2.8", "g.txt", 6)
    assert [(e.client, e.name, e.size) for e in shares.events(bobs.id)] == [
        ("192.0.2.8", "g.txt", 6), ("192.0.2.7", "f.txt", 5)]
    assert shares.events(first.id) == []


def test_the_last_use_of_a_link_is_taken_once_across_nodes(pg_url: str) -> None:
    """
    Eight visitors on two nodes race for the last two downloads: two get
    them; another link's visitor, at the same moment, is not held back.
    """
    from rumpus_secure.accounts.pg import PGShareStore

    databases = [Database(pg_url) for _ in range(2)]
    databases[0].migrate()
    try:
        nodes = [PGShareStore(d) for d in databases]
        share, _ = _link(nodes[0], max_uses=2)
        other, _ = _link(nodes[1], owner="bob", max_uses=1)
        calls = [lambda n=n: n.take_use(share.id) for n in nodes for _ in range(4)]
        calls.append(lambda: nodes[0].take_use(other.id))
        results = _race(calls)
        assert sorted(results[:-1]) == [False] * 6 + [True] * 2
        assert results[-1] is True
        assert nodes[1].get(share.id).uses == 2
    finally:
        for database in databases:
            database.close()


def test_the_server_and_the_cli_use_the_shared_share_store(
        postgres: Any, db: Database, tmp_path: Path) -> None:
    import io
    from types import SimpleNamespace

    from rumpus_secure import cli
    from rumpus_secure.accounts.pg import PGShareStore
    from rumpus_secure.shares import SQLiteShareStore, store_of

    server = SimpleNamespace(database=db, store=SimpleNamespace(path=db.url),
                             reactor=Clock())
    assert isinstance(store_of(server), PGShareStore)
    assert store_of(server) is store_of(server)
    alone = SimpleNamespace(store=SimpleNamespace(path=tmp_path / "a.sqlite3"),
                            reactor=Clock())
    assert isinstance(store_of(alone), SQLiteShareStore)
    share, _ = _link(PGShareStore(db))
    out = io.StringIO()
    status = cli.main(["--database", db.url, "share", "list"], stdin=io.StringIO(),
                      stdout=out, stderr=out)
    assert status == 0 and share.id in out.getvalue(), out.getvalue()
    status = cli.main(["--database", db.url, "share", "revoke", share.id],
                      stdin=io.StringIO(), stdout=out, stderr=out)
    assert status == 0 and PGShareStore(db).get(share.id).revoked


def test_a_share_link_made_on_one_node_opens_on_another(db: Database, pg_url: str,
                                                        tmp_path: Path) -> None:
    """
    Node A makes a link (the owner's web page); node B serves it and counts
    its one use, after which neither node serves it again.  Bob's link, made
    on B, opens on A.
    """
    import re

    from rumpus_secure.accounts.pg import PGShareStore
    from rumpus_secure.web.site import build_https_site
    from tests.test_web_site import login
    from tests.test_web_support import HTTPDriver, make_server

    other = Database(pg_url)
    try:
        node_a = make_server(tmp_path / "a", login_failure_delay=0)
        node_b = make_server(tmp_path / "b", login_failure_delay=0)
        node_b.store, node_b.checker = node_a.store, node_a.checker  # shared accounts
        for name, password in (("alice", "correct horse"), ("bob", "battery staple")):
            node_a.store.add(name, password)
            (node_a.store.get(name).home / "notes.txt").write_bytes(name.encode())
        for node, database in ((node_a, db), (node_b, other)):
            node.reactor.advance(time.time())
            node.database = database
            node.share_store = PGShareStore(database, clock=node.reactor.seconds)
        site_a = build_https_site(node_a, node_a.reactor)
        site_b = build_https_site(node_b, node_b.reactor)

        def make_link(site: Any, user: str, password: str) -> bytes:
            web = HTTPDriver(site)
            csrf = login(web, user, password)
            response = web.post_form(b"/shares/new", {
                "csrf": csrf, "kind": "download", "path": "/notes.txt", "days": "1",
                "max_uses": "1"})
            assert response.status == 200, response.body
            return re.search(rb"(/s/[A-Za-z0-9_-]+)<", response.body).group(1)

        alices = make_link(site_a, "alice", "correct horse")
        bobs = make_link(site_b, "bob", "battery staple")
        assert HTTPDriver(site_b).get(alices).status == 200
        got = HTTPDriver(site_b).get(alices + b"/get")
        assert got.status == 200 and got.body == b"alice"
        assert HTTPDriver(site_a).get(alices + b"/get").status == 410  # used up on A too
        assert HTTPDriver(site_a).get(bobs + b"/get").body == b"bob"
    finally:
        other.close()


# -- client certificates ------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from .client_pki import ClientPKI

    return ClientPKI(tmp_path_factory.mktemp("pki"))


def _cert_script(store: Any, one: Any, two: Any) -> list[Any]:
    """
    The same steps on either store; what each step showed.
    """
    from rumpus_secure.accounts.client_certs import client_cert_store

    store.add("alice", "pw")
    store.add("bob", "pw")
    certs = client_cert_store(store, clock=lambda: 5e9)
    seen: list[Any] = []

    def step(function: Any, *args: Any) -> None:
        try:
            seen.append(function(*args))
        except AccountError as e:
            seen.append(("error", str(e)))

    start = store.change_reader().latest()
    bob = store.get("bob")
    step(certs.add, "alice", one.cert_path.read_bytes())
    step(certs.add, "alice", two.cert_path.read_bytes())
    step(certs.add, "bob", one.cert_path.read_bytes())  # bound to alice already
    step(certs.add, "nobody", two.cert_path.read_bytes())
    step(certs.add, "bob", one.key_path.read_bytes())  # not a certificate
    step(certs.list, "alice")
    step(certs.list, "bob")
    step(certs.owner, one.fingerprint)
    step(certs.auth_mode, "alice")
    step(certs.auth_mode, "nobody")
    version = store.get("alice").version
    step(certs.set_auth_mode, "alice", "cert+password")
    step(certs.set_auth_mode, "alice", "certificate")
    step(certs.set_auth_mode, "nobody", "cert")
    step(certs.auth_mode, "alice")
    step(certs.delete, "alice", one.fingerprint[:5])
    step(certs.delete, "bob", one.fingerprint)
    step(certs.delete, "alice", one.fingerprint[:14].replace(":", "").lower())
    step(certs.owner, one.fingerprint)
    step(certs.list)
    alice = store.get("alice")
    seen.append((alice.version - version, alice.password_changed, store.get("bob") == bob))
    seen.append([(c.name, c.kind, c.detail)
                 for c in store.change_reader().since(start).changes])
    return seen


def test_client_certificates_behave_as_in_sqlite(store: Any, tmp_path: Path,
                                                 pki: Any) -> None:
    """
    The same steps on the PostgreSQL store and on SQLite show the same
    bindings, login methods, refusals, change log and credential moves.
    """
    from rumpus_secure.accounts.client_certs import ClientCertStore, client_cert_store
    from rumpus_secure.accounts.pg_client_certs import PGClientCertStore

    one, two = pki.issue("alice one"), pki.issue("alice two")
    lite = SQLiteAccountStore(tmp_path / "a.sqlite3", tmp_path / "lite", hasher=FAST)
    assert type(client_cert_store(lite)) is ClientCertStore
    assert type(client_cert_store(store)) is PGClientCertStore
    expected = _cert_script(lite, one, two)
    got = _cert_script(store, one, two)
    assert got == expected
    assert [b.fingerprint for b in got[5]] == [one.fingerprint, two.fingerprint]
    assert got[6] == []
    assert got[-2] == (2, 5e9, True)  # auth and cert-del moved alice only
    assert [kind for _, kind, _ in got[-1]] == ["cert-add", "cert-add", "auth", "cert-del"]


def test_a_binding_made_on_one_node_is_seen_by_the_other(pg_url: str, tmp_path: Path,
                                                         pki: Any) -> None:
    """
    Node 0 binds, node 1 sees the binding (and hears of it in the change
    log); node 1 sets the login method and removes the binding, node 0 sees
    both at once.  Two nodes binding one certificate to two accounts at the
    same moment: one wins.
    """
    from rumpus_secure.accounts.client_certs import client_cert_store
    from rumpus_secure.accounts.pg import PGAccountStore

    databases = [Database(pg_url) for _ in range(2)]
    databases[0].migrate()
    try:
        stores = [PGAccountStore(d, tmp_path / "files", hasher=FAST) for d in databases]
        nodes = [client_cert_store(s) for s in stores]
        stores[0].add("alice", "pw")
        stores[0].add("bob", "pw")
        start = stores[1].change_reader().latest()
        cert = pki.issue("alice on node 0")
        nodes[0].add("alice", cert.cert_path.read_bytes())
        assert nodes[1].owner(cert.fingerprint) == "alice"
        assert [b.fingerprint for b in nodes[1].list("alice")] == [cert.fingerprint]
        nodes[1].set_auth_mode("alice", "cert")
        assert nodes[0].auth_mode("alice") == "cert"
        assert nodes[0].auth_mode("bob") == "password"
        nodes[1].delete("alice", cert.fingerprint)
        assert nodes[0].owner(cert.fingerprint) is None
        kinds = [c.kind for c in stores[1].change_reader().since(start).changes]
        assert kinds == ["cert-add", "auth", "cert-del"]

        contested = pki.issue("wanted by two").cert_path.read_bytes()

        def bind(node: Any, name: str) -> str:
            try:
                return node.add(name, contested).name
            except AccountError as e:
                return str(e)

        results = _race([lambda: bind(nodes[0], "alice"), lambda: bind(nodes[1], "bob")])
        winners = [r for r in results if r in ("alice", "bob")]
        assert len(winners) == 1, results
        assert [r for r in results if "already bound" in r] != []
        owner = nodes[0].owner(fingerprint_of_pem(contested))
        assert owner == winners[0] == nodes[1].owner(fingerprint_of_pem(contested))
    finally:
        for database in databases:
            database.close()


def fingerprint_of_pem(pem: bytes) -> str:
    from rumpus_secure.accounts.client_certs import fingerprint_of, load_certificate_bytes

    return fingerprint_of(load_certificate_bytes(pem))


def test_deleting_an_account_takes_its_bindings_and_login_method(
        store: Any, pki: Any) -> None:
    """
    In the delete's transaction, like SQLite's trigger: a namesake made
    later inherits no certificate and no login method; Bob keeps his.
    """
    from rumpus_secure.accounts.client_certs import client_cert_store

    certs = client_cert_store(store)
    store.add("alice", "pw")
    store.add("bob", "pw")
    alices, bobs = pki.issue("alice deleted"), pki.issue("bob stays")
    certs.add("alice", alices.cert_path.read_bytes())
    certs.add("bob", bobs.cert_path.read_bytes())
    certs.set_auth_mode("alice", "cert")
    certs.set_auth_mode("bob", "cert+password")
    store.delete("alice")
    with store.database.connection() as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM client_certs WHERE name = 'alice'), "
            "(SELECT count(*) FROM account_auth WHERE name = 'alice')").fetchone()
    assert left == (0, 0)
    store.add("alice", "a-new-alice")
    assert certs.owner(alices.fingerprint) is None and certs.list("alice") == []
    assert certs.auth_mode("alice") == "password"
    assert certs.owner(bobs.fingerprint) == "bob"
    assert certs.auth_mode("bob") == "cert+password"
    with pytest.raises(AccountError, match="no account"):
        certs.add("carol", alices.cert_path.read_bytes())


def test_copy_carries_bindings_and_login_methods(tmp_path: Path, db: Database,
                                                  pki: Any) -> None:
    from rumpus_secure.accounts.client_certs import ClientCertStore, client_cert_store
    from rumpus_secure.accounts.pg import PGAccountStore

    lite = SQLiteAccountStore.in_data_dir(tmp_path / "data", tmp_path / "files",
                                          hasher=FAST)
    lite.add("alice", "pw")
    lite.add("bob", "pw")
    bindings = ClientCertStore(lite)
    cert = pki.issue("alice copied")
    bindings.add("alice", cert.cert_path.read_bytes())
    bindings.set_auth_mode("alice", "cert")
    result = copy_sqlite(lite.path, db, time.time())
    assert result.client_certs == 1
    certs = client_cert_store(PGAccountStore(db, tmp_path / "files", hasher=FAST))
    assert certs.list() == bindings.list()
    assert certs.owner(cert.fingerprint) == "alice"
    assert (certs.auth_mode("alice"), certs.auth_mode("bob")) == ("cert", "password")


def test_the_cli_binds_certificates_in_the_shared_database(
        pg_url: str, tmp_path: Path, pki: Any) -> None:
    """
    ``user add --auth``, ``user cert add|list|del`` and ``user auth`` with
    ``--database``: the rows land in PostgreSQL (no SQLite DDL on it).
    """
    import io

    from rumpus_secure import cli
    from rumpus_secure.accounts.client_certs import client_cert_store
    from rumpus_secure.accounts.pg import PGAccountStore

    def run(*argv: str, stdin: str = "") -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["--database", pg_url, "--root", str(tmp_path / "files"),
                           *argv], stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return status, out.getvalue() + err.getvalue()

    assert run("db", "migrate")[0] == 0
    status, text = run("user", "add", "dora", "--auth", "cert", "--password-stdin",
                       stdin="a-long-enough-password\n")
    assert status == 0 and "logs in with: cert" in text, text
    cert = pki.issue("dora cli")
    status, text = run("user", "cert", "add", "dora", "--cert", str(cert.cert_path))
    assert status == 0 and cert.fingerprint in text, text
    status, text = run("user", "cert", "list")
    assert text.split()[:3] == ["dora", "cert", cert.fingerprint], text
    status, text = run("user", "auth", "dora", "cert+password")
    assert status == 0, text
    database = Database(pg_url)
    try:
        certs = client_cert_store(PGAccountStore(database, tmp_path / "files"))
        assert certs.owner(cert.fingerprint) == "dora"
        assert certs.auth_mode("dora") == "cert+password"
        status, text = run("user", "cert", "del", "dora", cert.fingerprint[:11])
        assert status == 0 and certs.list("dora") == [], text
    finally:
        database.close()


# -- copy ---------------------------------------------------------------------


def test_copy_moves_an_sqlite_installation(tmp_path: Path, db: Database) -> None:
    from rumpus_secure.accounts.pg import PGAccountStore, PGBanStore

    data = tmp_path / "data"
    sqlite_store = SQLiteAccountStore.in_data_dir(data, tmp_path / "files", hasher=FAST)
    sqlite_store.add("alice", "alice-pw", perms="list")
    sqlite_store.add("bob", "bob-pw")
    sqlite_store.lock("bob", "gone")
    now = time.time()
    SQLiteBanStore(sqlite_store.path).save(Ban("192.0.2.3", now + 600, 1, "x", now))
    SQLiteBanStore(sqlite_store.path).save(Ban("192.0.2.4", now - 600, 0, "x", now - 900))
    SQLiteSessions(sqlite_store.path).save(b"k" * 32, Session("alice", "c", now, now))
    sqlite_store.set_pending_secret("alice", b"sealed")
    assert sqlite_store.enable_two_factor("alice", b"sealed", 77, [b"r1", b"r2"])
    assert sqlite_store.use_recovery_code("alice", b"r1")
    sqlite_store.add_app_password("bob", "b1", "laptop", "argon-b")
    from rumpus_secure.shares import SQLiteShareStore

    links = SQLiteShareStore(sqlite_store.path)
    old, token = _link(links)
    new, _ = _link(links, owner="bob", kind="dropbox", path="/in")
    links.revoke(old.id, "gone")
    links.record(new.id, "upload", "192.0.2.9", "f.txt", 3)
    result = copy_sqlite(sqlite_store.path, db, now)
    assert (result.accounts, result.bans, result.sessions) == (2, 1, 1)
    assert (result.two_factor, result.app_passwords, result.shares) == (1, 1, 2)
    store = PGAccountStore(db, tmp_path / "files", hasher=FAST)
    assert store.password_hash("alice") == sqlite_store.password_hash("alice")
    assert store.get("bob").locked and store.get("alice").perms == frozenset({"list"})
    assert [b.address for b in PGBanStore(db).load(now)] == ["192.0.2.3"]
    assert not store.bootstrap("admin", "pw")  # a copied database has its admin
    row = store.two_factor("alice")
    assert (row.secret, row.last_step, row.recovery_left) == (b"sealed", 77, 1)
    assert not store.use_totp_step("alice", 77)  # no replay after the move
    assert store.two_factor("bob") is None
    assert store.app_password_hash("bob", "b1") == "argon-b"
    from rumpus_secure.accounts.pg import PGShareStore

    shares = PGShareStore(db)
    assert shares.find(token)[0] == links.get(old.id)
    assert [s.id for s in shares.list()] == [s.id for s in links.list()]
    assert shares.events(new.id) == links.events(new.id)
    with pytest.raises(DatabaseError, match="already holds accounts"):
        copy_sqlite(sqlite_store.path, db, now)
    with sqlite3.connect(sqlite_store.path) as check:
        assert check.execute("SELECT count(*) FROM accounts").fetchone()[0] == 2


def test_db_commands_migrate_copy_and_refuse_an_old_schema(
        postgres: Any, tmp_path: Path) -> None:
    import io

    from rumpus_secure import cli

    def run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), stdin=io.StringIO(), stdout=out, stderr=err)
        return status, out.getvalue() + err.getvalue()

    url = postgres.create_database()
    status, text = run("--database", url, "user", "list")
    assert status == 1 and "db migrate" in text
    status, text = run("--database", url, "db", "migrate")
    assert status == 0 and f"applied migration {LATEST_VERSION}" in text
    status, text = run("db", "migrate", "--database", url)
    assert status == 0 and "nothing to do" in text
    status, text = run("--data-dir", str(tmp_path / "x"), "db", "migrate")
    assert status == 1 and "needs --database" in text

    data = tmp_path / "data"
    SQLiteAccountStore.in_data_dir(data, tmp_path / "files", hasher=FAST).add("alice", "pw")
    target = postgres.create_database()
    status, text = run("db", "copy", "--from", f"sqlite:{data}", "--to", target)
    assert status == 0 and "copied 1 account(s)" in text, text
    status, text = run("--database", target, "user", "list")
    assert status == 0 and "alice" in text
    status, text = run("--database", target, "--root", str(tmp_path / "files"), "user",
                       "add", "carol", "--generate-password", "--require-2fa")
    assert status == 0 and "two-factor login required" in text, text
    status, text = run("--database", target, "user", "2fa", "reset", "carol")
    assert status == 0 and "reset" in text, text
    from rumpus_secure.accounts.pg import PGAccountStore

    shared = Database(target)
    try:
        row = PGAccountStore(shared, tmp_path / "files").two_factor("carol")
        assert row.required and row.secret is None
    finally:
        shared.close()
    status, text = run("db", "copy", "--from", f"sqlite:{data}", "--to", target)
    assert status == 1 and "already holds accounts" in text
    status, text = run("db", "copy", "--from", f"sqlite:{tmp_path / 'none'}", "--to", target)
    assert status == 1 and "no SQLite accounts database" in text


def test_an_outage_fails_fast_and_the_first_request_after_it_recovers(
        postgres: Any) -> None:
    """
    While the database is down, only the first request waits for the
    connection timeout; once it is back, the next request works (the pool
    is rebuilt instead of waiting out its reconnection back-off).
    """
    from rumpus_secure.db import RETRY_AFTER

    url = postgres.create_database()
    database = Database(url, timeout=2)
    query = lambda: database.call(lambda c: c.execute("SELECT 1").fetchone()[0])  # noqa: E731
    assert query() == 1
    postgres.stop("fast")
    try:
        waits = []
        stop = time.monotonic() + 3 * RETRY_AFTER + 2
        while time.monotonic() < stop:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                query()
            waits.append(time.monotonic() - started)
            time.sleep(0.05)
        assert sorted(waits)[len(waits) // 2] < 0.1  # most answers are at once
        assert max(waits) < 2.5
    finally:
        postgres.start()
    time.sleep(RETRY_AFTER)
    started = time.monotonic()
    assert query() == 1
    assert time.monotonic() - started < 1.5
    database.close()
