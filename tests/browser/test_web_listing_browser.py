"""
A folder too big to sort (issue #18, target 4) in a real headless Chromium:
the page says so, the filter, select-all and row links work on the page's
5,000 rows once the stream has ended, the next page is one click away,
the search finds names in all of them,
names with a right-to-left override cannot pose as another name, and
axe-core finds nothing serious.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.test_web_browser import _wait, browser, server  # noqa: F401 - fixtures
from tests.browser.test_web_manager_browser import log_in, run_axe

pytestmark = pytest.mark.integration

ENTRIES = 5_200


def test_a_big_folder_in_pages(server, browser):
    from selenium.webdriver.common.by import By

    folder = server["home"] / "big"
    folder.mkdir()
    for index in range(ENTRIES - 1):
        (folder / f"report {index:05d}.txt").write_bytes(b"x")
    (folder / "\u202egnp.exe").write_bytes(b"MZ")
    origin = log_in(browser, server)
    browser.get(origin + "/files/big/")
    _wait(lambda: browser.execute_script("return document.readyState") == "complete",
          what="the page")
    timing = browser.execute_script(
        "var t = performance.getEntriesByType('navigation')[0];"
        "return [t.responseStart, t.responseEnd, t.domContentLoadedEventEnd];")
    print(f"5,000-row page in Chromium: first byte {timing[0]:.0f} ms, last byte "
          f"{timing[1]:.0f} ms, DOM ready {timing[2]:.0f} ms")
    note = browser.find_element(By.ID, "big-folder")
    assert "not sorted" in note.text
    rows = browser.find_elements(By.CSS_SELECTOR, "table.files tbody tr")
    assert len(rows) == 5000
    pages = browser.find_element(By.ID, "pages")
    assert f"of {ENTRIES:,} (page 1 of 2)" in pages.text
    # A right-to-left override shows as text: no row reads "...exe.png".
    shown = browser.find_element(By.CSS_SELECTOR, "table.files").text
    assert "exe.png" not in shown
    # The filter (app.js runs once the streamed page is parsed).
    box = browser.find_element(By.ID, "filter")
    assert box.is_displayed()
    box.send_keys("report 0001")

    def visible() -> list[Any]:
        return [r for r in browser.find_elements(By.CSS_SELECTOR, "table.files tbody tr")
                if r.is_displayed()]

    on_page = [r for r in rows if "report 0001" in r.text]
    _wait(lambda: len(visible()) == len(on_page), what="the filter")
    assert 0 < len(on_page) <= 100
    # Select all selects what is shown.
    browser.find_element(By.CSS_SELECTOR, "table.files th.pick input").click()
    checked = browser.find_elements(By.CSS_SELECTOR, "table.files tbody td.pick input:checked")
    assert len(checked) == len(on_page)
    # The next page: the rest.
    pages.find_element(By.LINK_TEXT, "Next page").click()
    _wait(lambda: browser.current_url.endswith("?page=2"), what="page 2")
    _wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "table.files tbody tr"))
          == ENTRIES - 5000, what="the rows of page 2")
    assert browser.find_element(By.ID, "pages").find_elements(By.LINK_TEXT, "Previous page")
    # The search reads every entry, not only the page's.
    box = browser.find_element(By.CSS_SELECTOR, "form.find input[name=q]")
    box.send_keys("report 005")
    browser.find_element(By.CSS_SELECTOR, "form.find button[type=submit]").click()
    _wait(lambda: "q=report" in browser.current_url, what="the search")
    found = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.files tbody tr")]
    assert len(found) == 100 and all("report 005" in text for text in found)
    run_axe(browser, "a search in a big folder")
    browser.back()
    _wait(lambda: browser.current_url.endswith("?page=2"), what="page 2 again")
    # axe-core on the last page: the same markup (note, heads, page links),
    # 200 rows instead of 5,000 (axe takes minutes over 5,000 rows)
    run_axe(browser, "a big folder's last page")
