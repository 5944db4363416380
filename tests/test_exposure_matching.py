"""
Exposure checks that only the right password can wait for, a banned
address whose open connections still get checked, candidates that could
not be checked, and names in another case (round 3, findings 3, 5, 8), in
memory: verifications and checks finish when the test releases them.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure import exposure as exposure_module
from rumpus_secure.exposure import PER_ADDRESS_QUEUED
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.ftp_fakes import connect
from tests.guard_fakes import OpenRequest, hold_logins, login_form
from tests.manual_thread import ManualThread
from tests.test_guard_ftp import guarded, send
from tests.test_web_support import make_server as make_web_server

FLOODERS = [f"192.0.2.{i}" for i in range(10, 40)]
SNIFFER = "192.0.2.99"
USER_SIDE = "198.51.100.4"


def outcomes(server: Any, event: str = "ftp.cleartext_password") -> list[str]:
    return [e["outcome"] for e in server.audit.named(event)]


# -- finding 3: a flood of wrong cleartext passwords delays nobody ----------------


def test_a_cleartext_flood_of_wrong_passwords_does_not_hold_up_the_real_login(
        tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    server.store.add("bob", "bobs-password")
    checker = hold_logins(server, hold_checks=True)
    # 4 cleartext logins per address, 30 addresses: 120 checks of alice,
    # one running, the rest queued (none released during the test).
    for host in FLOODERS:
        for i in range(4):
            proto, transport, _ = connect(server, reactor=reactor, peer=host)
            send(proto, transport, "USER alice", f"PASS random-{host}-{i}")
    assert server.exposure.checking("alice")
    alice, alice_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(alice, alice_transport, "USER alice", "PASS right")
    # The same address, another account, in the window.
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    # More random guesses arrive while alice's password is verified.
    for i in range(4):
        proto, transport, _ = connect(server, reactor=reactor, peer="192.0.2.200")
        send(proto, transport, "USER alice", f"PASS later-{i}")
    checker.release(0)
    checker.release(0)
    assert alice_transport.lines()[-1].startswith("230 "), alice_transport.lines()
    assert bob_transport.lines()[-1].startswith("230 ")
    assert len(checker.held_checks) == 1  # nothing was checked meanwhile
    assert not server.store.get("alice").locked


def test_a_login_waits_for_a_check_of_its_own_password_only(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    checker = hold_logins(server, hold_checks=True)
    wrong, wrong_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    send(wrong, wrong_transport, "USER alice", "PASS not-it")
    clear, clear_transport, _ = connect(server, reactor=reactor, peer="192.0.2.50")
    send(clear, clear_transport, "USER alice", "PASS right")
    sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(sniffer, sniffed, "USER alice", "PASS right")
    checker.release(0)
    assert not [r for r in sniffed.lines() if r.startswith(("230", "530"))]
    checker.release_check()  # the wrong one: the login still waits
    assert not [r for r in sniffed.lines() if r.startswith(("230", "530"))]
    checker.release_check()  # the real one: quarantined, refused
    reactor.advance(0)
    assert sniffed.lines()[-1].startswith("530 Login refused: this account is locked")
    assert server.store.get("alice").locked


def test_a_login_does_not_wait_for_a_check_queued_after_its_verification(
        tmp_path: Path) -> None:
    server, _ = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    checker = hold_logins(server, hold_checks=True)
    exposure = server.exposure
    watch = exposure.watch("alice", "right")
    d = exposure.check(protocol="ftp", client=USER_SIDE, user="alice", password="right")
    assert watch.jobs  # queued while the verification runs: waited for
    outcome = []
    from twisted.internet import defer
    defer.Deferred.fromCoroutine(watch.outcome()).addCallback(outcome.append)
    assert outcome == []
    other = exposure.watch("alice", "right")
    checker.release_check()
    assert outcome == [outcome[0]] and outcome[0] is not None
    assert d.called
    # Once a watch has been asked for its outcome, a later identical check
    # is not added to it.
    later = exposure.check(protocol="ftp", client="192.0.2.51", user="alice",
                           password="other")
    done = []
    defer.Deferred.fromCoroutine(other.outcome()).addCallback(done.append)
    assert done and not later.called


# -- finding 5: a ban made by a neighbour does not suppress the check -------------


def test_a_banned_address_open_connection_still_gets_its_check(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    server.store.add("carol", "carols-password")
    server.store.add("bob", "bobs-password")
    # The victim's careless client connected before the ban...
    victim, victim_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    # ...a neighbour behind the same address gets it banned...
    for i in range(5):
        proto, transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
        send(proto, transport, "USER mallory", f"PASS guess{i}")
    assert server.guard.is_banned(USER_SIDE) is not None
    # ...and then the victim's client pipelines its real password.
    send(victim, victim_transport, "USER carol", "PASS carols-password")
    assert "real-password" in outcomes(server)
    assert "not-checked-banned" not in outcomes(server)
    assert server.store.get("carol").locked
    assert victim_transport.lines()[-1].startswith("530 ")
    sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(sniffer, sniffed, "USER carol", "PASS carols-password")
    assert sniffed.lines()[-1].startswith("530 Login refused: this account is locked")
    # The sniffer's address, another account, is served as usual.
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    assert bob_transport.lines()[-1].startswith("230 ")
    # New connections of the banned address are still refused at once.
    _, refused, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    assert refused.lines()[0].startswith("421 ")


def test_a_candidate_not_checked_is_proven_by_a_login(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=0, login_failure_delay=0.0)
    server.store.add("bob", "bobs-password")
    checker = hold_logins(server, hold_checks=True)
    # One check runs, PER_ADDRESS_QUEUED wait: the real password is dropped.
    for i in range(PER_ADDRESS_QUEUED + 1):
        proto, transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
        send(proto, transport, "USER alice", f"PASS filler-{i}")
    proto, clear_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    send(proto, clear_transport, "USER alice", "PASS right")
    assert outcomes(server)[-1] == "not-checked-too-many"
    assert not server.store.get("alice").locked
    sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(sniffer, sniffed, "USER alice", "PASS right")
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    checker.release(0)
    checker.release(0)
    reactor.advance(0)
    assert sniffed.lines()[-1].startswith("530 Login refused: this account is locked")
    assert server.store.get("alice").locked
    assert "real-password-proven-by-login" in outcomes(server)
    assert bob_transport.lines()[-1].startswith("230 ")  # bob's password never leaked
    assert not server.store.get("bob").locked
    # The candidate is used up; an unrelated wrong candidate proves nothing.
    assert not server.exposure._unchecked_by_account.get("bob")


def test_a_banned_address_web_credentials_are_remembered(tmp_path: Path) -> None:
    server = make_web_server(tmp_path)
    server.store.add("alice", "s3cret")
    server.store.add("bob", "bobs-password")
    server.guard = Guard(GuardSettings(threshold=15, login_failure_delay=0.0),
                         server.reactor, audit=server.audit)
    plain = build_http_site(server, server.reactor)
    secure = build_https_site(server, server.reactor)
    server.guard.offence(USER_SIDE, "protocol_garbage", protocol="ftp")
    server.guard.offence(USER_SIDE, "protocol_garbage", protocol="ftp")
    server.guard.offence(USER_SIDE, "protocol_garbage", protocol="ftp")
    assert server.guard.is_banned(USER_SIDE) is not None
    token = base64.b64encode(b"alice:s3cret")
    assert OpenRequest(plain, b"GET", b"/", peer=USER_SIDE, headers={
        b"authorization": b"Basic " + token}).response().status == 403
    assert not server.store.get("alice").locked  # not checked: banned
    body, headers = login_form("alice", "s3cret")
    sniffer = OpenRequest(secure, b"POST", b"/login", peer=SNIFFER, body=body,
                          headers=headers)
    body, headers = login_form("bob", "bobs-password")
    bob = OpenRequest(secure, b"POST", b"/login", peer=SNIFFER, body=body, headers=headers)
    response = sniffer.response()
    assert response.status == 403 and b"locked" in response.body
    assert server.store.get("alice").locked
    assert bob.response().status == 303


def test_candidates_not_checked_are_bounded(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposure_module, "UNCHECKED_MAX", 100)
    server, _ = guarded(tmp_path)
    exposure = server.exposure
    for i in range(200):
        exposure.not_checked(protocol="ftp", client=USER_SIDE, user="alice",
                             password=f"p{i}", outcome="not-checked-banned")
    assert len(exposure._unchecked) == exposure_module.UNCHECKED_PER_ACCOUNT
    assert len(exposure._unchecked_by_account["alice"]) == exposure_module.UNCHECKED_PER_ACCOUNT
    for i in range(200):
        exposure.not_checked(protocol="ftp", client=USER_SIDE, user=f"user{i}",
                             password="marker-pw", outcome="not-checked-banned")
    assert len(exposure._unchecked) == 100
    assert sum(len(k) for k in exposure._unchecked_by_account.values()) == 100
    assert "alice" not in exposure._unchecked_by_account  # the oldest went
    kept = repr((exposure._unchecked, exposure._unchecked_by_account))
    assert "marker-pw" not in kept and "p199" not in kept  # HMACs only


def test_a_remembered_candidate_expires(tmp_path: Path) -> None:
    server = make_web_server(tmp_path)
    server.store.add("alice", "s3cret")
    exposure = server.exposure
    exposure.not_checked(protocol="http", client=USER_SIDE, user="alice",
                         password="s3cret", outcome="not-checked-banned")
    server.reactor.advance(exposure_module.UNCHECKED_TTL + 1)
    secure = build_https_site(server, server.reactor)
    body, headers = login_form("alice", "s3cret")
    assert OpenRequest(secure, b"POST", b"/login", peer=SNIFFER, body=body,
                       headers=headers).response().status == 303
    assert not server.store.get("alice").locked


# -- finding 8: the name in another case -------------------------------------------


def test_a_cleartext_password_under_the_name_in_capitals_is_contained(
        tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    server.store.add("carol", "carols-password")
    server.store.add("bob", "bobs-password")
    checker = hold_logins(server, hold_checks=True)
    clear, clear_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    send(clear, clear_transport, "USER CAROL", "PASS carols-password")
    sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(sniffer, sniffed, "USER carol", "PASS carols-password")
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    checker.release(1)
    assert bob_transport.lines()[-1].startswith("230 ")
    checker.release(0)
    assert not [r for r in sniffed.lines() if r.startswith(("230", "530"))]
    checker.release_check()
    reactor.advance(0)
    assert server.store.get("carol").locked
    assert sniffed.lines()[-1].startswith("530 Login refused: this account is locked")
    [exposed] = server.audit.named("account.password_exposed")
    assert exposed["account"] == "carol"


def test_the_check_runs_after_the_name_is_looked_up_in_a_thread(tmp_path: Path) -> None:
    # The look-up of the stored spelling runs in a thread: the password must
    # still reach the check when it comes back (and not stay after it).
    server, reactor = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    server.store.add("carol", "carols-password")
    thread = ManualThread()
    server.run_in_thread = thread  # type: ignore[method-assign]
    clear, clear_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    send(clear, clear_transport, "USER Carol", "PASS carols-password")
    assert server.checker.checked == []
    thread.run_next()  # the look-up
    assert server.checker.checked == [("carol", "carols-password")]
    assert "carols-password" not in repr([vars(job) for job in
                                          server.exposure._by_key.values()])
    thread.run_next()  # the lock
    assert server.store.get("carol").locked
    assert clear_transport.lines()[-1].startswith("530 ")


def test_a_watch_settles_at_once_only_when_outcome_would_find_nothing(
        tmp_path: Path) -> None:
    """
    The fast path of a warm login (LoginWatch.settled): taken only when no
    check of the password is pending and the account has no unchecked
    cleartext candidate; a second account's candidate does not stop it, and
    a candidate of this account (any password) sends the login through
    outcome(), which still finds and contains it.
    """
    from twisted.internet import defer

    server, _ = guarded(tmp_path, threshold=15, login_failure_delay=0.0)
    checker = hold_logins(server, hold_checks=True)
    exposure = server.exposure
    quiet = exposure.watch("alice", "right")
    assert quiet.settled()
    assert "alice" not in exposure._watches  # closed: later checks not added to it
    # A pending check of this password: not settled, outcome waits for it.
    watch = exposure.watch("alice", "right")
    exposure.check(protocol="ftp", client=USER_SIDE, user="alice", password="right")
    assert not watch.settled()
    checker.release_check()
    # Another account's candidate leaves alice's logins on the fast path.
    exposure.not_checked(protocol="ftp", client=USER_SIDE, user="bob",
                         password="bobs-password", outcome="not-checked-banned")
    assert exposure.watch("alice", "other").settled()
    # A candidate of alice's own: outcome() decides, and contains it.
    exposure.not_checked(protocol="ftp", client=USER_SIDE, user="alice",
                         password="seen-in-clear", outcome="not-checked-banned")
    seen = exposure.watch("alice", "seen-in-clear")
    assert not seen.settled()
    outcome: list[Any] = []
    defer.Deferred.fromCoroutine(seen.outcome()).addCallback(outcome.append)
    assert outcome and outcome[0] is not None
