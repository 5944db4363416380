"""
Options, configuration precedence and service assembly (no sockets opened).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from twisted.application import service
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock

from rumpus_secure import tap
from rumpus_secure.config import ConfigError, ServerConfig, build_config, endpoint_port

REPO = Path(__file__).resolve().parent.parent


class Reactor(MemoryReactorClock):
    """
    A memory reactor with the thread-pool hooks makeService uses.
    """

    def getThreadPool(self):  # pragma: no cover - not reached without logins
        raise AssertionError("no thread work expected")


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def listeners(top: service.MultiService) -> dict[str, tap.ListenerService]:
    return {s.name: s for s in top if isinstance(s, tap.ListenerService)}


# -- options and config ------------------------------------------------------


def test_defaults() -> None:
    config = parse().server_config
    assert config == ServerConfig()
    assert config.data_dir == Path("rumpus-data")
    assert config.file_root == Path("rumpus-data/files")
    assert (config.ftp, config.ftps, config.http, config.https) == (
        "tcp:2121", "tcp:9990", "tcp:8080", "tcp:8443")
    assert config.public_host == "localhost"
    assert config.ftp_security == "require-tls"
    assert config.exposed_password == "quarantine"


def test_every_option_is_a_flag() -> None:
    options = tap.Options()
    text = str(options)
    for name in ("--data-dir", "--root", "--ftp", "--ftps", "--http", "--https",
                 "--public-host", "--cert", "--key", "--config", "--ftp-security",
                 "--exposed-password"):
        assert name in text


def test_none_disables_a_listener() -> None:
    config = parse("--ftp", "none", "--http", "NONE").server_config
    assert config.ftp is None and config.http is None and config.ftps == "tcp:9990"


def test_config_file_and_command_line_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text(
        'data-dir = "/srv/rumpus"\n'
        'public_host = "files.example.com"\n'
        'ftp = "tcp:21"\n'
        'ftp-security = "implicit-only"\n'
        "cleartext-grace = 1.5\n"
    )
    config = parse("--config", str(toml), "--ftp", "tcp:2100").server_config
    assert config.data_dir == Path("/srv/rumpus")
    assert config.public_host == "files.example.com"
    assert config.ftp == "tcp:2100"
    assert config.ftp_security == "implicit-only"
    assert config.cleartext_grace == 1.5


@pytest.mark.parametrize(
    "content, message",
    [
        ("data-dir = [unclosed\n", "not valid TOML"),
        ('colour = "blue"\n', "unknown option 'colour'"),
        ('ftp-security = "sometimes"\n', "ftp-security: expected one of"),
        ("passive-ports = \"10-5\"\n", "passive-ports"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(content)
    with pytest.raises(SystemExit) as e:
        parse("--config", str(toml))
    text = str(e.value.code)
    assert text.startswith("rumpus-secure: error: ") and message in text
    assert "\n" not in text


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        parse("--config", str(tmp_path / "absent.toml"))
    assert "does not exist" in str(e.value.code)


def test_unknown_option_is_one_line() -> None:
    with pytest.raises(SystemExit) as e:
        parse("--colour", "blue")
    text = str(e.value.code)
    assert text.startswith("rumpus-secure: error: ") and "colour" in text


@pytest.mark.parametrize("argv, message", [
    (("--ftp", "2121x"), "ftp: expected a Twisted endpoint"),
    (("--cert", "/x.pem"), "--cert and --key must be given together"),
    (("--ftp", "none", "--ftps", "none", "--http", "none", "--https", "none"),
     "nothing to serve"),
    (("--ftp-security", "implicit-only", "--ftps", "none"), "implicit FTPS listener"),
    (("--public-host", "evil.com/x"), "public-host"),
])
def test_bad_values(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert message in str(e.value.code)


def test_endpoint_port() -> None:
    assert endpoint_port("tcp:2121:interface=127.0.0.1") == 2121
    assert endpoint_port("tcp:port=990") == 990
    assert endpoint_port("haproxy:tcp:21") == 21
    assert endpoint_port(None) is None


def test_build_config_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError):
        build_config({"no-such-option": 1})


# -- assembly ---------------------------------------------------------------


def test_make_service_children(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = parse("--data-dir", str(tmp_path / "data"))
    top = tap.makeService(options, reactor=Reactor())
    assert IServiceCollection.providedBy(top)
    found = listeners(top)
    assert set(found) == {"ftp", "ftps", "http", "https"}
    assert found["ftp"].description == "tcp:2121"
    assert found["ftps"].description == "tcp:9990"
    # The implicit FTPS and HTTPS listeners are TLS-wrapped behind a
    # first-byte sniffer that answers plain clients; plain ones are not.
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from rumpus_secure.sniff import SniffingFactory

    for name, tls in [("ftps", True), ("https", True), ("http", False)]:
        assert isinstance(found[name].factory, SniffingFactory)
        assert found[name].factory.expect_tls is tls
        assert isinstance(found[name].factory.wrappedFactory, TLSMemoryBIOFactory) is tls
    assert not isinstance(found["ftp"].factory, TLSMemoryBIOFactory)
    data = tmp_path / "data"
    assert (data / "accounts.sqlite3").exists()
    assert (data / "tls" / "cert.pem").exists()
    assert (data / "files" / "admin").is_dir()
    out = capsys.readouterr().out
    assert "created account 'admin'" in out


def test_disabled_listeners_are_absent(tmp_path: Path) -> None:
    options = parse("--data-dir", str(tmp_path), "--ftp", "none", "--http", "none")
    top = tap.makeService(options, reactor=Reactor())
    assert set(listeners(top)) == {"ftps", "https"}


def test_first_run_bootstrap_happens_once(tmp_path: Path) -> None:
    out = io.StringIO()
    from rumpus_secure.accounts.store import SQLiteAccountStore

    store = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files")
    password = tap.bootstrap_admin(store, tmp_path, out)
    assert password and password in out.getvalue()
    assert "rumpus-secure --data-dir" in out.getvalue()
    assert [a.name for a in store.list()] == ["admin"]
    # A later run, even with every account gone, creates nothing (and the
    # password file of the deleted account goes first).
    store.delete("admin")
    assert tap.forget_initial_password(store, tmp_path)
    again = io.StringIO()
    assert tap.bootstrap_admin(store, tmp_path, again) is None
    assert again.getvalue() == "" and store.list() == []


def test_first_run_password_is_kept_in_a_private_file(tmp_path: Path) -> None:
    from rumpus_secure.accounts.store import SQLiteAccountStore

    store = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files")
    out = io.StringIO()
    password = tap.bootstrap_admin(store, tmp_path, out)
    saved = tmp_path / "initial-admin-password"
    assert saved.read_text() == f"{password}\n"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert str(saved) in out.getvalue()
    # A later start (the first one failed, say) keeps it and says where it is.
    assert not tap.forget_initial_password(store, tmp_path)
    later = io.StringIO()
    assert tap.bootstrap_admin(store, tmp_path, later) is None
    assert saved.exists() and str(saved) in later.getvalue()
    assert password not in later.getvalue()


def test_first_run_password_file_goes_once_the_password_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from rumpus_secure.accounts.store import SQLiteAccountStore

    store = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files")
    tap.bootstrap_admin(store, tmp_path, io.StringIO())
    saved = tmp_path / "initial-admin-password"
    # Another account's change leaves it alone.
    store.add("bob", "a long enough passphrase")
    assert not tap.forget_initial_password(store, tmp_path)
    # The admin's new password (any way: web, admin command) removes it at
    # the next start; the file is dated before the change.
    written = saved.stat().st_mtime
    os.utime(saved, (written - 10, written - 10))
    store.set_two_factor_required("admin", True)  # moves password_changed too
    assert not tap.forget_initial_password(store, tmp_path)  # the password still works
    store.set_password("admin", "another long passphrase")
    assert tap.forget_initial_password(store, tmp_path)
    assert not saved.exists()


def test_second_start_keeps_certificate_and_admin(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    options = {"data-dir": str(tmp_path)}
    tap.makeService(options, reactor=Reactor())
    cert = (tmp_path / "tls" / "cert.pem").read_bytes()
    capsys.readouterr()
    tap.makeService(options, reactor=Reactor())
    assert (tmp_path / "tls" / "cert.pem").read_bytes() == cert
    assert "created account" not in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_nonroot(tmp_path: Path) -> None:  # pragma: no cover
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit) as e:
        tap.makeService({"data-dir": str(locked / "d")}, reactor=Reactor())
    assert "cannot be written" in str(e.value.code)


def test_data_dir_under_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        tap.makeService({"data-dir": str(blocker / "data")}, reactor=Reactor())
    text = str(e.value.code)
    assert text.startswith("rumpus-secure: error: data directory") and "cannot be written" in text


def test_bad_certificate_is_one_line(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(SystemExit) as e:
        tap.makeService({"data-dir": str(tmp_path / "d"), "cert": str(cert),
                         "key": str(key)}, reactor=Reactor())
    assert str(e.value.code).startswith("rumpus-secure: error: ")


def test_bad_endpoint_string_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        tap.makeService({"data-dir": str(tmp_path), "ftp": "nonsense:1"},
                        reactor=Reactor())
    assert "--ftp: bad endpoint 'nonsense:1'" in str(e.value.code)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    from twisted.internet import reactor as real_reactor

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        top = tap.makeService(
            {"data-dir": str(tmp_path), "ftp": f"tcp:{port}:interface=127.0.0.1",
             "ftps": "none", "http": "none", "https": "none"},
            reactor=real_reactor,
        )
        [listener] = listeners(top).values()
        with pytest.raises(tap.PortUnavailable) as e:
            listener.privilegedStartService()
        assert f"cannot listen for ftp on tcp:{port}" in e.value.message
        assert e.value.code == 1
    finally:
        busy.close()


def test_tac_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__file__": str(REPO / "tac" / "rumpus-secure.tac")}
    source = (REPO / "tac" / "rumpus-secure.tac").read_text()
    exec(compile(source, "rumpus-secure.tac", "exec"), namespace)
    application = namespace["application"]
    top = service.IServiceCollection(application)
    [server] = list(top)
    assert set(listeners(server)) == {"ftp", "ftps", "http", "https"}
    assert (tmp_path / "rumpus-data" / "accounts.sqlite3").exists()


def test_implicit_only_tac_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    source = (REPO / "tac" / "implicit-only.tac").read_text()
    exec(compile(source, "implicit-only.tac", "exec"), namespace)
    [server] = list(service.IServiceCollection(namespace["application"]))
    assert server.server.config.ftp_security == "implicit-only"


def test_plugin_is_discoverable() -> None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    sys.path.insert(0, str(REPO))
    try:
        names = {p.tapname: p for p in getPlugins(IServiceMaker)}
    finally:
        sys.path.remove(str(REPO))
    assert "rumpus-secure" in names
    assert names["rumpus-secure"].options is tap.Options


def test_readme_documents_every_option_and_two_commands() -> None:
    from rumpus_secure.config import OPTIONS

    readme = (REPO / "README.rst").read_text()
    for option in OPTIONS:
        assert f"``--{option.name}``" in readme, option.name
    quick = readme.split("Quick start", 1)[1].split("Running\n", 1)[0]
    commands = [line.strip() for line in quick.splitlines() if line.startswith("    python3")]
    assert len(commands) == 2
    assert commands[0].endswith("twistd -n rumpus-secure")
    assert commands[1].endswith("python -m pytest")


@pytest.mark.parametrize("given, expected", [
    ("tcp:2121", "tcp:2121:backlog=1024"),
    ("tcp:2121:interface=127.0.0.1", "tcp:2121:interface=127.0.0.1:backlog=1024"),
    ("tcp6:2121", "tcp6:2121:backlog=1024"),
    ("haproxy:tcp:21", "haproxy:tcp:21:backlog=1024"),
    ("tcp:2121:backlog=10", "tcp:2121:backlog=10"),
    ("unix:/run/ftp.sock", "unix:/run/ftp.sock"),
])
def test_listen_backlog_default(given: str, expected: str) -> None:
    assert tap.with_backlog(given) == expected


def test_backlog_reaches_the_listener(tmp_path: Path) -> None:
    reactor = Reactor()
    top = tap.makeService({"data-dir": str(tmp_path), "ftps": "none", "http": "none",
                           "https": "none", "ftp": "tcp:2121"}, reactor=reactor)
    [listener] = listeners(top).values()
    listener.privilegedStartService()
    [(port, factory, backlog, interface)] = reactor.tcpServers
    assert (port, backlog) == (2121, 1024)


# -- start-up warnings, pid file, config names (issue #13, parts 4 and 5) -----


def test_unknown_option_gets_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'data-dri'; did you mean 'data-dir'"):
        build_config({"data-dri": "x"})
    config = tmp_path / "server.toml"
    config.write_text("public_hots = 'files.example.com'\n")
    with pytest.raises(ConfigError, match="did you mean 'public-host'"):
        build_config({}, config)
    with pytest.raises(ConfigError) as raised:
        build_config({"zzzzzz": 1})
    assert "did you mean" not in str(raised.value)


@pytest.mark.parametrize("description, everywhere", [
    ("tcp:2121", True),
    ("tcp:port=2121", True),
    ("tcp:2121:interface=0.0.0.0", True),
    ("tcp6:2121:interface=\\:\\:", True),
    ("haproxy:tcp:21", True),
    ("tcp:2121:interface=127.0.0.1", False),
    ("tcp:2121:interface=192.0.2.10", False),
    ("unix:/run/rumpus.sock", False),
    (None, False),
])
def test_listens_on_all_interfaces(description: str | None, everywhere: bool) -> None:
    assert tap.listens_on_all_interfaces(description) is everywhere


def _warnings(self_signed: bool = False, euid: int | None = 1000,
              dropping_to: Any = None, **options: str) -> list[str]:
    return tap.startup_warnings(build_config(options), self_signed, euid, dropping_to)


def test_warning_public_host_localhost_on_all_interfaces() -> None:
    [warning] = _warnings()
    assert "--public-host is localhost" in warning
    assert "remote clients will be redirected to localhost" in warning
    assert "--public-host files.example.com" in warning
    assert _warnings(**{"public-host": "files.example.com"}) == []
    assert _warnings(**{"public-host": "127.0.0.1"}) != []
    local = {name: "tcp:0:interface=127.0.0.1" for name in ("ftp", "ftps", "http", "https")}
    assert _warnings(**local) == []


def test_warning_self_signed_on_all_interfaces() -> None:
    options = {"public-host": "files.example.com"}
    [warning] = _warnings(self_signed=True, **options)
    assert "self-signed" in warning and "verification off" in warning
    assert "--cert FILE --key FILE" in warning
    local = {name: "tcp:0:interface=127.0.0.1" for name in ("ftp", "ftps", "http", "https")}
    assert _warnings(self_signed=True, **options, **local) == []


def test_warning_running_as_root_says_how_to_drop_it() -> None:
    options = {"public-host": "files.example.com"}
    [warning] = _warnings(euid=0, **options)
    assert "running as root" in warning
    assert "--uid" in warning and "User=" in warning and "CAP_NET_BIND_SERVICE" in warning
    # twistd --uid drops root after binding: nothing to say.
    assert _warnings(euid=0, dropping_to=1000, **options) == []
    assert _warnings(euid=None, **options) == []


def test_quick_start_warns_once_and_still_works_as_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The start-up warnings go to the log once: under ``twistd -n`` the log is
    the console, so a second copy on stdout was the same line twice.
    """
    import os

    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        top = tap.makeService({"data-dir": str(tmp_path / "data")}, reactor=Reactor())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert set(listeners(top)) == {"ftp", "ftps", "http", "https"}
    from twisted.logger import formatEvent

    warned = [formatEvent(e) for e in events if e.get("log_level") is not None
              and e["log_level"].name == "warn"]
    for expected in ("--public-host is localhost",
                     "the certificate is self-signed and the listeners",
                     "running as root"):
        assert sum(expected in w for w in warned) == 1, (expected, warned)
    assert "Warning:" not in capsys.readouterr().out


def test_twistd_in_the_foreground_writes_no_pid_file_unless_asked() -> None:
    """
    twistd's own option parsing with our plugin: -n drops the default
    twistd.pid (a second instance from the same folder refused to start);
    an explicit other name and daemon mode keep theirs.  This relies on
    twistd's 'pidfile' and 'nodaemon' option names: it fails if they change.
    """
    from twisted.scripts.twistd import ServerOptions

    def pidfile(*argv: str) -> str:
        options = ServerOptions()
        options.parseOptions([*argv, "rumpus-secure", "--data-dir", "/nonexistent"])
        return options["pidfile"]

    assert pidfile("-n") == ""
    assert pidfile("-n", "--pidfile=") == ""
    assert pidfile("-n", "--pidfile=./twistd.pid").endswith("/twistd.pid")
    assert pidfile("-n", "--pidfile=/run/rumpus.pid") == "/run/rumpus.pid"
    assert pidfile().endswith("/twistd.pid")  # a daemon keeps its pid file


def test_listener_record_round_trip(tmp_path: Path) -> None:
    """
    The server records its options and bound ports; the check reads back the
    same configuration, with a port-0 listener on the port it got.
    """
    import json

    from twisted.internet.address import IPv4Address

    from rumpus_secure.selfcheck import recorded_config

    config = build_config({
        "data-dir": str(tmp_path), "ftp": "tcp:0:interface=127.0.0.1",
        "ftps": "haproxy:tcp:9990", "http": "none", "public-host": "files.example.com",
        "passive-ports": "60000-60010", "safe-list": "10.0.0.0/8,192.0.2.1",
        "http-redirect": "off", "root": str(tmp_path / "srv"),
    })

    class Bound:
        def __init__(self, port: int) -> None:
            self.port = port

        def getHost(self) -> IPv4Address:
            return IPv4Address("TCP", "127.0.0.1", self.port)

    listeners = [
        tap.ListenerService(label, getattr(config, label), None, None)
        for label in ("ftp", "ftps", "https")
    ]
    record = tap.ListenerRecord(config, listeners, pid=4242)
    record._write([Bound(40001), Bound(9990), Bound(8443)])
    written = json.loads((tmp_path / "listeners.json").read_text())
    assert written["pid"] == 4242
    assert written["listening"]["ftp"] == {
        "endpoint": "tcp:0:interface=127.0.0.1", "host": "127.0.0.1", "port": 40001}
    recorded = recorded_config(tmp_path)
    assert recorded is not None and recorded.pid == 4242
    assert recorded.config.ftp == "tcp:40001:interface=127.0.0.1"
    expected = {f.name: getattr(config, f.name) for f in fields(ServerConfig)}
    got = {f.name: getattr(recorded.config, f.name) for f in fields(ServerConfig)}
    expected["ftp"] = got["ftp"]
    expected["data_dir"] = config.data_dir.absolute()
    assert got == expected
    # A clean stop removes the record it wrote, not another process's.
    record.stopService()
    assert recorded_config(tmp_path) is None
    record._write([Bound(40001), Bound(9990), Bound(8443)])
    tap.ListenerRecord(config, listeners, pid=1).stopService()
    assert (tmp_path / "listeners.json").exists()


def test_make_service_records_the_listeners(tmp_path: Path) -> None:
    import json

    reactor = Reactor()
    top = tap.makeService({"data-dir": str(tmp_path)}, reactor=reactor)
    top.privilegedStartService()
    top.startService()
    try:
        written = json.loads((tmp_path / "listeners.json").read_text())
        assert set(written["listening"]) == {"ftp", "ftps", "http", "https"}
        assert written["options"]["ftp"] == "tcp:2121"
    finally:
        top.stopService()
    assert not (tmp_path / "listeners.json").exists()


def test_unknown_flag_gets_did_you_mean() -> None:
    with pytest.raises(SystemExit) as raised:
        tap.Options().parseOptions(["--public-hots", "x"])
    assert "option --public-hots not recognized; did you mean 'public-host'?" in str(
        raised.value)
