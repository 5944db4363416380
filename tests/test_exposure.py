"""
Exposure checks under a flood (issue #12, part 1) and the self-check's
probe on the FTP port (issue #11, part 5), in memory.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from rumpus_secure.accounts.checker import ArgonChecker
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.accounts.verifier_cache import VerifierCache
from rumpus_secure.exposure import PER_ADDRESS_QUEUED, ExposureGuard
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.report import PROBE_ACCOUNT
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.ftp_fakes import connect
from tests.guard_fakes import OpenRequest, hold_logins
from tests.test_guard_ftp import guarded, hang_up, send
from tests.test_web_support import make_server as make_web_server

FLOODER = "192.0.2.66"
VICTIM = "198.51.100.4"


def basic(user: str, password: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Basic " + base64.b64encode(f"{user}:{password}".encode())}


def web_server(tmp_path: Path, **settings: Any) -> Any:
    server = make_web_server(tmp_path)
    server.store.add("alice", "s3cret")
    values: dict[str, Any] = {"threshold": 15, "login_failure_delay": 0.0}
    values.update(settings)
    server.guard = Guard(GuardSettings(**values), server.reactor, audit=server.audit)
    return server


# -- the plain HTTP port -----------------------------------------------------


def test_credentials_on_the_plain_port_are_an_offence_and_end_in_a_ban(tmp_path: Path) -> None:
    server = web_server(tmp_path)
    plain = build_http_site(server, server.reactor)
    for i in range(5):
        response = OpenRequest(plain, b"GET", b"/", peer=FLOODER,
                               headers=basic("alice", f"guess{i}")).response()
        assert response.status == 403
    assert server.guard.is_banned(FLOODER) is not None
    assert server.audit.named("guard.ban")[0]["reason"] == "cleartext_login"
    # Banned: no more password checks for this address (the fifth, which
    # caused the ban, was read already and is checked), one quiet audit
    # record, and the connection closes after the answer.
    checked = len(server.checker.checked)
    for i in range(50):
        assert OpenRequest(plain, b"GET", b"/", peer=FLOODER,
                           headers=basic("alice", f"more{i}")).response().status == 403
    assert len(server.checker.checked) == checked == 5
    outcomes = [e["outcome"] for e in server.audit.named("http.cleartext_password")]
    assert outcomes.count("not-checked-banned") == 0
    assert len(server.audit.named("web.cleartext_credentials")) == 5
    assert len(server.audit.named("guard.refused")) == 1
    pipelined = OpenRequest(plain, b"GET", b"/", peer=FLOODER, headers={
        **basic("alice", "x"), b"connection": b"keep-alive"})
    pipelined.protocol.dataReceived(b"".join(
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eDp5\r\n\r\n"
        for _ in range(10)))
    assert pipelined.transport.value().count(b"HTTP/1.1 403") == 1
    assert pipelined.transport.disconnecting
    # Another address is checked and quarantined as before.
    OpenRequest(plain, b"GET", b"/", peer=VICTIM, headers=basic("alice", "s3cret"))
    assert server.store.get("alice").locked


def test_identical_pairs_are_checked_once(tmp_path: Path) -> None:
    server = web_server(tmp_path, threshold=0)  # no ban: only the dedup at work
    checker = hold_logins(server, hold_checks=True)
    plain = build_http_site(server, server.reactor)
    requests = [OpenRequest(plain, b"GET", b"/", peer=FLOODER,
                            headers=basic("alice", "same-guess")) for _ in range(400)]
    assert len(checker.held_checks) == 1
    assert not any(r.answered for r in requests)
    checker.release_check()
    assert all(r.response().status == 403 for r in requests)
    [outcome] = server.audit.named("http.cleartext_password")
    assert outcome["requests"] == 400 and outcome["outcome"] == "not-the-password"


def test_a_flooding_address_does_not_hold_up_another(tmp_path: Path) -> None:
    server = web_server(tmp_path, threshold=0)
    checker = hold_logins(server, hold_checks=True)
    plain = build_http_site(server, server.reactor)
    flood = [OpenRequest(plain, b"GET", b"/", peer=FLOODER, headers=basic("alice", f"g{i}"))
             for i in range(PER_ADDRESS_QUEUED + 1 + 5)]
    victim = OpenRequest(plain, b"GET", b"/", peer=VICTIM, headers=basic("alice", "s3cret"))
    # One check runs (the flooder's first); the rest wait their turn, and
    # beyond the per-address queue the flooder's are answered unchecked.
    assert len(checker.held_checks) == 1
    dropped = [e for e in server.audit.named("http.cleartext_password")
               if e["outcome"] == "not-checked-too-many"]
    assert len(dropped) == 5 and all(r.answered for r in flood[-5:])
    checker.release_check()
    # The victim's address has the next turn, not the flooder's sixteen.
    [(name, password, _)] = checker.held_checks
    assert password == "s3cret"
    checker.release_check()
    assert victim.response().status == 403
    assert server.store.get("alice").locked
    while checker.held_checks:
        checker.release_check()
    assert all(r.response().status == 403 for r in flood)


def test_exposure_checks_use_their_own_pool(tmp_path: Path) -> None:
    server = web_server(tmp_path)
    checker = hold_logins(server)
    pool, cache = object(), object()
    server.exposure = ExposureGuard(server, server.reactor, threadpool=pool, cache=cache)
    plain = build_http_site(server, server.reactor)
    OpenRequest(plain, b"GET", b"/", peer=VICTIM, headers=basic("alice", "x"))
    assert checker.check_options == [{"threadpool": pool, "cache": cache}]


def test_the_cleartext_password_is_dropped_once_checked(tmp_path: Path) -> None:
    server = web_server(tmp_path, threshold=0)
    checker = hold_logins(server, hold_checks=True)
    plain = build_http_site(server, server.reactor)
    OpenRequest(plain, b"GET", b"/", peer=FLOODER, headers=basic("alice", "first-pw"))
    OpenRequest(plain, b"GET", b"/", peer=FLOODER, headers=basic("alice", "queued-pw"))
    exposure = server.exposure
    dump = repr([vars(job) for queue in exposure._queues.values() for job in queue])
    assert "queued-pw" in dump  # waiting for its check
    running = repr([vars(job) for job in exposure._by_key.values()])
    assert "first-pw" not in running  # handed to the check
    while checker.held_checks:
        checker.release_check()
    assert exposure._by_key == {} and exposure._queues == {}


def test_check_password_remembers_outcomes_per_password(tmp_path: Path) -> None:
    class Counting(PasswordHasher):
        calls = 0

        def verify(self, hash: Any, password: Any) -> bool:
            Counting.calls += 1
            return super().verify(hash, password)

    hasher = Counting(time_cost=1, memory_cost=8, parallelism=1)
    store = SQLiteAccountStore(tmp_path / "a.sqlite3", tmp_path / "homes", hasher=hasher)
    store.add("alice", "right-one")
    checker = ArgonChecker(store, MemoryReactorClock(), hasher=hasher)
    cache = VerifierCache()
    for _ in range(5):
        assert checker._matches("alice", "wrong-one", cache) is False
        assert checker._matches("alice", "right-one", cache) is True
    assert Counting.calls == 2
    store.lock("alice", "quarantined")  # the password is the same: still known
    assert checker._matches("alice", "right-one", cache) is True
    assert Counting.calls == 2
    store.set_password("alice", "wrong-one")  # a new password: checked again
    assert checker._matches("alice", "wrong-one", cache) is True
    assert Counting.calls == 3


# -- the FTP port --------------------------------------------------------------


def test_a_pass_read_after_the_ban_is_still_checked(tmp_path: Path) -> None:
    # The USER of the second connection bans the address; its PASS was
    # sent on a connection already open, so it is checked (round 3,
    # finding 5: it may be a neighbour's real password).
    server, reactor = guarded(tmp_path, threshold=6)
    for _ in range(2):
        proto, transport, _ = connect(server, reactor=reactor, peer=FLOODER)
        send(proto, transport, "USER alice", "PASS guess")
    assert server.guard.is_banned(FLOODER) is not None
    assert server.checker.checked == [("alice", "guess")] * 2
    assert [e["outcome"] for e in server.audit.named("ftp.cleartext_password")] == [
        "not-the-password"] * 2


def test_the_check_probe_costs_nothing_but_a_pass_after_it_does(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=4)
    for _ in range(10):
        proto, transport, _ = connect(server, reactor=reactor, peer="127.0.0.1")
        replies = send(proto, transport, "CLNT rumpus-secure-check", f"USER {PROBE_ACCOUNT}")
        assert replies[-1].startswith("530 ")
        hang_up(proto)
    assert server.guard.is_banned("127.0.0.1") is None
    assert not server.audit.named("guard.ban")
    # Imitating the probe buys no free guess: the PASS is scored.
    proto, transport, _ = connect(server, reactor=reactor, peer="192.0.2.8")
    send(proto, transport, f"USER {PROBE_ACCOUNT}")
    assert server.guard.is_banned("192.0.2.8") is None
    send(proto, transport, "PASS guess")
    proto, transport, _ = connect(server, reactor=reactor, peer="192.0.2.8")
    send(proto, transport, f"USER {PROBE_ACCOUNT}", "USER alice")
    assert server.guard.is_banned("192.0.2.8") is not None


# -- HTTPS connections per address -----------------------------------------------


def test_https_connections_are_limited_per_address(tmp_path: Path) -> None:
    server = web_server(tmp_path, max_connections_per_ip=2)
    site = build_https_site(server, server.reactor)

    def open_from(host: str) -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        protocol = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    first, _ = open_from(FLOODER)
    open_from(FLOODER)
    third, refused = open_from(FLOODER)
    assert refused.value().startswith(b"HTTP/1.1 503 ")
    assert b"Too many connections from your address (limit 2)" in refused.value()
    assert refused.disconnecting
    third.dataReceived(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.value().count(b"HTTP/1.1") == 1  # nothing read after the refusal
    third.connectionLost(None)
    # Another address is served; a closed connection frees its place.
    _, other = open_from(VICTIM)
    assert not other.disconnecting
    first.connectionLost(None)
    _, again = open_from(FLOODER)
    assert not again.disconnecting and again.value() == b""
    assert server.guard.connections(FLOODER) == 2


def test_an_exposed_app_password_has_its_own_outcome(tmp_path: Path) -> None:
    from rumpus_secure.accounts import app_passwords
    from rumpus_secure.accounts.hashing import hash_password
    from tests.test_web_support import HTTPDriver

    server = web_server(tmp_path, threshold=0)
    server.store.add("bob", "b0b")
    real = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "real",
                              hasher=PasswordHasher(time_cost=1, memory_cost=8,
                                                    parallelism=1))
    made = {}
    for name in ("alice", "bob"):
        real.add(name, "x")
        made[name] = app_passwords.generate()
        real.add_app_password(name, made[name].ident, "FTP",
                              hash_password(made[name].password))
    for method in ("app_password_hash", "revoke_app_password"):
        setattr(server.store, method, getattr(real, method))
    plain = HTTPDriver(build_http_site(server, server.reactor), origin=None)
    assert plain.get(b"/", headers=basic("alice", made["alice"].password)).status == 403
    assert plain.get(b"/", headers=basic("bob", "not it")).status == 403
    outcomes = {e["account"]: e for e in server.audit.named("http.cleartext_password")}
    assert outcomes["alice"]["outcome"] == "app-password"
    assert outcomes["alice"]["app_password"] == made["alice"].ident
    assert outcomes["bob"]["outcome"] == "not-the-password"
    [exposed] = server.audit.named("account.app_password_exposed")
    assert exposed["account"] == "alice" and exposed["app_password"] == made["alice"].ident
    assert not server.audit.named("account.password_exposed")
    assert real.app_password_hash("alice", made["alice"].ident) is None
    assert real.app_password_hash("bob", made["bob"].ident) is not None
    assert not server.store.get("alice").locked  # an app password: no quarantine
