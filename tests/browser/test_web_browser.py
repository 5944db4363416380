"""
The web file manager in a real headless Chromium, against the real server.

Starts ``twistd -n rumpus-secure`` on loopback ports, follows the HTTP
redirect, logs in, uploads (watching the progress bar), downloads and
compares bytes, renames, deletes and logs out.  Screenshots of the login and
listing pages go to ``test-artifacts/screenshots/``.

Chromium is driven through Selenium with the system chromedriver; Selenium
Manager is never asked to download anything.  Skipped when Chromium,
chromedriver or Selenium is missing, unless RUMPUS_REQUIRE_CLIENTS=1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


def _missing(reason: str) -> None:
    if os.environ.get("RUMPUS_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"required client missing: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    password = "browser test pw 1"
    subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data), "init"],
        text=True, env=_env(), check=True, capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
         "user", "add", "alice", "--password-stdin"],
        input=password + "\n", text=True, env=_env(), check=True, capture_output=True,
    )
    http_port, https_port = _free_port(), _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(data),
             "--ftp", "none", "--ftps", "none",
             "--http", f"tcp:{http_port}:interface=127.0.0.1",
             "--https", f"tcp:{https_port}:interface=127.0.0.1",
             "--public-host", "127.0.0.1"],
            cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), 0.2).close()
                socket.create_connection(("127.0.0.1", http_port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("server did not start:\n" + log.read_text())
                time.sleep(0.1)
        yield {"http": http_port, "https": https_port, "user": "alice",
               "password": password, "home": data / "files" / "alice", "log": log,
               "data": data}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def chromium(profile: Path, window: str = "1100,900", downloads: Path | None = None,
             javascript: bool = True) -> Iterator[Any]:
    """
    Headless Chromium with an empty profile of its own (the flags this
    machine needs: no sandbox as root, no background networking).

    :param downloads: where downloads land (made here), or L{None}.
    :param javascript: off for the pages that must work without it.
    """
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _missing("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--ignore-certificate-errors",
                 f"--user-data-dir={profile}", f"--window-size={window}"):
        options.add_argument(flag)
    prefs: dict[str, Any] = {}
    if downloads is not None:
        downloads.mkdir(parents=True)
        prefs.update({"download.default_directory": str(downloads),
                      "download.prompt_for_download": False,
                      "safebrowsing.enabled": False})
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    if prefs:
        options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads  # type: ignore[attr-defined]
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile", downloads=tmp_path / "downloads") as driver:
        yield driver


def _wait(condition: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page may be reloading
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_browse_upload_download_rename_delete(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    origin = f"https://127.0.0.1:{server['https']}"

    # The plain HTTP address redirects to HTTPS, then to the login page.
    browser.get(f"http://127.0.0.1:{server['http']}/")
    _wait(lambda: browser.current_url.startswith(origin + "/login"), what="redirect")
    browser.save_screenshot(str(SCREENSHOTS / "login.png"))

    browser.find_element(By.NAME, "username").send_keys(server["user"])
    browser.find_element(By.NAME, "password").send_keys(server["password"])
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: browser.current_url == origin + "/files/", what="file listing")
    assert "This folder is empty" in browser.page_source

    # Upload a file big enough for the progress bar to matter.
    payload = os.urandom(24 * 1024 * 1024)
    source = tmp_path / "report 2024 \u00e9t\u00e9.bin"
    source.write_bytes(payload)
    browser.execute_script(
        "sessionStorage.removeItem('sawProgress');"
        "new MutationObserver(function () {"
        "  if (document.querySelector('#queue progress')) sessionStorage.setItem('sawProgress', '1');"
        "}).observe(document.getElementById('queue'), {childList: true, subtree: true});"
    )
    # With the script, choosing files starts the upload (no button to press).
    browser.find_element(
        By.CSS_SELECTOR, "#upload-form input[type=file]:not([webkitdirectory])"
    ).send_keys(str(source))
    _wait(lambda: source.name in browser.find_element(By.CSS_SELECTOR, "table.files").text,
          timeout=60, what="uploaded file in the listing")
    assert browser.execute_script("return sessionStorage.getItem('sawProgress')") == "1"
    assert (server["home"] / source.name).read_bytes() == payload
    browser.save_screenshot(str(SCREENSHOTS / "listing.png"))

    # Download through the link and compare bytes.
    link = browser.find_element(By.CSS_SELECTOR, "td.act a[download]")
    link.click()
    target = browser.downloads / source.name
    _wait(lambda: target.exists() and target.stat().st_size == len(payload)
          and not list(browser.downloads.glob("*.crdownload")), timeout=60,
          what="download")
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()

    # Rename, in a dialog.
    browser.find_element(By.LINK_TEXT, "Rename").click()
    field = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "dialog[open] input[type=text]"),
                  what="rename dialog")
    field.clear()
    field.send_keys("renamed.bin")
    browser.find_element(By.CSS_SELECTOR, "dialog[open] button[value=ok]").click()
    _wait(lambda: "renamed.bin" in browser.find_element(By.CSS_SELECTOR, "table.files").text,
          what="renamed file")
    assert (server["home"] / "renamed.bin").exists()
    assert not (server["home"] / source.name).exists()

    # Delete, with confirmation in a dialog.
    browser.find_element(By.LINK_TEXT, "Delete").click()
    box = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "dialog[open]"),
                what="delete dialog")
    assert "cannot be undone" in box.text
    box.find_element(By.CSS_SELECTOR, "button.danger").click()
    _wait(lambda: "This folder is empty" in browser.page_source, what="empty folder")
    assert not (server["home"] / "renamed.bin").exists()

    # Log out: the files are no longer reachable.
    browser.find_element(By.CSS_SELECTOR, "header form button").click()
    _wait(lambda: browser.current_url.startswith(origin + "/login"), what="login page")
    assert "You are logged out." in browser.page_source
    browser.get(origin + "/files/")
    _wait(lambda: browser.current_url.startswith(origin + "/login"), what="login again")


def test_password_on_plain_http_is_refused(server, browser):

    # Our own pages cannot post to HTTP (CSP form-action 'self'); a stale
    # bookmark or a downgraded page can: post from a blank page.
    browser.get("about:blank")
    browser.execute_script(
        "var f = document.createElement('form'); f.method = 'post';"
        f"f.action = 'http://127.0.0.1:{server['http']}/login';"
        "for (var [n, v] of [['username', arguments[0]], ['password', arguments[1]]]) {"
        "  var i = document.createElement('input'); i.name = n; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); HTMLFormElement.prototype.submit.call(f);",
        server["user"], server["password"],
    )
    _wait(lambda: "unencrypted" in browser.page_source, what="refusal page")
    assert browser.current_url.startswith("http://")
    _wait(lambda: "account.quarantined" in (server["data"] / "audit.log").read_text(),
          what="quarantine in the audit log")
