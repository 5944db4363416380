"""
The audit report behind ``rumpus-secure audit``.

L{build_report} reads the events of ``DATA-DIR/audit.log`` (and its rotated
files) into a L{Report}: who connected without TLS and with which client
software, exposed passwords and quarantined accounts, banned addresses,
failed logins per account, files and bytes moved per account, and how many
of every other event.
L{format_text} renders it for a person, L{as_json} for a program; both carry
the same content.

Audit fields come from the network (account names, ``CLNT`` strings), so the
text output escapes control characters: a client cannot write terminal
escape sequences into the administrator's terminal.  Only named fields are
ever shown, and no event carries a password; a field that looks like one is
never read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rumpus_secure.audit import read_events

#: The account name ``rumpus-secure check`` sends in its cleartext probe.
PROBE_ACCOUNT = "rumpus-check-probe"
#: The CLNT string ``rumpus-secure check`` announces itself with.
PROBE_SOFTWARE = "rumpus-secure-check"

#: Events that mean a client tried to work without TLS.
_CLEARTEXT_ATTEMPTS = ("ftp.refused_before_tls", "ftp.plain_port_refused")
_FAILED_OUTCOMES = ("failed", "locked")
#: File transfer events and their direction (``web.download`` carries no
#: byte count: the file is streamed after the event is recorded).
_TRANSFER_EVENTS = {"ftp.upload": "up", "web.upload": "up",
                    "ftp.download": "down", "web.download": "down"}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """
    A start time from ISO 8601 (``2025-03-01``, ``2025-03-01T08:00``) or a
    relative age (``90m``, ``24h``, ``7d``, ``2w``).

    A time without a zone is UTC, like every time in the audit log.

    :raises ValueError: with a message for a person.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(seconds=amount * _UNITS[unit])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date/time such as 2025-03-01 or "
            "2025-03-01T08:00 nor an age such as 24h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _event_time(event: dict[str, Any]) -> datetime | None:
    value = event.get("time")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class CleartextClient:
    """
    One client (address, account tried, software) that worked without TLS.
    """

    client: str
    account: str
    software: str
    attempts: int = 0
    passwords_sent: int = 0
    last_seen: str = ""


@dataclass
class ExposedAccount:
    """
    An account whose real password was seen in cleartext.
    """

    account: str
    times: int = 0
    clients: list[str] = field(default_factory=list)
    last_seen: str = ""
    quarantined: bool = False
    #: ``yes``, ``no``, ``deleted`` or ``unknown`` (no accounts database).
    locked_now: str = "unknown"


@dataclass
class Ban:
    """
    A banned address and what it did while banned.
    """

    client: str
    bans: int = 0
    last_ban: str = ""
    reason: str = ""
    until: str = ""
    refused: int = 0
    #: When an administrator lifted the last ban (``rumpus-secure ban
    #: lift``), or empty if it ran its course or still runs.
    lifted: str = ""


@dataclass
class FailedLogins:
    """
    Failed and refused (locked) logins of one account.
    """

    account: str
    failed: int = 0
    locked: int = 0
    clients: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    last_seen: str = ""


@dataclass
class Transfers:
    """
    Files and bytes one account moved; only complete transfers count, the
    others (aborted, truncated, failed) are counted apart.
    """

    account: str
    files_up: int = 0
    bytes_up: int = 0
    files_down: int = 0
    bytes_down: int = 0
    incomplete: int = 0
    protocols: list[str] = field(default_factory=list)
    last_seen: str = ""


@dataclass
class Report:
    """
    Everything ``rumpus-secure audit`` shows.
    """

    log: str
    exists: bool
    since: str | None = None
    first_event: str | None = None
    last_event: str | None = None
    events: int = 0
    cleartext: list[CleartextClient] = field(default_factory=list)
    exposed: list[ExposedAccount] = field(default_factory=list)
    bans: list[Ban] = field(default_factory=list)
    failed_logins: list[FailedLogins] = field(default_factory=list)
    transfers: list[Transfers] = field(default_factory=list)
    #: Every event name in the period and how often it occurred.
    event_counts: dict[str, int] = field(default_factory=dict)
    self_check_probes: int = 0


def _is_probe(event: dict[str, Any]) -> bool:
    return (
        event.get("account") == PROBE_ACCOUNT
        or event.get("software") == PROBE_SOFTWARE
    )


def _add_unique(items: list[str], value: str) -> None:
    if value and value not in items:
        items.append(value)


def build_report(
    log_path: Path,
    since: datetime | None = None,
    account_locked: Callable[[str], bool | None] | None = None,
    sources: Iterable[tuple[str, list[dict[str, Any]]]] | None = None,
) -> Report:
    """
    Read the audit log (and rotated files) into a L{Report}.

    :param since: only events at or after this time.
    :param account_locked: whether an account is locked now (L{None}: it
        does not exist); not given when there is no accounts database.
    """
    if sources is not None:
        return _merged_report(list(sources), since, account_locked)
    log_path = Path(log_path)
    rotated = any(
        p.suffix[1:].isdigit() for p in log_path.parent.glob(log_path.name + ".*")
    )
    report = Report(
        log=str(log_path),
        exists=log_path.exists() or rotated,
        since=since.isoformat() if since else None,
    )
    if not report.exists:
        return report
    events = []
    for event in read_events(log_path):
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            continue
        moment = _event_time(event)
        if since is not None and (moment is None or moment < since):
            continue
        events.append(event)
    _summarise(report, events, account_locked)
    return report


def merge_events(*streams: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The events of several nodes' logs as one stream, in time order.

    Each stream is in its own order already; events with the same time keep
    their stream's order, events without a time come first.
    """
    keyed = []
    for number, stream in enumerate(streams):
        for position, event in enumerate(stream):
            moment = _event_time(event) if isinstance(event, dict) else None
            stamp = moment.timestamp() if moment is not None else float("-inf")
            keyed.append((stamp, number, position, event))
    keyed.sort(key=lambda item: item[:3])
    return [event for _, _, _, event in keyed]


def _merged_report(sources: list[tuple[str, list[dict[str, Any]]]],
                   since: datetime | None,
                   account_locked: Callable[[str], bool | None] | None) -> Report:
    report = Report(log=", ".join(name for name, _ in sources), exists=True,
                    since=since.isoformat() if since else None)
    events = []
    for event in merge_events(*(events for _, events in sources)):
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            continue
        moment = _event_time(event)
        if since is not None and (moment is None or moment < since):
            continue
        events.append(event)
    _summarise(report, events, account_locked)
    return report


def _summarise(
    report: Report,
    events: Iterable[dict[str, Any]],
    account_locked: Callable[[str], bool | None] | None,
) -> None:
    cleartext: dict[tuple[str, str, str], CleartextClient] = {}
    exposed: dict[str, ExposedAccount] = {}
    bans: dict[str, Ban] = {}
    failed: dict[str, FailedLogins] = {}
    moved: dict[str, Transfers] = {}
    counts: dict[str, int] = {}
    for event in events:
        name = event["event"]
        when = _text(event.get("time"))
        report.events += 1
        counts[name] = counts.get(name, 0) + 1
        report.first_event = report.first_event or when
        report.last_event = when or report.last_event
        client = _text(event.get("client"))
        account = _text(event.get("account"))
        is_cleartext = (
            name.endswith((".cleartext_user", ".cleartext_password"))
            or name in _CLEARTEXT_ATTEMPTS
        )
        if is_cleartext and _is_probe(event):
            if name.endswith(".cleartext_user"):
                report.self_check_probes += 1
            continue
        if is_cleartext:
            key = (client, account, _text(event.get("software")))
            row = cleartext.get(key)
            if row is None:
                row = cleartext[key] = CleartextClient(*key)
            if name.endswith(".cleartext_password"):
                row.passwords_sent += 1
            else:
                row.attempts += 1
            row.last_seen = max(row.last_seen, when)
        elif name == "account.password_exposed":
            exposed_row = exposed.setdefault(account, ExposedAccount(account))
            exposed_row.times += 1
            _add_unique(exposed_row.clients, client)
            exposed_row.last_seen = max(exposed_row.last_seen, when)
        elif name == "account.quarantined":
            exposed_row = exposed.setdefault(account, ExposedAccount(account))
            exposed_row.quarantined = True
            _add_unique(exposed_row.clients, client)
            exposed_row.last_seen = max(exposed_row.last_seen, when)
        elif name in ("guard.ban", "guard.refused"):
            address = client or _text(event.get("address"))
            ban = bans.setdefault(address, Ban(address))
            if name == "guard.ban":
                ban.bans += 1
                if when >= ban.last_ban:
                    ban.last_ban = when
                    ban.reason = _text(event.get("reason"))
                    ban.until = _text(event.get("until") or event.get("expires"))
                    if ban.lifted and ban.lifted <= when:
                        ban.lifted = ""  # a new ban after the lift
            else:
                ban.refused += 1
        elif name == "guard.lifted":
            address = client or _text(event.get("address"))
            lifted = bans.get(address)
            # A lift of a ban from before --since has no row to go with.
            if lifted is not None and when >= lifted.last_ban:
                lifted.lifted = when
        elif name.endswith(".login") and event.get("outcome") in _FAILED_OUTCOMES:
            row_f = failed.setdefault(account, FailedLogins(account))
            if event.get("outcome") == "locked":
                row_f.locked += 1
            else:
                row_f.failed += 1
            _add_unique(row_f.clients, client)
            _add_unique(row_f.protocols, _text(event.get("protocol")) or name.split(".")[0])
            row_f.last_seen = max(row_f.last_seen, when)
        elif name in _TRANSFER_EVENTS:
            row_t = moved.setdefault(account, Transfers(account))
            _add_unique(row_t.protocols, _text(event.get("protocol")) or name.split(".")[0])
            row_t.last_seen = max(row_t.last_seen, when)
            if event.get("outcome", "complete") != "complete":
                row_t.incomplete += 1
                continue
            size = event.get("bytes", event.get("size"))
            size = size if isinstance(size, int) and size > 0 else 0
            if _TRANSFER_EVENTS[name] == "up":
                row_t.files_up += 1
                row_t.bytes_up += size
            else:
                row_t.files_down += 1
                row_t.bytes_down += size
    for row_e in exposed.values():
        if account_locked is not None:
            state = account_locked(row_e.account)
            row_e.locked_now = "deleted" if state is None else ("yes" if state else "no")
    report.cleartext = sorted(cleartext.values(), key=lambda r: r.last_seen, reverse=True)
    report.exposed = sorted(exposed.values(), key=lambda r: r.last_seen, reverse=True)
    # Only addresses that were banned in the period; refusals alone (a ban
    # from before --since) still show, under the address they belong to.
    report.bans = sorted(bans.values(), key=lambda r: r.last_ban or "", reverse=True)
    report.failed_logins = sorted(
        failed.values(), key=lambda r: (r.failed + r.locked, r.last_seen), reverse=True
    )
    report.transfers = sorted(
        moved.values(), key=lambda r: (r.bytes_up + r.bytes_down, r.account), reverse=True
    )
    report.event_counts = dict(sorted(counts.items()))


def as_json(report: Report) -> dict[str, Any]:
    """
    The report as plain JSON values (the ``--json`` output).
    """
    return asdict(report)


# -- text ------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_CELL = 60


def printable(value: Any, limit: int = _MAX_CELL) -> str:
    """
    A cell safe to print on a terminal: control characters escaped, cut short.
    """
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _text(value))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or "-"


def _short_time(value: str) -> str:
    """
    ``2025-03-01T08:00:01.123Z`` as ``2025-03-01 08:00:01``.
    """
    return value[:19].replace("T", " ") if value else "-"


def table(
    headers: Iterable[str], rows: Iterable[Iterable[Any]], limit: int = _MAX_CELL
) -> list[str]:
    """
    Left-aligned columns separated by two spaces, cells made printable.
    """
    lines = [[printable(h, limit) for h in headers]]
    lines += [[printable(cell, limit) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in lines
    ]


def _heading(out: list[str], title: str) -> None:
    out += ["", title, "-" * len(title)]


def format_text(report: Report) -> str:
    """
    The report for a person, as lines of text.
    """
    if not report.exists:
        return (
            f"No audit log yet at {report.log}: the server writes it at the first"
            " security event (a refused login, a TLS failure, a login).\n"
        )
    period = f"since {_short_time(report.since)} UTC" if report.since else "all events"
    out = [f"Audit report from {report.log} ({period})"]
    if not report.events:
        out.append("No events in this period.")
        return "\n".join(out) + "\n"
    out.append(
        f"{report.events} events, {_short_time(report.first_event or '')} to "
        f"{_short_time(report.last_event or '')} UTC"
    )

    _heading(out, "Connections without TLS")
    if report.cleartext:
        out.append("These clients tried to work unencrypted. Set them to explicit FTP")
        out.append("over TLS (or implicit FTPS) so passwords never cross the network in clear.")
        out += table(
            ("ADDRESS", "ACCOUNT TRIED", "CLIENT SOFTWARE (CLNT)", "ATTEMPTS",
             "PASS SENT", "LAST SEEN (UTC)"),
            (
                (r.client, r.account, r.software, r.attempts, r.passwords_sent,
                 _short_time(r.last_seen))
                for r in report.cleartext
            ),
        )
    else:
        out.append("none")
    if report.self_check_probes:
        probes = report.self_check_probes
        out.append(
            f"({probes} probe{'s' if probes != 1 else ''} by 'rumpus-secure check'"
            " not shown)"
        )

    _heading(out, "Exposed passwords and quarantined accounts")
    if report.exposed:
        out += table(
            ("ACCOUNT", "EXPOSED", "FROM", "QUARANTINED", "LOCKED NOW", "LAST (UTC)"),
            (
                (r.account, r.times, ", ".join(r.clients), "yes" if r.quarantined else "no",
                 r.locked_now, _short_time(r.last_seen))
                for r in report.exposed
            ),
        )
        if any(r.locked_now == "yes" for r in report.exposed):
            out.append("Unlock by setting a new password: rumpus-secure user passwd NAME")
    else:
        out.append("none")

    _heading(out, "Banned addresses")
    if report.bans:
        out += table(
            ("ADDRESS", "BANS", "LAST BAN (UTC)", "UNTIL", "LIFTED (UTC)", "REASON",
             "REFUSED"),
            (
                (r.client, r.bans, _short_time(r.last_ban), _short_time(r.until),
                 _short_time(r.lifted), r.reason, r.refused)
                for r in report.bans
            ),
        )
    else:
        out.append("none")

    _heading(out, "Failed logins")
    if report.failed_logins:
        out += table(
            ("ACCOUNT", "FAILED", "LOCKED", "FROM", "VIA", "LAST (UTC)"),
            (
                (r.account, r.failed, r.locked, ", ".join(r.clients),
                 ", ".join(r.protocols), _short_time(r.last_seen))
                for r in report.failed_logins
            ),
        )
    else:
        out.append("none")

    _heading(out, "Transfers")
    if report.transfers:
        out += table(
            ("ACCOUNT", "FILES UP", "BYTES UP", "FILES DOWN", "BYTES DOWN",
             "INCOMPLETE", "VIA", "LAST (UTC)"),
            (
                (r.account, r.files_up, r.bytes_up, r.files_down, r.bytes_down,
                 r.incomplete, ", ".join(r.protocols), _short_time(r.last_seen))
                for r in report.transfers
            ),
        )
        if any("web" in r.protocols for r in report.transfers):
            out.append("(web downloads count as files; their bytes are not recorded)")
    else:
        out.append("none")

    _heading(out, "All events")
    out += table(("EVENT", "COUNT"), report.event_counts.items())
    return "\n".join(out) + "\n"
