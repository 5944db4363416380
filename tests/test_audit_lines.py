"""
The audit line's content: what L{rumpus_secure.audit} writes per event, kept
exactly as it was when the per-event cost was cut (a cached encoder, field
names remembered as allowed).
"""

from __future__ import annotations

import json
from pathlib import Path

from rumpus_secure.audit import JSONLinesAuditLog, MemoryAuditLog


def test_secret_fields_are_dropped_every_time(tmp_path: Path) -> None:
    log = JSONLinesAuditLog(tmp_path / "audit.log", clock=lambda: 1_780_000_000.25)
    for _ in range(3):  # the second time the allowed names are remembered
        log.record("ftp.login", account="alice", password="hunter2", Passwd="x",
                   SECRET="y", credentials="z", outcome="ok", software=None)
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        entry = json.loads(line)
        assert entry == {"time": "2026-05-28T20:26:40.250Z", "event": "ftp.login",
                         "account": "alice", "outcome": "ok"}
        # Byte for byte what json.dumps(sort_keys=True) writes.
        assert line == json.dumps(entry, sort_keys=True)
        assert "hunter2" not in line


def test_values_are_made_json() -> None:
    log = MemoryAuditLog(clock=lambda: 0.0)
    log.record("x", raw=b"caf\xc3\xa9", path=Path("/a"), n=3, ok=True, items=[1])
    assert log.events[0] == {"time": "1970-01-01T00:00:00.000Z", "event": "x",
                             "raw": "café", "path": "/a", "n": 3, "ok": True,
                             "items": [1]}
