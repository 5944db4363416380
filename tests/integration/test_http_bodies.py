"""
Large bodies, long header lines and the asterisk form against the real
server, through curl (issue #12).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import User, UserFactory
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration


def _curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    curl = require_tool("curl")
    return subprocess.run([curl, "-sS", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _origin(base: str) -> str:
    """The server's configured public origin (--public-host localhost), not the URL's host."""
    return base.replace("127.0.0.1", "localhost")


def _login(base: str, jar: Path, user: User) -> str:
    result = _curl("-k", "-c", str(jar), "-o", "/dev/null", "-w", "%{http_code}",
                   "-H", f"Origin: {_origin(base)}", "--data-urlencode", f"username={user.name}",
                   "--data-urlencode", f"password={user.password}", f"{base}/login")
    return result.stdout


def test_big_bodies_refused_at_once_while_another_account_works(
        server: ServerProcess, make_user: UserFactory, tmp_path: Path) -> None:
    """
    curl posts 256 MiB (sparse file) without a cookie to a missing page, a
    form page and the upload: each gets its answer from the headers, long
    before the body could have been sent.  Meanwhile, from the same
    address, another account logs in and lists its files.
    """
    base = f"https://127.0.0.1:{server.https_port}"
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(256 << 20)
    other = make_user("bodies")
    honest: list[str] = []

    def browse() -> None:
        jar = tmp_path / "jar.txt"
        honest.append(_login(base, jar, other))
        honest.append(_curl("-k", "-b", str(jar), "-o", "/dev/null", "-w", "%{http_code}",
                            f"{base}/files/").stdout)

    thread = threading.Thread(target=browse)
    thread.start()
    for target, expected in (("/no/such/page", "413"), ("/mkdir", "413"),
                             ("/upload?dir=/", "401")):
        start = time.monotonic()
        result = _curl("-k", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
                       "-H", f"Origin: {_origin(base)}", "-H", "Content-Type: multipart/form-data; "
                       "boundary=x", "--data-binary", f"@{big}", f"{base}{target}",
                       timeout=60)
        status, uploaded = result.stdout.split()
        assert status == expected, (target, result.stdout, result.stderr)
        assert int(float(uploaded)) < 64 << 20, (target, uploaded)
        assert time.monotonic() - start < 20
    thread.join(60)
    assert honest == ["303", "200"]


def test_header_line_over_16k_answered_over_tls(server: ServerProcess) -> None:
    start = time.monotonic()
    result = _curl("-k", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                   "X-Big: " + "a" * (17 * 1024), f"https://127.0.0.1:{server.https_port}/",
                   timeout=30)
    assert result.stdout == "431", result.stderr
    assert time.monotonic() - start < 10  # not the 60 s idle timeout


@pytest.mark.parametrize("method", ["OPTIONS", "GET"])
def test_asterisk_form_is_400_on_plain_http(server: ServerProcess, method: str) -> None:
    result = _curl("-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                   "--request-target", "*", f"http://127.0.0.1:{server.http_port}/")
    assert result.stdout == "400", result.stderr
