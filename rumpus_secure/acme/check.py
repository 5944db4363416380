"""
What ``rumpus-secure check`` says about ACME, from ``DATA-DIR/acme/status.json``.

The running server writes that file after every attempt; ``check`` runs in
another process and reads it.  One result:

- PASS: the served certificate came from the CA and the last attempt worked;
- WARN: the first certificate has not arrived (a self-signed one is served),
  or renewal is failing (the old certificate is still served, until it
  expires), or no attempt is recorded yet;
- FAIL: renewal is failing and the served certificate has expired.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rumpus_secure.acme.store import AcmeStore


def acme_results(config: Any, now: datetime | None = None) -> list[Any]:
    """
    The ACME line of ``check``; empty without ``--acme-directory``.
    """
    from rumpus_secure.selfcheck import CheckResult, Status

    if getattr(config, "acme_directory", None) is None:
        return []
    now = now or datetime.now(UTC)
    status = AcmeStore(config.data_dir / "acme").read_status()
    name = "ACME certificate"
    if status is None:
        return [CheckResult(name, Status.WARN,
                            f"no attempt recorded yet with {config.acme_directory}"
                            " (is the server running?)")]
    error = status.get("last_error")
    failures = int(status.get("failures") or 0)
    next_attempt = status.get("next_attempt") or "not scheduled"
    if status.get("serving") != "acme":
        detail = "no certificate from the CA yet: serving a self-signed one"
        if failures:
            detail += f"; {failures} failed attempt(s), last: {error}"
        return [CheckResult(name, Status.WARN, f"{detail}; next attempt {next_attempt}")]
    not_after = status.get("not_after") or "?"
    if failures:
        expired = False
        try:
            expired = datetime.fromisoformat(not_after) <= now
        except ValueError:
            pass
        return [CheckResult(
            name, Status.FAIL if expired else Status.WARN,
            f"renewal failing ({failures} attempt(s), last: {error}); still serving"
            f" the certificate valid until {not_after}"
            + (" (now expired)" if expired else "") + f"; next attempt {next_attempt}",
        )]
    return [CheckResult(name, Status.PASS,
                        f"issued by {config.acme_directory}, valid until {not_after};"
                        f" renewal due {next_attempt}")]
