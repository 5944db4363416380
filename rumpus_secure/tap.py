"""
The one assembly point: twistd options and L{makeService}.

``twistd rumpus-secure`` (through the dropin in ``twisted/plugins``) and every
``.tac`` file call L{makeService}; nothing else reads command-line options.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from rumpus_secure.config import (
    CONFIG_ENV,
    OPTIONS,
    ConfigError,
    ServerConfig,
    build_config,
    config_file,
)

_log = Logger()

_PROG = "rumpus-secure"


def _default_suffix(value: Any) -> str:
    if value is None or value == ():
        return ""
    if value is True:
        return " [default: on]"
    if value is False:
        return " [default: off]"
    return f" [default: {value}]"


class Options(usage.Options):
    """
    twistd options; each is declared once in L{rumpus_secure.config.OPTIONS}.
    """

    synopsis = "[options]"
    longdesc = (
        "A secure multi-protocol file server: FTP with explicit FTPS, "
        "implicit FTPS, HTTP redirect and an HTTPS web file manager. Every "
        "option may also be set in a TOML file given with --config (the same "
        "names as keys); the command line wins."
    )
    optParameters = [["config", "c", None,
                      f"TOML configuration file [default: ${CONFIG_ENV}]."]] + [
        [option.name, None, None, option.help + _default_suffix(option.default)]
        for option in OPTIONS
    ]

    def __init__(self) -> None:
        super().__init__()
        self.server_config: ServerConfig | None = None

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            from rumpus_secure.config import did_you_mean

            message = str(e)
            if message.startswith("option --") and message.endswith(" not recognized"):
                message += did_you_mean(message[len("option --"):-len(" not recognized")])
            raise SystemExit(
                f"{_PROG}: error: {message} (see: twistd {_PROG} --help)"
            ) from None

    def postOptions(self) -> None:
        given = {
            option.name: self[option.name]
            for option in OPTIONS
            if self[option.name] is not None
        }
        try:
            self.server_config = build_config(given, config_file(self["config"]))
        except ConfigError as e:
            raise SystemExit(f"{_PROG}: error: {e}") from None
        no_pidfile_in_foreground(getattr(self, "parent", None))


def no_pidfile_in_foreground(twistd_options: Any) -> None:
    """
    In the foreground (``twistd -n``) write no pid file unless one is asked for.

    twistd writes C{twistd.pid} in the current folder by default and refuses
    to start while it names a live process: a second instance started from
    the same folder (another data directory, other ports) failed with
    "Another twistd server is running".  Nothing needs a pid file in the
    foreground (systemd and the terminal know the process), so the default
    name is dropped there; any other C{--pidfile} (also C{./twistd.pid}) is
    kept, and daemons keep theirs.

    @param twistd_options: twistd's own options (our L{Options}' C{parent}),
        or L{None} when not run by twistd.
    """
    if twistd_options is None or not hasattr(twistd_options, "get"):
        return
    if twistd_options.get("nodaemon") and twistd_options.get("pidfile") == "twistd.pid":
        twistd_options["pidfile"] = ""


def _fail(message: str) -> SystemExit:
    return SystemExit(f"{_PROG}: error: {message}")


def _as_config(options: Any) -> ServerConfig:
    if isinstance(options, ServerConfig):
        return options
    if isinstance(options, Options):
        if options.server_config is None:
            options.postOptions()
        assert options.server_config is not None
        return options.server_config
    if isinstance(options, Mapping):
        given = {k: v for k, v in options.items() if k != "config" and v is not None}
        try:
            return build_config(given, config_file(options.get("config")))
        except ConfigError as e:
            raise _fail(str(e)) from None
    raise TypeError(f"cannot make a configuration from {options!r}")


def ensure_writable_dir(path: Path, what: str) -> None:
    """
    Create C{path} if needed and prove we can write there, or exit clearly.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise _fail(f"{what} {path} cannot be written: {e.strerror or e}") from None


class PortUnavailable(SystemExit):
    """
    A listener could not bind; the message is already on the terminal.

    C{code} is 1 (Python prints nothing more on exit); C{message} is the
    line that was printed.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.message = message


class ListenerService(StreamServerEndpointService):
    """
    A listening endpoint that names itself and fails start-up clearly.

    A port that cannot be bound (in use, no permission) stops start-up with
    one line naming the listener, instead of a log line nobody reads while
    the server runs without that port.
    """

    def __init__(self, label: str, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.label = label
        self.description = description
        self.setName(label)
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            failure = _fail(
                f"cannot listen for {self.label} on {self.description}: "
                f"{e.socketError}"
            )
            # twistd has redirected sys.stderr into its log by now; the
            # operator starting the server must see this line on the terminal.
            print(failure.code, file=sys.__stderr__, flush=True)
            # Exit 1 without a message: Python would print the message again
            # on sys.stderr, which twistd -n logs to the same terminal.
            raise PortUnavailable(1, str(failure.code)) from None

    def startService(self) -> None:
        #: Fires with the listening port once bound (L{ListenerRecord}).
        self.bound: defer.Deferred[Any] = defer.Deferred()
        super().startService()
        self._waitingForPort.addCallback(self._announce)

    def _announce(self, port: Any) -> Any:
        if not self.bound.called:
            self.bound.callback(port)
        if port is not None:
            address = port.getHost()
            _log.info(
                "{label} listening on {host}:{port}",
                label=self.label, host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
            )
        return port


#: The file in the data directory where the running server records its
#: listeners, so that ``rumpus-secure check`` with no options probes it.
LISTENERS_FILE = "listeners.json"


def config_as_options(config: ServerConfig) -> dict[str, Any]:
    """
    Every option of C{config} as a value L{build_config} reads back the same.
    """
    out: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(config, option.attribute)
        if value is None:
            if option.name in ("ftp", "ftps", "http", "https"):
                out[option.name] = "none"
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, Path):
            value = str(value.absolute())
        elif option.name == "database":
            from rumpus_secure.db import redact

            value = redact(value)
        elif option.name == "passive-ports":
            value = f"{value[0]}-{value[1]}"
        elif isinstance(value, tuple):
            value = ",".join(value)
        out[option.name] = value
    return out


class ListenerRecord(service.Service):
    """
    Record the listeners in C{DATA-DIR/listeners.json} once they are bound.

    ``rumpus-secure check`` used to need every server option repeated, or it
    probed the default ports.  The record holds the server's effective
    options and the address each listener is bound to; the admin command
    reads it (L{rumpus_secure.selfcheck.recorded_config}).  It is written
    atomically and removed at a clean stop; a record left by a crash names a
    process id that no longer runs, which the check reports.
    """

    name = "listener-record"

    def __init__(self, config: ServerConfig, listeners: list[ListenerService],
                 pid: int | None = None) -> None:
        self.config = config
        self.listeners = listeners
        self.pid = os.getpid() if pid is None else pid
        self.path = config.data_dir / LISTENERS_FILE
        self.written: defer.Deferred[Any] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = defer.gatherResults([listener.bound for listener in self.listeners],
                                consumeErrors=True)
        d.addCallback(self._write)
        d.addErrback(lambda failure: _log.failure(
            "not recording the listeners in {path}", failure, path=str(self.path)))
        d.chainDeferred(self.written)

    def record(self, ports: list[Any]) -> dict[str, Any]:
        """
        The record's content, given each listener's bound port.
        """
        listening = {}
        for listener, port in zip(self.listeners, ports):
            address = port.getHost() if port is not None else None
            listening[listener.label] = {
                "endpoint": listener.description,
                "host": getattr(address, "host", None),
                "port": getattr(address, "port", None),
            }
        return {
            "pid": self.pid,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": config_as_options(self.config),
            "listening": listening,
        }

    def _write(self, ports: list[Any]) -> None:
        import json

        text = json.dumps(self.record(ports), indent=2) + "\n"
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.path)

    def stopService(self) -> Any:
        super().stopService()
        import json

        try:
            if json.loads(self.path.read_text("utf-8")).get("pid") == self.pid:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        return None


#: Listen backlog for TCP listeners that do not set one.  Twisted's default
#: of 50 overflows when hundreds of clients connect at once (FileZilla alone
#: opens several connections per user): the kernel then drops the handshake's
#: last ACK and those clients wait for a greeting that never comes.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """
    Add C{backlog=} to a TCP endpoint description that has none.
    """
    kind = description.split(":", 1)[0]
    inner = description.split(":", 2)[1] if kind == "haproxy" else kind
    if inner in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _endpoint(reactor: Any, label: str, description: str,
              trusted: tuple[str, ...] = ()) -> Any:
    """
    The server endpoint for C{description}; ``haproxy:`` is ours.

    A ``haproxy:`` listener reads the PROXY header with
    L{rumpus_secure.proxy} (not Twisted's wrapper, which connects the
    protocol before the header is in), and only from C{--trusted-proxies}.
    """
    from rumpus_secure.proxy import ProxyServerEndpoint, TrustedProxies, split_proxy

    proxied, inner = split_proxy(with_backlog(description))
    if proxied and not trusted:
        raise _fail(f"--{label} {description} expects PROXY headers: name the proxies "
                    "allowed to send them with --trusted-proxies ADDR-OR-CIDR,...")
    try:
        endpoint = serverFromString(reactor, inner)
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(f"--{label}: bad endpoint {description!r}: {e}") from None
    if proxied:
        return ProxyServerEndpoint(endpoint, TrustedProxies(trusted), reactor, label=label)
    return endpoint


def _ftp_endpoint(reactor: Any, label: str, description: str,
                  trusted: tuple[str, ...] = ()) -> Any:
    """
    L{_endpoint} for an FTP control listener: its TCP connections send
    replies when written (L{rumpus_secure.direct_write}).
    """
    from rumpus_secure.direct_write import direct_write_endpoint

    return direct_write_endpoint(_endpoint(reactor, label, description, trusted))


@dataclass
class Server:
    """
    The pieces makeService assembled, kept for tests and admin tooling.
    """

    config: ServerConfig
    store: Any
    checker: Any
    portal: Any
    tls: Any
    audit: Any
    reactor: Any = None
    exposure: Any = None
    guard: Any = None
    ftp_factory: Any = None
    http_site: Any = None
    https_site: Any = None
    metrics: Any = None
    account_watcher: Any = None
    #: The shared database (L{rumpus_secure.db.Database}) with --database.
    database: Any = None
    state_feed: Any = None
    notifications: Any = None
    db_pool: Any = None

    def run_in_db(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """
        Run shared-database work in the database's own threads (the reactor's
        pool without --database).
        """
        from twisted.internet.threads import deferToThreadPool

        pool = self.db_pool or self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, function, *args, **kwargs)
    acme: Any = None
    acme_responder: Any = None

    def run_in_thread(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """
        Run blocking work (database, hashing, disk) off the reactor thread.
        """
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), function, *args, **kwargs
        )


#: The account the first start creates.
BOOTSTRAP_ACCOUNT = "admin"

#: The file in the data directory that keeps the first-start admin password
#: until the admin sets one (see L{bootstrap_admin}).
INITIAL_PASSWORD_FILE = "initial-admin-password"


def bootstrap_admin(store: Any, data_dir: Path, out: Any = None) -> str | None:
    """
    On the very first run create account C{admin} with a random password.

    The password is printed once on the console (never logged) and written
    to C{DATA-DIR/initial-admin-password} (mode 0600): under systemd the
    console is the journal, and a first start that fails later (a port in
    use) used to lose it.  The file goes once the admin sets a password
    (L{forget_initial_password}, and C{rumpus-secure user passwd admin}).
    A marker file makes sure nothing is regenerated later, even if every
    account is deleted afterwards.

    @returns: the password when the account was created, else L{None}.
    """
    marker = data_dir / ".bootstrapped"
    stream = out if out is not None else sys.stdout
    saved = data_dir / INITIAL_PASSWORD_FILE
    if marker.exists():
        if saved.exists():
            stream.write(
                f"\n  The password of account '{BOOTSTRAP_ACCOUNT}' from the first start "
                f"is in {saved.absolute()}\n  until you change it with: "
                f"rumpus-secure --data-dir {data_dir} user passwd {BOOTSTRAP_ACCOUNT}\n\n"
            )
            stream.flush()
        return None
    created = None
    if not store.list():
        password = secrets.token_urlsafe(15)
        store.add(BOOTSTRAP_ACCOUNT, password)
        created = password
        _write_private(saved, password + "\n")
        stream.write(
            "\n"
            f"  First run: created account '{BOOTSTRAP_ACCOUNT}' with password:\n"
            f"      {password}\n"
            f"  It is also in {saved.absolute()} (readable only by this user)\n"
            "  until you change it with:\n"
            f"      rumpus-secure --data-dir {data_dir} user passwd {BOOTSTRAP_ACCOUNT}\n"
            "\n"
        )
        stream.flush()
    marker.write_text("bootstrap done; delete this file to create 'admin' again\n")
    return created


def _write_private(path: Path, text: str) -> None:
    """
    Write C{text} to a new file that only this user can read (0600 from birth).
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def forget_initial_password(store: Any, data_dir: Path) -> bool:
    """
    Delete C{initial-admin-password} once it no longer opens the account.

    The account's C{password_changed} later than the file means the admin
    set a password (with the admin command, or any other way); a deleted
    account needs no password either.

    @returns: whether the file was deleted.
    """
    saved = data_dir / INITIAL_PASSWORD_FILE
    try:
        written = saved.stat().st_mtime
    except FileNotFoundError:
        return False
    account = store.get(BOOTSTRAP_ACCOUNT)
    if account is not None and account.password_changed <= written + 1:
        return False
    if account is not None and _still_opens(store, saved):
        # password_changed also moves when two-factor login is required or
        # reset, or a certificate binding changes: the password still works.
        return False
    saved.unlink(missing_ok=True)
    _log.info("removed {path}: the first-start password is no longer in use",
              path=str(saved))
    return True


def _still_opens(store: Any, saved: Path) -> bool:
    """
    Whether the saved first-start password is still the admin's (one
    argon2id verification, at start only).
    """
    from rumpus_secure.accounts.hashing import verify_password

    try:
        password = saved.read_text("utf-8").strip()
    except OSError:
        return False
    hash_of = getattr(store, "password_hash", None)
    stored = hash_of(BOOTSTRAP_ACCOUNT) if hash_of is not None else None
    return bool(password) and stored is not None and verify_password(stored, password)


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
_ALL_INTERFACES = ("", "0.0.0.0", "::", "0:0:0:0:0:0:0:0")


def listens_on_all_interfaces(description: str | None) -> bool:
    """
    Whether a TCP endpoint description accepts connections from any network.

    ``tcp:2121`` and ``tcp:2121:interface=0.0.0.0`` do; ``interface=127.0.0.1``
    and ``unix:`` endpoints do not.
    """
    if not description:
        return False
    parts = description.split(":")
    if parts[0] == "haproxy":
        parts = parts[1:]
    if not parts or parts[0] not in ("tcp", "tcp6", "ssl"):
        return False
    text = description.replace("\\:", "")
    for part in text.split(":"):
        if part.startswith("interface="):
            return part[len("interface="):] in _ALL_INTERFACES
    return True


def _is_loopback_name(host: str) -> bool:
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_warnings(
    config: ServerConfig,
    self_signed: bool,
    euid: int | None,
    dropping_to: Any = None,
) -> list[str]:
    """
    What an operator should know before the first client tries, one line each.

    Pure, so each warning is tested without a server: L{makeService} prints
    them on the console (the operator starting the server reads that) and
    logs them.

    @param self_signed: whether the certificate in use is self-signed.
    @param euid: the effective user id, or L{None} where there is none.
    @param dropping_to: twistd's C{--uid}, when twistd switches to it after
        binding.
    """
    warnings = []
    listeners = [config.ftp, config.ftps, config.http, config.https]
    everywhere = any(listens_on_all_interfaces(d) for d in listeners)
    if everywhere and _is_loopback_name(config.public_host):
        warnings.append(
            f"--public-host is {config.public_host} but the listeners accept "
            "connections on all interfaces: remote clients will be redirected to "
            f"{config.public_host} (the HTTP redirect, links, FTP hints) and will "
            "not reach this server. Set the name they use: --public-host "
            "files.example.com (or public-host in the --config file)"
        )
    if everywhere and self_signed:
        warnings.append(
            "the certificate is self-signed and the listeners accept connections "
            "on all interfaces: remote clients will have to turn certificate "
            "verification off (curl -k, lftp 'set ssl:verify-certificate no'), "
            "which also hides a man in the middle. Give a real certificate with "
            "--cert FILE --key FILE"
        )
    if euid == 0 and dropping_to is None:
        warnings.append(
            "running as root: a mistake in an account's home or in this server "
            "gives the client root's reach over the files. Drop root after binding "
            "with twistd's --uid/--gid (twistd -n --uid=rumpus --gid=rumpus "
            "rumpus-secure ...), or run under systemd with User= and "
            "AmbientCapabilities=CAP_NET_BIND_SERVICE (see the README)"
        )
    return warnings


def raise_open_file_limit(wanted: int = 65536) -> int:
    """
    Raise the soft limit on open files towards the hard limit.

    Every FTP session holds a control connection, often a passive listener
    and a data connection, and a file: the usual soft limit of 1024 runs
    out at a few hundred concurrent transfers.

    @returns: the soft limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def build_server(config: ServerConfig, reactor: Any, dropping_to: Any = None) -> Server:
    """
    Open the data directory, accounts, certificate and audit log.

    @param dropping_to: twistd's C{--uid}, if it switches to it after binding.
    """
    limit = raise_open_file_limit()
    if limit < 4096:
        _log.warn("only {limit} open files allowed: concurrent sessions are limited",
                  limit=limit)
    from twisted.cred.portal import Portal

    from rumpus_secure.accounts.checker import ArgonChecker, verify_thread_pool
    from rumpus_secure.accounts.store import AccountError, SQLiteAccountStore
    from rumpus_secure.exposure import build_exposure_guard
    from rumpus_secure.ftp.realm import FTPRealm
    from rumpus_secure.tls import TLSConfigError, TLSContextSource, ensure_certificate

    ensure_writable_dir(config.data_dir, "data directory")
    ensure_writable_dir(config.file_root, "file root")
    from rumpus_secure.vfs.paths import set_temp_node

    set_temp_node(config.node)
    database = None
    if config.database is not None:
        database, store = open_shared_store(config)
    else:
        try:
            store = SQLiteAccountStore(config.data_dir / "accounts.sqlite3",
                                       config.file_root)
        except AccountError as e:
            raise _fail(str(e)) from None
    forget_initial_password(store, config.data_dir)
    if database is not None:
        shared_bootstrap_admin(store, config.data_dir)
    else:
        bootstrap_admin(store, config.data_dir)
    cert, key = config.cert, config.key
    if config.acme_directory is not None:
        from rumpus_secure.acme.store import prepare_files

        cert, key, _ = prepare_files(config.data_dir, config.public_host)
    try:
        info = ensure_certificate(
            config.data_dir, config.public_host, cert, key,
            allow_expired=config.allow_expired,
        )
        tls = TLSContextSource(
            info.cert_path, info.key_path, public_host=config.public_host,
            allow_expired=config.allow_expired, clock=reactor,
            client_ca=config.client_ca,
        )
    except TLSConfigError as e:
        raise _fail(str(e)) from None
    _log.info(
        "certificate {subject}, SHA-256 {fingerprint}, valid until {not_after}",
        subject=info.subject, fingerprint=info.sha256_fingerprint,
        not_after=info.not_after.isoformat(),
    )
    # Logged once: under twistd -n the log is the console (a second copy
    # written to stdout was the same line twice).
    for warning in info.warnings:
        _log.warn("certificate: {warning}", warning=warning)
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    for warning in startup_warnings(config, info.self_signed, euid, dropping_to):
        _log.warn("{warning}", warning=warning)
    from rumpus_secure.audit import open_audit_log

    audit = open_audit_log(config.audit_log, config.data_dir, node=config.node)
    # Argon2id holds 19 MiB per verification: a pool of its own bounds that
    # memory and keeps a login burst from starving other thread work.
    cache = None
    if config.login_cache_time > 0:
        from rumpus_secure.accounts.verifier_cache import VerifierCache

        cache = VerifierCache(ttl=config.login_cache_time)
    checker = ArgonChecker(store, reactor, threadpool=verify_thread_pool(reactor),
                           cache=cache)
    # Login methods (password, cert, cert+password) before the password.
    from rumpus_secure.accounts.cert_checker import build_certificate_checker

    try:
        checker = build_certificate_checker(config, store, checker, reactor)
    except ValueError as e:
        raise _fail(str(e)) from None
    portal = Portal(FTPRealm(store), [checker])
    server = Server(config=config, store=store, checker=checker, portal=portal,
                    tls=tls, audit=audit, reactor=reactor)
    if database is not None:
        from rumpus_secure.db import db_thread_pool

        server.database = database
        server.db_pool = db_thread_pool(reactor)
    server.exposure = build_exposure_guard(server, reactor)
    server.guard = build_guard(server, reactor)
    from rumpus_secure.accounts.watch import build_watcher

    server.account_watcher = build_watcher(store, reactor)
    from rumpus_secure.accounts.snapshots import attach_snapshots

    attach_snapshots(checker, server.account_watcher)
    return server


def open_shared_store(config: ServerConfig) -> tuple[Any, Any]:
    """
    The shared database of C{--database} and its account store, or exit
    with one clear line (no psycopg, unreachable, schema behind, no
    certificate given).
    """
    from rumpus_secure.accounts.pg import PGAccountStore
    from rumpus_secure.db import Database, DatabaseError, StoreUnavailable, redact

    if config.cert is None:
        raise _fail(
            "--database is shared by several nodes: give every node the same "
            "certificate with --cert and --key (a self-signed one per node would "
            "change under the clients' feet from one connection to the next)")
    try:
        database = Database(config.database)
    except DatabaseError as e:
        raise _fail(str(e)) from None
    try:
        database.check_schema()
    except (DatabaseError, StoreUnavailable) as e:
        database.close()
        raise _fail(str(e)) from None
    _log.info("accounts, bans and web sessions in {database} (node {node})",
              database=redact(config.database), node=config.node)
    return database, PGAccountStore(database, config.file_root)


def shared_bootstrap_admin(store: Any, data_dir: Path, out: Any = None) -> str | None:
    """
    L{bootstrap_admin} for a shared database: at most one C{admin} however
    many nodes start at once (the database decides, under a lock); the node
    that made it prints the password and keeps it in its data directory.
    """
    stream = out if out is not None else sys.stdout
    password = secrets.token_urlsafe(15)
    if not store.bootstrap(BOOTSTRAP_ACCOUNT, password):
        return None
    saved = data_dir / INITIAL_PASSWORD_FILE
    _write_private(saved, password + "\n")
    stream.write(
        "\n"
        f"  First run: created account '{BOOTSTRAP_ACCOUNT}' with password:\n"
        f"      {password}\n"
        f"  It is also in {saved.absolute()} (readable only by this user)\n"
        "  until you change it with:\n"
        f"      rumpus-secure --database URL user passwd {BOOTSTRAP_ACCOUNT}\n"
        "\n"
    )
    stream.flush()
    return password


class StaleUploadCleanup(service.Service):
    """
    At start-up, remove the temporary files of uploads that an earlier run
    left behind when it stopped in the middle (L{rumpus_secure.vfs.cleanup}),
    in a thread, while the server already serves.

    @ivar done: fires with the L{CleanupResult} (for tests).
    """

    name = "stale-upload-cleanup"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.done: defer.Deferred[Any] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        started = time.time()
        self.server.reactor.callWhenRunning(self._run, started)

    def _run(self, started: float) -> None:
        from rumpus_secure.vfs.cleanup import remove_stale_uploads

        server = self.server

        def clean() -> Any:
            roots = [server.config.file_root]
            roots.extend(account.home for account in server.store.list())
            # Nodes sharing a folder: only this node's leftovers.
            return remove_stale_uploads(
                roots, started, node=getattr(server.config, "node", None),
                legacy=getattr(server, "database", None) is None)

        def report(result: Any) -> Any:
            if result.files:
                _log.info("removed {files} partial upload(s) ({bytes} bytes) left by an "
                          "earlier run", files=result.files, bytes=result.bytes)
            if result.errors:
                _log.warn("{errors} error(s) while looking for partial uploads left by "
                          "an earlier run", errors=result.errors)
            return result

        def failed(failure: Any) -> None:
            _log.failure("could not look for partial uploads left by an earlier run",
                         failure)

        d = server.run_in_thread(clean).addCallback(report)
        d.addErrback(failed)
        d.chainDeferred(self.done)


def build_guard(server: Server, reactor: Any) -> Any:
    """
    The abuse guard, with the bans stored in the account database.

    Loading the bans blocks; this runs in makeService, before the reactor.
    """
    from rumpus_secure.accounts.bans import SQLiteBanStore
    from rumpus_secure.guard import Guard, GuardSettings

    if server.database is not None:
        from rumpus_secure.accounts.pg import PGBanStore

        bans: Any = PGBanStore(server.database)
        run = server.run_in_db
    else:
        bans, run = SQLiteBanStore(server.store.path), server.run_in_thread
    guard = Guard(
        # As many verifications at once as the pool has threads: the guard
        # picks the order, fairly (rumpus_secure.guard, Guard._schedule).
        GuardSettings.from_config(server.config,
                                  verify_slots=getattr(server.checker, "slots", 0)),
        reactor,
        store=bans, audit=server.audit, run_in_thread=run,
    )
    active = guard.load()
    if active:
        _log.info("{count} address ban(s) still active", count=active)
    return guard


def freeze_startup_heap() -> None:
    """
    Move what start-up built (modules, classes, contexts: some 300,000
    objects) out of the cyclic garbage collector's sight (C{gc.freeze}).

    Each full collection walked them all again, and a busy server makes one
    every few hundred logins: the collector was 1.6% of a warm repeat
    login's instructions (callgrind).  Objects made later are collected as
    before; a frozen object that becomes cyclic garbage (after a reload,
    say) is not reclaimed, which is a bounded loss.
    """
    import gc

    gc.collect()
    gc.freeze()


def makeService(options: Any, reactor: Any = None) -> service.MultiService:
    """
    Build the whole server as one L{MultiService}.

    @param options: L{Options} (from twistd), a L{ServerConfig}, or a mapping
        of option names to values (from a ``.tac`` file).
    @param reactor: the reactor to listen with; the global one by default.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = _as_config(options)
    twistd_options = getattr(options, "parent", None)
    dropping_to = twistd_options.get("uid") if hasattr(twistd_options, "get") else None
    server = build_server(config, reactor, dropping_to)

    from rumpus_secure.ftp.factory import build_ftp_factory
    from rumpus_secure.sniff import wrap_https, wrap_implicit_ftps, wrap_plain_http
    from rumpus_secure.wrong_port_credentials import (
        ftp_credentials,
        http_credentials,
        watch_wrong_port,
    )
    from rumpus_secure.web.redirect import build_http_site
    from rumpus_secure.web.sessions import SessionKeeper
    from rumpus_secure.web.site import build_https_site

    top = service.MultiService()
    top.setName(_PROG)
    top.server = server  # type: ignore[attr-defined]

    # Started before the listeners: its start time is older than any
    # upload this process makes.
    StaleUploadCleanup(server).setServiceParent(top)
    server.ftp_factory = ftp_factory = build_ftp_factory(server, reactor)
    if config.ftp:
        ListenerService(
            "ftp", config.ftp,
            _ftp_endpoint(reactor, "ftp", config.ftp, config.trusted_proxies),
            ftp_factory.plain(),
        ).setServiceParent(top)
    if config.ftps:
        implicit = wrap_implicit_ftps(
            server.tls.wrap_factory(ftp_factory.implicit(), [b"ftp"], reactor,
                                    handshake_timeout=config.handshake_timeout,
                                    per_session=True),
            config, reactor,
        )
        implicit.observers.append(watch_wrong_port(server, "ftp", ftp_credentials))
        ListenerService(
            "ftps", config.ftps,
            _ftp_endpoint(reactor, "ftps", config.ftps, config.trusted_proxies),
            implicit,
        ).setServiceParent(top)
    if config.https:
        sessions_db: Any = server.store.path
        if server.database is not None:
            from rumpus_secure.accounts.pg import PGSessions

            sessions_db = PGSessions(server.database)  # valid on every node
        server.https_site = build_https_site(server, reactor, sessions_db=sessions_db)
        # Logged-in browsers stay logged in across a restart.
        SessionKeeper(server.https_site.app.sessions, reactor).setServiceParent(top)
        server.https_site.timeOut = config.http_timeout
        https = wrap_https(
            server.tls.wrap_factory(server.https_site, [b"http/1.1"], reactor,
                                    handshake_timeout=config.handshake_timeout),
            config, reactor,
        )
        https.observers.append(watch_wrong_port(server, "http", http_credentials))
        ListenerService(
            "https", config.https, _endpoint(reactor, "https", config.https, config.trusted_proxies),
            https,
        ).setServiceParent(top)
    if config.http:
        server.http_site = build_http_site(server, reactor)
        server.http_site.timeOut = config.http_timeout
        ListenerService(
            "http", config.http, _endpoint(reactor, "http", config.http, config.trusted_proxies),
            wrap_plain_http(server.http_site, config, reactor),
        ).setServiceParent(top)
    ListenerRecord(
        config, [child for child in top if isinstance(child, ListenerService)],
    ).setServiceParent(top)
    from rumpus_secure.guard import SYNC_INTERVAL
    from rumpus_secure.reload import ReloadService

    if server.database is not None:
        from rumpus_secure.shared import install as install_shared

        # Bans, lifts, sessions and account changes of every node, within
        # milliseconds (LISTEN/NOTIFY), with an incremental read as fallback.
        install_shared(top, server, reactor)
    else:
        # Bans lifted with the admin command reach the running server.
        ban_sync = TimerService(SYNC_INTERVAL, server.guard.sync)
        ban_sync.clock = reactor
        ban_sync.setServiceParent(top)
    from rumpus_secure.accounts.watch import POLL_INTERVAL

    # Account changes (admin command, quarantine) reach open FTP sessions.
    account_watch = TimerService(POLL_INTERVAL, server.account_watcher.poll)
    account_watch.clock = reactor
    account_watch.setServiceParent(top)
    ReloadService(
        server.tls, reactor, config.cert_check_interval,
        audit=server.audit, reactor=reactor,
    ).setServiceParent(top)
    install_observability(server, top, reactor)
    from rumpus_secure.acme.assembly import install_acme

    install_acme(server, top, reactor)
    reactor.callWhenRunning(freeze_startup_heap)
    return top


def install_observability(server: Server, top: service.MultiService, reactor: Any) -> None:
    """
    The transfer console line, ``--xferlog``, ``--metrics``, and quiet factories.

    All of it hangs off the audit stream and the assembled services
    (L{rumpus_secure.xferlog}, L{rumpus_secure.metrics}); no protocol is
    changed for it.  Factories are made quiet: Twisted's "Starting factory
    <... object at 0x...>" line per listener says nothing an operator can
    use; "ftp listening on ..." says it.
    """
    from rumpus_secure.web.site import hide_server_version
    from rumpus_secure.xferlog import install as install_transfer_logs

    config = server.config
    if config.xferlog is not None:
        try:
            with open(config.xferlog, "a"):
                pass
        except OSError as e:
            raise _fail(f"--xferlog {config.xferlog} cannot be written: "
                        f"{e.strerror or e}") from None
    install_transfer_logs(server.audit, config.xferlog)
    hide_server_version()
    if config.metrics:
        from rumpus_secure.metrics import build_metrics, metrics_site

        server.metrics = build_metrics(server, top, reactor)
        ListenerService(
            "metrics", config.metrics, _endpoint(reactor, "metrics", config.metrics, config.trusted_proxies),
            metrics_site(server.metrics, reactor),
        ).setServiceParent(top)
    for child in top:
        factory = getattr(child, "factory", None)
        while factory is not None:
            factory.noisy = False
            factory = getattr(factory, "wrappedFactory", None)
