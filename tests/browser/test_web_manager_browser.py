"""
The second-generation file manager (issue #14) in a real headless Chromium.

Each flow of the issue: a read-only account sees no write action; a taken
name on upload asks (skip, keep both, replace) and on rename asks before
replacing; a folder dropped on the page is uploaded with its tree; a
keyboard-only delete; several entries downloaded as one ZIP, compared by
SHA-256 with what FTP serves; screenshots (phone and desktop, light and
dark) in ``test-artifacts/screenshots/``.  axe-core runs on each page when
``.ci/run`` installed it (``RUMPUS_AXE`` names ``axe.min.js``).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_web_browser import (  # noqa: F401 - fixtures
    SCREENSHOTS,
    _env,
    _wait,
    browser,
    server,
)

pytestmark = pytest.mark.integration


def add_user(server: dict[str, Any], name: str, password: str, perms: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(server["data"]),
         "user", "add", name, "--perms", perms, "--password-stdin"],
        input=password + "\n", text=True, env=_env(), check=True, capture_output=True,
    )
    return server["data"] / "files" / name


def log_in(browser: Any, server: dict[str, Any], user: str | None = None,
           password: str | None = None) -> str:
    from selenium.webdriver.common.by import By

    origin = f"https://127.0.0.1:{server['https']}"
    browser.get(origin + "/login")
    browser.find_element(By.NAME, "username").send_keys(user or server["user"])
    browser.find_element(By.NAME, "password").send_keys(password or server["password"])
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: browser.current_url == origin + "/files/", what="file listing")
    return origin


def dialog(browser: Any) -> Any:
    from selenium.webdriver.common.by import By

    return _wait(lambda: browser.find_element(By.CSS_SELECTOR, "dialog[open]"),
                 what="a dialog")


def click_in_dialog(browser: Any, value: str) -> None:
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import StaleElementReferenceException

    box = dialog(browser)
    box.find_element(By.CSS_SELECTOR, f"button[value='{value}']").click()

    def closed() -> bool:
        try:
            return box.get_attribute("open") is None
        except StaleElementReferenceException:
            return True  # removed from the page

    _wait(closed, what="the dialog to close")


def listed(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, "table.files").text


def queue_done(browser: Any, count: int) -> bool:
    from selenium.webdriver.common.by import By

    return len(browser.find_elements(By.CSS_SELECTOR, "#queue li.done, #queue li.failed")) >= count


def run_axe(browser: Any, where: str) -> None:
    """No serious or critical axe-core violation (when axe is installed)."""
    script = os.environ.get("RUMPUS_AXE")
    if not script or not Path(script).exists():
        if os.environ.get("RUMPUS_REQUIRE_CLIENTS") == "1":
            pytest.fail("axe-core missing: .ci/run installs it (RUMPUS_AXE)")
        return
    # Injected through the driver, not the page: the site's CSP stays strict.
    browser.execute_script(Path(script).read_text())
    if os.environ.get("RUMPUS_AXE_ALL"):
        browser.execute_script("window.AXE_ALL = true;")
    result = browser.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(function (r) {"
        "  done(r.violations.filter(function (v) {"
        "    return window.AXE_ALL || v.impact === 'serious' || v.impact === 'critical'; })"
        "  .map(function (v) { return v.impact + ' ' + v.id + ': ' + v.help + ' ' +"
        "    v.nodes.map(function (n) { return n.target.join(' '); }).join(', '); }));"
        "});")
    assert result == [], f"axe on {where}: {result}"


def test_read_only_account_sees_no_write_actions(server, browser):
    from selenium.webdriver.common.by import By

    home = add_user(server, "viewer", "viewer-Passw0rd-one", "list,download")
    (home / "notes.txt").write_text("hello")
    log_in(browser, server, "viewer", "viewer-Passw0rd-one")
    assert "notes.txt" in listed(browser)
    for selector in ("#upload-form", "#mkdir-form", "#new-folder", "a[data-act=rename]",
                     "a[data-act=delete]", "button[formaction='/delete']"):
        assert not browser.find_elements(By.CSS_SELECTOR, selector), selector
    assert browser.find_elements(By.CSS_SELECTOR, "a[download]")
    run_axe(browser, "read-only listing")


def test_upload_collision_each_choice(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    home = server["home"]
    (home / "report.txt").write_bytes(b"old")
    log_in(browser, server)
    source = tmp_path / "report.txt"
    source.write_bytes(b"new")
    file_input = "#upload-form input[type=file]:not([webkitdirectory])"

    def upload_and_choose(value: str, screenshot: str | None = None) -> None:
        count = len(browser.find_elements(By.CSS_SELECTOR, "#queue li"))
        browser.find_element(By.CSS_SELECTOR, file_input).send_keys(str(source))
        box = dialog(browser)
        assert "already exists" in box.text
        if screenshot:
            _screens(browser, screenshot)
            run_axe(browser, "collision dialog")
        click_in_dialog(browser, value)
        _wait(lambda: queue_done(browser, count + 1), what="upload finished")

    upload_and_choose("skip", "collision")
    assert sorted(p.name for p in home.iterdir()) == ["report.txt"]
    assert (home / "report.txt").read_bytes() == b"old"
    upload_and_choose("keep")
    _wait(lambda: "report (1).txt" in listed(browser), what="kept both")
    assert (home / "report (1).txt").read_bytes() == b"new"
    assert (home / "report.txt").read_bytes() == b"old"
    upload_and_choose("replace")
    _wait(lambda: (home / "report.txt").read_bytes() == b"new", what="replaced")
    assert sorted(p.name for p in home.iterdir()) == ["report (1).txt", "report.txt"]


def test_rename_collision_asks(server, browser):
    from selenium.webdriver.common.by import By

    home = server["home"]
    (home / "f3.txt").write_bytes(b"three")
    (home / "report-final.txt").write_bytes(b"final")
    log_in(browser, server)

    def rename_f3() -> None:
        row = browser.find_element(By.XPATH, "//tr[.//a[text()='f3.txt']]")
        row.find_element(By.CSS_SELECTOR, "a[data-act=rename]").click()
        field = dialog(browser).find_element(By.CSS_SELECTOR, "input[type=text]")
        field.clear()
        field.send_keys("report-final.txt")
        click_in_dialog(browser, "ok")
        assert "already exists" in dialog(browser).text

    rename_f3()
    click_in_dialog(browser, "")  # Cancel: nothing changes
    assert (home / "report-final.txt").read_bytes() == b"final"
    assert (home / "f3.txt").exists()
    rename_f3()
    click_in_dialog(browser, "replace")
    _wait(lambda: not (home / "f3.txt").exists(), what="renamed")
    assert (home / "report-final.txt").read_bytes() == b"three"
    _wait(lambda: "f3.txt" not in listed(browser), what="listing refreshed")


def test_drop_a_folder(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    tree = tmp_path / "album"
    (tree / "2024" / "summer").mkdir(parents=True)
    files = {"a.txt": b"a" * 10, "2024/b.bin": os.urandom(200_000),
             "2024/summer/c.txt": b"c"}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    log_in(browser, server)
    # The drop carries the files of a folder picked by a real file chooser
    # (with their relative paths); Selenium cannot drag from the desktop.
    picker = browser.execute_script(
        "var i = document.createElement('input'); i.type = 'file'; i.multiple = true;"
        "i.webkitdirectory = true; i.id = 'dropsource'; document.body.appendChild(i);"
        "return i;")
    picker.send_keys(str(tree))
    browser.execute_script(
        "var dt = new DataTransfer();"
        "Array.prototype.forEach.call(document.getElementById('dropsource').files,"
        "  function (f) { dt.items.add(f); });"
        "var target = document.querySelector('table.files');"
        "['dragenter', 'dragover', 'drop'].forEach(function (type) {"
        "  target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,"
        "    dataTransfer: dt})); });")
    _wait(lambda: queue_done(browser, 3), what="three uploads")
    assert not browser.find_elements(By.CSS_SELECTOR, "#queue li.failed")
    for rel, data in files.items():
        assert (server["home"] / "album" / rel).read_bytes() == data
    _wait(lambda: "album/" in listed(browser), what="folder in the listing")


def test_keyboard_only_delete(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    home = server["home"]
    for name in ("a.txt", "b.txt", "c.txt"):
        (home / name).write_bytes(b"x")
    log_in(browser, server)

    def press(key: str) -> Any:
        ActionChains(browser).send_keys(key).perform()
        return browser.switch_to.active_element

    for _ in range(60):  # Tab until the first row's name has the focus
        active = press(Keys.TAB)
        if active.tag_name == "a" and active.text == "a.txt":
            break
    else:
        raise AssertionError("Tab never reached the list")
    active = press(Keys.ARROW_DOWN)
    assert active.text == "b.txt"
    press(Keys.DELETE)
    assert "Delete b.txt?" in dialog(browser).text
    assert browser.switch_to.active_element.text == "Delete"
    press(Keys.ENTER)
    _wait(lambda: not (home / "b.txt").exists(), what="deleted")
    assert (home / "a.txt").exists() and (home / "c.txt").exists()


def _screens(browser: Any, name: str) -> None:
    """The current page, desktop and phone, light and dark."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]})
        for device, (width, height, mobile) in {"desktop": (1280, 860, False),
                                                "phone": (390, 844, True)}.items():
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
            time.sleep(0.15)  # one frame for the layout to settle
            browser.save_screenshot(str(SCREENSHOTS / f"{name}-{device}-{scheme}.png"))
            run_axe(browser, f"{name}, {device}, {scheme}")  # contrast in both themes
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_screenshots_and_upload_progress(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    origin = f"https://127.0.0.1:{server['https']}"
    browser.get(origin + "/login")
    _screens(browser, "login")
    run_axe(browser, "login")
    home = server["home"]
    (home / "Photos").mkdir()
    (home / "a-rather-long-file-name-that-must-wrap-on-a-phone-2024-final.pdf").write_bytes(b"x")
    (home / "notes.txt").write_text("notes")
    (home / "picture.png").write_bytes(b"\x89PNG")
    log_in(browser, server)
    _screens(browser, "listing")
    run_axe(browser, "listing")
    # A slow link keeps the progress on screen long enough to see it.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 5, "downloadThroughput": -1,
        "uploadThroughput": 256 * 1024})
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    browser.find_element(
        By.CSS_SELECTOR, "#upload-form input[type=file]:not([webkitdirectory])"
    ).send_keys(str(source))
    _wait(lambda: "/s" in browser.find_element(By.CSS_SELECTOR, "#queue .qs").text,
          what="progress with speed")
    text = browser.find_element(By.CSS_SELECTOR, "#queue .qs").text
    assert "%" in text and "left" in text
    _screens(browser, "upload")
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    _wait(lambda: queue_done(browser, 1), timeout=60, what="upload done")
    assert (home / "big.bin").read_bytes() == source.read_bytes()


@pytest.fixture
def ftp_server(tmp_path: Path) -> Any:
    """The web server with explicit FTPS on too, to compare downloads."""
    from tests.browser.test_web_browser import _free_port

    data = tmp_path / "data"
    password = "zip-test-Passw0rd-1"
    subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data), "init"],
        env=_env(), check=True, capture_output=True)
    subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
         "user", "add", "alice", "--password-stdin"],
        input=password + "\n", text=True, env=_env(), check=True, capture_output=True)
    ftp_port, https_port = _free_port(), _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(data),
             "--ftp", f"tcp:{ftp_port}:interface=127.0.0.1", "--ftps", "none",
             "--http", "none",
             "--https", f"tcp:{https_port}:interface=127.0.0.1",
             "--public-host", "127.0.0.1"],
            cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        import socket

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), 0.2).close()
                socket.create_connection(("127.0.0.1", ftp_port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("server did not start:\n" + log.read_text())
                time.sleep(0.1)
        yield {"https": https_port, "ftp": ftp_port, "user": "alice", "password": password,
               "home": data / "files" / "alice", "data": data}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_zip_download_matches_ftp(ftp_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.integration.clients import explicit_ftps, retrieve

    home = ftp_server["home"]
    (home / "docs" / "deep").mkdir(parents=True)
    files = {"big.bin": os.urandom(3 * 1024 * 1024 + 17), "docs/a.txt": b"alpha\n",
             "docs/deep/b.bin": os.urandom(70_000), "left-out.txt": b"not selected"}
    for rel, data in files.items():
        (home / rel).write_bytes(data)
    os.symlink("/etc", home / "docs" / "escape")  # never followed
    log_in(browser, ftp_server)
    for name in ("big.bin", "docs"):
        browser.find_element(By.CSS_SELECTOR, f"td.pick input[value='{name}']").click()
    browser.find_element(By.CSS_SELECTOR, "button[formaction='/zip']").click()
    target = browser.downloads / "files.zip"
    _wait(lambda: target.exists() and not list(browser.downloads.glob("*.crdownload")),
          timeout=60, what="ZIP download")
    with zipfile.ZipFile(io.BytesIO(target.read_bytes())) as archive:
        assert archive.testzip() is None
        got = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
        dirs = sorted(i.filename for i in archive.infolist() if i.is_dir())
    assert dirs == ["docs/", "docs/deep/"]
    assert sorted(got) == ["big.bin", "docs/a.txt", "docs/deep/b.bin"]
    ftp = explicit_ftps(ftp_server["ftp"])
    try:
        ftp.login(ftp_server["user"], ftp_server["password"])
        ftp.prot_p()
        for name, data in got.items():
            assert hashlib.sha256(data).digest() == hashlib.sha256(retrieve(ftp, name)).digest()
    finally:
        ftp.close()


@pytest.fixture
def nojs_browser(tmp_path: Path) -> Any:
    """Chromium with JavaScript switched off: the pages must still work."""
    from tests.browser.test_web_browser import chromium

    with chromium(tmp_path / "nojs-profile", javascript=False) as driver:
        yield driver


def test_without_javascript_the_safe_choice_is_the_default(server, nojs_browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = nojs_browser
    home = server["home"]
    (home / "report.txt").write_bytes(b"old")
    (home / "f3.txt").write_bytes(b"three")
    origin = f"https://127.0.0.1:{server['https']}"
    # A wrong password keeps the user name.
    browser.get(origin + "/login")
    browser.find_element(By.NAME, "username").send_keys(server["user"])
    browser.find_element(By.NAME, "password").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: "Wrong user name or password" in browser.page_source, what="refusal")
    assert browser.find_element(By.NAME, "username").get_attribute("value") == server["user"]
    browser.find_element(By.NAME, "password").send_keys(server["password"])
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(lambda: browser.current_url == origin + "/files/", what="file listing")
    # JavaScript is really off: app.js would have added the new-folder button.
    assert not browser.find_elements(By.ID, "new-folder")
    assert browser.find_element(By.ID, "mkdir-form").is_displayed()

    source = tmp_path / "report.txt"
    source.write_bytes(b"new")

    def upload(choice: str | None) -> None:
        if choice:
            Select(browser.find_element(By.NAME, "exists")).select_by_value(choice)
        browser.find_element(By.CSS_SELECTOR, "#upload-form input[type=file]").send_keys(
            str(source))
        browser.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()

    upload(None)
    _wait(lambda: "nothing was replaced" in browser.page_source, what="refusal notice")
    assert browser.current_url == origin + "/files/"
    assert (home / "report.txt").read_bytes() == b"old"
    upload("keep")
    _wait(lambda: "report (1).txt" in browser.page_source, what="kept both")
    assert (home / "report (1).txt").read_bytes() == b"new"

    # Rename onto a taken name: a confirmation page, then replaced.
    row = browser.find_element(By.XPATH, "//tr[.//a[text()='f3.txt']]")
    row.find_element(By.LINK_TEXT, "Rename").click()
    field = browser.find_element(By.NAME, "name")
    field.clear()
    field.send_keys("report.txt")
    browser.find_element(By.XPATH, "//button[text()='Rename']").click()
    _wait(lambda: "Replace it?" in browser.page_source, what="confirmation")
    assert (home / "report.txt").read_bytes() == b"old"
    browser.find_element(By.CSS_SELECTOR, "button[name=replace]").click()
    _wait(lambda: browser.current_url == origin + "/files/", what="back to the folder")
    assert (home / "report.txt").read_bytes() == b"three"
    assert not (home / "f3.txt").exists()


def _png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes([200, 80, 40]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_preview_image_and_text(server, browser):
    from selenium.webdriver.common.by import By

    home = server["home"]
    (home / "notes.txt").write_text("first line\n<script>alert(1)</script>\n")
    (home / "photo.png").write_bytes(_png(40, 30))
    log_in(browser, server)
    browser.find_element(By.LINK_TEXT, "notes.txt").click()
    box = dialog(browser)
    text = box.find_element(By.TAG_NAME, "pre").text
    assert "first line" in text and "<script>alert(1)</script>" in text  # shown, not run
    click_in_dialog(browser, "")
    browser.find_element(By.LINK_TEXT, "photo.png").click()
    image = dialog(browser).find_element(By.TAG_NAME, "img")
    _wait(lambda: browser.execute_script("return arguments[0].naturalWidth", image) == 40,
          what="the image preview")
    click_in_dialog(browser, "")
    assert not list(browser.downloads.iterdir())  # previewed, not downloaded
