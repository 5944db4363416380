"""
The ``rumpus-secure`` admin command.

::

    rumpus-secure [--config FILE] [--data-dir DIR] [--root DIR] init
    rumpus-secure [--config FILE] [--data-dir DIR] [--root DIR] user add NAME ...
    rumpus-secure ... user passwd|list|2fa|lock|unlock|del|perms ...
    rumpus-secure ... audit [--since WHEN] [--json]
    rumpus-secure ... check [SERVER OPTIONS] [--host ADDR] [--strict]
    rumpus-secure ... ban list|lift ADDRESS
    rumpus-secure --database URL db migrate
    rumpus-secure db copy --from sqlite:PATH --to postgresql://...

It works on the same files as the running server: give it the server's
``--config`` (or set ``RUMPUS_SECURE_CONFIG``, which the server reads too, or
give the same ``--data-dir``/``--root``) and changes take effect without a
restart: every account write is logged in the store's change log
(L{rumpus_secure.accounts.store}), which the running server reads before
each FTP command, so a lock, delete or new password also ends open sessions.
Every command refuses a data directory without an accounts database, saying
where it looked: run in the wrong folder, ``user add`` used to create a
second, empty database that the running server never read.  Only the
server's first start or ``rumpus-secure init`` creates one.

Adding a subcommand is one function that takes the subparsers object, adds
its parser and sets C{handler} with C{set_defaults}, plus one line in
L{COMMANDS}.  A handler gets the parsed arguments and a L{Context} and
returns the exit status; it reports refusals by raising L{CliError} (or
L{AccountError} or L{ConfigError}), which L{main} turns into one line on
stderr: ``rumpus-secure: error: ...``.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from rumpus_secure.accounts.store import (
    ALL_PERMISSIONS,
    DATABASE_NAME,
    PERMISSION_ORDER,
    AccountError,
    SQLiteAccountStore,
    check_name,
    format_permissions,
    parse_permissions,
)
from rumpus_secure.config import (
    CONFIG_ENV,
    OPTIONS,
    ConfigError,
    ServerConfig,
    build_config,
    config_file,
)

PROG = "rumpus-secure"
GENERATED_PASSWORD_BYTES = 15  # 20 URL-safe characters


class CliError(Exception):
    """
    A refusal; the message is one line for a person.
    """


@dataclass(frozen=True)
class Context:
    """
    What every subcommand needs: the configuration and the standard streams.
    """

    config: ServerConfig
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO

    def say(self, text: str) -> None:
        """
        Print one line on stdout.
        """
        print(text, file=self.stdout)

    def open_store(self, create: bool = False) -> Any:
        """
        The account store in the data directory, or in the shared database
        of C{--database}.

        @param create: create the data directory and database if missing;
            otherwise a missing database is an error (most likely a wrong
            C{--data-dir}), not an empty one quietly created somewhere.
        """
        data_dir = self.config.data_dir
        if self.config.database is not None:
            from rumpus_secure.accounts.pg import PGAccountStore

            return PGAccountStore(self.shared_database(), self.config.file_root)
        if not create:
            self.require_database()
        return SQLiteAccountStore.in_data_dir(data_dir, self.config.file_root)

    def shared_database(self, check: bool = True) -> Any:
        """
        The C{--database} (PostgreSQL), its schema checked unless told not to.
        """
        from rumpus_secure.db import Database

        assert self.config.database is not None
        database = Database(self.config.database, size=2)
        _opened.append(database)
        if check:
            database.check_schema()
        return database

    def require_database(self) -> Path:
        """
        The accounts database's path, or a L{CliError} that says where we looked.
        """
        database = self.config.data_dir / DATABASE_NAME
        if not database.is_file():
            raise CliError(
                f"no accounts database at {database.absolute()}: give the "
                f"server's --config (or set {CONFIG_ENV}) or its --data-dir; "
                "the server's first start or 'rumpus-secure init' creates one"
            )
        return database

    def password_policy(self) -> Any:
        from rumpus_secure.accounts.policy import PasswordPolicy

        return PasswordPolicy(min_length=self.config.password_min_length)


Handler = Callable[[argparse.Namespace, Context], int]

#: Shared databases a command opened; L{main} closes them at the end.
_opened: list[Any] = []


# -- user -------------------------------------------------------------------


def _add_password_options(parser: argparse.ArgumentParser) -> None:
    """
    ``--password-stdin`` and ``--generate-password``, one or neither.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from one line of standard input",
    )
    group.add_argument(
        "--generate-password", action="store_true",
        help="generate a random password and print it once",
    )


def _read_password(args: argparse.Namespace, context: Context) -> tuple[str, bool]:
    """
    The new password, and whether it was generated (so it must be shown).
    """
    if args.generate_password:
        return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES), True
    policy = context.password_policy()
    if args.password_stdin:
        line = context.stdin.readline()
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        if not line:
            raise CliError("empty password on standard input")
        policy.check(line, args.name)
        return line, False
    try:
        first = getpass.getpass(f"Password for {args.name}: ")
        if not first:
            raise CliError("empty password")
        # Before the second prompt: nobody types a refused password twice.
        policy.check(first, args.name)
        second = getpass.getpass("Same password again: ")
    except EOFError:
        raise CliError("no password given (use --password-stdin in scripts)") from None
    if first != second:
        raise CliError("the two passwords do not match; nothing changed")
    return first, False


def _user_add(args: argparse.Namespace, context: Context) -> int:
    """
    ``user add``: create an account and its home directory.
    """
    perms = None
    if args.perms is not None:
        perms = parse_permissions(args.perms)
        if not perms:
            raise CliError(
                "--perms needs at least one of " + ",".join(PERMISSION_ORDER)
            )
    check_name(args.name)
    store = context.open_store()
    home = _checked_home(args, context)
    # Checked before asking for a password so nobody types it twice for
    # nothing; add() still refuses duplicates on its own.
    for existing in store.list():
        if existing.name.lower() == args.name.lower():
            raise AccountError(f"an account named {existing.name!r} already exists")
    password, generated = _read_password(args, context)
    account = store.add(args.name, password, home=home, perms=perms,
                        require_2fa=args.require_2fa)
    if getattr(args, "auth", "password") != "password":
        _client_certs(context).set_auth_mode(account.name, args.auth)
        context.say(f"account {account.name} logs in with: {args.auth}")
    context.say(
        f"added account {account.name}, home {_show_home(account.home, context)}, "
        f"permissions {_show_perms(account.perms)}"
        + ("; two-factor login required (set up at the first web login)"
           if args.require_2fa else "")
    )
    if generated:
        context.say(f"generated password (shown only now): {password}")
    return 0


def _outside_root(home: Path, context: Context) -> bool:
    """
    Whether C{home} lies outside the file root (symbolic links followed).
    """
    root = context.config.file_root.expanduser().resolve()
    return not home.expanduser().resolve().is_relative_to(root)


def _show_home(home: Path, context: Context) -> str:
    if _outside_root(home, context):
        return f"{home} (outside root)"
    return str(home)


def _checked_home(args: argparse.Namespace, context: Context) -> str | None:
    """
    The C{--home} to create, refused outside C{--root} without
    C{--allow-outside-root}.

    A home is everything its user may read and, with the permissions,
    write: C{--home /etc} with the server running as root served
    C{/etc/shadow}.
    """
    if args.home is None or args.home == "":
        return args.home
    home = Path(args.home).expanduser()
    if not home.is_absolute():
        home = context.config.file_root / home
    if _outside_root(home, context) and not args.allow_outside_root:
        raise CliError(
            f"home {args.home} is outside the file root "
            f"{context.config.file_root.absolute()}; the account could read "
            "(and write) everything the server can there. Give "
            "--allow-outside-root if that is what you mean"
        )
    return args.home


def initial_password_file(data_dir: Path) -> Path:
    """
    Where the server's first start leaves the admin password.
    """
    from rumpus_secure.tap import INITIAL_PASSWORD_FILE

    return data_dir / INITIAL_PASSWORD_FILE


def _forget_initial_password(name: str, context: Context) -> None:
    """
    Delete the first-start password file once the admin no longer uses it.
    """
    from rumpus_secure.tap import BOOTSTRAP_ACCOUNT

    path = initial_password_file(context.config.data_dir)
    if name.lower() == BOOTSTRAP_ACCOUNT and path.exists():
        path.unlink()
        context.say(f"removed {path}: the first-start password is no longer valid")


def _user_passwd(args: argparse.Namespace, context: Context) -> int:
    """
    ``user passwd``: set a new password, which also unlocks the account.
    """
    store = context.open_store()
    before = store.get(args.name)
    if before is None:
        raise AccountError(f"no account named {args.name!r}")
    password, generated = _read_password(args, context)
    store.set_password(args.name, password)
    context.say(f"password of {args.name} changed")
    _forget_initial_password(args.name, context)
    if before.locked:
        context.say(f"account {args.name} unlocked (was locked: {before.lock_reason})")
    if generated:
        context.say(f"generated password (shown only now): {password}")
    return 0


def _show_perms(perms: frozenset[str]) -> str:
    """
    Permissions for people: ``all``, ``none`` or the names in order.
    """
    if perms == ALL_PERMISSIONS:
        return "all"
    return format_permissions(perms) or "none"


def _user_list(args: argparse.Namespace, context: Context) -> int:
    """
    ``user list``: a table of every account.
    """
    accounts = context.open_store().list()
    if not accounts:
        context.say("no accounts")
        return 0
    store = context.open_store()
    rows = [("NAME", "HOME", "PERMS", "2FA", "LOCKED")]
    for a in accounts:
        locked = f"yes: {a.lock_reason}" if a.locked else "no"
        rows.append((a.name, _show_home(a.home, context), _show_perms(a.perms),
                     _show_2fa(store.two_factor(a.name)), locked))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        context.say("  ".join([*cells, row[4]]))
    return 0


def _show_2fa(row: Any) -> str:
    """
    ``on``, ``required`` (must enrol at the next web login) or ``off``.
    """
    if row is None:
        return "off"
    if row.secret is not None:
        return "on"
    return "required" if row.required else "off"


def _user_2fa(args: argparse.Namespace, context: Context) -> int:
    """
    ``user 2fa require|reset NAME``: require two-factor login, or forget the
    account's secret and recovery codes so the next web login enrols again.
    """
    store = context.open_store()
    if store.get(args.name) is None:
        raise AccountError(f"no account named {args.name!r}")
    if args.what == "require":
        store.set_two_factor_required(args.name, True)
        context.say(f"account {args.name}: two-factor login required; its password "
                    "alone no longer works (web: it enrols at the next login; FTP: "
                    "app passwords over FTPS only)")
    else:
        store.reset_two_factor(args.name)
        context.say(f"account {args.name}: two-factor login reset; the next web "
                    "login sets it up again (app passwords are kept)")
    return 0


def _user_lock(args: argparse.Namespace, context: Context) -> int:
    """
    ``user lock``: lock an account with a reason.
    """
    context.open_store().lock(args.name, args.reason)
    context.say(f"account {args.name} locked")
    return 0


def _user_unlock(args: argparse.Namespace, context: Context) -> int:
    """
    ``user unlock``: unlock an account.
    """
    context.open_store().unlock(args.name)
    context.say(f"account {args.name} unlocked")
    return 0


def _user_del(args: argparse.Namespace, context: Context) -> int:
    """
    ``user del``: delete an account, keeping its home directory.
    """
    store = context.open_store()
    account = store.get(args.name)
    if account is None:
        raise AccountError(f"no account named {args.name!r}")
    store.delete(args.name)
    context.say(
        f"account {args.name} deleted; its home directory {account.home} "
        "was left in place"
    )
    _forget_initial_password(args.name, context)
    return 0


def _user_perms(args: argparse.Namespace, context: Context) -> int:
    """
    ``user perms``: replace an account's permissions.

    Open sessions follow at once: an FTP session hears of it through the
    account watcher (its next command obeys the new set; a transfer already
    running finishes), a web session reads the account afresh for every
    request.
    """
    text = args.perms.strip()
    perms = ALL_PERMISSIONS if text.lower() == "all" else parse_permissions(text)
    if not perms:
        raise CliError("LIST needs at least one of " + ",".join(PERMISSION_ORDER)
                       + " (or 'all'); to shut an account out, use 'user lock'")
    store = context.open_store()
    if store.get(args.name) is None:
        raise AccountError(f"no account named {args.name!r}")
    store.set_perms(args.name, perms)
    context.say(f"account {args.name}: permissions {_show_perms(frozenset(perms))}")
    return 0


def add_user_command(subparsers: Any) -> None:
    """
    ``user add|passwd|list|2fa|lock|unlock|del|perms``: manage accounts.
    """
    user = subparsers.add_parser("user", help="manage accounts")
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="create an account and its home directory")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--home", metavar="PATH", default=None,
        help="home directory [default: ROOT/NAME]; absolute, or relative to ROOT",
    )
    add.add_argument(
        "--allow-outside-root", action="store_true",
        help="accept a --home outside ROOT (the account can read everything "
        "the server can there)",
    )
    add.add_argument(
        "--perms", metavar="LIST", default=None,
        help="comma-separated permissions from: "
        + ",".join(PERMISSION_ORDER) + " [default: all]",
    )
    add.add_argument(
        "--require-2fa", action="store_true",
        help="require two-factor login: the first web login sets it up; FTP "
        "then takes app passwords over FTPS only",
    )
    _add_password_options(add)
    add.set_defaults(handler=_user_add)

    passwd = actions.add_parser(
        "passwd", help="set a new password (also unlocks the account)"
    )
    passwd.add_argument("name", metavar="NAME")
    _add_password_options(passwd)
    passwd.set_defaults(handler=_user_passwd)

    listing = actions.add_parser("list", help="show every account")
    listing.set_defaults(handler=_user_list)

    factor = actions.add_parser(
        "2fa", help="require two-factor login, or reset it (forces a new set-up)")
    factor.add_argument("what", choices=("require", "reset"), metavar="require|reset")
    factor.add_argument("name", metavar="NAME")
    factor.set_defaults(handler=_user_2fa)

    lock = actions.add_parser("lock", help="lock an account")
    lock.add_argument("name", metavar="NAME")
    lock.add_argument("--reason", metavar="TEXT", required=True,
                      help="why; shown to the user after a right password")
    lock.set_defaults(handler=_user_lock)

    unlock = actions.add_parser("unlock", help="unlock an account")
    unlock.add_argument("name", metavar="NAME")
    unlock.set_defaults(handler=_user_unlock)

    delete = actions.add_parser(
        "del", help="delete an account (its home directory is kept)"
    )
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=_user_del)
    _add_certificate_actions(actions, add)


# -- user cert / user auth ----------------------------------------------------


def _client_certs(context: Context) -> Any:
    from rumpus_secure.accounts.client_certs import client_cert_store

    return client_cert_store(context.open_store())


def _user_cert_add(args: argparse.Namespace, context: Context) -> int:
    """
    ``user cert add NAME --cert FILE``: bind a certificate to an account.
    """
    try:
        data = Path(args.client_cert_file).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {args.client_cert_file}: {e.strerror}") from None
    binding = _client_certs(context).add(args.name, data)
    context.say(f"bound certificate {binding.fingerprint} ({binding.subject}) "
                f"to account {binding.name}")
    if binding.not_after < time.time():
        context.say("note: this certificate has expired: it is bound, but refused "
                    "at login")
    mode = _client_certs(context).auth_mode(args.name)
    if mode == "password":
        context.say(f"account {args.name} still logs in with its password only: "
                    f"'{PROG} user auth {args.name} cert' (or cert+password) "
                    "makes it use the certificate")
    return 0


def _user_cert_list(args: argparse.Namespace, context: Context) -> int:
    """
    ``user cert list [NAME]``: the bound certificates.
    """
    certs = _client_certs(context)
    bindings = certs.list(args.name)
    if not bindings:
        context.say("no certificates bound")
        return 0
    now = time.time()
    for b in bindings:
        expiry = time.strftime("%Y-%m-%d", time.gmtime(b.not_after))
        state = "EXPIRED " if b.not_after < now else ""
        context.say(f"{b.name}  {certs.auth_mode(b.name)}  {b.fingerprint}  "
                    f"{state}until {expiry}  {b.subject}")
    return 0


def _user_cert_del(args: argparse.Namespace, context: Context) -> int:
    """
    ``user cert del NAME FINGERPRINT``: unbind a certificate.
    """
    binding = _client_certs(context).delete(args.name, args.fingerprint)
    context.say(f"removed certificate {binding.fingerprint} from account {args.name}")
    return 0


def _user_auth(args: argparse.Namespace, context: Context) -> int:
    """
    ``user auth NAME password|cert|cert+password``: the login method.
    """
    certs = _client_certs(context)
    if args.mode is None:
        if context.open_store().get(args.name) is None:
            raise AccountError(f"no account named {args.name!r}")
        bound = len(certs.list(args.name))
        context.say(f"account {args.name} logs in with: {certs.auth_mode(args.name)} "
                    f"({bound} certificate(s) bound)")
        return 0
    certs.set_auth_mode(args.name, args.mode)
    context.say(f"account {args.name} now logs in with: {args.mode}")
    if args.mode != "password" and not certs.list(args.name):
        context.say(f"note: no certificate is bound to {args.name} yet: "
                    f"'{PROG} user cert add {args.name} --cert FILE'")
    if args.mode != "password" and context.config.client_ca is None:
        context.say("note: the server needs --client-ca to ask clients for "
                    "certificates")
    return 0


def _add_certificate_actions(actions: Any, add: argparse.ArgumentParser) -> None:
    """
    ``user cert add|list|del``, ``user auth`` and ``user add --auth``.
    """
    from rumpus_secure.accounts.client_certs import AUTH_MODES

    add.add_argument("--auth", choices=AUTH_MODES, default="password",
                     help="how the account logs in [default: password]")
    cert = actions.add_parser("cert", help="bind client certificates to accounts")
    cert_actions = cert.add_subparsers(dest="cert_action", metavar="ACTION",
                                       required=True)
    cert_add = cert_actions.add_parser("add", help="bind a certificate to an account")
    cert_add.add_argument("name", metavar="NAME")
    # dest: not "cert", which is the server's own --cert option for _config.
    cert_add.add_argument("--cert", metavar="FILE", required=True,
                          dest="client_cert_file",
                          help="the client certificate (PEM or DER)")
    cert_add.set_defaults(handler=_user_cert_add)
    cert_list = cert_actions.add_parser("list", help="show bound certificates")
    cert_list.add_argument("name", metavar="NAME", nargs="?", default=None)
    cert_list.set_defaults(handler=_user_cert_list)
    cert_del = cert_actions.add_parser("del", help="unbind a certificate")
    cert_del.add_argument("name", metavar="NAME")
    cert_del.add_argument("fingerprint", metavar="FINGERPRINT",
                          help="its SHA-256 fingerprint, or its first 8+ hex digits")
    cert_del.set_defaults(handler=_user_cert_del)
    auth = actions.add_parser("auth", help="set how an account logs in")
    auth.add_argument("name", metavar="NAME")
    auth.add_argument("mode", choices=AUTH_MODES, metavar="|".join(AUTH_MODES),
                      nargs="?", default=None,
                      help="the new login method; leave out to show the current one")
    auth.set_defaults(handler=_user_auth)

    perms = actions.add_parser(
        "perms", help="replace an account's permissions (open sessions follow)"
    )
    perms.add_argument("name", metavar="NAME")
    perms.add_argument(
        "perms", metavar="LIST",
        help="comma-separated permissions from: " + ",".join(PERMISSION_ORDER)
        + ", or 'all'",
    )
    perms.set_defaults(handler=_user_perms)


# -- audit ------------------------------------------------------------------


def _since(text: str) -> Any:
    from rumpus_secure.report import parse_since

    try:
        return parse_since(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _audit(args: argparse.Namespace, context: Context) -> int:
    """
    ``audit``: the report from the audit log (and its rotated files).
    """
    import json

    from rumpus_secure.report import as_json, build_report, format_text

    sources = _audit_sources(args.files, context) if args.files else None
    # A wrong --data-dir is an error, not "No audit log yet" and status 0;
    # with files named, the account state is shown only if a store is there.
    store: Any = None
    if sources is None or context.config.database is not None or (
            context.config.data_dir / DATABASE_NAME).is_file():
        store = context.open_store()

    def account_locked(name: str) -> bool | None:
        account = store.get(name)
        return None if account is None else account.locked

    report = build_report(
        _audit_path(context), since=args.since,
        account_locked=account_locked if store is not None else None,
        sources=sources,
    )
    if args.json:
        context.stdout.write(json.dumps(as_json(report), indent=2) + "\n")
    else:
        context.stdout.write(format_text(report))
    return 0


def _audit_path(context: Context) -> Path:
    configured = context.config.audit_log
    if configured is None or str(configured) == "-":
        return context.config.data_dir / "audit.log"
    return configured


def _audit_sources(files: list[str], context: Context) -> list[tuple[str, Any]]:
    """
    The events of each file named (with its rotated files), ``-`` being
    standard input, for a merged report.
    """
    from rumpus_secure.audit import read_events, read_lines

    sources = []
    for name in files:
        if name == "-":
            sources.append(("stdin", read_lines(context.stdin)))
            continue
        path = Path(name)
        if not path.exists():
            raise CliError(f"no audit log at {path.absolute()}")
        sources.append((name, read_events(path)))
    return sources


def add_audit_command(subparsers: Any) -> None:
    """
    ``audit [--since WHEN] [--json]``: what the audit log says.
    """
    audit = subparsers.add_parser(
        "audit", help="report from the audit log: cleartext clients, exposed "
        "passwords, bans, failed logins",
    )
    audit.add_argument(
        "--since", metavar="WHEN", type=_since, default=None,
        help="only events since WHEN: a UTC date/time (2025-03-01, "
        "2025-03-01T08:00) or an age (90m, 24h, 7d, 2w)",
    )
    audit.add_argument("--json", action="store_true",
                       help="machine-readable output with the same content")
    audit.add_argument(
        "files", nargs="*", metavar="FILE",
        help="audit logs to merge into one report (several nodes' files; - reads "
        "JSON lines from standard input, e.g. journalctl -o cat -u rumpus-secure) "
        "[default: the server's --audit-log]")
    audit.set_defaults(handler=_audit)


# -- check ------------------------------------------------------------------


def _check(args: argparse.Namespace, context: Context) -> int:
    """
    ``check``: probe the running server's listeners like an outside client.
    """
    from rumpus_secure.selfcheck import (
        exit_status,
        format_results,
        recorded_config,
        run_checks,
    )

    config = context.config
    given = [o.name for o in OPTIONS if o.name not in ("data-dir", "root")
             and getattr(args, o.attribute, None) is not None]
    if not given:
        # No server options: check the server running on this data directory
        # as it recorded itself, not the default ports.
        recorded = recorded_config(config.data_dir)
        if recorded is not None:
            config = recorded.config
            context.say(f"Checking the server recorded in {recorded.path} "
                        f"(pid {recorded.pid}, started {recorded.started})")
            if recorded.running() is False:
                context.say(f"Note: process {recorded.pid} is not running; the "
                            "record is from a server that did not stop cleanly")
    results = run_checks(config, host=args.host)
    context.stdout.write(format_results(results))
    return exit_status(results, strict=args.strict)


def add_check_command(subparsers: Any) -> None:
    """
    ``check``: the server's own options, then probes of its ports.

    Every server option is accepted with the same name (and read from the
    same ``--config`` file), so the check is run with the server's own
    command line; each lands in L{Context.config}.  With none of them, the
    check probes what the server running on the data directory recorded in
    ``DATA-DIR/listeners.json``.
    """
    check = subparsers.add_parser(
        "check", help="probe the running server's ports from outside: TLS "
        "required, versions, ALPN, redirect, HSTS, certificate",
        description="With no options, checks the server running on the data "
        "directory (it records its listeners there). Takes the same options as "
        "'twistd rumpus-secure'; exit status 0 when no check failed.",
    )
    check.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="the server's TOML configuration",
    )
    for option in OPTIONS:
        check.add_argument(
            f"--{option.name}", dest=option.attribute, metavar=option.metavar,
            default=argparse.SUPPRESS, help=option.help,
        )
    check.add_argument(
        "--host", metavar="ADDR", default=None,
        help="address to connect to [default: each listener's interface, "
        "or 127.0.0.1 / ::1]",
    )
    check.add_argument("--strict", action="store_true",
                       help="warnings fail the check too (exit status 1)")
    check.set_defaults(handler=_check)


# -- ban --------------------------------------------------------------------


def _ban_store(context: Context) -> Any:
    from rumpus_secure.accounts.bans import SQLiteBanStore

    if context.config.database is not None:
        from rumpus_secure.accounts.pg import PGBanStore

        # Deleting the row notifies every node: the lift applies at once.
        return PGBanStore(context.shared_database())

    return SQLiteBanStore(context.require_database())


def _ban_list(args: argparse.Namespace, context: Context) -> int:
    """
    ``ban list``: the addresses banned now, soonest to end first.
    """
    import time

    from rumpus_secure.guard import iso_utc

    now = time.time()
    # load(now): the bans that end after now, i.e. the active ones.
    active = sorted(_ban_store(context).load(now), key=lambda b: b.until)
    if not active:
        context.say("no address is banned")
        return 0
    from rumpus_secure.report import table

    context.say("\n".join(table(
        ("ADDRESS", "BANNED UNTIL (UTC)", "TIME LEFT", "BAN", "REASON"),
        ((b.address, iso_utc(b.until)[:19].replace("T", " "),
          human_duration(b.until - now), _ban_ordinal(b.level), b.reason)
         for b in active),
    )))
    return 0


def human_duration(seconds: float) -> str:
    """
    A duration for people: ``45 s``, ``14 min``, ``2 h 5 min``, ``3 d 4 h``.
    """
    seconds = max(0, int(seconds + 0.5))
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 59) // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _ban_ordinal(level: int) -> str:
    """
    Which ban this is in a row: level 0 is the first, each later one doubled.
    """
    number = level + 1
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(
        number % 10, "th")
    return "first" if number == 1 else f"{number}{suffix} (time x{2 ** level})"


def _ban_lift(args: argparse.Namespace, context: Context) -> int:
    """
    ``ban lift ADDRESS``: end a ban now and forget the address's history.
    """
    import ipaddress

    from rumpus_secure.guard import SYNC_INTERVAL, normalise_address

    try:
        ipaddress.ip_address(args.address.split("%", 1)[0])
    except ValueError:
        raise CliError(
            f"{args.address!r} is not an IP address; 'ban lift' takes an "
            "address as 'ban list' shows it, such as 192.0.2.7 or 2001:db8::1"
        ) from None
    address = normalise_address(args.address)
    if not _ban_store(context).delete(address):
        raise CliError(f"{address} is not banned")
    context.say(f"ban on {address} lifted; a running server lets it in again "
                f"within {SYNC_INTERVAL:.0f} seconds")
    return 0


def add_ban_command(subparsers: Any) -> None:
    """
    ``ban list|lift``: see and lift the guard's address bans.
    """
    ban = subparsers.add_parser("ban", help="list or lift address bans")
    actions = ban.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show the addresses banned now")
    listing.set_defaults(handler=_ban_list)
    lift = actions.add_parser("lift", help="let a banned address in again")
    lift.add_argument("address", metavar="ADDRESS")
    lift.set_defaults(handler=_ban_lift)


# -- share ------------------------------------------------------------------


def _share_store(context: Context) -> Any:
    from rumpus_secure.shares import SQLiteShareStore

    if context.config.database is not None:
        from rumpus_secure.accounts.pg import PGShareStore

        return PGShareStore(context.shared_database())
    return SQLiteShareStore(context.require_database())


def _share_list(args: argparse.Namespace, context: Context) -> int:
    """
    ``share list [--owner NAME]``: every link, its state and its use.
    """
    import time

    store = _share_store(context)
    shares = store.list(args.owner)
    if not shares:
        context.say("no share links")
        return 0
    now = time.time()
    rows = [("ID", "OWNER", "KIND", "STATE", "EXPIRES", "USED", "LAST USED", "PATH")]
    for share in shares:
        used = str(share.uses) + (f"/{share.max_uses}" if share.max_uses else "")
        rows.append((share.id, _printable(share.owner), share.kind, share.state(now),
                     _utc(share.expires), used,
                     _utc(share.last_used) if share.last_used else "never",
                     _printable(share.path)))
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        context.say("  ".join([*cells, row[7]]))
    if args.events:
        for share in shares:
            for event in store.events(share.id, limit=args.events):
                context.say(f"{share.id}  {_utc(event.at)}  "
                            f"{_printable(event.action)}  "
                            f"{_printable(event.client or '-')}  "
                            f"{_printable(event.name or '')}")
    return 0


#: Bidirectional overrides and isolates: they reorder what a terminal shows.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                  "\u200e\u200f\u061c")


def _printable(text: str) -> str:
    """
    C{text} safe for a terminal: control characters (ESC, BEL, CR, C1...)
    and bidirectional overrides shown as C{\\xNN}/C{\\uNNNN}, a backslash
    doubled.  File names in share events come from anonymous drop-box
    visitors: printed raw, ESC sequences would drive the admin's terminal.
    """
    import unicodedata

    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) == "Cc" or char in _BIDI:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _utc(moment: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment)) + "Z"


def _share_revoke(args: argparse.Namespace, context: Context) -> int:
    """
    ``share revoke ID``: end a link at once (the running server reads the
    store on every visit).
    """
    store = _share_store(context)
    if store.get(args.id) is None:
        raise CliError(f"no share link with id {args.id!r}")
    if not store.revoke(args.id, "revoked by the administrator"):
        raise CliError(f"share link {args.id} has already been revoked")
    context.say(f"share link {args.id} revoked")
    return 0


def add_share_command(subparsers: Any) -> None:
    """
    ``share list|revoke``: the administrator's view of share links.
    """
    share = subparsers.add_parser("share", help="list or revoke share links")
    actions = share.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show share links and their use")
    listing.add_argument("--owner", metavar="NAME", default=None,
                         help="only this account's links")
    listing.add_argument("--events", metavar="N", type=int, default=0,
                         help="also show each link's last N visits")
    listing.set_defaults(handler=_share_list)
    revoke = actions.add_parser("revoke", help="end a share link now")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(handler=_share_revoke)


# -- init -------------------------------------------------------------------


def _init(args: argparse.Namespace, context: Context) -> int:
    """
    ``init``: create the data directory and an empty accounts database.
    """
    database = context.config.data_dir / DATABASE_NAME
    if database.exists():
        raise CliError(f"an accounts database already exists at {database.absolute()}")
    context.open_store(create=True)
    context.say(f"created the accounts database at {database.absolute()}; add "
                "accounts with 'rumpus-secure user add NAME'")
    return 0


def add_init_command(subparsers: Any) -> None:
    """
    ``init``: the one admin command that creates an accounts database.
    """
    init = subparsers.add_parser(
        "init", help="create the data directory and an empty accounts database "
        "(the server's first start does this too)",
    )
    init.set_defaults(handler=_init)


# -- db -----------------------------------------------------------------------


def _db_migrate(args: argparse.Namespace, context: Context) -> int:
    """
    ``db migrate``: bring the shared database's schema up to this release.
    """
    from rumpus_secure.db import LATEST_VERSION, redact

    if context.config.database is None:
        raise CliError("db migrate needs --database postgresql://... (or database "
                       "in the --config file); the embedded SQLite needs no migration")
    database = context.shared_database(check=False)
    try:
        applied = database.migrate()
    finally:
        database.close()
    for step in applied:
        context.say(f"applied migration {step.version}: {step.description}")
    context.say(f"{redact(context.config.database)}: schema at version {LATEST_VERSION}"
                + ("" if applied else " (nothing to do)"))
    return 0


def _db_copy(args: argparse.Namespace, context: Context) -> int:
    """
    ``db copy --from sqlite:PATH --to postgresql://...``: move an existing
    installation into a shared database.
    """
    import time

    from rumpus_secure.db import (
        Database,
        copy_sqlite,
        parse_database,
        parse_sqlite_source,
        redact,
    )

    source = parse_sqlite_source(args.source)
    try:
        target = parse_database(args.target)
    except ValueError as e:
        raise CliError(f"--to: {e}") from None
    if target is None:
        raise CliError("--to must be a postgresql:// URL")
    database = Database(target, size=1)
    try:
        applied = database.migrate()
        if applied:
            context.say(f"created the schema (version {applied[-1].version})")
        result = copy_sqlite(source, database, time.time())
    finally:
        database.close()
    context.say(f"copied {result.accounts} account(s), {result.bans} active ban(s), "
                f"{result.sessions} web session(s), {result.two_factor} two-factor "
                f"record(s), {result.app_passwords} app password(s), "
                f"{result.client_certs} client certificate binding(s) and "
                f"{result.shares} share link(s) from {source} to {redact(target)}")
    if result.two_factor:
        context.say("two-factor secrets are sealed with the key in the source's data "
                    "directory: copy its secret.key (mode 600) into every node's "
                    "--data-dir")
    context.say("start every node with --database " + redact(target)
                + " --cert FILE --key FILE and the shared --root")
    return 0


def add_db_command(subparsers: Any) -> None:
    """
    ``db migrate`` and ``db copy``: the shared PostgreSQL database.
    """
    db = subparsers.add_parser("db", help="the shared PostgreSQL database: migrate, copy")
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate", help="apply the schema migrations this release needs (run once, "
        "from any node, before starting the servers)")
    migrate.set_defaults(handler=_db_migrate)
    copy = actions.add_parser(
        "copy", help="copy accounts, bans and web sessions from a SQLite data "
        "directory into an empty PostgreSQL database")
    copy.add_argument("--from", dest="source", metavar="sqlite:PATH", required=True,
                      help="the data directory (or its accounts.sqlite3)")
    copy.add_argument("--to", dest="target", metavar="URL", required=True,
                      help="postgresql://USER@HOST/DBNAME (migrated first)")
    copy.set_defaults(handler=_db_copy)


# -- assembly ---------------------------------------------------------------

COMMANDS: list[Callable[[Any], None]] = [
    add_init_command,
    add_user_command,
    add_audit_command,
    add_check_command,
    add_ban_command,
    add_share_command,
    add_db_command,
]


def build_parser() -> argparse.ArgumentParser:
    """
    The argument parser with every registered subcommand.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Administer a rumpus-secure server."
    )
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="the server's TOML configuration; data-dir and root are read from it "
        f"[default: ${CONFIG_ENV}]",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="data directory [default: ./rumpus-data]",
    )
    parser.add_argument(
        "--root", metavar="DIR", default=None,
        help="file root; default homes are ROOT/NAME [default: DATA-DIR/files]",
    )
    parser.add_argument(
        "--database", metavar="URL", default=None,
        help="the server's shared database, postgresql://USER@HOST/DBNAME "
        "[default: the embedded SQLite in DATA-DIR]",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    _accept_global_options(parser)
    return parser


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """
    Let ``--config``, ``--data-dir`` and ``--root`` follow the command too.

    ``rumpus-secure audit --data-dir /srv/data`` reads naturally; before,
    argparse refused it with "unrecognized arguments".
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                _accept_global_options(sub)
                continue
            for flag, metavar in (("--config", "FILE"), ("--data-dir", "DIR"),
                                  ("--root", "DIR"), ("--database", "URL")):
                try:
                    sub.add_argument(flag, metavar=metavar, default=argparse.SUPPRESS,
                                     help=argparse.SUPPRESS)
                except argparse.ArgumentError:
                    pass  # the command declares it itself (check)


def _config(args: argparse.Namespace) -> ServerConfig:
    """
    The server configuration as the server would see it, for these options.
    """
    given = {}
    for option in OPTIONS:
        # --data-dir and --root always; a subcommand may add any other.
        value = getattr(args, option.attribute, None)
        if value is not None:
            given[option.name] = value
    return build_config(given, config_file(args.config))


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run the command line C{argv} (default C{sys.argv[1:]}); return the exit status.

    Errors a person can fix are one line on stderr and status 1; usage
    errors are argparse's message and status 2.
    """
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        context = Context(
            config=_config(args),
            stdin=stdin or sys.stdin,
            stdout=stdout or sys.stdout,
            stderr=stderr,
        )
        handler: Handler = args.handler
        try:
            return handler(args, context)
        finally:
            while _opened:
                _opened.pop().close()
    except (CliError, AccountError, ConfigError) as e:
        message = str(e)
    except sqlite3.Error as e:
        message = f"accounts database: {e}"
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        message = f"{e.strerror or e}{where}"
    except Exception as e:  # noqa: BLE001 (only the shared database's errors)
        from rumpus_secure.db import DatabaseError, StoreUnavailable

        if not isinstance(e, (DatabaseError, StoreUnavailable)):
            raise
        message = str(e)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=stderr)
        return 130
    print(f"{PROG}: error: {message}", file=stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
