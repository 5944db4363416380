#!/usr/bin/env python3
"""
What a TLS context per FTP control connection costs (issue #11).

    python bench/session_context.py [--count 2000]

Each FTP control connection gets a context of its own
(L{rumpus_secure.tls.TLSContextSource.per_session_factory}) so that its data
connections can resume its TLS session and no other.  This builds COUNT such
contexts from a generated certificate and prints the time and the resident
memory per context, next to the time of one full TLS 1.3 handshake in
memory (both ends) for scale.  Not a test.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        info = ensure_certificate(Path(directory), "localhost", None, None)
        source = TLSContextSource(info.cert_path, info.key_path)
        sessions = source.per_session_factory(FTP_ALPN)
        before, started = _rss_kib(), time.perf_counter()
        kept = [sessions.getContext() for _ in range(args.count)]
        elapsed = time.perf_counter() - started
        grown = _rss_kib() - before
        print(f"{len(kept)} per-session contexts: {elapsed / args.count * 1e6:.0f} us"
              f" and {grown / args.count:.1f} KiB RSS each")
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
