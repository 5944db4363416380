"""
The probes behind ``rumpus-secure check``: the running server seen from outside.

L{run_checks} connects to the listeners of a L{ServerConfig} (the same
options and ``--config`` file as the server) like an outside client and
returns one L{CheckResult} per rule:

- the FTP port refuses a login without TLS, and ``AUTH TLS`` works;
- the implicit FTPS port speaks TLS from the first byte and greets inside it;
- no TLS port accepts TLS 1.0 or 1.1;
- HTTP redirects to ``https://PUBLIC-HOST...``, HTTPS sends HSTS;
- ALPN: the FTPS port refuses a client offering only ``http/1.1``, HTTPS one
  offering only ``ftp`` (ALPACA);
- the certificate served covers ``--public-host`` and is not about to expire;
- with ``--client-ca``: the client CA and CRL, and that every TLS port asks
  for a client certificate (L{rumpus_secure.client_cert_check}).

The plain-login probe never sends a password: it sends ``USER
rumpus-check-probe`` and expects ``530``.  A real password in cleartext would
quarantine an account, and a made-up one would count as a failed login.  The
probe announces itself with ``CLNT rumpus-secure-check`` so that the audit
report can leave it out.

The check costs the guard nothing, so it can run as often as wanted (from
cron, say) without banning the administrator: that cleartext ``USER`` of
the probe account is not scored (a ``PASS`` after it would be), and TLS
handshake failures from a loopback address (the old-TLS and ALPN probes)
are not offences (see L{rumpus_secure.guard}).  Run from another host with
``--host``, the handshake probes do count against that host's address.  An
address the guard turns away (``421 Too many ...``) is reported as such,
never mistaken for the implicit-only mode.

Blocking sockets, no reactor: every probe has its own deadline
(L{PROBE_TIMEOUT}).
"""

from __future__ import annotations

import enum
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from rumpus_secure.certificates import EXPIRY_WARNING, covers_host
from rumpus_secure.config import ServerConfig
from rumpus_secure.report import PROBE_ACCOUNT, PROBE_SOFTWARE, table

PROBE_TIMEOUT = 5.0
HTTP_PROBE_PATH = b"/rumpus-secure-check?probe=1"


class Status(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """
    The outcome of one rule.
    """

    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Target:
    """
    Where to connect for one listener.
    """

    label: str
    host: str
    port: int
    proxy: bool = False


class ProbeError(Exception):
    """
    A probe could not get as far as the rule it checks.
    """


# -- endpoints -----------------------------------------------------------


def _split_endpoint(description: str) -> list[str]:
    """
    Split an endpoint description on unescaped colons (``\\:`` is a colon).
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def target_for(label: str, description: str, host: str | None) -> Target | str:
    """
    The address to probe for a listener, or why it cannot be probed.

    :param host: the address given with ``--host``; otherwise the
        endpoint's interface, or loopback when it listens on every address.
    """
    parts = _split_endpoint(description)
    proxy = parts[0].lower() == "haproxy"
    if proxy:
        parts = parts[1:]
    kind = parts[0].lower() if parts else ""
    if kind not in ("tcp", "tcp6"):
        return f"{description!r} is not a TCP endpoint"
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port_text = keywords.get("port") or (positional[0] if positional else "")
    if not port_text.isdigit():
        return f"no port in {description!r}"
    if host is None:
        interface = keywords.get("interface") or (
            positional[2] if len(positional) > 2 else ""
        )
        if interface in ("", "0.0.0.0", "::"):
            wildcard_v6 = kind == "tcp6" or interface == "::"
            host = "::1" if wildcard_v6 else "127.0.0.1"
        else:
            host = interface
    return Target(label, host, int(port_text), proxy)


# -- connections ---------------------------------------------------------


class _Connection:
    """
    A blocking socket with one deadline for everything done on it.
    """

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.deadline = time.monotonic() + timeout
        self._buffer = b""
        try:
            self.sock: socket.socket = socket.create_connection(
                (target.host, target.port), timeout=self._remaining()
            )
        except OSError as e:
            raise ProbeError(
                f"cannot connect to {_where(target)}: {_reason(e)}"
            ) from None
        if target.proxy:
            self._send_proxy_header()

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProbeError(f"no answer from {_where(self.target)} in time")
        return left

    def _send_proxy_header(self) -> None:
        source_host, source_port = self.sock.getsockname()[:2]
        family = "TCP6" if self.sock.family == socket.AF_INET6 else "TCP4"
        self.send(
            f"PROXY {family} {source_host} {self.target.host} "
            f"{source_port} {self.target.port}\r\n".encode("ascii")
        )

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._remaining())
        self.sock.sendall(data)

    def recv(self) -> bytes:
        self.sock.settimeout(self._remaining())
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise ProbeError(f"no answer from {_where(self.target)} in time") from None

    def start_tls(self, context: ssl.SSLContext, server_name: str | None) -> None:
        """
        Handshake as a TLS client; C{ssl.SSLError} tells why it failed.
        """
        self.sock.settimeout(self._remaining())
        self.sock = context.wrap_socket(
            self.sock, server_hostname=server_name, do_handshake_on_connect=False
        )
        try:
            self.sock.do_handshake()
        except TimeoutError:
            raise ProbeError(f"TLS handshake with {_where(self.target)} timed out") from None

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = self.recv()
            if not chunk:
                raise ProbeError(f"{_where(self.target)} closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.rstrip(b"\r")

    def ftp_reply(self) -> tuple[int, str]:
        """
        One FTP reply (multi-line replies joined): code and text.
        """
        first = self.line()
        if len(first) < 3 or not first[:3].isdigit():
            raise ProbeError(f"not an FTP reply: {_show(first)}")
        code, lines = first[:3], [first]
        if first[3:4] == b"-":
            while True:
                line = self.line()
                lines.append(line)
                if line[:3] == code and line[3:4] == b" ":
                    break
        return int(code), " / ".join(_show(line) for line in lines)

    def ftp_command(self, command: str) -> tuple[int, str]:
        self.send(command.encode("ascii") + b"\r\n")
        return self.ftp_reply()

    def http_head(self, request: bytes) -> tuple[int, dict[str, str]]:
        """
        Send a request; the status code and headers (lower-case names).
        """
        self.send(request)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = self.recv()
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        status = lines[0].split(" ")
        if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
            raise ProbeError(f"not an HTTP response: {_show(lines[0].encode())}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status[1]), headers

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _show(data: bytes, limit: int = 100) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def client_context(
    alpn: list[str] | None = None, legacy_only: bool = False
) -> ssl.SSLContext:
    """
    A TLS client context that accepts any certificate (the check reads it).

    :param legacy_only: offer only TLS 1.0 and 1.1, with OpenSSL's security
        level 0 so the local library really offers them.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy_only:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


# -- the checks ----------------------------------------------------------


@dataclass
class SelfCheck:
    """
    Probes the listeners of one configuration; collects the results.
    """

    config: ServerConfig
    host: str | None = None
    timeout: float = PROBE_TIMEOUT
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    results: list[CheckResult] = field(default_factory=list)
    #: DER certificates seen, by where they were served.
    certificates: dict[str, bytes] = field(default_factory=dict)

    @property
    def server_name(self) -> str | None:
        """
        The SNI name: the public host unless it is an address.
        """
        host = self.config.public_host
        return None if host.replace(".", "").isdigit() or ":" in host else host

    def run(self) -> list[CheckResult]:
        for label, probes in (
            ("ftp", (self.ftp_plain_login, self.ftp_auth_tls, self.ftp_legacy_tls)),
            ("ftps", (self.ftps_implicit, self.ftps_legacy_tls, self.ftps_alpn)),
            ("http", (self.http_redirect,)),
            ("https", (self.https_hsts, self.https_legacy_tls, self.https_alpn)),
        ):
            description = getattr(self.config, label)
            if description is None:
                self._add(label.upper(), Status.SKIP, f"listener disabled (--{label} none)")
                continue
            target = target_for(label, description, self.host)
            if isinstance(target, str):
                self._add(label.upper(), Status.SKIP, f"cannot probe: {target}")
                continue
            for probe in probes:
                name, run = probe(target)
                try:
                    status, detail = run()
                except ProbeError as e:
                    status, detail = Status.FAIL, str(e)
                except (OSError, ssl.SSLError) as e:
                    status, detail = Status.FAIL, f"{_where(target)}: {_reason(e)}"
                self._add(name, status, detail)
        self.certificate_checks()
        from rumpus_secure.client_cert_check import client_certificate_checks

        client_certificate_checks(self)
        return self.results

    def _add(self, name: str, status: Status, detail: str) -> None:
        self.results.append(CheckResult(name, status, detail))

    def _keep_certificate(self, where: str, sock: Any) -> None:
        der = sock.getpeercert(binary_form=True)
        if der:
            self.certificates[where] = der

    # FTP ----------------------------------------------------------------

    def ftp_plain_login(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            with _Connection(target, self.timeout) as conn:
                code, text = conn.ftp_reply()
                if code == 421:
                    _not_turned_away(text, target)
                    return Status.PASS, f"plain port closes at once (implicit-only): {text}"
                if code != 220:
                    return Status.FAIL, f"unexpected greeting: {text}"
                conn.ftp_command(f"CLNT {PROBE_SOFTWARE}")
                code, text = conn.ftp_command(f"USER {PROBE_ACCOUNT}")
                if code == 530:
                    return Status.PASS, f"USER before TLS refused: {text}"
                if code in (331, 332, 230):
                    conn.send(b"QUIT\r\n")
                    return Status.FAIL, (
                        "plain login allowed (--ftp-security allow-plain?):"
                        " passwords cross the network unencrypted"
                    )
                return Status.FAIL, f"unexpected reply to USER before TLS: {text}"

        return "FTP: login without TLS refused", run

    def _explicit_tls(
        self, target: Target, context: ssl.SSLContext
    ) -> tuple[_Connection, str | None]:
        """
        Connect, AUTH TLS and handshake; the connection and the handshake
        error (L{None} when it succeeded).
        """
        conn = _Connection(target, self.timeout)
        try:
            code, text = conn.ftp_reply()
            if code == 421:
                _not_turned_away(text, target)
                raise _Skip("implicit-only: the plain port offers no AUTH TLS")
            if code != 220:
                raise ProbeError(f"unexpected greeting: {text}")
            code, text = conn.ftp_command("AUTH TLS")
            if code != 234:
                raise ProbeError(f"AUTH TLS refused: {text}")
            try:
                conn.start_tls(context, self.server_name)
            except ssl.SSLError as e:
                return conn, _reason(e)
            return conn, None
        except BaseException:
            conn.close()
            raise

    def ftp_auth_tls(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            try:
                conn, error = self._explicit_tls(target, client_context(["ftp"]))
            except _Skip as e:
                return Status.SKIP, str(e)
            with conn:
                if error is not None:
                    return Status.FAIL, f"234 but the TLS handshake failed: {error}"
                self._keep_certificate("ftp", conn.sock)
                code, text = conn.ftp_command("NOOP")
                if code != 200:
                    return Status.FAIL, f"NOOP inside TLS: {text}"
                return Status.PASS, f"234, then {_tls_summary(conn.sock)}"

        return "FTP: AUTH TLS", run

    def ftp_legacy_tls(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            try:
                conn, error = self._explicit_tls(target, client_context(legacy_only=True))
            except _Skip as e:
                return Status.SKIP, str(e)
            with conn:
                return _legacy_verdict(conn, error)

        return "FTP: TLS 1.0/1.1 refused after AUTH TLS", run

    # implicit FTPS --------------------------------------------------------

    def ftps_implicit(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            with _Connection(target, self.timeout) as conn:
                try:
                    conn.start_tls(client_context(["ftp"]), self.server_name)
                except ssl.SSLError as e:
                    return Status.FAIL, f"TLS handshake failed: {_reason(e)}"
                self._keep_certificate("ftps", conn.sock)
                code, text = conn.ftp_reply()
                if code != 220:
                    return Status.FAIL, f"greeting inside TLS: {text}"
                conn.send(b"QUIT\r\n")
                return Status.PASS, f"{_tls_summary(conn.sock)}, then 220 inside TLS"

        return "FTPS: implicit TLS and greeting", run

    def ftps_legacy_tls(self, target: Target) -> tuple[str, Callable[[], Any]]:
        return "FTPS: TLS 1.0/1.1 refused", self._legacy(target)

    def ftps_alpn(self, target: Target) -> tuple[str, Callable[[], Any]]:
        return "FTPS: ALPN http/1.1 only refused", self._alpn_refused(target, "http/1.1")

    # HTTP(S) --------------------------------------------------------------

    def _request(self) -> bytes:
        host = self.config.public_host
        if ":" in host:
            host = f"[{host}]"
        return (
            b"GET " + HTTP_PROBE_PATH + b" HTTP/1.1\r\nHost: " + host.encode("idna")
            + b"\r\nUser-Agent: " + PROBE_SOFTWARE.encode("ascii")
            + b"\r\nConnection: close\r\n\r\n"
        )

    def http_redirect(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            from rumpus_secure.web.redirect import https_origin

            expected = (https_origin(self.config) + HTTP_PROBE_PATH).decode("ascii")
            with _Connection(target, self.timeout) as conn:
                code, headers = conn.http_head(self._request())
            location = headers.get("location", "")
            if code == 301 and location == expected:
                return Status.PASS, f"301 to {location}"
            if code in (301, 302, 307, 308) and location.startswith("https://"):
                return Status.WARN, f"{code} to {location} (expected 301 to {expected})"
            return Status.FAIL, (
                f"{code} {location or '(no Location)'}: plain HTTP is not sent to"
                f" HTTPS (expected 301 to {expected})"
            )

        return "HTTP: redirect to HTTPS", run

    def https_hsts(self, target: Target) -> tuple[str, Callable[[], Any]]:
        def run() -> tuple[Status, str]:
            with _Connection(target, self.timeout) as conn:
                try:
                    conn.start_tls(client_context(["http/1.1"]), self.server_name)
                except ssl.SSLError as e:
                    return Status.FAIL, f"TLS handshake failed: {_reason(e)}"
                self._keep_certificate("https", conn.sock)
                summary = _tls_summary(conn.sock)
                code, headers = conn.http_head(self._request())
            hsts = headers.get("strict-transport-security", "")
            if "max-age=" in hsts.lower() and not hsts.lower().startswith("max-age=0"):
                return Status.PASS, f"{summary}; {code}, Strict-Transport-Security: {hsts}"
            if self.config.hsts_max_age == 0:
                return Status.WARN, "no HSTS: turned off with --hsts-max-age 0"
            return Status.FAIL, f"{code} without Strict-Transport-Security"

        return "HTTPS: HSTS header", run

    def https_legacy_tls(self, target: Target) -> tuple[str, Callable[[], Any]]:
        return "HTTPS: TLS 1.0/1.1 refused", self._legacy(target)

    def https_alpn(self, target: Target) -> tuple[str, Callable[[], Any]]:
        return "HTTPS: ALPN ftp only refused", self._alpn_refused(target, "ftp")

    # shared TLS probes ----------------------------------------------------

    def _legacy(self, target: Target) -> Callable[[], tuple[Status, str]]:
        def run() -> tuple[Status, str]:
            with _Connection(target, self.timeout) as conn:
                try:
                    conn.start_tls(client_context(legacy_only=True), self.server_name)
                except ssl.SSLError as e:
                    return _legacy_verdict(conn, _reason(e))
                return _legacy_verdict(conn, None)

        return run

    def _alpn_refused(self, target: Target, offer: str) -> Callable[[], tuple[Status, str]]:
        def run() -> tuple[Status, str]:
            with _Connection(target, self.timeout) as conn:
                try:
                    conn.start_tls(client_context([offer]), self.server_name)
                except ssl.SSLError as e:
                    return Status.PASS, f"handshake refused: {_reason(e)}"
                except ConnectionError as e:
                    return Status.PASS, f"connection closed at the handshake: {_reason(e)}"
                chosen = _tls_summary(conn.sock)
            return Status.FAIL, (
                f"a client offering only {offer} was served"
                f" ({chosen}): cross-protocol attacks are possible"
            )

        return run

    # certificate ------------------------------------------------------------

    def certificate_checks(self) -> None:
        if not self.certificates:
            self._add("Certificate", Status.SKIP, "no TLS port answered; nothing to read")
            return
        distinct = {der for der in self.certificates.values()}
        der = next(iter(self.certificates.values()))
        cert = x509.load_der_x509_certificate(der)
        fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
        host = self.config.public_host
        if len(distinct) > 1:
            self._add(
                "Certificate: same on every port", Status.FAIL,
                "ports serve different certificates: " + ", ".join(
                    f"{port} {x509.load_der_x509_certificate(d).fingerprint(hashes.SHA256()).hex()[:16]}"
                    for port, d in self.certificates.items()
                ),
            )
        self_signed = cert.issuer == cert.subject
        note = " (self-signed: clients warn until told to trust it)" if self_signed else ""
        if covers_host(cert, host):
            self._add(f"Certificate: covers {host}", Status.PASS,
                      f"{cert.subject.rfc4514_string()}{note}")
        else:
            names = _names(cert)
            self._add(
                f"Certificate: covers {host}", Status.FAIL,
                f"served certificate is for {names or cert.subject.rfc4514_string()};"
                " clients connecting to --public-host will refuse it",
            )
        left = cert.not_valid_after_utc - self.now()
        until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if left.total_seconds() <= 0:
            status, detail = Status.FAIL, f"expired on {until}"
        elif left < EXPIRY_WARNING:
            status, detail = Status.WARN, f"expires in {left.days} days ({until}): renew it"
        else:
            status, detail = Status.PASS, f"{left.days} days left (until {until})"
        self._add("Certificate: expiry", status, f"{detail}; SHA-256 {fingerprint}")


def _not_turned_away(text: str, target: Target) -> None:
    """
    Raise L{ProbeError} if a 421 greeting is the guard's (a ban or a
    connection limit), not the implicit-only policy: the probe then says
    nothing about the server's mode.
    """
    if "Too many" in text:
        raise ProbeError(
            f"{_where(target)} turned this address away ({text}); nothing about the "
            "server's mode can be checked from here (see: rumpus-secure ban list)"
        )


class _Skip(Exception):
    """
    This rule does not apply to the configuration.
    """


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    return ", ".join(str(name.value) for name in san.value)


def _tls_summary(sock: Any) -> str:
    cipher = sock.cipher()
    alpn = sock.selected_alpn_protocol()
    summary = f"{sock.version()} {cipher[0] if cipher else ''}".strip()
    return summary + (f", ALPN {alpn}" if alpn else "")


def _legacy_verdict(conn: _Connection, error: str | None) -> tuple[Status, str]:
    if error is None:
        return Status.FAIL, f"the server accepted {conn.sock.version()}"  # type: ignore[attr-defined]
    if "NO_PROTOCOLS_AVAILABLE" in error.upper() or "NO PROTOCOLS" in error.upper():
        return Status.WARN, (
            "not verified: this machine's OpenSSL cannot offer TLS 1.0/1.1"
        )
    return Status.PASS, f"handshake refused: {error}"


def run_checks(
    config: ServerConfig, host: str | None = None, timeout: float = PROBE_TIMEOUT
) -> list[CheckResult]:
    """
    Probe every enabled listener of C{config}; one result per rule.
    """
    from rumpus_secure.acme.check import acme_results

    return SelfCheck(config, host=host, timeout=timeout).run() + acme_results(config)


def format_results(results: list[CheckResult]) -> str:
    """
    The pass/fail table and a summary line.
    """
    lines = table(
        ("CHECK", "RESULT", "DETAIL"),
        ((r.name, r.status.value, r.detail) for r in results),
        limit=160,
    )
    counts = {status: sum(r.status is status for r in results) for status in Status}
    lines.append("")
    lines.append(
        f"{counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, "
        f"{counts[Status.WARN]} warnings, {counts[Status.SKIP]} skipped"
    )
    return "\n".join(lines) + "\n"


def exit_status(results: list[CheckResult], strict: bool = False) -> int:
    """
    0 when nothing failed (and, with C{strict}, nothing warned); else 1.
    """
    bad = {Status.FAIL, Status.WARN} if strict else {Status.FAIL}
    return 1 if any(r.status in bad for r in results) else 0


# -- the running server's own record --------------------------------------


@dataclass(frozen=True)
class RecordedServer:
    """
    What the running server recorded about itself (L{ListenerRecord}).
    """

    path: Path
    pid: int | None
    started: str
    config: ServerConfig

    def running(self) -> bool | None:
        """
        Whether the recording process still runs (L{None}: cannot tell).
        """
        import os

        if self.pid is None:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        except OSError:
            return None
        return True


def recorded_config(data_dir: Path) -> RecordedServer | None:
    """
    The configuration the server running on C{data_dir} recorded, or L{None}.

    A listener configured with port 0 is probed on the port it was given.
    Raises L{ConfigError} for a record that cannot be read.
    """
    import json

    from rumpus_secure.config import ConfigError, build_config, endpoint_port
    from rumpus_secure.tap import LISTENERS_FILE

    path = Path(data_dir) / LISTENERS_FILE
    try:
        record = json.loads(path.read_text("utf-8"))
        options = dict(record["options"])
        listening = record.get("listening") or {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the listener record {path} cannot be read: {e}") from None
    for label, bound in listening.items():
        description = options.get(label)
        if not description or description == "none" or endpoint_port(description):
            continue
        if isinstance(bound, dict) and bound.get("port"):
            proxy = "haproxy:" if description.startswith("haproxy:") else ""
            host = str(bound.get("host") or "127.0.0.1").replace(":", "\\:")
            options[label] = f"{proxy}tcp:{bound['port']}:interface={host}"
    config = build_config(options)
    pid = record.get("pid")
    return RecordedServer(path, pid if isinstance(pid, int) else None,
                          str(record.get("started", "")), config)
