"""
Round 3, finding 3: slow request heads; prints numbers (not a test).

    python bench/slow_heads.py [--connections 500] [--addresses 25] [--every 5]
                               [--line-timeout 30] [--seconds 45]

Against a real server (``twistd -n rumpus-secure`` from this checkout, on
loopback, default connection limits: 500 in all, 20 per address), the
attacker opens C{--connections} HTTPS connections from C{--addresses}
loopback addresses (127.0.9.x), finishes each TLS handshake and then sends
its request head one byte every C{--every} seconds.  Meanwhile an honest
client on another address (127.0.9.200) asks for ``/login`` once a second,
a fresh TLS connection each time.

Printed: how many slow connections were opened, how long they lived
(median and longest, until the server answered 408/503 or closed), how
many honest requests got 200 and their p50/max latency.

Measured on the 2-core VM (shared with other jobs), 500 connections from 25
addresses, a byte every 5 s, 45 s run, defaults otherwise:

* before (b0d4127, the base of r3-webfix): all 500 slow connections still
  open after 45 s; the honest client got 503 for 45 of 45 requests;
* after: every slow connection ended by the server at 30.0 s (median and
  longest; ``--line-timeout``); the honest client got 200 for 29 of 30,
  p50 4-7 ms, max 16-25 ms.  The one 503 is its first request, sent while
  every slow connection was younger than 2 s (the guard's
  C{EVICT_MIN_AGE}: a burst of newcomers does not evict each other).
"""

from __future__ import annotations

import argparse
import select
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server_process import ServerProcess  # noqa: E402

HEAD = b"GET /login HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 4000


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def honest(port: int, stop: threading.Event, results: list[tuple[int, float]]) -> None:
    context = _context()
    while not stop.is_set():
        started = time.monotonic()
        status = 0
        try:
            raw = socket.create_connection(("127.0.0.1", port), 10,
                                           source_address=("127.0.9.200", 0))
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answer = tls.recv(64)
                status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
        except OSError:
            status = 0
        results.append((status, time.monotonic() - started))
        stop.wait(1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--addresses", type=int, default=25)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--line-timeout", default="30")
    parser.add_argument("--seconds", type=float, default=45.0)
    args = parser.parse_args()
    per_address = -(-args.connections // args.addresses)
    with tempfile.TemporaryDirectory() as tmp, \
            ServerProcess(Path(tmp), line_timeout=args.line_timeout) as server:
        context = _context()
        slow: dict[socket.socket, float] = {}
        lived: list[float] = []
        for n in range(args.connections):
            try:
                raw = socket.create_connection(
                    ("127.0.0.1", server.https_port), 10,
                    source_address=(f"127.0.9.{n // per_address + 1}", 0))
                tls = context.wrap_socket(raw, server_hostname="localhost")
                tls.sendall(HEAD[:1])
                tls.setblocking(False)
                slow[tls] = time.monotonic()
            except OSError:
                continue
        opened = len(slow)
        print(f"slow connections opened: {opened} of {args.connections}")
        stop = threading.Event()
        results: list[tuple[int, float]] = []
        thread = threading.Thread(target=honest, args=(server.https_port, stop, results))
        thread.start()
        sent = {sock: 1 for sock in slow}
        started = time.monotonic()
        next_byte = started + args.every
        while time.monotonic() - started < args.seconds and slow:
            readable, _, _ = select.select(list(slow), [], [], 0.2)
            for sock in readable:
                try:
                    sock.recv(4096)  # 408, 503 or the end: the server acted
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    pass
                lived.append(time.monotonic() - slow.pop(sock))
                sock.close()
            if time.monotonic() >= next_byte:
                next_byte += args.every
                for sock in list(slow):
                    try:
                        sock.sendall(HEAD[sent[sock]:sent[sock] + 1])
                        sent[sock] += 1
                    except (ssl.SSLWantWriteError, BlockingIOError):
                        pass
                    except OSError:
                        lived.append(time.monotonic() - slow.pop(sock))
        stop.set()
        thread.join()
        still = len(slow)
        for sock in slow:
            sock.close()
        if lived:
            print(f"slow connections ended by the server: {len(lived)}; lived median "
                  f"{statistics.median(lived):.1f} s, longest {max(lived):.1f} s")
        print(f"slow connections still open after {args.seconds:.0f} s: {still}")
        ok = [t for status, t in results if status == 200]
        print(f"honest requests: {len(ok)} of {len(results)} got 200"
              + (f"; p50 {statistics.median(ok) * 1000:.0f} ms, max {max(ok) * 1000:.0f} ms"
                 if ok else ""))
        others = [(n, status) for n, (status, _) in enumerate(results) if status != 200]
        if others:
            shown = others[:5]
            print(f"honest requests not served (request number, status; 0: failed): "
                  f"{shown}{' ...' if len(others) > len(shown) else ''}")


if __name__ == "__main__":
    main()
