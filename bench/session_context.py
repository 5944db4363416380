#!/usr/bin/env python3
"""
What a TLS session identity per FTP control connection costs (issues #11, #18).

    python bench/session_context.py [--count 2000]

Each FTP control connection is a TLS session identity of its own, so that
its data connections can resume its TLS session and no other.  Round 3 gave
each one a context of its own; round 4 a random session id context on one
shared context (L{rumpus_secure.tls.TLSContextSource.per_session_factory},
L{rumpus_secure.tls.bound_connection}).  This makes COUNT server connections
both ways from a generated certificate, in the same run, and prints the
time and resident memory per connection, next to the time of one full TLS
1.3 handshake in memory (both ends) for scale.  Not a test.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from OpenSSL import SSL

from rumpus_secure.tls import FTP_ALPN, TLSContextSource, ensure_certificate


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pump(one: SSL.Connection, other: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for source, target in ((one, other), (other, one)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                target.bio_write(data)
                moved = True


def _full_handshake(creator: object) -> None:
    server = creator.serverConnectionForTLS(None)  # type: ignore[attr-defined]
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)


def _measure(make: object, count: int) -> tuple[float, float]:
    """
    Microseconds and KiB of RSS per call of C{make}; the results stay alive
    (until the process ends), so freed memory is never reused by the next row.
    """
    before, started = _rss_kib(), time.perf_counter()
    _kept.append([make() for _ in range(count)])  # type: ignore[operator]
    elapsed = time.perf_counter() - started
    grown = _rss_kib() - before
    return elapsed / count * 1e6, grown / count


_kept: list[object] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        info = ensure_certificate(Path(directory), "localhost", None, None)
        source = TLSContextSource(info.cert_path, info.key_path)
        sessions = source.per_session_factory(FTP_ALPN)
        sessions.serverConnectionForTLS(None)  # the shared context, built once

        def own_context() -> SSL.Connection:
            # Round 3: a context per control connection, then its connection.
            context = source._build_context(
                source._material, FTP_ALPN, b"rumpus-s/" + secrets.token_bytes(16))
            return SSL.Connection(context, None)

        def plain() -> SSL.Connection:
            return SSL.Connection(sessions.getContext(), None)

        rows = [
            ("plain connection, shared context (floor)", plain),
            ("bound connection, shared context (now)",
             lambda: sessions.serverConnectionForTLS(None)),
            ("context of its own (round 3)", own_context),
        ]
        for label, make in rows:
            make()  # warm
            us, kib = _measure(make, args.count)
            print(f"{label:42} {us:7.1f} us  {kib:5.1f} KiB RSS per control connection")
        shared = source.context_factory(FTP_ALPN)
        rounds = 200
        started = time.perf_counter()
        for _ in range(rounds):
            _full_handshake(shared)
        elapsed = time.perf_counter() - started
        print(f"one full TLS handshake in memory (both ends): "
              f"{elapsed / rounds * 1e6:.0f} us")


if __name__ == "__main__":
    main()
