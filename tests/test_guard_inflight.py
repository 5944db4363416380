"""
Guesses in flight are guesses: the guard's login attempts on a fake clock.

A login counts as a failed attempt while its password is verified, at most
a few verifications of one address run at once, and a success after a ban
made meanwhile is refused (issue #11, part 4).  TLS handshake failures from
loopback are free (part 5).
"""

from __future__ import annotations

from typing import Any

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.guard import Guard, LoginAttempt
from tests.test_guard import make_guard

GUESSER = "192.0.2.66"
OTHER = "192.0.2.77"


def begin(guard: Guard, host: str = GUESSER, account: str = "alice") -> list[Any]:
    """
    Start a login; the list fills with its attempt or ban when it fires.
    """
    fired: list[Any] = []
    guard.begin_login(host, "ftp", account).addCallback(fired.append)
    return fired


def test_parallel_guesses_are_capped_at_the_threshold() -> None:
    """
    100 guesses at once, the right one 95th: at most threshold passwords
    are verified, never more than four at a time, and the right one never
    gets in; a second client of the same address with another account is
    refused alike, while another address logs in.
    """
    guard = make_guard(threshold=15, max_verifying_per_ip=4)
    logins = [begin(guard) for _ in range(100)]
    honest_same_address = begin(guard, account="bob")
    verified: list[int] = []
    most_in_flight = 0
    while True:
        running = [i for i, fired in enumerate(logins)
                   if fired and isinstance(fired[0], LoginAttempt) and i not in verified]
        if not running:
            break
        most_in_flight = max(most_in_flight, guard.verifying(GUESSER))
        i = running[0]
        verified.append(i)
        attempt = logins[i][0]
        if i == 94:
            assert attempt.succeeded() is not None, "the right password logged in"
        else:
            attempt.failed()
    assert len(verified) == 15
    assert most_in_flight == 4
    assert 94 not in verified
    assert all(len(fired) == 1 for fired in logins)
    assert all(isinstance(fired[0], Ban) for i, fired in enumerate(logins)
               if i not in verified)
    assert isinstance(honest_same_address[0], Ban)
    assert guard.verifying(GUESSER) == 0 and guard.waiting(GUESSER) == 0
    [other] = begin(guard, OTHER, "bob")
    assert isinstance(other, LoginAttempt) and other.succeeded() is None


def test_a_pending_verification_counts_and_a_success_is_refunded() -> None:
    guard = make_guard(threshold=3, max_verifying_per_ip=10)
    first, second, third, fourth = (begin(guard) for _ in range(4))
    # Three in flight fill the threshold: the fourth waits.
    assert [len(x) for x in (first, second, third, fourth)] == [1, 1, 1, 0]
    first[0].succeeded()  # refunded: room for the fourth
    assert isinstance(fourth[0], LoginAttempt)
    second[0].failed()
    third[0].failed()
    assert guard.is_banned(GUESSER) is None
    assert fourth[0].failed() is not None  # the third failure bans


def test_threshold_one_still_lets_the_right_password_in() -> None:
    guard = make_guard(threshold=1)
    [attempt] = begin(guard)
    assert attempt.succeeded() is None
    assert guard.is_banned(GUESSER) is None
    [again] = begin(guard)
    assert again.failed() is not None


def test_a_success_after_a_ban_made_meanwhile_is_refused() -> None:
    guard = make_guard(threshold=2, max_verifying_per_ip=4)
    [right] = begin(guard)
    [wrong] = begin(guard)
    guard.offence(GUESSER, "cleartext_login", protocol="http")  # weight 3: banned
    assert guard.is_banned(GUESSER) is not None
    assert isinstance(right.succeeded(), Ban)
    assert isinstance(wrong.failed(), Ban)


def test_verifications_in_flight_are_limited_per_address() -> None:
    guard = make_guard(threshold=100, max_verifying_per_ip=4)
    logins = [begin(guard) for _ in range(6)]
    assert [len(x) for x in logins] == [1, 1, 1, 1, 0, 0]
    assert guard.verifying(GUESSER) == 4 and guard.waiting(GUESSER) == 2
    # Other addresses are not held up.
    assert len(begin(guard, OTHER)) == 1
    logins[0][0].failed()
    assert [len(x) for x in logins] == [1, 1, 1, 1, 1, 0]
    logins[1][0].abandoned()
    assert isinstance(logins[5][0], LoginAttempt)
    # Ending twice frees one slot only.
    logins[1][0].abandoned()
    assert guard.verifying(GUESSER) == 4


def test_abandoned_attempts_count_nothing() -> None:
    guard = make_guard(threshold=2, max_verifying_per_ip=4)
    for _ in range(5):
        [attempt] = begin(guard)
        attempt.abandoned()
    assert guard.is_banned(GUESSER) is None


def test_safe_addresses_have_no_verification_limit() -> None:
    guard = make_guard(threshold=2, max_verifying_per_ip=1, safe_list=("192.0.2.0/24",))
    logins = [begin(guard) for _ in range(5)]
    assert all(isinstance(x[0], LoginAttempt) for x in logins)
    for fired in logins:
        assert fired[0].failed() is None


def test_a_banned_address_gets_the_ban_at_once() -> None:
    guard = make_guard(threshold=1)
    guard.offence(GUESSER, "login_failed", protocol="ftp")
    [ban] = begin(guard)
    assert isinstance(ban, Ban)
    assert guard.verifying(GUESSER) == 0


def test_tls_failures_from_loopback_are_free_but_nothing_else() -> None:
    guard = make_guard(threshold=3)
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.9"):
        for _ in range(10):
            assert guard.offence(host, "tls_failed", protocol="ftp") is None
        assert guard.is_banned(host) is None
    for _ in range(3):
        guard.offence("192.0.2.5", "tls_failed", protocol="ftp")
    assert guard.is_banned("192.0.2.5") is not None
    # Loopback guesses still count.
    for _ in range(3):
        guard.offence("127.0.0.2", "login_failed", protocol="ftp")
    assert guard.is_banned("127.0.0.2") is not None


def test_successful_logins_leave_nothing_to_sum() -> None:
    """
    A refunded login is forgotten: an address that logs in thousands of
    times keeps no marks (each login once summed all of them), while its
    failures still count toward a ban, for it and its other accounts.
    """
    guard = make_guard(threshold=3)
    for _ in range(2000):
        [attempt] = begin(guard)
        assert attempt.succeeded() is None
    assert len(guard._scores.get(GUESSER, ())) == 0
    [first] = begin(guard)
    [second] = begin(guard, account="bob")  # in flight together
    assert first.failed() is None
    assert second.succeeded() is None  # refunded: only the failure is left
    assert len(guard._scores[GUESSER]) == 1
    for _ in range(2):
        [attempt] = begin(guard, account="bob")
        ban = attempt.failed()
    assert isinstance(ban, Ban)
    assert isinstance(begin(guard, account="carol")[0], Ban)
    assert isinstance(begin(guard, OTHER)[0], LoginAttempt)
