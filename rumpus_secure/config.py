"""
Typed server configuration.

Every option is declared once, in L{OPTIONS}: its name (the command-line flag
and the TOML key are the same word, ``--data-dir`` and ``data-dir``), its
default, a parser that turns text or a TOML value into a typed value, and its
help text.  L{rumpus_secure.tap.Options} builds twistd's flags from the same
table, and L{build_config} merges defaults, the TOML file and the command line
(command line wins) into one frozen L{ServerConfig}.

Nothing here touches the network or the disk except reading the TOML file
named by ``--config``; checks that need the disk (is the data directory
writable, do the certificate and key match) happen at assembly time in
L{rumpus_secure.tap}.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping


class ConfigError(Exception):
    """
    A configuration value is wrong; the message is one line for a person.
    """


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty text value")
    return value.strip()


def _path(value: Any) -> Path:
    return Path(_text(value)).expanduser()


def _optional_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    return _path(value)


def _endpoint(value: Any) -> str | None:
    """
    An endpoint description, or L{None} for the word ``none``.

    The string itself is parsed by L{twisted.internet.endpoints} at assembly
    time; here we only reject what can never be an endpoint.
    """
    if value is False or value is None:
        return None
    text = _text(value)
    if text.lower() in ("none", "off", "no", "false"):
        return None
    if ":" not in text:
        if text.isdigit():
            return f"tcp:{text}"
        raise ValueError(
            "expected a Twisted endpoint such as tcp:2121 or "
            "tcp:2121:interface=127.0.0.1, or the word none"
        )
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError("expected one of: " + ", ".join(choices))
        return text

    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


def _on_off(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ValueError("expected on or off")


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not (0 <= number <= 86400 * 365 * 2):
        raise ValueError("expected a number of seconds between 0 and two years")
    return number


def _count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number") from None
    if number < 0:
        raise ValueError("expected a whole number of at least 0")
    return number


def _password_length(value: Any) -> int:
    number = _count(value)
    if not 8 <= number <= 128:
        raise ValueError("expected a number of characters from 8 (NIST SP 800-63B) "
                         "to 128")
    return number


def _share_days(value: Any) -> int:
    number = _count(value)
    if not 1 <= number <= 3650:
        raise ValueError("expected a number of days from 1 to 3650")
    return number


def _optional_port(value: Any) -> int | None:
    if value is None or value == "" or value == 0:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a port number from 1 to 65535") from None
    if not 1 <= number <= 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return number


def _port_range(value: Any) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    else:
        text = _text(value)
        if text.lower() in ("none", "any"):
            return None
        low, sep, high = text.partition("-")
        if not sep:
            raise ValueError("expected a range LOW-HIGH such as 60000-60100")
    try:
        lo, hi = int(low), int(high)
    except (TypeError, ValueError):
        raise ValueError("expected a range LOW-HIGH such as 60000-60100") from None
    if not (1024 <= lo <= hi <= 65535):
        raise ValueError("expected 1024 <= LOW <= HIGH <= 65535")
    return (lo, hi)


def _optional_address(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None


def _host(value: Any) -> str:
    text = _text(value)
    if any(c in text for c in "/\\ @?#\r\n\t"):
        raise ValueError("expected a host name such as files.example.com")
    return text


def _cidr_list(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network") from None
    return tuple(out)


def _database(value: Any) -> str | None:
    from rumpus_secure.db import parse_database

    return parse_database(value)


def _node_id(value: Any) -> str | None:
    """
    A node name: it goes into file names, so letters, digits, ``.``, ``_``
    and ``-`` only, 1 to 63 of them, not starting with ``.`` or ``-``.
    """
    import re

    if value is None or value == "":
        return None
    text = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}", text):
        raise ValueError("expected 1 to 63 letters, digits, '.', '_' or '-', not "
                         "starting with '.' or '-'")
    return text


def default_node_id() -> str:
    """
    The host name, made fit for a file name (the default C{--node-id}).
    """
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname() or "node")
    name = name.lstrip(".-")[:63]
    return name or "node"


def _optional_acme_directory(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(value)
    if text.lower() in ("none", "off"):
        return None
    if not text.startswith("https://") or any(c in text for c in " \r\n\t"):
        raise ValueError("expected an https:// URL of an ACME directory")
    return text


def _optional_email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _text(value)
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain or any(c in text for c in " ,<>\r\n\t"):
        raise ValueError("expected an e-mail address such as admin@example.com")
    return text


def _host_list(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for item in items:
        item = str(item).strip().lower().rstrip(".")
        if not item:
            continue
        try:
            ipaddress.ip_address(item)
        except ValueError:
            pass
        else:
            raise ValueError(f"{item!r} is an address; ACME names must be host names")
        if "." not in item or not all(
            part and len(part) <= 63 and part.replace("-", "").isalnum()
            and not part.startswith("-") and not part.endswith("-")
            for part in item.split(".")
        ):
            raise ValueError(f"{item!r} is not a host name such as files.example.com")
        if item not in out:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class Option:
    """
    One configuration option: flag name, TOML key and field are derived.
    """

    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    metavar: str = "VALUE"

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("data-dir", "./rumpus-data", _path,
           "Data directory: accounts database, certificate, audit log.", "DIR"),
    Option("root", None, _optional_path,
           "File root; each account's default home is ROOT/NAME "
           "[default: DATA-DIR/files].", "DIR"),
    Option("ftp", "tcp:2121", _endpoint,
           "FTP control listener (explicit FTPS via AUTH TLS), or none.", "ENDPOINT"),
    Option("ftps", "tcp:9990", _endpoint,
           "Implicit FTPS listener (TLS from the first byte), or none.", "ENDPOINT"),
    Option("http", "tcp:8080", _endpoint,
           "HTTP listener (redirects to HTTPS), or none.", "ENDPOINT"),
    Option("https", "tcp:8443", _endpoint,
           "HTTPS listener (web file manager), or none.", "ENDPOINT"),
    Option("public-host", "localhost", _host,
           "Host name clients use; redirects point here and the generated "
           "certificate covers it.", "NAME"),
    Option("cert", None, _optional_path,
           "PEM certificate (may include the chain) [default: generated "
           "self-signed in DATA-DIR].", "FILE"),
    Option("key", None, _optional_path, "PEM private key for --cert.", "FILE"),
    Option("allow-expired", False, _on_off,
           "Start even if the certificate has expired (on/off).", "on|off"),
    Option("cert-check-interval", 60.0, _seconds,
           "Seconds between checks of the certificate and key files for a "
           "change (reloaded without a restart; SIGHUP reloads at once); "
           "0 turns the periodic check off.", "SECONDS"),
    Option("ftp-security", "require-tls",
           _choice("require-tls", "allow-plain", "implicit-only"),
           "FTP control policy: require-tls, allow-plain or implicit-only.",
           "POLICY"),
    Option("exposed-password", "quarantine", _choice("quarantine", "alert"),
           "What to do with a real password seen in cleartext: quarantine "
           "(lock the account) or alert (audit only).", "ACTION"),
    Option("cleartext-grace", 2.0, _seconds,
           "Seconds to keep reading after a cleartext USER, to catch a "
           "PASS sent anyway.", "SECONDS"),
    Option("data-tls", "required", _choice("required", "optional"),
           "Data connections must be encrypted (PROT P): required or optional.",
           "MODE"),
    Option("data-tls-reuse", "required", _choice("required", "optional"),
           "Data connections must resume the control connection's TLS "
           "session: required or optional.", "MODE"),
    Option("data-tls-strict-eof", True, _on_off,
           "An upload that ends without TLS close_notify is truncated and not "
           "committed (on), or is accepted (off).", "on|off"),
    Option("data-connect-timeout", 30.0, _seconds,
           "Seconds a client has to open a data connection after PASV/PORT.",
           "SECONDS"),
    Option("data-idle-timeout", 120.0, _seconds,
           "Seconds a data connection may make no progress before it is "
           "aborted.", "SECONDS"),
    Option("passive-ports", None, _port_range,
           "Passive data port range LOW-HIGH [default: any free port].", "LOW-HIGH"),
    Option("passive-address", None, _optional_address,
           "Address announced in PASV replies (server behind NAT).", "ADDR"),
    Option("public-https-port", None, _optional_port,
           "HTTPS port used in redirects when a proxy maps ports "
           "[default: the --https port].", "PORT"),
    Option("http-redirect", True, _on_off,
           "Redirect plain HTTP to HTTPS (on) or serve the web manager over "
           "plain HTTP too (off, legacy).", "on|off"),
    Option("acme-webroot", None, _optional_path,
           "Serve /.well-known/acme-challenge/ from this directory over HTTP.",
           "DIR"),
    Option("hsts-max-age", 31536000, _count,
           "Strict-Transport-Security max-age in seconds.", "SECONDS"),
    Option("idle-timeout", 600.0, _seconds,
           "Idle timeout of control connections in seconds.", "SECONDS"),
    Option("safe-list", (), _cidr_list,
           "Comma-separated addresses/CIDR networks never banned.", "CIDRS"),
    Option("ban-threshold", 15, _count,
           "Offence score that bans an address (failed login 1, login before "
           "TLS 3, protocol garbage 5, failed TLS handshake 1); 0 turns "
           "banning off.", "SCORE"),
    Option("ban-window", 600.0, _seconds,
           "Seconds an offence counts towards the ban threshold.", "SECONDS"),
    Option("ban-time", 900.0, _seconds,
           "Seconds of a first ban; each repeat ban doubles it.", "SECONDS"),
    Option("ban-max-time", 86400.0, _seconds,
           "Longest ban in seconds; also how long a past ban still counts "
           "for doubling.", "SECONDS"),
    Option("login-failure-delay", 1.0, _seconds,
           "Seconds before a failed login is answered.", "SECONDS"),
    Option("max-connections", 500, _count,
           "Most FTP control connections at once; 0 for no limit.", "N"),
    Option("max-connections-per-ip", 20, _count,
           "Most FTP control connections from one address (safe-listed "
           "addresses are exempt); 0 for no limit.", "N"),
    Option("max-sessions-per-account", 10, _count,
           "Most logged-in FTP sessions of one account at once; 0 for no "
           "limit.", "N"),
    Option("line-timeout", 30.0, _seconds,
           "Seconds a client may take to finish an FTP command line, or an "
           "HTTP(S) request head, it has started (slow-client protection); "
           "0 turns it off.", "SECONDS"),
    Option("login-timeout", 30.0, _seconds,
           "Seconds an FTP client has to log in after connecting (or after "
           "REIN) before it is disconnected; 0 turns it off.", "SECONDS"),
    Option("http-timeout", 60.0, _seconds,
           "Idle timeout of HTTP and HTTPS connections in seconds.", "SECONDS"),
    Option("login-cache-time", 300.0, _seconds,
           "Seconds a successful login is remembered so that repeat logins "
           "with the same password skip argon2id; 0 turns it off.", "SECONDS"),
    Option("xferlog", None, _optional_path,
           "Also write each FTP transfer as a classic wu-ftpd/vsftpd xferlog "
           "line to this file.", "PATH"),
    Option("metrics", "none", _endpoint,
           "Serve Prometheus metrics on this endpoint (e.g. "
           "tcp:9464:interface=127.0.0.1); none turns it off.", "ENDPOINT"),
    Option("handshake-timeout", 15.0, _seconds,
           "Seconds a client has to finish its TLS handshake (implicit FTPS, "
           "HTTPS, FTP after AUTH TLS) before the connection is dropped; 0 "
           "turns the deadline off.", "SECONDS"),
    Option("password-min-length", 12, _password_length,
           "Fewest characters of a password a person chooses (user add, "
           "user passwd); at least 8.", "N"),
    Option("share-max-days", 30, _share_days,
           "Longest life in days of a share link (download link or drop box) "
           "a user creates; links default to 7 days or this, if shorter.", "DAYS"),
    Option("database", None, _database,
           "Where accounts, bans and web sessions live: sqlite (the embedded "
           "DATA-DIR/accounts.sqlite3) or a postgresql://USER@HOST/DBNAME URL "
           "shared by several nodes (needs rumpus-secure[postgres]).", "URL"),
    Option("node-id", None, _node_id,
           "This node's name in temporary upload names and audit events; "
           "start-up cleanup removes only this node's leftovers "
           "[default: the host name].", "NAME"),
    Option("audit-log", None, _optional_path,
           "Audit log file, or - for JSON lines on standard output (journald, "
           "log shippers) [default: DATA-DIR/audit.log].", "PATH|-"),
    Option("acme-directory", None, _optional_acme_directory,
           "Obtain and renew the certificate by ACME from this directory URL "
           "(Let's Encrypt: " "https://acme-v02.api.letsencrypt.org/directory; "
           "staging: https://acme-staging-v02.api.letsencrypt.org/directory), "
           "validated by HTTP-01 on the --http listener.", "URL"),
    Option("acme-email", None, _optional_email,
           "Contact address given to the ACME certificate authority (expiry "
           "and policy mail).", "ADDRESS"),
    Option("acme-names", (), _host_list,
           "Comma-separated extra names for the ACME certificate, beside "
           "--public-host.", "NAMES"),
    Option("acme-ca-bundle", None, _optional_path,
           "PEM file of the CA(s) trusted for the ACME directory's HTTPS (a "
           "private or test CA) [default: the system's].", "FILE"),
    Option("client-ca", None, _optional_path,
           "Ask FTPS and HTTPS clients for a certificate (optional: password "
           "users still connect) and trust those issued by the CA(s) in this "
           "PEM file; accounts set to 'user auth NAME cert' log in with one.",
           "FILE"),
    Option("client-crl", None, _optional_path,
           "A PEM or DER certificate revocation list of the client CA; a "
           "revoked client certificate is refused (re-read when it changes).",
           "FILE"),
    Option("trusted-proxies", (), _cidr_list,
           "Comma-separated addresses/CIDR networks of the load balancers "
           "allowed to send PROXY headers (haproxy: listeners, and passive "
           "data connections from them).", "CIDRS"),
    Option("passive-bind", None, _optional_address,
           "Address the passive data listeners bind, when it differs from the "
           "announced --passive-address (a node behind a load balancer) "
           "[default: the address the control connection reached].", "ADDR"),
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class ServerConfig:
    """
    The whole server configuration, typed and validated.
    """

    data_dir: Path = Path("./rumpus-data")
    root: Path | None = None
    ftp: str | None = "tcp:2121"
    ftps: str | None = "tcp:9990"
    http: str | None = "tcp:8080"
    https: str | None = "tcp:8443"
    public_host: str = "localhost"
    cert: Path | None = None
    key: Path | None = None
    allow_expired: bool = False
    cert_check_interval: float = 60.0
    ftp_security: str = "require-tls"
    exposed_password: str = "quarantine"
    cleartext_grace: float = 2.0
    data_tls: str = "required"
    data_tls_reuse: str = "required"
    data_tls_strict_eof: bool = True
    data_connect_timeout: float = 30.0
    data_idle_timeout: float = 120.0
    passive_ports: tuple[int, int] | None = None
    passive_address: str | None = None
    public_https_port: int | None = None
    http_redirect: bool = True
    acme_webroot: Path | None = None
    hsts_max_age: int = 31536000
    idle_timeout: float = 600.0
    safe_list: tuple[str, ...] = field(default=())
    ban_threshold: int = 15
    ban_window: float = 600.0
    ban_time: float = 900.0
    ban_max_time: float = 86400.0
    login_failure_delay: float = 1.0
    max_connections: int = 500
    max_connections_per_ip: int = 20
    max_sessions_per_account: int = 10
    line_timeout: float = 30.0
    login_timeout: float = 30.0
    http_timeout: float = 60.0
    login_cache_time: float = 300.0
    xferlog: Path | None = None
    metrics: str | None = None
    handshake_timeout: float = 15.0
    password_min_length: int = 12
    share_max_days: int = 30
    database: str | None = None
    node_id: str | None = None
    audit_log: Path | None = None
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_names: tuple[str, ...] = field(default=())
    acme_ca_bundle: Path | None = None
    client_ca: Path | None = None
    client_crl: Path | None = None
    trusted_proxies: tuple[str, ...] = field(default=())
    passive_bind: str | None = None

    @property
    def node(self) -> str:
        """
        This node's name: C{--node-id}, else the host name.
        """
        return self.node_id if self.node_id is not None else default_node_id()

    @property
    def file_root(self) -> Path:
        """
        The directory under which default homes are created.
        """
        return self.root if self.root is not None else self.data_dir / "files"

    @property
    def ftps_port(self) -> int | None:
        """
        The implicit FTPS port number, for messages that tell users where to go.
        """
        return endpoint_port(self.ftps)

    @property
    def ftp_port(self) -> int | None:
        return endpoint_port(self.ftp)

    @property
    def https_port(self) -> int | None:
        """
        The HTTPS port clients should be sent to.
        """
        if self.public_https_port is not None:
            return self.public_https_port
        return endpoint_port(self.https)


def endpoint_port(description: str | None) -> int | None:
    """
    The port number in an endpoint description such as ``tcp:2121:...``.

    Works for ``tcp:``, ``tcp6:``, ``ssl:`` and ``haproxy:tcp:`` and for the
    keyword form ``port=2121``.  Returns L{None} when there is no port.
    """
    if not description:
        return None
    parts = description.split(":")
    for part in parts:
        if part.startswith("port="):
            part = part[len("port="):]
        if part.isdigit():
            return int(part)
    return None


def _check_fields() -> None:
    names = {f.name for f in fields(ServerConfig)}
    declared = {option.attribute for option in OPTIONS}
    assert names == declared, (names ^ declared)


_check_fields()


def parse_value(name: str, value: Any) -> Any:
    """
    Parse one option's value, raising L{ConfigError} that names the option.
    """
    option = _BY_NAME.get(name)
    if option is None:
        raise ConfigError(f"unknown option {name!r}{did_you_mean(name)}")
    try:
        return option.parse(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {e} (got {value!r})") from None


def did_you_mean(name: str) -> str:
    """
    ``; did you mean 'data-dir'?`` for a misspelt option name, or nothing.
    """
    close = difflib.get_close_matches(name.replace("_", "-").lower(), _BY_NAME, n=1,
                                      cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


#: The environment variable naming the configuration file when no
#: ``--config`` is given, read by the server and the admin command alike.
CONFIG_ENV = "RUMPUS_SECURE_CONFIG"


def config_file(given: str | Path | None,
                environ: Mapping[str, str] | None = None) -> str | Path | None:
    """
    The configuration file to read: C{--config}, else C{$RUMPUS_SECURE_CONFIG}.
    """
    if given:
        return given
    value = (os.environ if environ is None else environ).get(CONFIG_ENV, "").strip()
    return value or None


def read_toml(path: Path) -> dict[str, Any]:
    """
    Read a TOML config file into a mapping of option name to raw value.

    Keys may be written with dashes or underscores; unknown keys are errors so
    that a typo never silently falls back to a default.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("_", "-")
        if name not in _BY_NAME:
            raise ConfigError(
                f"config file {path}: unknown option {key!r}{did_you_mean(name)}"
            )
        out[name] = value
    return out


def build_config(
    command_line: Mapping[str, Any] | None = None,
    config_file: Path | str | None = None,
) -> ServerConfig:
    """
    Merge defaults, the TOML file and command-line values (which win).

    @param command_line: option name to raw value, only for options given.
    @param config_file: path of a TOML file, or L{None}.
    """
    raw: dict[str, Any] = {}
    if config_file is not None:
        raw.update(read_toml(Path(config_file)))
    raw.update(command_line or {})
    values = {}
    for option in OPTIONS:
        if option.name in raw:
            values[option.attribute] = parse_value(option.name, raw[option.name])
        elif option.default is not None:
            values[option.attribute] = option.parse(option.default)
        else:
            values[option.attribute] = None
    for name in raw:
        if name not in _BY_NAME:
            raise ConfigError(f"unknown option {name!r}{did_you_mean(name)}")
    config = ServerConfig(**values)
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    """
    Cross-option rules that no single parser can check.
    """
    if (config.cert is None) != (config.key is None):
        raise ConfigError("--cert and --key must be given together")
    if config.client_crl is not None and config.client_ca is None:
        raise ConfigError("--client-crl needs --client-ca")
    if not any((config.ftp, config.ftps, config.http, config.https)):
        raise ConfigError("every listener is set to none: nothing to serve")
    if config.ftp_security == "implicit-only" and config.ftps is None:
        raise ConfigError(
            "--ftp-security implicit-only needs an implicit FTPS listener (--ftps)"
        )
    if config.acme_directory is not None:
        if config.http is None:
            raise ConfigError(
                "--acme-directory validates by HTTP-01 and needs the --http "
                "listener (reachable on port 80 from the internet)"
            )
        if not config.http_redirect:
            raise ConfigError(
                "--acme-directory answers HTTP-01 on the redirecting --http "
                "listener; it cannot be combined with --http-redirect off"
            )
        if config.cert is not None:
            raise ConfigError(
                "--acme-directory obtains the certificate itself: drop --cert "
                "and --key, or drop --acme-directory"
            )
        try:
            _host_list(config.public_host)
        except ValueError:
            raise ConfigError(
                f"--acme-directory needs a --public-host that is a public host "
                f"name, not {config.public_host!r}"
            ) from None
