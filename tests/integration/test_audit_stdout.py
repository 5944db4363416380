"""
``--audit-log -``: the audit records as JSON lines on the server's standard
output, each naming its node; no audit file is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.clients import explicit_ftps
from tests.server_process import ServerProcess

pytestmark = pytest.mark.integration


def test_audit_records_go_to_standard_output_as_json_lines(tmp_path: Path) -> None:
    import ftplib
    import time

    server = ServerProcess(tmp_path, audit_log="-", node_id="files-a",
                           safe_list="127.0.0.0/8", login_failure_delay="0")
    with server:
        server.add_user("alice", "alice-password-1")
        ftp = explicit_ftps(server.ftp_port)
        ftp.auth()
        with pytest.raises(ftplib.error_perm):
            ftp.login("alice", "not-the-password")
        ftp.close()
        deadline = time.monotonic() + 10

        def records() -> list[dict[str, object]]:
            found = []
            for line in server.log_text().splitlines():
                if line.startswith("{"):
                    found.append(json.loads(line))
            return found

        while not any(r.get("event") == "ftp.login" for r in records()):
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
    login = next(r for r in records() if r.get("event") == "ftp.login")
    assert login["outcome"] == "failed" and login["account"] == "alice"
    assert all(r["node"] == "files-a" for r in records())
    assert "not-the-password" not in server.log_text()
    assert not (server.data_dir / "audit.log").exists()
