"""
The FTP file commands, driven in memory over a real jailed home in tmp_path.

Control lines go through L{ControlProtocol.dataReceived}; the data
connection is one end of a real loopback TCP connection (the other end is a
L{DataClient} thread), and the transfer engine's worker runs in a thread that
L{ThreadEngine} settles on the test's thread.  Disk work outside transfers
runs synchronously (the fake server's ``run_in_thread``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from rumpus_secure.ftp import listing
from rumpus_secure.ftp import transfer
from rumpus_secure.ftp.transfer import TransferHandle
from rumpus_secure.vfs import ALL_PERMISSIONS, TEMP_PREFIX, Entry

from .ftp_fakes import connect, make_server
from .test_vfs_support import open_fd_count


class ThreadEngine:
    """
    The transfer engine's worker logic in real threads, settled on demand.

    Each transfer runs the real worker function on a real loopback socket;
    L{settle} joins the threads and fires their Deferreds on the test's
    thread, so the memory reactor never has to receive callFromThread.
    """

    def __init__(self) -> None:
        self.running: list[tuple[threading.Thread, dict[str, Any], defer.Deferred[Any]]] = []

    def run(self, connect: Any, tls: Any, job: Any, handle: TransferHandle) -> TransferHandle:
        box: dict[str, Any] = {}
        d: defer.Deferred[Any] = defer.Deferred()
        handle.result = d

        def work() -> None:
            box["result"] = transfer._run(connect, tls, job, handle, 5.0)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self.running.append((thread, box, d))
        return handle

    def settle(self) -> None:
        running, self.running = self.running, []
        for thread, box, d in running:
            thread.join(10)
            assert not thread.is_alive(), "a transfer thread is stuck"
            d.callback(box["result"])


class DataClient:
    """
    The FTP client's end of a data connection, served by a thread.
    """

    def __init__(self, sock: socket.socket, upload: bytes | None = None,
                 reset: bool = False, hold: threading.Event | None = None) -> None:
        self.sock = sock
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, args=(upload, reset, hold),
                                       daemon=True)
        self.thread.start()

    def _serve(self, upload: bytes | None, reset: bool, hold: threading.Event | None) -> None:
        sock = self.sock
        try:
            if upload is not None:
                sock.sendall(upload)
                if hold is not None:
                    hold.wait(10)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    return
                sock.shutdown(socket.SHUT_WR)
            elif hold is not None:
                self.received += sock.recv(1024)
                hold.wait(10)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                self.received += chunk
        except OSError:
            pass
        finally:
            sock.close()

    def data(self) -> bytes:
        self.thread.join(10)
        return bytes(self.received)


class SocketSource:
    """
    A data source that hands over one end of a real loopback connection.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.used = False

    def connector(self) -> defer.Deferred[Any]:
        self.used = True  # the engine owns the socket from now on
        return defer.succeed(lambda: self.sock)

    def close(self) -> None:
        if not self.used:
            self.sock.close()


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


class Session:
    def __init__(self, tmp_path: Path, perms: frozenset[str] = ALL_PERMISSIONS) -> None:
        self.server = make_server(tmp_path, ftp_security="allow-plain")
        self.server.store.accounts["alice"].perms = frozenset(perms)
        self.engine = self.server.transfer_engine = ThreadEngine()
        self.home = self.server.store.get("alice").home
        self.proto, self.transport, self.reactor = connect(self.server)
        self.transport.clear()
        self.proto.dataReceived(b"USER alice\r\nPASS right\r\n")
        self.flush()
        assert self.transport.lines()[-1].startswith("230 "), self.transport.lines()

    def flush(self) -> None:
        for _ in range(5):
            self.engine.settle()
            self.reactor.advance(0)

    def send(self, *lines: str) -> list[str]:
        self.transport.clear()
        for line in lines:
            self.proto.dataReceived((line + "\r\n").encode("utf-8", "surrogateescape"))
            self.flush()
        return self.transport.lines()

    def open_data(self, **client: Any) -> DataClient:
        [reply] = self.send("PASV")
        assert reply.startswith("227 "), reply
        server_end, client_end = loopback_pair()
        self.proto.data_source.close()  # the real listener: not used in memory
        self.proto.data_source = SocketSource(server_end)
        return DataClient(client_end, **client)

    def retr(self, command: str) -> tuple[list[str], bytes]:
        client = self.open_data()
        replies = self.send(command)
        return replies, client.data()

    def stor(self, command: str, payload: bytes, clean: bool = True) -> list[str]:
        client = self.open_data(upload=payload, reset=not clean)
        replies = self.send(command)
        client.data()
        return replies

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
    # Directory order (listings stream, unsorted): each name on its own line.
    assert names.endswith(b"\r\n")
    assert sorted(names.split(b"\r\n")[:-1]) == [b"a.txt", b"b.txt"]


def test_non_utf8_name_is_listed(tmp_path: Path) -> None:
    s = Session(tmp_path)
    with open(os.fsencode(s.home) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    replies, data = s.retr("MLSD")
    assert codes(replies) == ["150", "226"]
    assert "caf\ufffd.txt" in data.decode("utf-8")


class LateSource(SocketSource):
    """A data connection that arrives only when the test says so."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.arrived: defer.Deferred[Any] = defer.Deferred()

    def connector(self) -> defer.Deferred[Any]:
        self.used = True
        return self.arrived


def test_listings_read_the_folder_as_they_send(tmp_path: Path) -> None:
    """
    LIST, NLST and MLSD answer 150 having only opened the folder; the
    entries are read by the transfer's worker as it sends, so a name made
    between the 150 and the data connection is listed (a listing built
    before the 150 could not know it), and every descriptor is closed.
    """
    s = Session(tmp_path)
    for index in range(3000):  # several blocks of listing.LISTING_BATCH
        (s.home / f"entry-{index:05d}-{'x' * 40}").touch()
    for command in ("MLSD", "LIST", "NLST"):
        before = open_fd_count()
        assert codes(s.send("PASV")) == ["227"]
        server_end, client_end = loopback_pair()
        s.proto.data_source.close()
        source = s.proto.data_source = LateSource(server_end)
        client = DataClient(client_end)
        assert codes(s.send(command)) == ["150"]
        (s.home / "late.txt").touch()
        source.arrived.callback(lambda sock=server_end: sock)
        s.flush()
        assert codes(s.transport.lines()) == ["150", "226"]
        lines = client.data().decode().split("\r\n")
        assert lines[-1] == ""
        names = [line.rpartition(" ")[2] if command != "NLST" else line
                 for line in lines[:-1]]
        assert len(names) == len(set(names)) == 3001 + (command == "MLSD")
        assert "late.txt" in names
        (s.home / "late.txt").unlink()
        assert open_fd_count() == before


def test_a_listing_that_never_starts_closes_its_folder(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "a.txt").touch()
    before = open_fd_count()
    assert codes(s.send("PASV")) == ["227"]
    server_end, client_end = loopback_pair()
    s.proto.data_source.close()
    source = s.proto.data_source = LateSource(server_end)
    assert codes(s.send("MLSD")) == ["150"]
    source.arrived.errback(OSError("the client went away"))
    s.flush()
    assert codes(s.transport.lines()) == ["150", "522"]
    server_end.close()
    client_end.close()
    assert open_fd_count() == before


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


def test_stat_of_a_big_folder_lists_the_first_entries_and_says_where_the_rest_is(
        tmp_path: Path) -> None:
    from rumpus_secure.ftp.files import STAT_MAX_ENTRIES
    s = Session(tmp_path)
    big = s.home / "big"
    big.mkdir()
    for i in range(STAT_MAX_ENTRIES + 5):
        (big / f"f{i:05d}").write_bytes(b"")
    listed = s.send("STAT big")
    assert listed[0].startswith("213-") and listed[-1] == "213 End of status."
    entries = [line for line in listed[1:-1] if line.startswith(" -rw")]
    assert len(entries) == STAT_MAX_ENTRIES
    assert "LIST or MLSD" in listed[-2]
    # A folder at the cap is listed whole, with no note.
    for i in range(5):
        (big / f"f{i:05d}").unlink()
    listed = s.send("STAT big")
    assert len(listed) == STAT_MAX_ENTRIES + 2 and "MLSD" not in listed[-2]


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
    s = Session(tmp_path)
    (s.home / "f").write_bytes(b"old")
    hold = threading.Event()
    client = s.open_data(upload=b"partial", hold=hold)
    s.transport.clear()
    s.proto.dataReceived(b"STOR f\r\n")
    for _ in range(200):  # wait for the worker to have read the bytes
        if s.proto._transfer is not None and s.proto._transfer.bytes == 7:
            break
        time.sleep(0.01)
    s.proto.dataReceived(b"STAT\r\n")
    assert s.transport.lines()[-1].startswith("213 STOR /f: 7 bytes")
    s.proto.dataReceived(b"\xff\xf4\xff\xf2ABOR\r\n")
    hold.set()
    client.data()
    s.flush()
    replies = [r for r in s.transport.lines() if not r.startswith("213 ")]
    assert codes(replies) == ["150", "426", "226"], replies
    assert "ABOR" in replies[1] and "unchanged" in replies[1]
    assert s.disk() == {"f": b"old"}
    assert codes(s.send("NOOP")) == ["200"]


def test_abor_during_download(tmp_path: Path) -> None:
    s = Session(tmp_path)
    (s.home / "f").write_bytes(os.urandom(32 * 1024 * 1024))
    hold = threading.Event()
    client = s.open_data(hold=hold)  # reads 1 KiB, then stops reading
    s.transport.clear()
    s.proto.dataReceived(b"RETR f\r\n")
    for _ in range(200):
        if s.proto._transfer is not None and s.proto._transfer.bytes > 0:
            break
        time.sleep(0.01)
    s.proto.dataReceived(b"ABOR\r\n")
    s.flush()
    hold.set()
    client.data()
    replies = s.transport.lines()
    assert codes(replies) == ["150", "426", "226"], replies
    assert len(client.received) < 32 * 1024 * 1024
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


def test_encode_lines_gathers_blocks() -> None:
    lines = [f"line {index}" for index in range(1000)]
    blocks = list(listing.encode_lines(iter(lines), batch=100))
    assert b"".join(blocks) == "".join(line + "\r\n" for line in lines).encode()
    assert all(100 <= len(block) < 120 for block in blocks[:-1]) and blocks[-1]
    assert list(listing.encode_lines(iter([]))) == []
    assert list(listing.encode_lines(["caf\udce9"])) == [b"caf\xe9\r\n"]
