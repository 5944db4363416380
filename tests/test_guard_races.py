"""
The windows between two steps of a login, driven in memory (issue #11,
parts 3 and 4): verifications and exposure checks finish only when the test
releases them, so every order of events can be played.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.web.redirect import build_http_site
from rumpus_secure.web.site import build_https_site
from tests.ftp_fakes import connect
from tests.guard_fakes import HeldChecker, OpenRequest, hold_logins, login_form
from tests.test_guard_ftp import guarded, send
from tests.test_web_support import make_server as make_web_server

GUESSER = "192.0.2.66"
SNIFFER = "192.0.2.99"
USER_SIDE = "198.51.100.4"
THRESHOLD = 15
IN_FLIGHT = 4


def release_all(checker: HeldChecker, reactor: Any, guard: Guard, host: str) -> int:
    """
    Let the held verifications finish one by one; the most seen at once.
    """
    most = 0
    while checker.held:
        most = max(most, len(checker.held), guard.verifying(host))
        checker.release(0)
        reactor.advance(0)
        reactor.advance(0)
    return most


# -- part 4: a ban caps guesses made in parallel -----------------------------


@pytest.mark.parametrize("per_address, guesses, right_at, bob_at", [
    (0, 100, 94, 50),   # no connection limit: a hundred connections
    (20, 19, 17, 16),   # the default limit: twenty connections
])
def test_parallel_ftps_guesses_are_capped(tmp_path: Path, per_address: int, guesses: int,
                                          right_at: int, bob_at: int) -> None:
    server, reactor = guarded(tmp_path, threshold=THRESHOLD, login_failure_delay=0.0,
                              max_connections_per_ip=per_address,
                              max_verifying_per_ip=IN_FLIGHT)
    server.store.add("bob", "bobs-password")
    checker = hold_logins(server)
    connections = []
    for i in range(guesses + 1):
        proto, transport, _ = connect(server, implicit=True, reactor=reactor, peer=GUESSER)
        if i == bob_at:  # same address, another account, in parallel
            send(proto, transport, "USER bob", "PASS bobs-password")
        else:
            send(proto, transport, "USER alice", "PASS " + ("right" if i == right_at
                                                            else f"wrong{i}"))
        connections.append(transport)
    most = release_all(checker, reactor, server.guard, GUESSER)
    assert checker.verified <= THRESHOLD + IN_FLIGHT
    assert most <= IN_FLIGHT
    replies = [line for t in connections for line in t.lines()]
    assert not [r for r in replies if r.startswith("230")], "a guess logged in after the ban"
    assert server.guard.is_banned(GUESSER) is not None
    assert not [e for e in server.audit.named("ftp.login") if e["outcome"] == "ok"]
    # Another address is served as before.
    other, transport, _ = connect(server, implicit=True, reactor=reactor, peer=USER_SIDE)
    send(other, transport, "USER bob", "PASS bobs-password")
    checker.release(0)
    assert transport.lines()[-1].startswith("230 ")


def test_parallel_https_guesses_are_capped(tmp_path: Path) -> None:
    server = make_web_server(tmp_path)
    server.store.add("alice", "right")
    server.store.add("bob", "bobs-password")
    reactor = server.reactor
    server.guard = Guard(GuardSettings(threshold=THRESHOLD, login_failure_delay=0.0,
                                       max_connections_per_ip=0,
                                       max_verifying_per_ip=IN_FLIGHT), reactor)
    checker = hold_logins(server)
    site = build_https_site(server, reactor)
    requests = []
    for i in range(100):
        if i == 50:  # same address, another account, in parallel
            body, headers = login_form("bob", "bobs-password")
        else:
            body, headers = login_form("alice", "right" if i == 94 else f"wrong{i}")
        requests.append(OpenRequest(site, b"POST", b"/login", peer=GUESSER,
                                    body=body, headers=headers))
    most = release_all(checker, reactor, server.guard, GUESSER)
    assert checker.verified <= THRESHOLD + IN_FLIGHT
    assert most <= IN_FLIGHT
    statuses = [r.response().status for r in requests]
    assert 303 not in statuses, "a guess logged in after the ban"
    assert set(statuses) <= {401, 403}
    assert server.guard.is_banned(GUESSER) is not None
    # Another address logs in.
    body, headers = login_form("bob", "bobs-password")
    other = OpenRequest(site, b"POST", b"/login", peer=USER_SIDE, body=body,
                        headers=headers)
    checker.release(0)
    assert other.response().status == 303


def test_ftp_and_web_share_the_in_flight_limit(tmp_path: Path) -> None:
    # The web site's public origin is the one login_form posts from (the
    # Origin check compares with configuration, not with the Host header).
    server, reactor = guarded(tmp_path, threshold=100, max_verifying_per_ip=2,
                              config={"https": "tcp:8443",
                                      "public_host": "files.example.org"})
    checker = hold_logins(server)
    server.reactor = reactor
    site = build_https_site(server, reactor)
    proto, transport, _ = connect(server, implicit=True, reactor=reactor, peer=GUESSER)
    send(proto, transport, "USER alice", "PASS wrong")
    body, headers = login_form("alice", "wrong")
    OpenRequest(site, b"POST", b"/login", peer=GUESSER, body=body, headers=headers)
    body, headers = login_form("alice", "wrong")
    OpenRequest(site, b"POST", b"/login", peer=GUESSER, body=body, headers=headers)
    assert len(checker.held) == 2
    assert server.guard.waiting(GUESSER) == 1


# -- part 3: no window between an exposed password and its quarantine ---------


@pytest.mark.parametrize("round", range(50))
def test_ftp_login_waits_for_the_exposure_check(tmp_path: Path, round: int) -> None:
    """
    A cleartext PASS, and at once a TLS login with the same password from
    the sniffer, while the password pool is busy: never 230, whichever of
    the two checks finishes first.
    """
    server, reactor = guarded(tmp_path, threshold=THRESHOLD, login_failure_delay=0.0)
    name, password = f"user{round}", f"password-{round}"
    server.store.add(name, password)
    server.store.add("bob", "bobs-password")
    checker = hold_logins(server, hold_checks=True)
    sniffer_first = round % 3 == 2
    if sniffer_first:  # the sniffer's verification is already under way
        sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
        send(sniffer, sniffed, f"USER {name}", f"PASS {password}")
    clear, clear_transport, _ = connect(server, reactor=reactor, peer=USER_SIDE)
    send(clear, clear_transport, f"USER {name}", f"PASS {password}")
    if not sniffer_first:
        sniffer, sniffed, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
        send(sniffer, sniffed, f"USER {name}", f"PASS {password}")
    # The same address, another account, in the window: not held up.
    bob, bob_transport, _ = connect(server, implicit=True, reactor=reactor, peer=SNIFFER)
    send(bob, bob_transport, "USER bob", "PASS bobs-password")
    checker.release(len(checker.held) - 1)
    assert bob_transport.lines()[-1].startswith("230 ")
    # The cleartext PASS is not answered before its check.
    assert not clear_transport.disconnecting
    if round % 3 == 0:
        checker.release(0)  # the sniffer's password verifies first...
        assert not [line for line in sniffed.lines() if line.startswith(("230", "530"))]
        checker.release_check()
    else:
        checker.release_check()  # ...or the exposure check does
        checker.release(0)
    reactor.advance(0)
    replies = sniffed.lines()
    assert not [r for r in replies if r.startswith("230")], replies
    assert replies[-1].startswith("530 Login refused: this account is locked")
    assert server.store.get(name).locked
    assert clear_transport.lines()[-1].startswith("530 ")
    assert clear_transport.disconnecting


def test_web_login_waits_for_the_exposure_check_and_403_follows_it(tmp_path: Path) -> None:
    server = make_web_server(tmp_path)
    server.store.add("alice", "s3cret")
    server.store.add("bob", "bobs-password")
    reactor = server.reactor
    server.guard = Guard(GuardSettings(threshold=THRESHOLD, login_failure_delay=0.0),
                         reactor)
    checker = hold_logins(server, hold_checks=True)
    plain = build_http_site(server, reactor)
    secure = build_https_site(server, reactor)
    token = base64.b64encode(b"alice:s3cret")
    clear = OpenRequest(plain, b"GET", b"/files/", peer=USER_SIDE,
                        headers={b"authorization": b"Basic " + token})
    assert not clear.answered  # the 403 waits for the check
    body, headers = login_form("alice", "s3cret")
    sniffer = OpenRequest(secure, b"POST", b"/login", peer=SNIFFER, body=body,
                          headers=headers)
    body, headers = login_form("bob", "bobs-password")
    bob = OpenRequest(secure, b"POST", b"/login", peer=SNIFFER, body=body, headers=headers)
    checker.release(1)
    assert bob.response().status == 303
    checker.release(0)  # alice's password is right...
    assert not sniffer.answered  # ...but the check is pending
    checker.release_check()
    reactor.advance(0)
    assert clear.response().status == 403
    response = sniffer.response()
    assert response.status == 403 and b"locked" in response.body
    assert server.store.get("alice").locked
    assert not [e for e in server.audit.named("web.login")
                if e["account"] == "alice" and e["outcome"] == "ok"]


def test_a_checker_error_frees_the_verification_slot(tmp_path: Path) -> None:
    server, reactor = guarded(tmp_path, threshold=THRESHOLD, max_verifying_per_ip=1)
    checker = hold_logins(server)
    proto, transport, _ = connect(server, implicit=True, reactor=reactor, peer=GUESSER)
    send(proto, transport, "USER alice", "PASS right")
    _, d = checker.held.pop(0)
    d.errback(RuntimeError("the database is gone"))
    reactor.advance(0)
    assert transport.lines()[-1].startswith("451 ")
    assert server.guard.verifying(GUESSER) == 0
    send(proto, transport, "USER alice", "PASS right")
    checker.release(0)
    assert transport.lines()[-1].startswith("230 ")


def test_a_web_login_whose_browser_left_while_waiting_is_not_verified(tmp_path: Path) -> None:
    server = make_web_server(tmp_path)
    server.store.add("alice", "right")
    server.guard = Guard(GuardSettings(threshold=THRESHOLD, login_failure_delay=0.0,
                                       max_verifying_per_ip=1), server.reactor)
    checker = hold_logins(server)
    site = build_https_site(server, server.reactor)
    body, headers = login_form("alice", "wrong")
    OpenRequest(site, b"POST", b"/login", peer=GUESSER, body=body, headers=headers)
    gone = OpenRequest(site, b"POST", b"/login", peer=GUESSER, body=body, headers=headers)
    assert server.guard.waiting(GUESSER) == 1
    gone.protocol.connectionLost(None)
    checker.release(0)
    assert checker.held == [] and checker.verified == 1
    assert server.guard.verifying(GUESSER) == 0
