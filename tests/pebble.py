"""
Pebble, the ACME test server, on loopback, for the ACME integration tests.

L{Pebble} starts ``pebble-challtestsrv`` as a DNS server only (every name
answers with one IPv4 loopback address, which a test can change through its
management API) and ``pebble`` resolving through it, validating HTTP-01 on
the port of the server under test.  Pebble's own HTTPS uses a CA made here;
its file is L{Pebble.ca_bundle}, for ``--acme-ca-bundle``.  Nothing leaves
127.0.0.0/8.

Pebble runs with ``PEBBLE_VA_NOSLEEP=1`` (no random 0-15 s wait before each
validation), ``PEBBLE_WFE_NONCEREJECT=0`` (no random ``badNonce``: the
client retries those, but a test must not depend on luck) and
``PEBBLE_AUTHZREUSE=0`` (every order is validated again).

With C{RUMPUS_REQUIRE_CLIENTS=1} (CI) a missing Debian ``pebble`` package
fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.server_process import free_port, port_accepts, require_tool

START_TIMEOUT = 15.0


def _write_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """
    A CA and a certificate for 127.0.0.1/localhost signed by it.
    """
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rumpus test CA for pebble")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "cert.pem",
                                    directory / "key.pem")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class Pebble:
    """
    ``pebble`` and its DNS (``pebble-challtestsrv``), on free loopback ports.

    :param http_port: the port Pebble connects to for HTTP-01 (the server's
        ``--http`` port).
    :param validity: seconds the certificates are valid, or L{None} for
        Pebble's default (five years).
    """

    def __init__(self, directory: Path, http_port: int,
                 validity: int | None = None, address: str = "127.0.0.1") -> None:
        self.pebble = require_tool("pebble")
        self.challtestsrv = require_tool("pebble-challtestsrv")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.validity = validity
        self.address = address
        self.acme_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.dns_management_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ca_bundle, self._cert, self._key = _write_test_ca(directory)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def start(self) -> Pebble:
        self._spawn("challtestsrv", [
            self.challtestsrv, "-dns01", f"127.0.0.1:{self.dns_port}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{self.dns_management_port}",
            "-defaultIPv4", self.address, "-defaultIPv6", "",
        ])
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self._cert), "privateKey": str(self._key),
            "httpPort": self.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        config_path = self.directory / "pebble-config.json"
        config_path.write_text(json.dumps({"pebble": config}))
        self._spawn("pebble", [
            self.pebble, "-config", str(config_path),
            "-dnsserver", f"127.0.0.1:{self.dns_port}", "-strict=false",
        ], env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_AUTHZREUSE": "0", "PEBBLE_VA_ALWAYS_VALID": "0"})
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.acme_port, self.management_port, self.dns_management_port):
            while not port_accepts(port):
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"pebble exited:\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not start:\n{self.logs()}")
                time.sleep(0.05)
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        import os

        log = open(self.directory / f"{name}.log", "wb")
        self.processes.append(subprocess.Popen(
            argv, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        ))
        log.close()

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        self.processes = []

    def logs(self) -> str:
        return "".join(
            f"--- {path.name}\n" + path.read_text("utf-8", "replace")
            for path in sorted(self.directory.glob("*.log"))
        )

    # -- what a test changes or reads ---------------------------------------------

    def resolve_to(self, address: str) -> None:
        """
        Answer every A query with C{address} from now on.
        """
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.dns_management_port}/set-default-ipv4",
            data=json.dumps({"ip": address}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def _management(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return bytes(response.read())

    def root(self) -> x509.Certificate:
        """
        The root that signs this run's certificates (new at every start).
        """
        return x509.load_pem_x509_certificate(self._management("/roots/0"))

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
