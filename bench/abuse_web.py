"""
Issue #12, attack 2: large request bodies without a session; prints numbers
(not a test).

    python bench/abuse_web.py [--sizes-mib 128,1024] [--repo PATH]

Against a real server (``twistd -n rumpus-secure`` on loopback, started as
``bench/web_bench.py`` starts it), for each body size and each target
(``/no/such/page``, a page that does not exist, ``/mkdir``, a form page,
and ``/upload``, the streamed upload; no cookie) one client sends the
headers with that ``Content-Length`` and then a multipart body, as fast as
the server reads it, until the server answers or closes.  A chunked body
of the same size goes to ``/login``.  Meanwhile an honest client logs in
over and over (a fresh TLS connection each time) and the server's resident
memory is sampled every 20 ms.

Measured on a 2-core VM (128 MiB; main before issue #12): the server read
every byte, answered 404/401 after up to 14 s, its RSS grew by 1560 MiB and
an honest login took up to 12.8 s.  After: 413/401 within 0.05 s for 128
MiB and 1 GiB alike, RSS +20 MiB (the logins' own argon2), login p99 under
300 ms.

Printed per attack: the status the attacker got, how many body bytes it
got to send, how long until the answer; then the honest logins' p50/p99
latency and count, and the server's RSS before and at its peak.

``--repo`` runs the server from another checkout (e.g. ``/work/main``) for
a before/after comparison.  L{attack_bodies} is the row for
``bench/abuse.py``.
"""

from __future__ import annotations

import argparse
import http.client
import select
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import web_bench  # noqa: E402  (bench/ is not a package)

MIB = 1 << 20
CHUNK = 64 * 1024


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _pid(server: Any) -> int:
    return getattr(server, "pid", None) or server.process.pid


def _rss_kib(pid: int) -> int:
    return web_bench.status_kib(pid, "VmRSS")


def send_body(port: int, target: str, size: int, chunked: bool = False,
              limit_s: float = 120.0) -> dict[str, Any]:
    """
    One attacker: headers, then C{size} body bytes until the server answers.

    @returns: status (0: closed without an answer), bytes sent, seconds.
    """
    raw = socket.create_connection(("127.0.0.1", port))
    sock = _context().wrap_socket(raw, server_hostname="127.0.0.1")
    framing = (b"Transfer-Encoding: chunked\r\n" if chunked
               else b"Content-Length: %d\r\n" % size)
    # Multipart, as in the measurement: twisted.web parses that
    # whole, in memory; the chunked one is a login form.
    kind = (b"application/x-www-form-urlencoded" if chunked
            else b"multipart/form-data; boundary=abuse")
    sock.sendall(b"POST " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 + b"Content-Type: " + kind + b"\r\n" + framing + b"\r\n")
    first = b"" if chunked else (b"--abuse\r\nContent-Disposition: form-data; "
                                 b"name=\"f\"; filename=\"f\"\r\n\r\n")
    block = b"a" * CHUNK
    if chunked:
        block = b"%x\r\n" % CHUNK + block + b"\r\n"
    sent, start, answer = 0, time.monotonic(), b""

    def poll_answer() -> bytes:
        # Readable may only mean a TLS 1.3 session ticket: no bytes for us.
        if not (select.select([sock], [], [], 0)[0] or sock.pending()):
            return b""
        sock.setblocking(False)
        try:
            return sock.recv(4096)
        except ssl.SSLWantReadError:
            return b""
        finally:
            sock.settimeout(5.0)

    sock.settimeout(5.0)
    try:
        while sent < size and time.monotonic() - start < limit_s:
            answer = poll_answer()
            if answer:
                break
            try:
                sock.sendall(first + block)
            except TimeoutError:
                continue  # the server stopped reading; look for its answer
            sent += CHUNK + len(first)
            first = b""
        if not answer:
            sock.settimeout(max(1.0, limit_s - (time.monotonic() - start)))
            answer = sock.recv(4096)
    except (OSError, ssl.SSLError):
        pass
    finally:
        elapsed = time.monotonic() - start
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
    return {"status": status, "sent": sent, "seconds": elapsed}


def honest_logins(port: int, user: str, password: str, stop: threading.Event,
                  latencies: list[float], failures: list[str]) -> None:
    """Log in again and again (fresh TLS connection each time) until C{stop}."""
    body = f"username={user}&password={password}".encode()
    origin = f"https://127.0.0.1:{port}"
    while not stop.is_set():
        start = time.monotonic()
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=_context(),
                                               timeout=30)
            conn.request("POST", "/login", body, {
                "Content-Type": "application/x-www-form-urlencoded", "Origin": origin})
            status = conn.getresponse().status
            conn.close()
        except OSError as e:
            failures.append(repr(e))
            continue
        if status == 303:
            latencies.append(time.monotonic() - start)
        else:
            failures.append(str(status))


def attack_bodies(server: Any, sizes_mib: tuple[int, ...] = (128, 1024),
                  user: str = "bench", password: str = web_bench.PASSWORD) -> dict[str, Any]:
    """
    Attack 2 of issue #12 against a running server; prints and returns the
    numbers.

    @param server: has C{origin} (``https://127.0.0.1:PORT``) and C{pid} or
        C{process.pid}; the account C{user} exists with C{password}.
    """
    port = int(server.origin.rsplit(":", 1)[1])
    pid = _pid(server)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(_rss_kib(pid))
            except OSError:
                return
            time.sleep(0.02)

    before = _rss_kib(pid)
    latencies: list[float] = []
    failures: list[str] = []
    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=honest_logins, daemon=True,
                                args=(port, user, password, stop, latencies, failures))]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # a few honest logins first
    results = []
    for size in sizes_mib:
        for target, chunked in (("/no/such/page", False), ("/mkdir", False),
                                ("/upload?dir=/", False), ("/login", True)):
            result = send_body(port, target, size * MIB, chunked=chunked)
            result.update(target=target, size_mib=size, chunked=chunked)
            results.append(result)
            print(f"  {size:5d} MiB {'chunked ' if chunked else ''}POST {target:14s} "
                  f"-> {result['status'] or 'closed'} after {result['sent'] / MIB:8.2f} MiB "
                  f"sent, {result['seconds']:.2f} s", flush=True)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(60)
    peak = max(samples) if samples else before
    row = {
        "attacks": results,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": peak / 1024,
        "login_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "login_p99_ms": (1000 * statistics.quantiles(latencies, n=100)[98]
                         if len(latencies) >= 2 else None),
        "logins": len(latencies),
        "login_failures": len(failures),
    }
    print(f"  server RSS before {row['rss_before_mib']:.1f} MiB, peak "
          f"{row['rss_peak_mib']:.1f} MiB (+{row['rss_peak_mib'] - row['rss_before_mib']:.1f})")
    if latencies:
        print(f"  honest logins meanwhile: {len(latencies)}, p50 "
              f"{row['login_p50_ms']:.0f} ms, p99 {row['login_p99_ms'] or 0:.0f} ms, "
              f"max {1000 * max(latencies):.0f} ms, failures {len(failures)}")
    else:
        print(f"  honest logins meanwhile: none succeeded ({failures[:3]})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="128,1024")
    parser.add_argument("--repo", type=Path, default=web_bench.REPO,
                        help="checkout to run the server from")
    args = parser.parse_args()
    web_bench.REPO = args.repo.resolve()
    sizes = tuple(int(s) for s in args.sizes_mib.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        server = web_bench.Server(Path(tmp))
        try:
            print(f"attack 2 (request bodies) against {web_bench.REPO}:")
            attack_bodies(server, sizes)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
