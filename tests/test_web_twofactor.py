"""
The two-factor web login in memory (the real request classes and pages):
no session before the code, wrong codes are guard offences like wrong
passwords, enrolment forced after ``user 2fa require``, and app passwords
made, shown once and revoked on ``/account``.

Accounts and passwords come from the in-memory fakes; the two-factor
tables are a real SQLite store's, and the secret is sealed with a real key.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from rumpus_secure.accounts.secretbox import SecretBox
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.accounts.totp import TwoFactor, code_at
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.web.site import build_https_site
from tests.test_web_support import HTTPDriver, make_server

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
TWO_FACTOR_METHODS = ("two_factor", "set_two_factor_required", "set_pending_secret",
                      "enable_two_factor", "reset_two_factor", "use_totp_step",
                      "use_recovery_code", "add_app_password", "app_passwords",
                      "app_password_hash", "app_password_used", "revoke_app_password")


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path, ban_threshold=4, login_failure_delay=0)
    server.reactor.advance(1_800_000_000)
    for name, password in (("alice", "correct horse"), ("bob", "battery staple")):
        server.store.add(name, password)
    real = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "real",
                              hasher=CHEAP)
    real.add("alice", "x")
    real.add("bob", "x")
    for method in TWO_FACTOR_METHODS:
        setattr(server.store, method, getattr(real, method))
    server.real = real
    server.guard = Guard(GuardSettings.from_config(server.config), server.reactor,
                         audit=server.audit)
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


def enrol(server, name: str) -> str:
    factor = TwoFactor(server.real, SecretBox.in_data_dir(server.config.data_dir),
                       clock=server.reactor.seconds)
    secret = factor.pending_secret(name)
    assert factor.confirm(name, code_at(secret, server.reactor.seconds()))
    return secret


def password_step(web: HTTPDriver, user: str, password: str):
    return web.post_form(b"/login", {"username": user, "password": password})


def test_no_session_before_the_code(server, site):
    secret = enrol(server, "alice")
    web = HTTPDriver(site)
    first = password_step(web, "alice", "correct horse")
    assert first.status == 303 and first.header(b"location") == b"/login/code"
    assert web.get(b"/files/").status == 303  # not logged in yet
    server.reactor.advance(30)
    done = web.post_form(b"/login/code", {"code": code_at(secret, server.reactor.seconds())})
    assert done.status == 303 and done.header(b"location") == b"/files/"
    assert web.get(b"/files/").status == 200


def test_wrong_codes_are_offences_like_wrong_passwords(server, site):
    enrol(server, "alice")
    web = HTTPDriver(site)
    password_step(web, "alice", "correct horse")
    for _ in range(3):
        assert web.post_form(b"/login/code", {"code": "000000"}).status in (401, 403)
    # Bob, same address, meanwhile: his right password still works (the
    # score is 3 of 4), and a wrong one then bans the address.
    bob = HTTPDriver(site)
    assert password_step(bob, "bob", "battery staple").header(b"location") == b"/files/"
    assert password_step(HTTPDriver(site), "bob", "wrong").status == 403
    assert server.guard.is_banned("192.0.2.7") is not None
    assert web.post_form(b"/login/code", {"code": "123456"}).status == 403


def test_pending_login_is_per_browser_and_ends_after_five_wrong_codes(server, site):
    server.guard = None  # only the pending login's own limit here
    secret = enrol(server, "alice")
    web, other = HTTPDriver(site), HTTPDriver(site)
    password_step(web, "alice", "correct horse")
    # Another browser without the pending cookie gets nowhere with a code.
    server.reactor.advance(30)
    code = code_at(secret, server.reactor.seconds())
    assert other.post_form(b"/login/code", {"code": code}).header(b"location") == b"/login"
    for _ in range(5):
        web.post_form(b"/login/code", {"code": "000000"})
    assert web.post_form(b"/login/code", {"code": code}).header(b"location") == b"/login"


def test_required_account_enrols_before_its_session(server, site):
    server.real.set_two_factor_required("bob", True)
    web = HTTPDriver(site)
    first = password_step(web, "bob", "battery staple")
    assert first.header(b"location") == b"/login/enrol"
    page = web.get(b"/login/enrol").body.decode()
    secret = re.search(r"id=totp-secret class=secret>([A-Z2-7 ]+)<", page).group(1)
    secret = secret.replace(" ", "")
    assert "<svg" in page and "style=" not in page.split("<svg", 1)[1].split("</svg>")[0]
    assert web.get(b"/files/").status == 303
    done = web.post_form(b"/login/enrol",
                         {"code": code_at(secret, server.reactor.seconds())})
    assert done.status == 200 and done.body.count(b"<li><code>") == 10
    assert web.get(b"/files/").status == 200
    assert server.real.two_factor("bob").secret is not None


def test_app_passwords_on_the_account_page(server, site):
    web = HTTPDriver(site)
    assert password_step(web, "alice", "correct horse").status == 303
    page = web.get(b"/account").body.decode()
    csrf = re.search(r"name=csrf value='([^']+)'", page).group(1)
    made = web.post_form(b"/account/app-passwords", {"csrf": csrf, "label": "FileZilla"})
    shown = re.search(rb"id=new-app-password class=secret>(rsap-[a-z2-7-]+)<", made.body)
    assert shown and b"FileZilla" in made.body
    listed = web.get(b"/account").body
    assert shown.group(1) not in listed  # shown once
    ident = re.search(rb"name=id value='([a-z2-7]+)'", listed).group(1).decode()
    assert server.real.app_password_hash("alice", ident) is not None
    # Bob cannot revoke Alice's.
    bob = HTTPDriver(site)
    password_step(bob, "bob", "battery staple")
    bob_csrf = re.search(r"name=csrf value='([^']+)'",
                         bob.get(b"/account").body.decode()).group(1)
    bob.post_form(b"/account/app-passwords/revoke", {"csrf": bob_csrf, "id": ident})
    assert server.real.app_password_hash("alice", ident) is not None
    web.post_form(b"/account/app-passwords/revoke", {"csrf": csrf, "id": ident})
    assert server.real.app_password_hash("alice", ident) is None


def _passwd(server, name: str) -> None:
    """What ``user passwd`` does, as the web sees it: a new password time."""
    account = server.store.accounts[name]
    server.store.accounts[name] = replace(account, password="new one",
                                          password_changed=server.reactor.seconds())


def test_password_change_ends_a_pending_code_login(server, site):
    secret = enrol(server, "alice")
    bob_secret = enrol(server, "bob")
    web, bob = HTTPDriver(site), HTTPDriver(site)
    for driver, name, password in ((web, "alice", "correct horse"),
                                   (bob, "bob", "battery staple")):
        assert password_step(driver, name, password).header(b"location") == \
            b"/login/code"
    server.reactor.advance(30)
    _passwd(server, "alice")  # the admin, between the two steps
    code = code_at(secret, server.reactor.seconds())
    refused = web.post_form(b"/login/code", {"code": code})
    assert refused.status == 409 and b"log in again" in refused.body
    assert web.get(b"/files/").status == 303
    # The pending login is over: not even a right code opens it now.
    assert web.post_form(b"/login/code", {"code": code}).header(b"location") == b"/login"
    assert any(e.get("outcome") == "account-changed" for e in server.audit.events)
    # Bob's pending login, beside it, is untouched.
    bob_code = code_at(bob_secret, server.reactor.seconds())
    assert bob.post_form(b"/login/code", {"code": bob_code}).header(b"location") == \
        b"/files/"
    assert bob.get(b"/files/").status == 200


def test_two_factor_reset_ends_a_pending_code_login(server, site):
    secret = enrol(server, "alice")
    web = HTTPDriver(site)
    password_step(web, "alice", "correct horse")
    server.real.reset_two_factor("alice")
    server.reactor.advance(30)
    assert web.post_form(b"/login/code",
                         {"code": code_at(secret, server.reactor.seconds())}).status == 409
    assert web.get(b"/files/").status == 303


def test_password_change_ends_a_pending_enrolment(server, site):
    server.real.set_two_factor_required("bob", True)
    server.real.set_two_factor_required("alice", True)
    web, alice = HTTPDriver(site), HTTPDriver(site)
    assert password_step(web, "bob", "battery staple").header(b"location") == \
        b"/login/enrol"
    assert password_step(alice, "alice", "correct horse").header(b"location") == \
        b"/login/enrol"
    page = web.get(b"/login/enrol").body.decode()
    secret = re.search(r"id=totp-secret class=secret>([A-Z2-7 ]+)<", page).group(1)
    secret = secret.replace(" ", "")
    _passwd(server, "bob")
    refused = web.post_form(b"/login/enrol",
                            {"code": code_at(secret, server.reactor.seconds())})
    assert refused.status == 409
    assert web.get(b"/files/").status == 303
    assert server.real.two_factor("bob").secret is None  # nothing bound
    assert web.get(b"/login/enrol").header(b"location") == b"/login"
    # Alice enrols beside it as before.
    page = alice.get(b"/login/enrol").body.decode()
    secret = re.search(r"id=totp-secret class=secret>([A-Z2-7 ]+)<", page).group(1)
    done = alice.post_form(b"/login/enrol",
                           {"code": code_at(secret.replace(" ", ""),
                                            server.reactor.seconds())})
    assert done.status == 200 and alice.get(b"/files/").status == 200


def test_lock_ends_a_pending_enrolment_page(server, site):
    server.real.set_two_factor_required("bob", True)
    web = HTTPDriver(site)
    password_step(web, "bob", "battery staple")
    server.store.lock("bob", "quarantined")
    assert web.get(b"/login/enrol").status == 409
    assert server.real.two_factor("bob").pending is None


def _account_page_csrf(web: HTTPDriver) -> str:
    page = web.get(b"/account").body.decode()
    return re.search(r"name=csrf value='([^']+)'", page).group(1)


@pytest.mark.parametrize("change", ["require", "reset"])
def test_two_factor_require_or_reset_ends_web_sessions(server, site, change):
    # The account's password time comes from the real store, as in production.
    server.real._clock = server.reactor.seconds
    fake_get = server.store.get

    def get(name):
        account = fake_get(name)
        real = server.real.get(name)
        return account if account is None or real is None else replace(
            account, password_changed=max(account.password_changed, real.password_changed))

    server.store.get = get
    alice, bob = HTTPDriver(site), HTTPDriver(site)
    if change == "reset":
        # A full two-factor session (a thief's, with the "lost" phone).
        secret = enrol(server, "alice")
        password_step(alice, "alice", "correct horse")
        server.reactor.advance(30)
        done = alice.post_form(b"/login/code",
                               {"code": code_at(secret, server.reactor.seconds())})
        assert done.header(b"location") == b"/files/"
    else:
        # A password-only session from before the requirement.
        assert password_step(alice, "alice", "correct horse").header(b"location") == \
            b"/files/"
    assert password_step(bob, "bob", "battery staple").header(b"location") == b"/files/"
    csrf, bob_csrf = _account_page_csrf(alice), _account_page_csrf(bob)
    server.reactor.advance(10)
    if change == "reset":
        server.real.reset_two_factor("alice")
    else:
        server.real.set_two_factor_required("alice", True)
    made = alice.post_form(b"/account/app-passwords", {"csrf": csrf, "label": "x"})
    assert made.status == 403 and b"rsap-" not in made.body
    assert server.real.app_passwords("alice") == []
    assert alice.get(b"/account").status in (303, 403)
    assert alice.get(b"/files/").status == 303
    # Bob's session, beside it, still works and still mints.
    mine = bob.post_form(b"/account/app-passwords", {"csrf": bob_csrf, "label": "y"})
    assert mine.status == 200 and b"rsap-" in mine.body
    assert bob.get(b"/files/").status == 200


def test_codes_sent_in_parallel_count_as_they_start(server, site):
    from twisted.internet import defer

    from tests.guard_fakes import OpenRequest

    server.guard = None  # only the pending login's own limit here
    enrol(server, "alice")
    bob_secret = enrol(server, "bob")
    web, bob = HTTPDriver(site), HTTPDriver(site)
    password_step(web, "alice", "correct horse")
    password_step(bob, "bob", "battery staple")
    held: list = []
    synchronous = server.run_in_thread

    def run_in_thread(function, *args, **kwargs):
        if getattr(function, "__name__", "") == "verify":
            d = defer.Deferred()
            held.append((d, function))
            return d
        return synchronous(function, *args, **kwargs)

    server.run_in_thread = run_in_thread
    cookie = b"; ".join(k + b"=" + v for k, v in web.cookies.items())
    body = b"code=000000"
    requests = [OpenRequest(site, b"POST", b"/login/code", peer="192.0.2.7", body=body,
                            headers={b"cookie": cookie,
                                     b"origin": b"https://files.example.org:8443",
                                     b"content-type": b"application/x-www-form-urlencoded"})
                for _ in range(12)]
    assert len(held) == 5  # five checks started, not twelve
    # The sixth ends the pending login; the rest find none (back to /login).
    assert [r.response().status for r in requests[5:]] == [401] + [303] * 6
    assert {r.response().header(b"location") for r in requests[6:]} == {b"/login"}
    for d, function in held:
        d.callback(function())
    assert [r.response().status for r in requests[:5]] == [401] * 5
    # Bob's pending login, beside it, is untouched: his right code opens it.
    server.run_in_thread = synchronous
    server.reactor.advance(30)
    code = code_at(bob_secret, server.reactor.seconds())
    done = bob.post_form(b"/login/code", {"code": code})
    assert done.header(b"location") == b"/files/"
