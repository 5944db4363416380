"""
The HTTP redirect and the HTTPS landing page, through curl.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    curl = require_tool("curl")
    result = subprocess.run([curl, "-sS", *args], check=False, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result


def _headers(text: str) -> tuple[int, dict[str, str]]:
    lines = text.replace("\r\n", "\n").split("\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def test_get_redirects_to_configured_host(server: ServerProcess) -> None:
    result = _curl("-I", "-H", "Host: evil.example",
                   f"http://127.0.0.1:{server.http_port}/a%20b/c?x=1&y=2")
    status, headers = _headers(result.stdout)
    assert status == 301
    assert headers["location"] == (
        f"https://localhost:{server.https_port}/a%20b/c?x=1&y=2")


def test_post_redirects_with_308(server: ServerProcess) -> None:
    result = _curl("-D", "-", "-o", "/dev/null", "-X", "POST", "-d", "a=1",
                   f"http://127.0.0.1:{server.http_port}/upload?to=x")
    status, headers = _headers(result.stdout)
    assert status == 308
    assert headers["location"] == f"https://localhost:{server.https_port}/upload?to=x"


def test_https_landing_page(server: ServerProcess) -> None:
    """
    The start page sends a visitor to the login page, which also tells how
    to connect with an FTP client.
    """
    start = _curl("-k", "-D", "-", "-o", "/dev/null", f"https://127.0.0.1:{server.https_port}/")
    status, headers = _headers(start.stdout)
    assert status == 303 and headers["location"] == "/login"
    result = _curl("-k", "-D", "/dev/stderr", f"https://127.0.0.1:{server.https_port}/login")
    status, headers = _headers(result.stderr)
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert f"<code>{server.ftp_port}</code>" in result.stdout
    assert f"<code>{server.ftps_port}</code>" in result.stdout


def test_a_logged_in_browser_stays_logged_in_across_a_restart(tmp_path: Path) -> None:
    jar = tmp_path / "cookies.txt"
    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    first = ServerProcess(tmp_path / "run1", data_dir=tmp_path / "data",
                          public_host="127.0.0.1")
    with first:
        first.add_user("alice", "the-password-1")
        base = f"https://127.0.0.1:{first.https_port}"
        login = _curl("-k", "-c", str(jar), "-o", "/dev/null", "-w", "%{http_code}",
                      "-H", f"Origin: {base}", "--data-urlencode", "username=alice",
                      "--data-urlencode", "password=the-password-1", f"{base}/login")
        assert login.stdout == "303"
        page = _curl("-k", "-b", str(jar), "-w", "%{http_code}", f"{base}/files/")
        assert page.stdout.endswith("200") and "alice" in page.stdout
    second = ServerProcess(tmp_path / "run2", data_dir=tmp_path / "data",
                           public_host="127.0.0.1")
    with second:
        base = f"https://127.0.0.1:{second.https_port}"
        page = _curl("-k", "-b", str(jar), "-o", "/dev/null", "-w", "%{http_code}",
                     f"{base}/files/")
        assert page.stdout == "200"  # not a redirect to the login page
        logout_form = _curl("-k", "-b", str(jar), f"{base}/files/").stdout
        assert "Log out" in logout_form or "logout" in logout_form
