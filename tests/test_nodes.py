"""
Node ids (temporary upload names, cleanup of only this node's leftovers),
the audit log on standard output, and the merged audit report.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from rumpus_secure import cli
from rumpus_secure.audit import StreamAuditLog, open_audit_log, read_lines
from rumpus_secure.config import ConfigError, build_config
from rumpus_secure.report import merge_events
from rumpus_secure.vfs import paths
from rumpus_secure.vfs.cleanup import remove_stale_uploads

OLD = 1_000_000_000.0
HEX = "0123456789abcdef" * 2


@pytest.fixture
def node_a() -> object:
    paths.set_temp_node("node-a")
    yield
    paths.set_temp_node(None)


def test_node_id_option() -> None:
    assert build_config({"node-id": "files-a.example"}).node == "files-a.example"
    assert build_config().node  # the host name
    for bad in ("-x", ".x", "a/b", "a b", "x" * 64):
        with pytest.raises(ConfigError, match="node-id"):
            build_config({"node-id": bad})


def test_temporary_names_carry_the_node(node_a: object) -> None:
    name = paths.temp_name(HEX)
    assert name == f".rumpus-upload-node-a-{HEX}.part"
    assert paths.temp_name_node(name) == "node-a"
    assert paths.temp_name_node(f".rumpus-upload-{HEX}.part") == ""
    for other in (".rumpus-upload-x.part", f".rumpus-upload-{HEX}.txt", "report.part",
                  f".rumpus-upload--{HEX}.part"):
        assert paths.temp_name_node(other) is None
    paths.set_temp_node(None)
    assert paths.temp_name(HEX) == f".rumpus-upload-{HEX}.part"


def test_an_upload_names_its_temporary_file_after_the_node(
        node_a: object, tmp_path: Path) -> None:
    from rumpus_secure.accounts.store import ALL_PERMISSIONS
    from rumpus_secure.vfs import JailedFS

    fs = JailedFS(tmp_path, ALL_PERMISSIONS)
    upload = fs.open_upload("/f.txt")
    try:
        temp = [n for n in os.listdir(tmp_path) if n.startswith(".rumpus-upload-")]
        assert len(temp) == 1 and paths.temp_name_node(temp[0]) == "node-a"
    finally:
        upload.abort()


def _leftover(directory: Path, node: str) -> Path:
    middle = f"{node}-{HEX}" if node else HEX
    path = directory / f".rumpus-upload-{middle}.part"
    path.write_bytes(b"partial")
    os.utime(path, (OLD, OLD))
    return path


def test_cleanup_removes_only_this_nodes_leftovers(tmp_path: Path) -> None:
    mine = _leftover(tmp_path, "node-a")
    theirs = _leftover(tmp_path, "node-b")
    legacy = _leftover(tmp_path, "")
    result = remove_stale_uploads([tmp_path], started=2e9, node="node-a", legacy=False)
    assert result.files == 1
    assert not mine.exists() and theirs.exists() and legacy.exists()
    # Alone (no shared database), the single-node names are ours too.
    result = remove_stale_uploads([tmp_path], started=2e9, node="node-a", legacy=True)
    assert result.files == 1 and not legacy.exists() and theirs.exists()


def test_audit_log_dash_writes_json_lines_to_the_descriptor(tmp_path: Path) -> None:
    assert isinstance(open_audit_log(Path("-"), tmp_path), StreamAuditLog)
    read_end, write_end = os.pipe()
    try:
        log = StreamAuditLog(write_end, clock=lambda: 1e9, node="node-a")
        seen: list[dict[str, object]] = []
        log.add_observer(seen.append)
        log.record("guard.ban", client="192.0.2.1", password="never")
        log.record("ftp.login", account="alice", outcome="ok")
        os.close(write_end)
        write_end = -1
        lines = os.read(read_end, 65536).decode().splitlines()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["guard.ban", "ftp.login"]
    assert all(e["node"] == "node-a" for e in events)
    assert "password" not in events[0] and len(seen) == 2
    assert not (tmp_path / "audit.log").exists()


def test_read_lines_takes_journal_lines_and_skips_the_rest() -> None:
    lines = ['{"time": "2026-01-01T00:00:00Z", "event": "a"}\n',
             'Jan 01 host twistd[1]: {"time": "2026-01-01T00:00:01Z", "event": "b"}\n',
             "a log line that is not JSON\n", "{broken\n", "[1, 2]\n"]
    assert [e["event"] for e in read_lines(lines)] == ["a", "b"]


def test_merge_puts_several_nodes_events_in_time_order() -> None:
    a = [{"time": "2026-01-01T00:00:01.000Z", "event": "a1"},
         {"time": "2026-01-01T00:00:03.000Z", "event": "a3"}]
    b = [{"time": "2026-01-01T00:00:02.000Z", "event": "b2"},
         {"time": "2026-01-01T00:00:03.000Z", "event": "b3"}]
    assert [e["event"] for e in merge_events(a, b)] == ["a1", "b2", "a3", "b3"]


def _event(when: str, event: str, node: str, **fields: object) -> str:
    return json.dumps({"time": when, "event": event, "node": node, **fields}) + "\n"


def test_audit_command_merges_files_and_standard_input(tmp_path: Path) -> None:
    first = tmp_path / "a.log"
    second = tmp_path / "b.log"
    first.write_text(_event("2026-01-01T00:00:01Z", "guard.ban", "node-a",
                            client="192.0.2.1", reason="login_failed", seconds=900))
    second.write_text(_event("2026-01-01T00:00:02Z", "guard.ban", "node-b",
                             client="192.0.2.2", reason="login_failed", seconds=900))
    stdin = io.StringIO(_event("2026-01-01T00:00:03Z", "guard.ban", "node-c",
                               client="192.0.2.3", reason="login_failed", seconds=900))
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["--data-dir", str(tmp_path / "none"), "audit", "--json",
                       str(first), str(second), "-"], stdin=stdin, stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    text = out.getvalue()
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert address in text
    missing = cli.main(["--data-dir", str(tmp_path), "audit", str(tmp_path / "nope")],
                       stdout=io.StringIO(), stderr=err)
    assert missing == 1 and "no audit log" in err.getvalue()


def test_the_listener_record_never_holds_the_database_password() -> None:
    from rumpus_secure.tap import config_as_options

    config = build_config({"database": "postgresql://rumpus:s3cret@db.example/rumpus"})
    recorded = config_as_options(config)
    assert recorded["database"] == "postgresql://rumpus:***@db.example/rumpus"
    assert "s3cret" not in json.dumps(recorded)
    assert build_config(recorded).database is not None  # reads back
