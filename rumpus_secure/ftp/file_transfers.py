"""
Transfers over the data connection: RETR, STOR, APPE, STOU, listings, ABOR.

L{TransferCommands} is the transfer half of the file-command mixin
(L{rumpus_secure.ftp.files.FileCommands}).  A transfer command takes the data
source that PASV/EPSV/PORT/EPRT left (L{rumpus_secure.ftp.data}), prepares
the file in a thread (open for reading, or an atomic upload), answers 150,
and hands the bytes to the transfer engine (L{rumpus_secure.ftp.transfer}),
which runs TLS and the copy in a worker thread.  The engine's outcome
decides the reply:

 - a download or listing is 226 only when every byte was sent;
 - an upload is committed (renamed into place) only when the data connection
   ended cleanly: under TLS that means the client's close_notify; a TCP close
   without it is truncation unless ``--data-tls-strict-eof off``.  Otherwise
   the upload is aborted and the 426 says whether the partial data was kept
   for resuming (a new file, or an in-place APPE/REST write) or discarded
   (the old file is intact).  The commit runs in the transfer's own worker
   thread right after the clean end, unless the transfer was aborted by
   then (one hand-off to a thread less per file; a download's file is
   closed there too); the reply commits only what the worker did not
   (a close without close_notify accepted under ``--data-tls-strict-eof
   off``) and turns a commit error into the same reply as before;
 - a data connection that did not resume the control connection's TLS
   session, when reuse is required, gets 522 and is audited; on a passive
   port the 522 comes only when the connect timeout ends without the
   rightful connection (L{rumpus_secure.ftp.passive});
 - a transfer cut because its account was locked, quarantined, deleted or
   given a new password (L{Transfer.end}, from
   L{rumpus_secure.ftp.account_state}) gets 426 with that reason.

Every file transfer that got as far as its 150 is audited once, after its
reply, as ``ftp.upload`` or ``ftp.download`` (L{_audit_transfer}): the one
record the console line, ``--xferlog`` and the metrics are built from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from rumpus_secure.ftp import listing
from rumpus_secure.ftp.passive import DataConnectionRefused, DataConnectionTimeout
from rumpus_secure.ftp.shell import FileShell
from rumpus_secure.ftp.transfer import (
    Aborted as TransferAbortedError,
    Job,
    Outcome,
    TLSSettings,
    TransferHandle,
    TransferResult,
    receive_into,
    send_file,
    send_stream,
)
from rumpus_secure.tls import session_binding
from rumpus_secure.vfs import (
    AbortOutcome,
    AlreadyExists,
    DirScan,
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


class HandshakeFailed(Exception):
    """
    The early TLS handshake of a passive data connection failed.
    """


class Refused(Exception):
    """
    A transfer command refused before it started; the argument is the reply.
    """


class Transfer:
    """
    One transfer in progress: what ABOR and STAT act on.
    """

    def __init__(self, verb: str, path: str, source: Any) -> None:
        self.verb = verb
        self.path = path
        self.source = source
        self.handle = TransferHandle()
        self.by_abor = False
        #: Why the session ended this transfer (L{end}), or L{None}.
        self.ended_by: str | None = None
        self.finished: defer.Deferred[None] = defer.Deferred()

    @property
    def bytes(self) -> int:
        return self.handle.bytes

    def abort(self) -> defer.Deferred[None]:
        """
        ABOR: stop now; fires once the transfer command has replied.
        """
        self.by_abor = True
        return self._stop()

    def end(self, reason: str) -> defer.Deferred[None]:
        """
        Stop now because the session ends (C{reason} goes into the 426);
        fires once the transfer command has replied.
        """
        self.ended_by = reason
        return self._stop()

    def _stop(self) -> defer.Deferred[None]:
        self.handle.abort()
        self.source.close()
        d: defer.Deferred[None] = defer.Deferred()
        self.finished.addBoth(lambda ignored: d.callback(None))
        return d


@dataclass
class Plan:
    """
    A prepared transfer: what to send first, the job, and how to finish.
    """

    path: str
    preamble: str
    job: Job
    finish: Callable[[TransferResult], Awaitable[str]]
    cancel: Callable[[], Awaitable[Any]] | None = None
    #: ``upload`` or ``download`` for file transfers (audited); None for listings.
    direction: str | None = None


class TransferCommands:
    """The data-connection commands of the control protocol (a mixin)."""

    shell: FileShell | None
    binary = True
    _rest = 0
    _transfer: Transfer | None = None
    data_source: Any = None

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

    def _data_tls(self) -> TLSSettings | None:
        if not (self.secure and self.prot == "P"):  # type: ignore[attr-defined]
            return None
        config = self.config  # type: ignore[attr-defined]
        context = self.tls_context_in_use  # type: ignore[attr-defined]
        binding = self.tls_binding  # type: ignore[attr-defined]
        if context is None:
            handle = self.transport.getHandle()  # type: ignore[attr-defined]
            context, binding = handle.get_context(), session_binding(handle)
        return TLSSettings(
            context=context,
            binding=binding,
            require_reuse=config.data_tls_reuse == "required",
            strict_eof=config.data_tls_strict_eof,
        )

    def close_data(self) -> None:
        """
        Close an unused data source (REIN, AUTH, logout, connection lost).
        """
        source, self.data_source = self.data_source, None
        if source is not None:
            source.close()
        transfer = self._transfer
        if transfer is not None:
            transfer.handle.abort()
            transfer.source.close()

    # -- the transfer skeleton ------------------------------------------

    def _transfer_command(self, verb: str, prepare: Callable[[], Awaitable[Plan]]) -> Any:
        """
        Run a data-connection command and reply.

        The reply is sent here rather than returned, so that a pending ABOR
        can answer 226 after it (L{Transfer.finished}).
        """
        refusal = self._data_refusal()  # type: ignore[attr-defined]
        if refusal:
            self._rest = 0
            return refusal
        source, self.data_source = self.data_source, None
        if source is None:
            self._rest = 0
            return "425 Open a data connection first: send PASV, EPSV, PORT or EPRT."
        self.setTimeout(None)  # type: ignore[attr-defined]

        async def run() -> None:
            transfer: Transfer | None = None
            plan: Plan | None = None
            result: TransferResult | None = None
            started = self.reactor.seconds()  # type: ignore[attr-defined]
            try:
                plan = await prepare()
                transfer = self._transfer = Transfer(verb, plan.path, source)
                self.sendLine(plan.preamble)  # type: ignore[attr-defined]
                started = self.reactor.seconds()  # type: ignore[attr-defined]
                try:
                    connect = await source.connector()
                except (SSL.Error, OSError, TimeoutError, TransferAbortedError) as e:
                    raise HandshakeFailed(str(e) or e.__class__.__name__) from None
                engine = self.session_factory.shared.engine  # type: ignore[attr-defined]
                engine.run(connect, self._data_tls(), plan.job, transfer.handle)
                assert transfer.handle.result is not None
                result = await transfer.handle.result
                assert result is not None
                self._audit_result(verb, plan.path, result)
                reply = await plan.finish(result)
            except VFSError as e:
                reply = vfs_reply(e, verb)
            except Refused as e:
                reply = str(e)
            except HandshakeFailed as e:
                if plan is not None and plan.cancel is not None:
                    await plan.cancel()
                if transfer is not None and transfer.ended_by is not None:
                    reply = f"426 Transfer aborted before the data connection: {transfer.ended_by}."
                elif transfer is not None and transfer.by_abor:
                    reply = "426 Transfer aborted: ABOR received before the data connection."
                else:
                    self._audit("ftp.data_tls_failed", account=self.account,  # type: ignore[attr-defined]
                                command=verb, error=str(e)[:200])
                    reply = f"522 TLS handshake on the data connection failed: {e}."
            except DataConnectionRefused as e:
                # Each refused connection was audited when it was refused.
                if plan is not None and plan.cancel is not None:
                    await plan.cancel()
                if transfer is not None and transfer.by_abor:
                    reply = "426 Transfer aborted: ABOR received before the data connection."
                elif e.reason == "foreign-session":
                    reply = self._failure_reply(TransferResult(Outcome.NOT_RESUMED), 0, False)
                else:
                    reply = f"522 TLS handshake on the data connection failed: {e.detail}."
            except (DataConnectionTimeout, defer.CancelledError) as e:
                if plan is not None and plan.cancel is not None:
                    await plan.cancel()
                if transfer is not None and transfer.ended_by is not None:
                    reply = f"426 Transfer aborted before the data connection: {transfer.ended_by}."
                elif transfer is not None and transfer.by_abor:
                    reply = "426 Transfer aborted: ABOR received before the data connection."
                elif isinstance(e, DataConnectionTimeout):
                    reply = "425 The data connection was not opened in time; transfer not started."
                else:
                    reply = "426 Data connection closed; transfer not started."
            except Exception:  # noqa: BLE001 (a bug: logged, and the client told)
                self.session_factory.shared.errors.report(  # type: ignore[attr-defined]
                    verb, Failure(), authenticated=True)
                reply = "451 Local error: the command could not be completed."
                if plan is not None and plan.cancel is not None:
                    await plan.cancel()
            finally:
                self._rest = 0
                source.close()
                if not self.disconnected:  # type: ignore[attr-defined]
                    self.setTimeout(self.timeOut)  # type: ignore[attr-defined]
            self.sendLine(reply)  # type: ignore[attr-defined]
            self._transfer = None
            if plan is not None and plan.direction is not None:
                self._audit_transfer(verb, plan, result, reply, transfer, started)
            if transfer is not None:
                transfer.finished.callback(None)

        return defer.Deferred.fromCoroutine(run())

    @property
    def service_name(self) -> str:
        """``ftp``, ``ftps-explicit`` or ``ftps-implicit``: how this session is secured."""
        if self.implicit:  # type: ignore[attr-defined]
            return "ftps-implicit"
        return "ftps-explicit" if self.secure else "ftp"  # type: ignore[attr-defined]

    def _audit_transfer(self, verb: str, plan: Plan, result: TransferResult | None,
                        reply: str, transfer: Transfer | None, started: float) -> None:
        """
        Audit one finished file transfer as ``ftp.upload`` or ``ftp.download``.

        The outcome is the engine's (``complete``, ``aborted``, ``truncated``,
        ``connection-lost``, ...), except that ABOR always reads ``aborted``
        and a transfer whose reply is not 2xx (an upload that could not be
        committed, a data connection that never came) reads ``failed``.
        """
        by_abor = transfer is not None and transfer.by_abor
        if by_abor:
            outcome = "aborted"
        elif result is None or (result.ok and not reply.startswith("2")):
            outcome = "failed"
        else:
            outcome = result.outcome.value
        tls = self.tls_version  # type: ignore[attr-defined]
        if result is not None and result.tls_version:
            tls = result.tls_version
        self.audit.record(  # type: ignore[attr-defined]
            f"ftp.{plan.direction}",
            client=self.client_host,  # type: ignore[attr-defined]
            protocol=self.service_name,
            account=self.account,  # type: ignore[attr-defined]
            tls=tls,
            data_tls=self.prot == "P",  # type: ignore[attr-defined]
            command=verb,
            path=plan.path,
            bytes=result.bytes if result is not None else 0,
            seconds=round(max(0.0, self.reactor.seconds() - started), 3),  # type: ignore[attr-defined]
            type="binary" if self.binary else "ascii",
            outcome=outcome,
            reply=reply[:3],
        )

    def _audit_result(self, verb: str, path: str, result: TransferResult) -> None:
        if result.outcome is Outcome.NOT_RESUMED:
            self._audit("ftp.data_tls_not_resumed", account=self.account,  # type: ignore[attr-defined]
                        command=verb, outcome="refused")
        elif result.outcome is Outcome.TLS_FAILED:
            self._audit("ftp.data_tls_failed", account=self.account,  # type: ignore[attr-defined]
                        command=verb, error=result.detail)

    @staticmethod
    def _failure_reply(result: TransferResult, transfer_bytes: int, by_abor: bool,
                       ended_by: str | None = None) -> str:
        outcome = result.outcome
        if ended_by is not None:
            return f"426 Transfer aborted after {transfer_bytes} bytes: {ended_by}."
        if outcome is Outcome.NOT_RESUMED:
            return ("522 Data connection refused: it must resume the TLS session of "
                    "this control connection (TLS session reuse is required). Enable "
                    "session reuse in your client, or ask the administrator.")
        if outcome is Outcome.TLS_FAILED:
            return f"522 TLS handshake on the data connection failed: {result.detail}."
        if outcome is Outcome.ABORTED or by_abor:
            return f"426 Transfer aborted: ABOR received after {transfer_bytes} bytes."
        if outcome is Outcome.TRUNCATED:
            return (f"426 Transfer aborted after {transfer_bytes} bytes: the data "
                    "connection was cut without a clean TLS close")
        if outcome is Outcome.LOCAL_ERROR:
            if isinstance(result.error, VFSError):
                return vfs_reply(result.error, "transfer")
            return f"451 Transfer aborted: local error ({result.detail})"
        return (f"426 Transfer aborted after {transfer_bytes} bytes: the data "
                f"connection failed ({result.detail or 'closed'})")

    # -- downloads and listings ------------------------------------------

    def send_listing(self, verb: str, target: str, lines: Iterable[str],
                     scan: DirScan | None = None) -> Plan:
        """
        Plan a listing: C{lines} (usually a generator over C{scan}) is read,
        formatted and sent in the transfer's worker thread, a block at a time
        (L{listing.encode_lines}); C{scan} is closed however the transfer
        ends, or when it never starts.
        """
        close = scan.close if scan is not None else _nothing

        async def cancel() -> None:
            close()

        async def finish(result: TransferResult) -> str:
            close()  # the worker closed it already; this is for the record
            if result.ok:
                return "226 Listing sent."
            return self._failure_reply(result, result.bytes, self._aborted(),
                                       self._ended_by())

        return Plan(target, f"150 Sending the {verb} of {wire_name(target)}.",
                    send_stream(listing.encode_lines(lines), close), finish, cancel)

    def _aborted(self) -> bool:
        transfer = self._transfer
        return transfer is not None and transfer.by_abor

    def _ended_by(self) -> str | None:
        transfer = self._transfer
        return None if transfer is None else transfer.ended_by

    def ftp_RETR(self, path: str) -> Any:
        async def prepare() -> Plan:
            assert self.shell is not None
            shell = self.shell  # the session may log out before the end
            target = self._path(path)
            offset, self._rest = self._rest, 0
            handle, size = await shell.open_download(target, offset)
            encoder = None if self.binary else listing.LineEndEncoder()
            mode = "BINARY" if self.binary else "ASCII"

            async def close_file() -> None:
                if not handle.closed:  # the job closes it when it runs
                    await shell.run_in_thread(handle.close)

            async def finish(result: TransferResult) -> str:
                await close_file()
                if result.ok:
                    return f"226 Transfer complete: {result.bytes} bytes sent."
                return self._failure_reply(result, result.bytes, self._aborted(),
                                           self._ended_by())

            return Plan(target,
                        f"150 Opening {mode} mode data connection for "
                        f"{wire_name(target)} ({size - offset} bytes).",
                        send_file(handle, encoder, close=True, size=size - offset),
                        finish, close_file,
                        direction="download")

        return self._transfer_command("RETR", prepare)

    # -- uploads ------------------------------------------------------------

    def ftp_STOR(self, path: str) -> Any:
        return self._transfer_command("STOR", lambda: self._store("STOR", path))

    def ftp_APPE(self, path: str) -> Any:
        return self._transfer_command("APPE", lambda: self._store("APPE", path))

    def ftp_STOU(self, path: str = "") -> Any:
        return self._transfer_command("STOU", lambda: self._store("STOU", path))

    async def _open_upload(self, verb: str, path: str) -> Any:
        assert self.shell is not None
        shell = self.shell
        offset, self._rest = self._rest, 0
        if verb == "STOU":
            base = self._path(path or "upload")
            parts = split_path(base)
            if not parts:
                # "STOU /", "STOU ..": the home itself, which has no name
                # to make a unique one from.
                raise Refused("553 STOU refused: name a file, not the top "
                              "directory (or send STOU alone).")
            directory = "/" + "/".join(parts[:-1]) if path else shell.cwd
            target = await shell.call("unique_name", directory, parts[-1])
            return await shell.call("open_upload", target, exclusive=True)
        target = self._path(path)
        if verb == "APPE":
            return await shell.call("open_append", target)
        if offset:
            return await shell.call("open_write_at", target, offset, truncate=True)
        return await shell.call("open_upload", target)

    async def _store(self, verb: str, path: str) -> Plan:
        assert self.shell is not None
        shell = self.shell
        upload = await self._open_upload(verb, path)
        target = upload.path
        decoder = None if self.binary else listing.LineEndDecoder()
        if verb == "STOU":
            preamble = f"150 FILE: {wire_name(split_path(target)[-1])}"
        else:
            preamble = f"150 Ready to receive {wire_name(target)}."

        async def abort() -> AbortOutcome:
            return await shell.run_in_thread(upload.abort)

        async def finish(result: TransferResult) -> str:
            if result.ok:
                try:
                    if result.commit_error is not None:
                        raise result.commit_error
                    if not result.committed:
                        await shell.run_in_thread(upload.commit)
                except VFSError as e:
                    kept = "" if upload.finished else ": " + _outcome_text(await abort(), upload)
                    return vfs_reply(e, verb) + kept
                return (f"226 Transfer complete: {result.bytes} bytes stored in "
                        f"{wire_name(target)}.")
            outcome = await abort()
            if isinstance(result.error, VFSError):
                return f"{vfs_reply(result.error, verb)}; {_outcome_text(outcome, upload)}"
            reply = self._failure_reply(result, result.bytes, self._aborted(),
                                        self._ended_by())
            if reply.startswith("426 Transfer aborted after"):
                reply = "426 Upload aborted after" + reply[len("426 Transfer aborted after"):]
            return f"{reply.rstrip('.')}; {_outcome_text(outcome, upload)}"

        return Plan(target, preamble, receive_into(upload, decoder, upload.commit), finish, abort,
                    direction="upload")

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
        if self.data_source is not None:
            self.close_data()
            return "225 ABOR: no transfer was running; the data connection is closed."
        return "226 ABOR: no transfer was running."


def _nothing() -> None:
    pass


def _outcome_text(outcome: AbortOutcome, upload: Any) -> str:
    where = wire_name(upload.path)
    if outcome is AbortOutcome.KEPT_PARTIAL:
        return (f"the partial file was kept as {where}: resume with REST and STOR, "
                "or APPE")
    return f"the partial upload was discarded and {where} is unchanged"
