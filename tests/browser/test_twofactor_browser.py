"""
Two-factor login (issue #15, part 1) in a real headless Chromium.

Enrols by reading the secret from the page (as a person types it into an
app), logs in with a code, sees a replayed code refused and a recovery code
work once.  Screenshots of the enrolment page and the code page go to
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rumpus_secure.accounts.totp import code_at
from tests.browser.test_web_browser import (  # noqa: F401 - fixtures
    SCREENSHOTS,
    _wait,
    browser,
    server,
)
from tests.browser.test_web_manager_browser import add_user, log_in, run_axe

pytestmark = pytest.mark.integration


def password_step(browser: Any, origin: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(origin + "/login")
    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: browser.current_url == origin + "/login/code", what="the code page")


def give_code(browser: Any, code: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.NAME, "code").send_keys(code)
    browser.find_element(By.CSS_SELECTOR,
                         "form:has(input[name=code]) button[type=submit]").click()


def log_out(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    _wait(lambda: "/login" in browser.current_url, what="the login page")


def test_enrol_log_in_replay_and_recovery(server, browser):
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    add_user(server, "bob", "bob pw 12345", "list,download")
    origin = log_in(browser, server)
    browser.get(origin + "/account")
    browser.find_element(By.CSS_SELECTOR, "a[href='/account/2fa']").click()
    _wait(lambda: browser.find_elements(By.ID, "totp-secret"), what="the secret")
    assert browser.find_elements(By.CSS_SELECTOR, ".qr svg")
    browser.save_screenshot(str(SCREENSHOTS / "2fa-enrol.png"))
    run_axe(browser, "2FA enrolment")
    secret = browser.find_element(By.ID, "totp-secret").text.replace(" ", "")
    give_code(browser, code_at(secret, time.time()))
    codes = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#recovery-codes code"),
                  what="the recovery codes")
    recovery = [c.text for c in codes]
    browser.save_screenshot(str(SCREENSHOTS / "2fa-recovery-codes.png"))
    assert len(recovery) == 10
    log_out(browser)

    # The password alone is no longer enough: the code page comes next.
    password_step(browser, origin, server["user"], server["password"])
    browser.save_screenshot(str(SCREENSHOTS / "2fa-login-code.png"))
    run_axe(browser, "2FA code page")
    # The next step's code (inside the +-1 window; the enrolment used this one).
    code = code_at(secret, time.time() + 30)
    give_code(browser, code)
    _wait(lambda: browser.current_url == origin + "/files/", what="the files")
    log_out(browser)

    # The same code again: refused, no session.
    password_step(browser, origin, server["user"], server["password"])
    give_code(browser, code)
    _wait(lambda: "not right, or was used already" in browser.page_source,
          what="the replay refusal")
    browser.get(origin + "/files/")
    assert "/login" in browser.current_url

    # Bob, no second factor, same browser meanwhile: the password is enough.
    log_in(browser, server, "bob", "bob pw 12345")
    log_out(browser)

    # A recovery code works once.
    password_step(browser, origin, server["user"], server["password"])
    give_code(browser, recovery[0])
    _wait(lambda: browser.current_url == origin + "/files/", what="the files")
    assert "recovery code; 9 left" in browser.page_source
    log_out(browser)
    password_step(browser, origin, server["user"], server["password"])
    give_code(browser, recovery[0])
    _wait(lambda: "not right, or was used already" in browser.page_source,
          what="the used recovery code refused")
