"""
The FTP file commands, built on the jailed filesystem.

L{FileCommands} is a mixin for L{rumpus_secure.ftp.control.ControlProtocol}:
navigation (PWD, CWD, CDUP), listings (LIST, NLST, MLSD, MLST, STAT),
metadata (SIZE, MDTM, MFMT, HASH), changes (MKD, RMD, DELE, RNFR/RNTO) and
settings (TYPE, MODE, STRU, REST, OPTS MLST/HASH); the transfers themselves
are in L{rumpus_secure.ftp.file_transfers}.  Every disk operation runs in a
thread through the session's L{FileShell}; every ``VFSError`` becomes the
matching reply, and nothing changes on disk when a command is refused.
Changes are audited (``ftp.mkdir``, ``ftp.rmdir``, ``ftp.delete``,
``ftp.rename``), refused ones too: the web's twins are.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer

from rumpus_secure.ftp import listing
from rumpus_secure.ftp.file_transfers import Plan, Refused, TransferCommands
from rumpus_secure.long_work import GoneAway
from rumpus_secure.vfs import DirScan, split_path, wire_name

#: OPTS HASH names and the hashlib names behind them.
#: Entries of a folder that C{STAT <folder>} lists on the control
#: connection; the rest is for LIST and MLSD, which stream on a data
#: connection.  An attacker's pipelined C{STAT} of a 30,000-entry folder was
#: a 6.6 MB reply each, and the whole folder read into memory first; 1,000
#: lines are about 70 KiB.
STAT_MAX_ENTRIES = 1000

HASH_NAMES = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512", "MD5": "md5"}


def quote_path(path: str) -> str:
    """A path for a 257 reply: in double quotes, inner quotes doubled."""
    return '"' + wire_name(path).replace('"', '""') + '"'



class FileCommands(TransferCommands):
    """The file commands of the control protocol (a mixin)."""

    _rename_from: str | None = None
    _mlst_facts: tuple[str, ...] = listing.DEFAULT_FACTS
    _hash_algorithm = "SHA-256"

    @staticmethod
    def file_features() -> list[str]:
        """The FEAT lines of the file commands."""
        hashes = ";".join(n + ("*" if n == "SHA-256" else "") for n in HASH_NAMES)
        return ["EPRT", "EPSV", "HASH " + hashes, listing.feat_mlst(), "MDTM",
                "MFMT", "REST STREAM", "SIZE", "TVFS", "TYPE A;I", "UTF8"]

    def file_options(self, name: str, value: str) -> str:
        """OPTS MLST and OPTS HASH."""
        if name == "MLST":
            self._mlst_facts = listing.choose_facts(value)
            return "200 MLST OPTS " + "".join(f + ";" for f in self._mlst_facts)
        value = value.strip().upper()
        if not value:
            return f"200 {self._hash_algorithm}"
        if value not in HASH_NAMES:
            return "504 Unknown hash algorithm; use one of " + ", ".join(HASH_NAMES) + "."
        self._hash_algorithm = value
        return f"200 {value}"

    # -- navigation ---------------------------------------------------------

    def ftp_PWD(self, ignored: str = "") -> str:
        assert self.shell is not None
        return f"257 {quote_path(self.shell.cwd)} is the current directory."

    ftp_XPWD = ftp_PWD

    def ftp_CWD(self, path: str) -> defer.Deferred[Any]:
        async def change() -> str:
            assert self.shell is not None
            target = self._path(path)
            if not await self.shell.call("is_dir", target):
                return f"550 CWD refused: no such directory: {wire_name(target)!r}"
            self.shell.cwd = target
            return f"250 Directory changed to {wire_name(target)}."

        return self._fs_command("CWD", change())

    ftp_XCWD = ftp_CWD

    def ftp_CDUP(self, ignored: str = "") -> defer.Deferred[Any]:
        return self.ftp_CWD("..")

    ftp_XCUP = ftp_CDUP

    # -- settings -------------------------------------------------------

    def ftp_TYPE(self, kind: str) -> str:
        words = kind.upper().split()
        if words in (["A"], ["A", "N"]):
            self.binary = False
            return "200 Type set to A (line ends converted)."
        if words in (["I"], ["L", "8"]):
            self.binary = True
            return "200 Type set to I."
        return f"504 TYPE {kind[:16]} not supported; use A or I."

    def ftp_MODE(self, mode: str) -> str:
        if mode.strip().upper() == "S":
            return "200 Mode set to S."
        return "504 Only MODE S (stream) is supported."

    def ftp_STRU(self, structure: str) -> str:
        if structure.strip().upper() == "F":
            return "200 Structure set to F."
        return "504 Only STRU F (file) is supported."

    def ftp_ALLO(self, size: str = "") -> str:
        return "202 No storage allocation necessary."

    def ftp_REST(self, offset: str) -> str:
        text = offset.strip()
        if not text.isdigit():
            return "501 REST needs a byte offset (a whole number)."
        self._rest = int(text)
        return f"350 Restarting at {self._rest}. Send RETR, STOR or APPE."

    def ftp_SITE(self, command: str = "") -> str:
        return "502 SITE commands are not supported here."

    # -- metadata -------------------------------------------------------

    def ftp_SIZE(self, path: str) -> defer.Deferred[Any]:
        async def size() -> str:
            assert self.shell is not None
            target = self._path(path)
            entry = await self.shell.call("stat", target)
            if entry.kind != "file":
                return f"550 SIZE refused: not a regular file: {wire_name(target)!r}"
            return f"213 {entry.size}"

        return self._fs_command("SIZE", size())

    def ftp_MDTM(self, path: str) -> defer.Deferred[Any]:
        async def mdtm() -> str:
            assert self.shell is not None
            target = self._path(path)
            entry = await self.shell.call("stat", target)
            return f"213 {listing.ftp_time(entry.mtime)}"

        return self._fs_command("MDTM", mdtm())

    def ftp_MFMT(self, argument: str) -> Any:
        stamp, _, path = argument.strip().partition(" ")
        try:
            mtime = listing.parse_ftp_time(stamp)
        except ValueError:
            return "501 MFMT needs YYYYMMDDHHMMSS and a path."
        if not path:
            return "501 MFMT needs YYYYMMDDHHMMSS and a path."

        async def mfmt() -> str:
            assert self.shell is not None
            target = self._path(path)
            await self.shell.call("set_mtime", target, mtime)
            return f"213 Modify={stamp}; {wire_name(target)}"

        return self._fs_command("MFMT", mfmt())

    def ftp_HASH(self, path: str) -> defer.Deferred[Any]:
        algorithm = self._hash_algorithm

        async def digest() -> str:
            assert self.shell is not None and self.account is not None
            target = self._path(path)
            fs = self.shell.fs

            def hash_with_size() -> tuple[str, int]:
                size = fs.stat(target).size
                return fs.hash_file(target, HASH_NAMES[algorithm]), size

            # Seconds of disk and CPU for a big file: on the long-work pool,
            # one at a time per account (L{rumpus_secure.long_work}).
            long_work = self.session_factory.shared.long_work  # type: ignore[attr-defined]
            try:
                value, size = await long_work.run(
                    self.account, hash_with_size,
                    wanted=lambda: not self._closing)  # type: ignore[attr-defined]
            except GoneAway:
                return "450 HASH not run: the connection is closing."
            return f"213 {algorithm} 0-{size} {value} {wire_name(target)}"

        return self._fs_command("HASH", digest())

    # -- changes ----------------------------------------------------------

    def _audited(self, event: str, argument: str, d: defer.Deferred[Any],
                 **fields: Any) -> defer.Deferred[Any]:
        """
        Audit a change (MKD, RMD, DELE, RNTO) once it has replied.

        The path is the resolved one (as the web's ``web.mkdir``, ...), the
        outcome ``ok`` for a 2xx reply, else ``refused`` with the reply code.
        """
        try:
            path = self._path(argument)
            extra = {k: self._path(v) for k, v in fields.items()}
        except Exception:  # noqa: BLE001 (a path the shell refuses: audit it raw)
            path, extra = argument, dict(fields)
        started = self.reactor.seconds()  # type: ignore[attr-defined]

        def audit(reply: Any) -> Any:
            text = reply if isinstance(reply, str) else ""
            ok = text[:1] == "2"
            self.audit.record(  # type: ignore[attr-defined]
                event,
                client=self.client_host,  # type: ignore[attr-defined]
                protocol=self.service_name,
                account=self.account,  # type: ignore[attr-defined]
                tls=self.tls_version,  # type: ignore[attr-defined]
                path=path,
                seconds=round(max(0.0, self.reactor.seconds() - started), 3),  # type: ignore[attr-defined]
                outcome="ok" if ok else "refused",
                reply=text[:3] or None,
                **extra,
            )
            return reply

        return d.addCallback(audit)

    def ftp_MKD(self, path: str) -> defer.Deferred[Any]:
        async def mkd() -> str:
            assert self.shell is not None
            target = self._path(path)
            await self.shell.call("mkdir", target)
            return f"257 {quote_path(target)} created."

        return self._audited("ftp.mkdir", path, self._fs_command("MKD", mkd()))

    ftp_XMKD = ftp_MKD

    def ftp_RMD(self, path: str) -> defer.Deferred[Any]:
        async def rmd() -> str:
            assert self.shell is not None
            target = self._path(path)
            if split_path(target) == split_path(self.shell.cwd)[: len(split_path(target))]:
                return "550 RMD refused: cannot remove the current directory or one above it."
            await self.shell.call("rmdir", target)
            return f"250 Directory {wire_name(target)} removed."

        return self._audited("ftp.rmdir", path, self._fs_command("RMD", rmd()))

    ftp_XRMD = ftp_RMD

    def ftp_DELE(self, path: str) -> defer.Deferred[Any]:
        async def dele() -> str:
            assert self.shell is not None
            target = self._path(path)
            await self.shell.call("remove", target)
            return f"250 File {wire_name(target)} deleted."

        return self._audited("ftp.delete", path, self._fs_command("DELE", dele()))

    def ftp_RNFR(self, path: str) -> defer.Deferred[Any]:
        async def rnfr() -> str:
            assert self.shell is not None
            target = self._path(path)
            if not await self.shell.call("exists", target):
                return f"550 RNFR refused: no such file or directory: {wire_name(target)!r}"
            self._rename_from = target
            self.state = self.RENAMING  # type: ignore[attr-defined]
            return "350 Ready for RNTO."

        return self._fs_command("RNFR", rnfr())

    def ftp_RNTO(self, path: str) -> Any:
        source, self._rename_from = self._rename_from, None
        if self.state != self.RENAMING or source is None:  # type: ignore[attr-defined]
            return "503 Send RNFR first."
        self.state = self.AUTHED  # type: ignore[attr-defined]

        async def rnto() -> str:
            assert self.shell is not None
            target = self._path(path)
            await self.shell.call("rename", source, target)
            return f"250 Renamed {wire_name(source)} to {wire_name(target)}."

        return self._audited("ftp.rename", source, self._fs_command("RNTO", rnto()),
                             to=path)

    # -- listings -----------------------------------------------------------

    def _ls_lines(self, target: str, entry: Any, children: list[Any] | None) -> list[str]:
        assert self.shell is not None
        now = time.time()
        owner = self.shell.account
        if children is None:
            name = split_path(target)[-1] if split_path(target) else "/"
            return [listing.ls_line(entry, name, owner, now)]
        return [listing.ls_line(child, child.name, owner, now) for child in children]

    async def _scan(self, argument: str | None) -> tuple[str, Any, DirScan | None]:
        """
        The path, its entry, and an open L{DirScan} when it is a directory.

        Only the directory is opened here (a thread, before the 150): the
        entries are read by the transfer's worker as it sends them.
        """
        assert self.shell is not None
        target = self._path(_strip_ls_flags(argument or ""))
        fs = self.shell.fs

        def look() -> tuple[Any, DirScan | None]:
            entry = fs.stat(target)
            return entry, (fs.scan_dir(target) if entry.kind == "dir" else None)

        entry, scan = await self.shell.run_in_thread(look)
        return target, entry, scan

    def ftp_LIST(self, path: str = "") -> Any:
        async def prepare() -> Plan:
            assert self.shell is not None
            target, entry, scan = await self._scan(path)
            now, owner = time.time(), self.shell.account
            if scan is None:
                return self.send_listing("LIST", target, self._ls_lines(target, entry, None))
            lines = (listing.ls_line(c, c.name, owner, now) for c in scan.entries())
            return self.send_listing("LIST", target, lines, scan)

        return self._transfer_command("LIST", prepare)

    def ftp_NLST(self, path: str = "") -> Any:
        async def prepare() -> Plan:
            target, _entry, scan = await self._scan(path)
            if scan is None:
                names = [wire_name(_strip_ls_flags(path or "")) or wire_name(target)]
                return self.send_listing("NLST", target, names)
            return self.send_listing("NLST", target, map(wire_name, scan.names()), scan)

        return self._transfer_command("NLST", prepare)

    def ftp_MLSD(self, path: str = "") -> Any:
        async def prepare() -> Plan:
            assert self.shell is not None
            target, _entry, scan = await self._scan(path)
            if scan is None:
                raise Refused(f"501 MLSD refused: not a directory: {wire_name(target)!r}; "
                              "use MLST.")
            perms, facts = self.shell.perms, self._mlst_facts

            def lines() -> Iterator[str]:
                yield listing.mlsx_line(scan.entry, ".", facts, perms, kind="cdir")
                for child in scan.entries():
                    yield listing.mlsx_line(child, child.name, facts, perms)

            return self.send_listing("MLSD", target, lines(), scan)

        return self._transfer_command("MLSD", prepare)

    def ftp_MLST(self, path: str = "") -> defer.Deferred[Any]:
        async def mlst() -> None:
            assert self.shell is not None
            target = self._path(path)
            entry = await self.shell.call("stat", target)
            self.sendLine(f"250-Listing {wire_name(target)}")
            self.sendLine(" " + listing.mlsx_line(entry, target, self._mlst_facts,
                                                  self.shell.perms))
            self.sendLine("250 End")

        return self._fs_command("MLST", mlst())

    def ftp_STAT(self, path: str = "") -> Any:
        if not path:
            self.sendLine("211-rumpus-secure FTP server status:")
            self.sendLine(f" Connected from {self.client_host}")  # type: ignore[attr-defined]
            self.sendLine(f" Logged in as {self.account}")  # type: ignore[attr-defined]
            self.sendLine(f" TYPE: {'I' if self.binary else 'A'}; "
                          f"PROT: {self.prot}")  # type: ignore[attr-defined]
            self.sendLine(" No data transfer in progress")
            return "211 End of status."

        async def stat_path() -> None:
            assert self.shell is not None
            target = self._path(_strip_ls_flags(path or ""))
            fs, owner = self.shell.fs, self.shell.account

            def look() -> tuple[list[str], bool]:
                # In a thread: at most STAT_MAX_ENTRIES + 1 entries are read.
                entry = fs.stat(target)
                now = time.time()
                if entry.kind != "dir":
                    return self._ls_lines(target, entry, None), False
                with fs.scan_dir(target) as scan:
                    first = list(itertools.islice(scan.entries(), STAT_MAX_ENTRIES + 1))
                lines = [listing.ls_line(c, c.name, owner, now)
                         for c in first[:STAT_MAX_ENTRIES]]
                return lines, len(first) > STAT_MAX_ENTRIES

            lines, more = await self.shell.run_in_thread(look)
            self.sendLine(f"213-Status of {wire_name(target)}:")
            for line in lines:
                self.sendLine(" " + line)
            if more:
                self.sendLine(f" (only the first {STAT_MAX_ENTRIES} entries are shown here; "
                              "LIST or MLSD lists them all)")
            self.sendLine("213 End of status.")

        return self._fs_command("STAT", stat_path())


def _strip_ls_flags(argument: str) -> str:
    """Drop ``ls`` options (``-a``, ``-la``) clients put before a LIST path."""
    argument = argument.strip()
    while argument.startswith("-"):
        _, _, argument = argument.partition(" ")
        argument = argument.strip()
    return argument
