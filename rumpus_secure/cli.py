"""
The ``rumpus-secure`` admin command.

::

    rumpus-secure [--config FILE] [--data-dir DIR] [--root DIR] user add NAME ...
    rumpus-secure ... user passwd|list|lock|unlock|del ...
    rumpus-secure ... audit [--since WHEN] [--json]
    rumpus-secure ... check [SERVER OPTIONS] [--host ADDR] [--strict]
    rumpus-secure ... ban list|lift ADDRESS

It works on the same files as the running server: give it the server's
``--config`` (or the same ``--data-dir``/``--root``) and changes take effect
without a restart: every account write is logged in the store's change log
(L{rumpus_secure.accounts.store}), which the running server reads before
each FTP command, so a lock, delete or new password also ends open sessions.

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
from rumpus_secure.config import OPTIONS, ConfigError, ServerConfig, build_config

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

    def open_store(self, create: bool = False) -> SQLiteAccountStore:
        """
        The account store in the data directory.

        @param create: create the data directory and database if missing;
            otherwise a missing database is an error (most likely a wrong
            C{--data-dir}), not an empty one quietly created somewhere.
        """
        data_dir = self.config.data_dir
        if not create and not (data_dir / DATABASE_NAME).exists():
            raise CliError(
                f"no accounts database in {data_dir} (wrong --data-dir or "
                "--config? 'user add' creates it)"
            )
        return SQLiteAccountStore.in_data_dir(data_dir, self.config.file_root)


Handler = Callable[[argparse.Namespace, Context], int]


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
    if args.password_stdin:
        line = context.stdin.readline()
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        if not line:
            raise CliError("empty password on standard input")
        return line, False
    try:
        first = getpass.getpass(f"Password for {args.name}: ")
        if not first:
            raise CliError("empty password")
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
    store = context.open_store(create=True)
    # Checked before asking for a password so nobody types it twice for
    # nothing; add() still refuses duplicates on its own.
    for existing in store.list():
        if existing.name.lower() == args.name.lower():
            raise AccountError(f"an account named {existing.name!r} already exists")
    password, generated = _read_password(args, context)
    account = store.add(args.name, password, home=args.home, perms=perms)
    context.say(
        f"added account {account.name}, home {account.home}, "
        f"permissions {_show_perms(account.perms)}"
    )
    if generated:
        context.say(f"generated password (shown only now): {password}")
    return 0


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
    rows = [("NAME", "HOME", "PERMS", "LOCKED")]
    for a in accounts:
        locked = f"yes: {a.lock_reason}" if a.locked else "no"
        rows.append((a.name, str(a.home), _show_perms(a.perms), locked))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        context.say("  ".join([*cells, row[3]]))
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
    return 0


def add_user_command(subparsers: Any) -> None:
    """
    ``user add|passwd|list|lock|unlock|del``: manage accounts.
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
        "--perms", metavar="LIST", default=None,
        help="comma-separated permissions from: "
        + ",".join(PERMISSION_ORDER) + " [default: all]",
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

    account_locked = None
    if (context.config.data_dir / DATABASE_NAME).exists():
        store = context.open_store()

        def account_locked(name: str) -> bool | None:
            account = store.get(name)
            return None if account is None else account.locked

    report = build_report(
        context.config.data_dir / "audit.log", since=args.since,
        account_locked=account_locked,
    )
    if args.json:
        context.stdout.write(json.dumps(as_json(report), indent=2) + "\n")
    else:
        context.stdout.write(format_text(report))
    return 0


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
    audit.set_defaults(handler=_audit)


# -- check ------------------------------------------------------------------


def _check(args: argparse.Namespace, context: Context) -> int:
    """
    ``check``: probe the running server's listeners like an outside client.
    """
    from rumpus_secure.selfcheck import exit_status, format_results, run_checks

    results = run_checks(context.config, host=args.host)
    context.stdout.write(format_results(results))
    return exit_status(results, strict=args.strict)


def add_check_command(subparsers: Any) -> None:
    """
    ``check``: the server's own options, then probes of its ports.

    Every server option is accepted with the same name (and read from the
    same ``--config`` file), so the check is run with the server's own
    command line; each lands in L{Context.config}.
    """
    check = subparsers.add_parser(
        "check", help="probe the running server's ports from outside: TLS "
        "required, versions, ALPN, redirect, HSTS, certificate",
        description="Takes the same options as 'twistd rumpus-secure'; "
        "exit status 0 when no check failed.",
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

    database = context.config.data_dir / DATABASE_NAME
    if not database.exists():
        raise CliError(f"no account database at {database}: is --data-dir right?")
    return SQLiteBanStore(database)


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
    rows = [(b.address, iso_utc(b.until), f"{b.minutes_left(now)} min",
             f"level {b.level}", b.reason) for b in active]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        context.say("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[4]]))
    return 0


def _ban_lift(args: argparse.Namespace, context: Context) -> int:
    """
    ``ban lift ADDRESS``: end a ban now and forget the address's history.
    """
    from rumpus_secure.guard import SYNC_INTERVAL, normalise_address

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


# -- assembly ---------------------------------------------------------------

COMMANDS: list[Callable[[Any], None]] = [
    add_user_command,
    add_audit_command,
    add_check_command,
    add_ban_command,
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
        help="the server's TOML configuration; data-dir and root are read from it",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="data directory [default: ./rumpus-data]",
    )
    parser.add_argument(
        "--root", metavar="DIR", default=None,
        help="file root; default homes are ROOT/NAME [default: DATA-DIR/files]",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


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
    return build_config(given, args.config)


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
        return handler(args, context)
    except (CliError, AccountError, ConfigError) as e:
        message = str(e)
    except sqlite3.Error as e:
        message = f"accounts database: {e}"
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        message = f"{e.strerror or e}{where}"
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=stderr)
        return 130
    print(f"{PROG}: error: {message}", file=stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
