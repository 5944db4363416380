#!/usr/bin/env python3
"""
What client certificates (``--client-ca``, issue #16 part 2) cost.

    python bench/client_certs.py [--count 500]

Prints, each as the median of COUNT runs:

 - building one FTP session context, without and with the client-CA
   request (once per certificate reload and per 4,096 control connections
   since issue #18; round 3 built one per control connection);
 - one full TLS 1.3 handshake in memory (both ends): no request; a request
   the client answers with no certificate; a request answered with one;
 - judging a presented certificate at login (chain, dates, CRL:
   L{ClientCA.problem}) and the whole certificate half of a login with the
   SQLite reads (L{CertificateLogin.check}).

Throwaway CA and certificates in a temporary directory.  Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rumpus_secure.accounts.client_certs import (
    CertificateLogin,
    ClientCA,
    ClientCertStore,
    PeerCertificate,
)
from rumpus_secure.accounts.store import SQLiteAccountStore
from rumpus_secure.tls import FTP_ALPN, TLSContextSource, ensure_certificate
from tests.client_pki import ClientPKI


def _median_ms(function: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _handshake(source: TLSContextSource, cert: object | None) -> None:
    server = source.per_session_factory(FTP_ALPN).serverConnectionForTLS(None)
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if cert is not None:
        context.use_certificate_file(str(cert.cert_path))  # type: ignore[attr-defined]
        context.use_privatekey_file(str(cert.key_path))  # type: ignore[attr-defined]
    client = SSL.Connection(context, None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for one, other in ((client, server), (server, client)):
            try:
                other.bio_write(one.bio_read(65536))
            except SSL.WantReadError:
                pass
    server.do_handshake()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=500)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pki = ClientPKI(base / "pki")
        alice = pki.issue("alice")
        for n in range(200):  # a CRL with some entries
            pki.revoked.append(pki.issue(f"gone{n}").cert)
        pki.write_crl()
        info = ensure_certificate(base / "data", "localhost", None, None)
        plain = TLSContextSource(info.cert_path, info.key_path)
        asking = TLSContextSource(info.cert_path, info.key_path, client_ca=pki.ca_path)
        rows = [
            ("building a session context, no --client-ca",
             _median_ms(lambda: plain._build_context(plain._material, FTP_ALPN), count)),
            ("building a session context, --client-ca",
             _median_ms(lambda: asking._build_context(asking._material, FTP_ALPN), count)),
            ("handshake, no request",
             _median_ms(lambda: _handshake(plain, None), count)),
            ("handshake, request, no certificate",
             _median_ms(lambda: _handshake(asking, None), count)),
            ("handshake, request, client certificate",
             _median_ms(lambda: _handshake(asking, alice), count)),
        ]
        ca = ClientCA(pki.ca_path, pki.crl_path)
        presented = PeerCertificate(alice.cert)
        rows.append(("judge a certificate (chain, dates, 200-entry CRL)",
                     _median_ms(lambda: ca.problem(presented), count)))
        store = SQLiteAccountStore(base / "accounts.sqlite3", base / "files")
        store.add("alice", "x" * 20)
        bindings = ClientCertStore(store)
        bindings.add("alice", alice.cert_path.read_bytes())
        bindings.set_auth_mode("alice", "cert")
        login = CertificateLogin(bindings, ca)
        assert login.check("alice", presented).refusal is None
        rows.append(("certificate half of a login (+ SQLite reads)",
                     _median_ms(lambda: login.check("alice", presented), count)))
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"{name.ljust(width)}  {ms:7.3f} ms")


if __name__ == "__main__":
    main()
