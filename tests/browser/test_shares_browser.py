"""
Share links (issue #15, part 2) in real headless Chromium: the owner makes
links in the file manager; visitors use them from a fresh browser profile
(no cookie, no account).

A download link is downloaded, then expired, then revoked; a drop box
receives two files that the visitor cannot list afterwards; a download
limit runs out.  Screenshots of the visitor pages go to
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.browser.test_web_browser import (  # noqa: F401 - fixtures
    SCREENSHOTS,
    _wait,
    browser,
    chromium,
    server,
)
from tests.browser.test_web_manager_browser import log_in, run_axe

pytestmark = pytest.mark.integration


@contextmanager
def fresh_profile(where: Path) -> Iterator[Any]:
    """A second Chromium with its own empty profile: a visitor."""
    with chromium(where / "profile", window="900,800",
                  downloads=where / "downloads") as driver:
        yield driver


def make_link(browser: Any, origin: str, start: str, **fields: str) -> str:
    """Open the owner's new-link form from C{start} (a link on a page), fill it in."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, start).click()
    _wait(lambda: "/shares/new" in browser.current_url, what="the new-link form")
    for name, value in fields.items():
        field = browser.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "form[action='/shares/new'] button").click()
    url = _wait(lambda: browser.find_element(By.ID, "share-url").text, what="the link")
    assert url.startswith("https://127.0.0.1:")
    # The public host's name; the test server listens on this port.
    return origin + url[url.index("/s/"):]


def download(visitor: Any, name: str) -> bytes:
    from selenium.webdriver.common.by import By

    visitor.find_element(By.ID, "download").click()
    target = visitor.downloads / name
    _wait(lambda: target.exists() and not list(visitor.downloads.glob("*.crdownload")),
          timeout=30, what=f"the download of {name}")
    data = target.read_bytes()
    target.unlink()
    return data


def expire_now(server: dict[str, Any]) -> None:
    """
    Move every link's expiry into the past: the browser cannot wait days.
    (The clock-driven expiry itself is tested in memory, tests/test_shares.py.)
    """
    with sqlite3.connect(server["data"] / "accounts.sqlite3") as db:
        db.execute("UPDATE shares SET expires = ?", (time.time() - 1,))


def test_download_link_fresh_profile_expire_revoke(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (server["home"] / "plan.pdf").write_bytes(b"%PDF-1.4 the plan")
    (server["home"] / "photos").mkdir()
    (server["home"] / "photos" / "a.jpg").write_bytes(b"jpeg bytes")
    origin = log_in(browser, server)
    link = make_link(browser, origin, "tr a.share-link[href*='plan.pdf']",
                     note="The plan for Monday")
    folder = None
    browser.get(origin + "/files/")
    folder = make_link(browser, origin, "tr a.share-link[href*='photos']")
    with fresh_profile(tmp_path / "visitor") as visitor:
        visitor.get(link)
        _wait(lambda: visitor.find_elements(By.ID, "download"), what="the visitor page")
        assert "The plan for Monday" in visitor.page_source
        assert not visitor.find_elements(By.CSS_SELECTOR, "a[href^='/files']")
        visitor.save_screenshot(str(SCREENSHOTS / "share-download-visitor.png"))
        run_axe(visitor, "download link visitor page")
        assert download(visitor, "plan.pdf") == b"%PDF-1.4 the plan"
        visitor.get(folder)
        _wait(lambda: visitor.find_elements(By.ID, "download"), what="the folder page")
        assert b"a.jpg" in download(visitor, "photos.zip")
        # The owner sees the use.
        browser.get(origin + "/shares")
        assert "never" not in browser.find_element(By.ID, "shares").text.split("\n")[-1]
        # Expired: the page says so, and there is nothing to download.
        expire_now(server)
        visitor.get(link)
        _wait(lambda: "expired" in visitor.page_source, what="the expired page")
        assert not visitor.find_elements(By.ID, "download")
        visitor.save_screenshot(str(SCREENSHOTS / "share-expired-visitor.png"))
    # A new link, revoked by its owner from the links page.
    browser.get(origin + "/files/")
    again = make_link(browser, origin, "tr a.share-link[href*='plan.pdf']")
    browser.get(origin + "/shares")
    browser.find_element(By.CSS_SELECTOR, "#shares tbody tr:first-child button").click()
    _wait(lambda: "Link revoked" in browser.page_source, what="the revocation")
    with fresh_profile(tmp_path / "visitor2") as visitor:
        visitor.get(again)
        _wait(lambda: "turned off" in visitor.page_source, what="the revoked page")


def test_drop_box_two_files_no_listing(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    inbox = server["home"] / "inbox"
    inbox.mkdir()
    (inbox / "private.txt").write_text("the owner's own file")
    origin = log_in(browser, server)
    browser.get(origin + "/files/inbox/")
    link = make_link(browser, origin, "#make-dropbox", note="Send me your forms")
    first, second = tmp_path / "form.txt", tmp_path / "photo.jpg"
    first.write_bytes(b"filled in")
    second.write_bytes(b"\xff\xd8 a photo")
    same_name = tmp_path / "again" / "form.txt"
    same_name.parent.mkdir()
    same_name.write_bytes(b"filled in again")
    with fresh_profile(tmp_path / "visitor") as visitor:
        visitor.get(link)
        _wait(lambda: visitor.find_elements(By.CSS_SELECTOR, "input[type=file]"),
              what="the drop box")
        visitor.save_screenshot(str(SCREENSHOTS / "share-dropbox-visitor.png"))
        run_axe(visitor, "drop box visitor page")
        assert "private.txt" not in visitor.page_source
        visitor.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(
            f"{first}\n{second}")
        visitor.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _wait(lambda: "Received 2 file(s)" in visitor.page_source, what="the receipt")
        visitor.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(same_name))
        visitor.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _wait(lambda: "Received 1 file(s)" in visitor.page_source, what="the receipt")
        visitor.save_screenshot(str(SCREENSHOTS / "share-dropbox-received.png"))
        # Nothing of what is there can be seen from the link.
        for path in ("", "/get", "/upload"):
            visitor.get(link + path)
            assert "private.txt" not in visitor.page_source
            assert "form (1).txt" not in visitor.page_source
        assert not list(visitor.downloads.iterdir())
    assert (inbox / "form.txt").read_bytes() == b"filled in"
    assert (inbox / "form (1).txt").read_bytes() == b"filled in again"
    assert (inbox / "photo.jpg").read_bytes() == b"\xff\xd8 a photo"
    # The owner sees each upload on the link's page.
    browser.get(origin + "/shares")
    browser.find_element(By.CSS_SELECTOR, "#shares tbody tr:first-child a").click()
    events = _wait(lambda: browser.find_element(By.ID, "share-events").text,
                   what="the link's uses")
    browser.save_screenshot(str(SCREENSHOTS / "share-owner-uses.png"))
    run_axe(browser, "a link's uses")
    assert events.count("upload") == 3 and "form (1).txt" in events


def test_download_limit_runs_out(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    (server["home"] / "once.txt").write_bytes(b"only twice")
    origin = log_in(browser, server)
    link = make_link(browser, origin, "tr a.share-link[href*='once.txt']",
                     max_uses="2")
    with fresh_profile(tmp_path / "visitor") as visitor:
        for _ in range(2):
            visitor.get(link)
            _wait(lambda: visitor.find_elements(By.ID, "download"), what="the page")
            assert download(visitor, "once.txt") == b"only twice"
        visitor.get(link)
        _wait(lambda: "used as often as it may be" in visitor.page_source,
              what="the limit page")
        assert not visitor.find_elements(By.ID, "download")
    browser.get(origin + "/shares")
    assert "2 of 2" in browser.find_element(By.ID, "shares").text
