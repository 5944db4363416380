"""
Transfers over the data connection: RETR, STOR, APPE, STOU, ABOR.

L{TransferCommands} is the transfer half of the file-command mixin
(L{rumpus_secure.ftp.files.FileCommands}).  It uses the data connection
``data.py`` opened (PASV, EPSV, PORT, EPRT).  Twisted's ``DTP`` does not tell
how its connection ended, which is what decides whether an upload is
complete, so the protocol the DTP factory builds is turned into a
L{DataConnection} as it is handed to the control protocol (the
``dtpInstance`` setter).

Disk work runs in threads: downloads read one chunk per thread call and are
paced by the data connection (a push producer); uploads go through an
L{UploadWriter} that writes in order and pauses the data connection while
its queue is long.

How an upload's end is judged: under TLS, the client's close_notify followed
by the TCP close reaches us as ``ConnectionDone``; a TCP close without
close_notify (a truncation attack, or a client that died) is reported by
Twisted's TLS layer as ``ConnectionLost``, as is a reset.  Only
``ConnectionDone`` commits; anything else aborts the upload, and the reply
says whether the partial data was kept for resuming (a new file, or an
in-place APPE/REST write) or discarded (the old file is intact).  Without
TLS a FIN is all there is, so it counts as the end.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from rumpus_secure.ftp import listing
from rumpus_secure.ftp.shell import FileShell, ThreadedReader, UploadWriter
from rumpus_secure.vfs import (
    AbortOutcome,
    AlreadyExists,
    DiskFull,
    InvalidOffset,
    InvalidPath,
    SymlinkNotFollowed,
    VFSError,
    split_path,
    wire_name,
)

_log = Logger()


def vfs_reply(err: VFSError, verb: str) -> str:
    """The FTP reply for a refused filesystem operation."""
    if isinstance(err, SymlinkNotFollowed):
        code = 550
    elif isinstance(err, (AlreadyExists, InvalidPath)):
        code = 553
    elif isinstance(err, DiskFull):
        code = 552
    elif isinstance(err, InvalidOffset):
        code = 554
    elif type(err) is VFSError or err.__class__.__name__ == "HomeUnavailable":
        code = 451
    else:
        code = 550
    return f"{code} {verb} refused: {wire_name(err.message)}"


class DataConnection(ftp.DTP):
    """
    A DTP that remembers how its connection ended and feeds a sink.

    Data that arrives before a transfer command attaches its sink is kept,
    as Twisted's DTP does.
    """

    lost_reason: Failure | None = None
    _sink: Any = None
    _pending_data: list[bytes]
    _waiters: list[defer.Deferred[None]]

    def _prepare(self) -> None:
        self._pending_data = []
        self._waiters = []

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.isConnected = False
        self.lost_reason = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
        else:
            self._pending_data.append(data)

    def attach(self, sink: Any) -> None:
        """Send received data (and what came before) to ``sink(bytes)``."""
        pending, self._pending_data = self._pending_data, []
        self._sink = sink
        for chunk in pending:
            sink(chunk)

    def when_lost(self) -> defer.Deferred[None]:
        """Fires once the connection is closed (see ``lost_reason``)."""
        if self.lost_reason is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    @property
    def ended_cleanly(self) -> bool:
        return self.lost_reason is not None and self.lost_reason.check(error.ConnectionDone) is not None

    def close(self) -> None:
        if self.transport is not None and self.isConnected:
            self.transport.loseConnection()

    def kill(self) -> None:
        if self.transport is not None and self.isConnected:
            self.transport.abortConnection()


class TransferAborted(Exception):
    """The data connection closed early, or ABOR was received."""


@implementer(IPushProducer)
class Transfer:
    """
    One transfer in progress: what ABOR and STAT act on.

    For downloads it is also the producer registered on the data connection.
    """

    def __init__(self, verb: str, path: str, dtp: DataConnection) -> None:
        self.verb = verb
        self.path = path
        self.dtp = dtp
        self.bytes = 0
        self.aborted = False
        self.by_abor = False
        self.paused = False
        self._resume: defer.Deferred[None] | None = None
        self.finished: defer.Deferred[None] = defer.Deferred()

    # IPushProducer, for downloads
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.aborted = True
        self._wake()

    def _wake(self) -> None:
        d, self._resume = self._resume, None
        if d is not None:
            d.callback(None)

    async def wait_resumed(self) -> None:
        while self.paused and not self.aborted and self.dtp.isConnected:
            self._resume = defer.Deferred()
            await self._resume

    def check(self) -> None:
        if self.aborted or not self.dtp.isConnected:
            raise TransferAborted()

    def abort(self) -> defer.Deferred[None]:
        """ABOR: cut the data connection; fires once the command replied."""
        self.aborted = True
        self.by_abor = True
        self.dtp.kill()
        self._wake()
        d: defer.Deferred[None] = defer.Deferred()
        self.finished.addBoth(lambda ignored: d.callback(None))
        return d


class TransferCommands:
    """The data-connection commands of the control protocol (a mixin)."""

    shell: FileShell | None
    binary = True
    _rest = 0
    _transfer: Transfer | None = None
    _dtp: Any = None

    # -- the data connection ------------------------------------------

    @property
    def dtpInstance(self) -> Any:
        return self._dtp

    @dtpInstance.setter
    def dtpInstance(self, value: Any) -> None:
        if type(value) is ftp.DTP:
            value.__class__ = DataConnection
            value._prepare()
        self._dtp = value

    # -- helpers ----------------------------------------------------------

    def _fs_command(self, verb: str, coroutine: Any) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(coroutine)

        def refused(failure: Failure) -> str:
            failure.trap(VFSError)
            return vfs_reply(failure.value, verb)

        return d.addErrback(refused)

    def _path(self, argument: str | None) -> str:
        assert self.shell is not None
        return self.shell.path(argument)

    # -- transfers ----------------------------------------------------------

    def _transfer_command(self, verb: str, body: Any) -> Any:
        """
        Run a data-connection command: check PROT and the data connection,
        run ``body(dtp)``, close the data connection, and reply.

        The reply is sent here rather than returned, so that a pending ABOR
        can answer 226 after it (L{Transfer.finished}).
        """
        rest, self._rest = self._rest, 0
        refusal = self._data_refusal()  # type: ignore[attr-defined]
        if refusal:
            return refusal
        dtp = self.dtpInstance
        if not isinstance(dtp, DataConnection):
            return "425 Open a data connection first: send PASV, EPSV, PORT or EPRT."
        self._rest = rest
        self.setTimeout(None)  # type: ignore[attr-defined]

        async def run() -> None:
            try:
                reply = await body(dtp)
            except TransferAborted as e:
                reply = str(e) or "426 Data connection closed; transfer aborted."
            except VFSError as e:
                reply = vfs_reply(e, verb)
            except Exception:  # noqa: BLE001 (a bug: logged, and the client told)
                _log.failure("{verb} failed", verb=verb)
                reply = "451 Requested action aborted: internal error."
            finally:
                self._rest = 0
                self._close_data(dtp)
                self.setTimeout(self.timeOut)  # type: ignore[attr-defined]
            self.sendLine(reply)  # type: ignore[attr-defined]
            transfer, self._transfer = self._transfer, None
            if transfer is not None:
                transfer.finished.callback(None)

        return defer.Deferred.fromCoroutine(run())

    def _close_data(self, dtp: DataConnection) -> None:
        dtp.close()
        if self.dtpInstance is dtp and self.dtpFactory is not None:  # type: ignore[attr-defined]
            self.cleanupDTP()  # type: ignore[attr-defined]

    def ftp_RETR(self, path: str) -> Any:
        async def body(dtp: DataConnection) -> str:
            assert self.shell is not None
            target = self._path(path)
            offset, self._rest = self._rest, 0
            if not dtp.isConnected:
                return "425 The data connection was closed; open a new one."
            handle, size = await self.shell.open_download(target, offset)
            reader = ThreadedReader(handle, self.shell.run_in_thread)
            try:
                mode = "BINARY" if self.binary else "ASCII"
                self.sendLine(f"150 Opening {mode} mode data connection for "  # type: ignore[attr-defined]
                              f"{wire_name(target)} ({size - offset} bytes).")
                transfer = self._transfer = Transfer("RETR", target, dtp)
                await self._produce(dtp, transfer, reader)
            finally:
                await reader.close()
            return f"226 Transfer complete: {transfer.bytes} bytes sent."

        return self._transfer_command("RETR", body)

    async def _produce(self, dtp: DataConnection, transfer: Transfer,
                       reader: ThreadedReader) -> None:
        encoder = None if self.binary else listing.LineEndEncoder()
        dtp.transport.registerProducer(transfer, True)
        try:
            while True:
                await transfer.wait_resumed()
                transfer.check()
                chunk = await reader.read()
                transfer.check()
                if not chunk:
                    return
                transfer.bytes += len(chunk)
                dtp.transport.write(encoder.convert(chunk) if encoder else chunk)
        except TransferAborted:
            why = "ABOR received" if transfer.by_abor else "the data connection was closed"
            raise TransferAborted(f"426 Transfer aborted: {why} after "
                                  f"{transfer.bytes} bytes.") from None
        finally:
            if dtp.isConnected:
                dtp.transport.unregisterProducer()

    def ftp_STOR(self, path: str) -> Any:
        return self._transfer_command("STOR", lambda dtp: self._store(dtp, "STOR", path))

    def ftp_APPE(self, path: str) -> Any:
        return self._transfer_command("APPE", lambda dtp: self._store(dtp, "APPE", path))

    def ftp_STOU(self, path: str = "") -> Any:
        return self._transfer_command("STOU", lambda dtp: self._store(dtp, "STOU", path))

    async def _open_upload(self, verb: str, path: str) -> Any:
        assert self.shell is not None
        offset, self._rest = self._rest, 0
        if verb == "STOU":
            base = self._path(path or "upload")
            parts = split_path(base)
            directory = "/" + "/".join(parts[:-1]) if path else self.shell.cwd
            target = await self.shell.call("unique_name", directory, parts[-1])
            return await self.shell.call("open_upload", target, exclusive=True)
        target = self._path(path)
        if verb == "APPE":
            return await self.shell.call("open_append", target)
        if offset:
            return await self.shell.call("open_write_at", target, offset, truncate=True)
        return await self.shell.call("open_upload", target)

    async def _store(self, dtp: DataConnection, verb: str, path: str) -> str:
        assert self.shell is not None
        upload = await self._open_upload(verb, path)
        target = upload.path
        writer = UploadWriter(upload, self.shell.run_in_thread,
                              on_high=lambda: _pause(dtp), on_low=lambda: _resume(dtp))
        if verb == "STOU":
            self.sendLine(f"150 FILE: {wire_name(split_path(target)[-1])}")  # type: ignore[attr-defined]
        else:
            self.sendLine(f"150 Ready to receive {wire_name(target)}.")  # type: ignore[attr-defined]
        transfer = self._transfer = Transfer(verb, target, dtp)
        decoder = None if self.binary else listing.LineEndDecoder()

        def sink(data: bytes) -> None:
            transfer.bytes += len(data)
            writer.write(decoder.convert(data) if decoder else data)
            if writer.error is not None:
                dtp.kill()  # a write failed (disk full): stop receiving

        dtp.attach(sink)
        await dtp.when_lost()
        complete = dtp.ended_cleanly and not transfer.aborted and writer.error is None
        if complete:
            if decoder is not None:
                writer.write(decoder.flush())
            try:
                await writer.commit()
            except VFSError as e:
                kept = "" if upload.finished else ": " + _outcome_text(
                    await writer.abort(), upload)
                return vfs_reply(e, verb) + kept
            return f"226 Transfer complete: {transfer.bytes} bytes stored in {wire_name(target)}."
        write_error = writer.error
        outcome = await writer.abort()
        if isinstance(write_error, VFSError):
            return f"{vfs_reply(write_error, verb)}; {_outcome_text(outcome, upload)}"
        if transfer.by_abor:
            why = "ABOR received"
        elif dtp.lost_reason is not None and dtp.lost_reason.check(error.ConnectionLost):
            why = "the data connection was cut without a clean (TLS) close"
        else:
            why = "the data connection failed"
        return (f"426 Upload aborted after {transfer.bytes} bytes: {why}; "
                f"{_outcome_text(outcome, upload)}")

    # -- ABOR and STAT while a transfer runs ----------------------------------

    def urgent_command(self, verb: str, argument: str | None) -> bool:
        """
        Handle ABOR or STAT that arrived while a transfer runs, at once
        (the command loop would otherwise queue them behind the transfer).
        """
        transfer = self._transfer
        if transfer is None or verb not in ("ABOR", "STAT"):
            return False
        if verb == "STAT":
            self.sendLine(f"213 {transfer.verb} {wire_name(transfer.path)}: "  # type: ignore[attr-defined]
                          f"{transfer.bytes} bytes transferred so far.")
            return True
        transfer.abort().addCallback(
            lambda ignored: self.sendLine(  # type: ignore[attr-defined]
                "226 ABOR successful: the transfer was aborted."))
        return True

    def ftp_ABOR(self, ignored: str = "") -> str:
        dtp = self.dtpInstance
        if isinstance(dtp, DataConnection) or self.dtpFactory is not None:  # type: ignore[attr-defined]
            if isinstance(dtp, DataConnection):
                dtp.kill()
            if self.dtpFactory is not None:  # type: ignore[attr-defined]
                self.cleanupDTP()  # type: ignore[attr-defined]
            return "225 ABOR: no transfer was running; the data connection is closed."
        return "226 ABOR: no transfer was running."


def _pause(dtp: DataConnection) -> None:
    if dtp.isConnected and dtp.transport is not None:
        dtp.transport.pauseProducing()


def _resume(dtp: DataConnection) -> None:
    if dtp.isConnected and dtp.transport is not None:
        dtp.transport.resumeProducing()


def _outcome_text(outcome: AbortOutcome, upload: Any) -> str:
    where = wire_name(upload.path)
    if outcome is AbortOutcome.KEPT_PARTIAL:
        return (f"the partial file was kept as {where}: resume with REST and STOR, "
                "or APPE")
    return f"the partial upload was discarded and {where} is unchanged"
