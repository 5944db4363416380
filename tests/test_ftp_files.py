"""
The FTP file commands, driven in memory over a real jailed home in tmp_path.

Control lines go through L{ControlProtocol.dataReceived}; the data
connection is the DTP that PASV's (fake) listening port builds, connected
to a L{StringTransport}.  Disk work runs synchronously (the fake server's
``run_in_thread``) unless a test holds it back with L{ManualThreads}.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rumpus_secure.ftp import listing
from rumpus_secure.ftp.file_transfers import DataConnection
from rumpus_secure.vfs import ALL_PERMISSIONS, TEMP_PREFIX, Entry

from .ftp_fakes import connect, make_server


class ManualThreads:
    """``run_in_thread`` that runs nothing until told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def run(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((function, args, d))
        return d

    def step(self) -> None:
        function, args, d = self.calls.pop(0)
        try:
            result = function(*args)
        except BaseException:  # noqa: BLE001 (handed to the Deferred)
            d.errback(Failure())
        else:
            d.callback(result)

    def flush(self) -> None:
        while self.calls:
            function, args, d = self.calls.pop(0)
            try:
                result = function(*args)
            except BaseException:  # noqa: BLE001 (handed to the Deferred)
                d.errback(Failure())
            else:
                d.callback(result)


class Session:
    def __init__(self, tmp_path: Path, perms: frozenset[str] = ALL_PERMISSIONS,
                 threads: ManualThreads | None = None) -> None:
        self.server = make_server(tmp_path, ftp_security="allow-plain")
        self.server.store.accounts["alice"].perms = frozenset(perms)
        if threads is not None:
            self.server.run_in_thread = threads.run  # type: ignore[method-assign]
        self.threads = threads
        self.home = self.server.store.get("alice").home
        self.proto, self.transport, self.reactor = connect(self.server)
        self.transport.clear()
        self.proto.dataReceived(b"USER alice\r\nPASS right\r\n")
        self.flush()
        assert self.transport.lines()[-1].startswith("230 "), self.transport.lines()

    def flush(self) -> None:
        for _ in range(5):
            if self.threads is not None:
                self.threads.flush()
            self.reactor.advance(0)

    def send(self, *lines: str) -> list[str]:
        self.transport.clear()
        for line in lines:
            self.proto.dataReceived((line + "\r\n").encode("utf-8", "surrogateescape"))
            self.flush()
        return self.transport.lines()

    def open_data(self) -> tuple[DataConnection, StringTransport]:
        [reply] = self.send("PASV")
        assert reply.startswith("227 "), reply
        factory = self.reactor.tcpServers[-1][1]
        dtp = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50000))
        data = StringTransport()
        dtp.makeConnection(data)
        self.flush()
        assert isinstance(dtp, DataConnection)
        return dtp, data

    def retr(self, command: str) -> tuple[list[str], bytes]:
        _dtp, data = self.open_data()
        replies = self.send(command)
        return replies, data.value()

    def stor(self, command: str, payload: bytes, clean: bool = True) -> list[str]:
        dtp, _data = self.open_data()
        replies = self.send(command)
        dtp.dataReceived(payload)
        reason = error.ConnectionDone() if clean else error.ConnectionLost()
        self.transport.clear()
        dtp.connectionLost(Failure(reason))
        self.flush()
        return replies + self.transport.lines()

    def disk(self) -> dict[str, bytes]:
        found = {}
        for root, dirs, files in os.walk(self.home):
            for name in files:
                path = Path(root, name)
                found[str(path.relative_to(self.home))] = path.read_bytes()
        return found


def codes(replies: list[str]) -> list[str]:
    return [reply[:3] for reply in replies]


# -- navigation and the jail ------------------------------------------------


def test_pwd_cwd_cdup(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "docs" / "deep").mkdir(parents=True)
    assert s.send("PWD") == ['257 "/" is the current directory.']
    assert codes(s.send("CWD docs/deep")) == ["250"]
    assert s.send("XPWD") == ['257 "/docs/deep" is the current directory.']
    assert codes(s.send("CDUP")) == ["250"]
    assert s.send("PWD")[0].startswith('257 "/docs"')
    assert codes(s.send("CWD /nope")) == ["550"]


def test_cwd_cannot_leave_home(tmp_path: Path) -> None:
    s = Session(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, s.home / "escape")
    s.send("CWD ../../..")
    assert s.send("PWD")[0].startswith('257 "/" ')
    assert codes(s.send("CWD /escape")) == ["550"]
    assert codes(s.send("SIZE escape/secret.txt")) == ["550"]
    replies, data = s.retr("RETR /escape/secret.txt")
    assert codes(replies) == ["550"] and data == b""
    replies, data = s.retr("RETR ../outside/secret.txt")
    assert codes(replies) == ["550"] and data == b""
    replies = s.stor("STOR escape/new.txt", b"x")
    assert codes(replies)[0] == "550"
    assert sorted(os.listdir(outside)) == ["secret.txt"]


# -- listings -----------------------------------------------------------------


def test_list_format(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "report.pdf").write_bytes(b"x" * 1234)
    (s.home / "sub dir").mkdir()
    old = s.home / "old.txt"
    old.write_text("old")
    os.utime(old, (0, 86400 * 400))
    replies, data = s.retr("LIST -la")
    assert codes(replies) == ["150", "226"]
    lines = data.decode().split("\r\n")
    assert lines[-1] == ""
    by_name = {line.split()[-1] if "sub dir" not in line else "sub dir": line
               for line in lines[:-1]}
    report = by_name["report.pdf"].split()
    assert report[0].startswith("-rw") and report[4] == "1234"
    assert report[2] == report[3] == "alice"
    assert ":" in report[7]  # recent: HH:MM
    assert by_name["sub dir"].startswith("d") and by_name["sub dir"].endswith(" sub dir")
    assert by_name["old.txt"].split()[7] == "1971"


def test_list_of_a_file_and_nlst(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "a.txt").write_text("a")
    (s.home / "b.txt").write_text("b")
    _, data = s.retr("LIST a.txt")
    assert data.decode().rstrip().endswith(" a.txt")
    _, names = s.retr("NLST")
    assert names == b"a.txt\r\nb.txt\r\n"


def test_non_utf8_name_is_listed(tmp_path: Path) -> None:
    s = Session(tmp_path)
    with open(os.fsencode(s.home) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    replies, data = s.retr("MLSD")
    assert codes(replies) == ["150", "226"]
    assert "caf\ufffd.txt" in data.decode("utf-8")


def test_mlsd_and_mlst_facts(tmp_path: Path) -> None:
    s = Session(tmp_path, perms=frozenset({"list", "download", "rename"}))
    (s.home / "f.bin").write_bytes(b"12345")
    (s.home / "d").mkdir()
    os.utime(s.home / "f.bin", (0, 1_600_000_000))
    replies, data = s.retr("MLSD")
    assert codes(replies) == ["150", "226"]
    lines = data.decode().split("\r\n")[:-1]
    facts = {}
    for line in lines:
        text, _, name = line.partition(" ")
        facts[name] = dict(f.split("=", 1) for f in text.rstrip(";").split(";"))
    assert facts["."]["type"] == "cdir"
    assert facts["f.bin"]["type"] == "file"
    assert facts["f.bin"]["size"] == "5"
    assert facts["f.bin"]["modify"] == "20200913122640"
    assert facts["f.bin"]["perm"] == "fr"
    assert facts["d"]["type"] == "dir" and facts["d"]["perm"] == "efl"
    assert "unique" in facts["d"]
    mlst = s.send("MLST f.bin")
    assert mlst[0].startswith("250-") and mlst[-1] == "250 End"
    assert mlst[1].startswith(" type=file;size=5;") and mlst[1].endswith(" /f.bin")
    assert s.send("OPTS MLST size;type;bogus;") == ["200 MLST OPTS type;size;"]
    assert s.send("MLST f.bin")[1] == " type=file;size=5; /f.bin"


def test_feat_lists_the_file_extensions(tmp_path: Path) -> None:
    s = Session(tmp_path)
    feat = s.send("FEAT")
    for line in (" MLST type*;size*;modify*;perm*;unique*;UNIX.mode;", " REST STREAM",
                 " SIZE", " MDTM", " MFMT", " UTF8", " EPSV", " EPRT", " TVFS",
                 " HASH SHA-1;SHA-256*;SHA-512;MD5"):
        assert line in feat, line
    assert s.send("OPTS UTF8 ON")[0].startswith("200 ")


def test_stat_with_and_without_path(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "a.txt").write_text("hello")
    status = s.send("STAT")
    assert status[0].startswith("211-") and status[-1].startswith("211 ")
    listed = s.send("STAT /")
    assert listed[0].startswith("213-") and listed[-1].startswith("213 ")
    assert listed[1].startswith(" -rw") and listed[1].endswith(" a.txt")


# -- metadata ---------------------------------------------------------------


def test_size_mdtm_mfmt(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"abc")
    assert s.send("SIZE f") == ["213 3"]
    assert s.send("MFMT 20200102030405 f")[0] == "213 Modify=20200102030405; /f"
    assert s.send("MDTM f") == ["213 20200102030405"]
    assert (s.home / "f").stat().st_mtime == listing.parse_ftp_time("20200102030405")
    assert codes(s.send("MFMT yesterday f")) == ["501"]
    assert codes(s.send("SIZE /")) == ["550"]


def test_hash(tmp_path: Path) -> None:
    s = Session(tmp_path)
    content = b"some content" * 1000
    (s.home / "f").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    assert s.send("HASH f") == [f"213 SHA-256 0-{len(content)} {digest} /f"]
    assert s.send("OPTS HASH SHA-1") == ["200 SHA-1"]
    [reply] = s.send("HASH f")
    assert reply.split()[3] == hashlib.sha1(content).hexdigest()
    assert codes(s.send("OPTS HASH CRC99")) == ["504"]


# -- changes ------------------------------------------------------------------


def test_mkd_rmd_dele_rename(tmp_path: Path) -> None:
    s = Session(tmp_path)
    assert s.send('MKD new "dir"') == ['257 "/new ""dir""" created.']
    assert codes(s.send("XMKD other", "RMD other")) == ["257", "250"]
    (s.home / "f").write_text("x")
    assert codes(s.send("RNFR f", "RNTO g")) == ["350", "250"]
    assert (s.home / "g").exists() and not (s.home / "f").exists()
    assert codes(s.send("RNTO h")) == ["503"]
    assert codes(s.send("RNFR missing")) == ["550"]
    assert codes(s.send("DELE g")) == ["250"]
    assert not (s.home / "g").exists()
    (s.home / "full").mkdir()
    (s.home / "full" / "x").write_text("x")
    assert codes(s.send("RMD full")) == ["550"]  # never recursive
    assert (s.home / "full" / "x").exists()
    assert codes(s.send("MKD full")) == ["553"]


PERMISSION_CASES = [
    ("list", ["LIST"], None),
    ("list", ["MLSD"], None),
    ("download", ["RETR f"], None),
    ("upload", ["STOR new"], b"data"),
    ("overwrite", ["STOR f"], b"data"),
    ("overwrite", ["APPE f"], b"data"),
    ("overwrite", ["MFMT 20200101000000 f"], None),
    ("delete", ["DELE f"], None),
    ("delete", ["RMD d"], None),
    ("rename", ["RNFR f", "RNTO g"], None),
    ("mkdir", ["MKD e"], None),
]


@pytest.mark.parametrize("missing, commands, payload", PERMISSION_CASES)
def test_permission_matrix(tmp_path: Path, missing: str, commands: list[str],
                           payload: bytes | None) -> None:
    s = Session(tmp_path, perms=ALL_PERMISSIONS - {missing})
    (s.home / "f").write_bytes(b"original")
    (s.home / "d").mkdir()
    before = s.disk(), sorted(os.listdir(s.home))
    *setup, last = commands
    if setup:
        s.send(*setup)
    if last.split()[0] in ("LIST", "MLSD", "RETR"):
        replies, data = s.retr(last)
        assert data == b""
    elif payload is not None:
        replies = s.stor(last, payload)
    else:
        replies = s.send(last)
    assert replies[-1].startswith("550 "), replies
    assert f"missing permission '{missing}'" in replies[-1]
    assert (s.disk(), sorted(os.listdir(s.home))) == before


# -- transfers ----------------------------------------------------------------


def test_retr_and_rest(tmp_path: Path) -> None:
    s = Session(tmp_path)
    content = os.urandom(600 * 1024)
    (s.home / "big").write_bytes(content)
    replies, data = s.retr("RETR big")
    assert codes(replies) == ["150", "226"] and data == content
    assert s.send("REST 1000") == ["350 Restarting at 1000. Send RETR, STOR or APPE."]
    replies, data = s.retr("RETR big")
    assert data == content[1000:]
    s.send("REST 99999999")
    replies, data = s.retr("RETR big")
    assert codes(replies) == ["554"] and data == b""


def test_retr_needs_a_data_connection(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_text("x")
    assert codes(s.send("RETR f")) == ["425"]


def test_stor_replaces_atomically(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"old")
    replies = s.stor("STOR f", b"new content")
    assert codes(replies) == ["150", "226"]
    assert s.disk() == {"f": b"new content"}


def test_stor_cut_short_keeps_old_file(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"old")
    replies = s.stor("STOR f", b"half of the new", clean=False)
    assert codes(replies) == ["150", "426"]
    assert "discarded" in replies[-1] and "unchanged" in replies[-1]
    assert s.disk() == {"f": b"old"}
    assert not any(name.startswith(TEMP_PREFIX) for name in os.listdir(s.home))


def test_stor_cut_short_keeps_new_partial_for_resume(tmp_path: Path) -> None:
    s = Session(tmp_path)
    replies = s.stor("STOR new", b"first half", clean=False)
    assert codes(replies) == ["150", "426"]
    assert "kept" in replies[-1] and "REST" in replies[-1]
    assert s.disk() == {"new": b"first half"}
    assert s.send("SIZE new") == ["213 10"]
    s.send("REST 10")
    assert codes(s.stor("STOR new", b", second half")) == ["150", "226"]
    assert s.disk() == {"new": b"first half, second half"}
    assert codes(s.stor("APPE new", b"!")) == ["150", "226"]
    assert s.disk() == {"new": b"first half, second half!"}


def test_rest_stor_truncates_at_offset(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"0123456789")
    s.send("REST 4")
    assert codes(s.stor("STOR f", b"ab")) == ["150", "226"]
    assert s.disk() == {"f": b"0123ab"}


def test_stou(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "name").write_text("taken")
    replies = s.stor("STOU name", b"fresh")
    assert replies[0] == "150 FILE: name.1" and replies[1].startswith("226 ")
    assert s.disk() == {"name": b"taken", "name.1": b"fresh"}


def test_type_a_converts_line_ends(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "t.txt").write_bytes(b"one\ntwo\n")
    assert codes(s.send("TYPE A")) == ["200"]
    _, data = s.retr("RETR t.txt")
    assert data == b"one\r\ntwo\r\n"
    s.stor("STOR u.txt", b"a\r\nb\r\nc")
    assert (s.home / "u.txt").read_bytes() == b"a\nb\nc"
    assert codes(s.send("TYPE I")) == ["200"]
    _, data = s.retr("RETR t.txt")
    assert data == b"one\ntwo\n"
    assert codes(s.send("TYPE E", "MODE S", "MODE B", "STRU F", "STRU R", "ALLO 10")) == [
        "504", "200", "504", "200", "504", "202"]


def test_line_end_converters_across_chunks() -> None:
    encoder = listing.LineEndEncoder()
    assert encoder.convert(b"a\r") + encoder.convert(b"\nb\n") == b"a\r\nb\r\n"
    decoder = listing.LineEndDecoder()
    out = decoder.convert(b"a\r") + decoder.convert(b"\nb\r") + decoder.flush()
    assert out == b"a\nb\r"


def test_abor_during_upload(tmp_path: Path) -> None:
    threads = ManualThreads()
    s = Session(tmp_path, threads=threads)
    (s.home / "f").write_bytes(b"old")
    dtp, data = s.open_data()
    assert codes(s.send("STOR f")) == ["150"]
    dtp.dataReceived(b"partial")
    s.transport.clear()
    s.proto.dataReceived(b"STAT\r\n")
    [status] = s.transport.lines()
    assert status.startswith("213 STOR /f: 7 bytes")
    s.transport.clear()
    s.proto.dataReceived(b"\xff\xf4\xff\xf2ABOR\r\n")
    assert data.disconnecting or dtp.transport.disconnecting
    dtp.connectionLost(Failure(error.ConnectionAborted()))
    s.flush()
    replies = s.transport.lines()
    assert codes(replies) == ["426", "226"], replies
    assert "ABOR" in replies[0] and "unchanged" in replies[0]
    assert s.disk() == {"f": b"old"}
    assert codes(s.send("NOOP")) == ["200"]


def test_abor_during_download(tmp_path: Path) -> None:
    threads = ManualThreads()
    s = Session(tmp_path, threads=threads)
    (s.home / "f").write_bytes(os.urandom(3 * 256 * 1024))
    _dtp, data = s.open_data()
    s.transport.clear()
    s.proto.dataReceived(b"RETR f\r\n")
    threads.step()  # open
    threads.step()  # first chunk
    assert 0 < len(data.value()) < 3 * 256 * 1024
    s.proto.dataReceived(b"ABOR\r\n")
    s.flush()
    replies = s.transport.lines()
    assert codes(replies) == ["150", "426", "226"], replies
    assert codes(s.send("ABOR")) == ["226"]


def test_unknown_and_site(tmp_path: Path) -> None:
    s = Session(tmp_path)
    assert codes(s.send("SITE CHMOD 777 x", "XYZZY")) == ["502", "502"]
    help_lines = s.send("HELP")
    assert help_lines[0].startswith("214-") and help_lines[-1].startswith("214 ")
    assert any("MLSD" in line for line in help_lines)


def test_mlsx_line_for_symlink() -> None:
    entry = Entry("l", "symlink", 3, time.time(), 0o120777, "1g2")
    line = listing.mlsx_line(entry, "l", listing.DEFAULT_FACTS, ALL_PERMISSIONS)
    assert line.startswith("type=OS.unix=symlink;") and "perm=df;" in line


# -- how a TLS data connection ends -----------------------------------------


def _tls_options() -> tuple[Any, Any]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from twisted.internet.ssl import CertificateOptions

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    server = CertificateOptions(privateKey=key, certificate=cert)
    return server, CertificateOptions(verify=False)


@pytest.mark.parametrize("close_notify", [True, False])
def test_tls_upload_end_tells_truncation(close_notify: bool) -> None:
    """
    A clean TLS close (close_notify) reaches the DTP as ConnectionDone; a TCP
    close without it as ConnectionLost: only the first commits an upload.
    """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test.iosim import connectedServerAndClient

    server_options, client_options = _tls_options()
    received: list[bytes] = []

    class Owner(Factory):
        deferred: defer.Deferred[None] = defer.Deferred()

        def buildProtocol(self, addr: Any) -> DataConnection:
            dtp = DataConnection()
            dtp._prepare()
            dtp.factory = self
            dtp.attach(received.append)
            self.dtp = dtp
            return dtp

    owner = Owner()
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(server_options, False, owner, clock=clock)
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(Protocol), clock=clock)
    client, _server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None))
    pump.flush()
    client.write(b"upload data")
    clock.advance(0)  # the TLS transport aggregates small writes
    pump.flush()
    if close_notify:
        client.loseConnection()
    else:
        client.transport.loseConnection()  # TCP close, TLS layer bypassed
    pump.flush()
    assert b"".join(received) == b"upload data"
    assert owner.dtp.lost_reason is not None
    assert owner.dtp.ended_cleanly is close_notify
    expected = error.ConnectionDone if close_notify else error.ConnectionLost
    assert owner.dtp.lost_reason.check(expected)
