"""
Uploads streamed from the network to disk, never held in memory.

twisted.web normally collects a request body (into memory, or a temporary
file past 100 KB) before the resource sees it.  For ``POST /upload`` our
request class puts an L{UploadSink} in place of that buffer as soon as the
headers are in: the body is parsed incrementally (L{MultipartParser}) and
each file part goes through ``JailedFS.open_upload`` (atomic: a hidden
temporary file renamed into place) in a thread, one operation at a time.
When more than L{HIGH_WATER} bytes wait for the disk the transport stops
reading, and resumes below L{LOW_WATER}; server memory stays flat whatever
the upload's size.

The session and the Origin are checked from the headers; the CSRF token must
be the first form field, before any file, or nothing is written.

An existing file is never replaced by surprise: the form field ``exists``
(before the files) says what to do with a name that is taken -- ``refuse``
(the default, also without JavaScript: nothing is stored and the reply says
why), ``skip``, ``keep`` (store as ``name (1).ext``) or ``replace`` (needs
the ``overwrite`` permission, which the filesystem checks).  Refusing and
keeping both use the filesystem's exclusive store, so a file that appears
while the upload runs is not replaced either.  "Keep both" also claims its
chosen name while the file is stored (L{NameClaims}): round 3 sent six
parallel uploads of one name with ``exists=keep`` and got one stored file
and five ``409``, because each chose the same free name and all but the
first found it taken at commit; each now takes the next name no other
upload of this server holds (``name (1).ext``, ``name (2).ext``...).

An upload is bound to its account while it runs (L{TransferBinding}): when
the account is locked, quarantined or deleted, or its password is set, the
files not yet committed are discarded, nothing more is stored, and (while
the body is still arriving) the client gets ``403`` and the connection is
closed.  Round 3 found an upload that went on storing and committed its
files after ``user lock``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from rumpus_secure.vfs import (
    AbortOutcome,
    AlreadyExists,
    InvalidPath,
    JailedFS,
    Upload,
    VFSError,
    join_path,
)
from rumpus_secure.web.app import AccountGone, PasswordChanged, WebApp, friendly
from rumpus_secure.web.multipart import (
    MultipartError,
    MultipartParser,
    boundary_from_content_type,
    parse_header_params,
)

_log = Logger()

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
MAX_BATCH = 4 * 1024 * 1024
UPLOAD_PATH = b"/upload"
#: What to do when an uploaded file's name is taken (form field ``exists``).
ON_EXISTING = ("refuse", "skip", "keep", "replace")
#: How many ``name (n).ext`` candidates "keep both" tries.
MAX_KEEP_BOTH = 1000


def numbered_name(name: str, number: int) -> str:
    """
    ``report.txt`` -> ``report (1).txt``: the number goes before the last
    extension (``archive.tar.gz`` -> ``archive.tar (1).gz``, as browsers
    and desktops do), or at the end for a name without one (``.bashrc``).
    """
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({number})"
    return f"{stem} ({number}).{extension}"


def upload_name(raw: str) -> str:
    """
    The file name to store: the last component of what the browser sent
    (old browsers send a whole client path).

    @raises InvalidPath: for an empty or reserved name.
    """
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        raise InvalidPath(f"invalid file name: {raw!r}")
    return name


class NameClaims:
    """
    Names that running "keep both" uploads have chosen and not yet stored,
    per home directory (C{account} below); shared by the server's uploads
    (drop boxes included), used from threads.
    """

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def claim(self, account: str, path: str) -> bool:
        """Hold C{path} for this upload; False if another upload holds it."""
        with self._lock:
            if (account, path) in self._held:
                return False
            self._held.add((account, path))
            return True

    def release(self, account: str, path: str) -> None:
        with self._lock:
            self._held.discard((account, path))


#: The claims of every upload in this process.
NAME_CLAIMS = NameClaims()


class FileResult:
    """What happened to one uploaded file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0
        self.error: str | None = None
        self.upload: Upload | None = None
        #: the name it was stored under ("keep both" may choose another)
        self.stored_name = name
        #: the name was taken and nothing was stored (``refuse``/``skip``)
        self.conflict = False
        self.skipped = False
        #: C{(home, path)} this upload holds in L{NAME_CLAIMS} ("keep both")
        self.claimed: tuple[str, str] | None = None


class UploadSink:
    """
    Takes the place of C{request.content} for a streamed upload.

    @ivar refusal: why nothing was (or will be) stored, for the reply.
    @ivar results: one L{FileResult} per file part.
    """

    def __init__(self, app: WebApp, request: IRequest, directory: str) -> None:
        self._app = app
        self._request = request
        self.directory = directory
        self.refusal: str | None = None
        self.refusal_status = 400
        self.results: list[FileResult] = []
        self.received = 0
        self._fs: JailedFS | None = None
        self._csrf_ok = False
        self.on_existing = "refuse"
        self._field: str | None = None
        self._field_value = bytearray()
        self._current: FileResult | None = None
        self._ops: deque[tuple[Callable[..., Any], tuple[Any, ...], int]] = deque()
        self._queued_bytes = 0
        self._busy = False
        self._paused = False
        self._body_done = False
        self._aborted = False
        self._done: Deferred[None] | None = None
        self.session = app.session(request)
        self._parser: MultipartParser | None = None
        #: why the account ended this upload (L{account_ended}), if it did
        self.ended: str | None = None
        self._binding: Any = None
        self._admit(app, request)

    def _admit(self, app: WebApp, request: IRequest) -> None:
        """
        Check the request from its headers: start parsing, or refuse.
        (A drop box, L{rumpus_secure.web.visit}, admits visitors instead.)
        """
        content_type = request.getHeader(b"content-type") or b""
        boundary = boundary_from_content_type(content_type)
        if self.session is None:
            self._refuse("Your session has ended; please log in again.", 401)
        elif not app.same_origin(request):
            self._refuse("This upload did not come from this site's own page.", 403)
        elif boundary is None:
            self._refuse("The upload must be sent as multipart/form-data.", 400)
        else:
            self._parser = MultipartParser(boundary, self)
            # Taken before the account is first read (in _filesystem).
            self._binding = app.bind_transfer(request, self.session.user, "upload",
                                              self.account_ended, app.watch_point())

    # -- the file-like face twisted.web uses ------------------------------

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._parser is None:
            return
        try:
            self._parser.feed(data)
        except MultipartError as e:
            self._refuse(f"The upload was malformed: {e}.", 400)

    def tell(self) -> int:
        return 0  # nothing for twisted.web to parse

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass

    # -- parser callbacks --------------------------------------------------

    def part_begin(self, headers: dict[str, str]) -> None:
        _, params = parse_header_params(headers.get("content-disposition", ""))
        name = params.get("name", "")
        if "filename" not in params:
            self._field = name
            self._field_value = bytearray()
            return
        self._field = None
        if not params["filename"]:
            self._current = None  # an empty file input: nothing chosen
            return
        if not self._csrf_ok:
            self._refuse("The form was missing its security token; reload the "
                         "page and try again.", 403)
            return
        raw = params["filename"]
        result = FileResult(raw.replace("\\", "/").rsplit("/", 1)[-1].strip() or raw)
        self.results.append(result)
        self._current = result
        self._enqueue(self._open, (result,), 0)

    def part_data(self, data: bytes) -> None:
        if self._field is not None:
            if len(self._field_value) + len(data) > 4096:
                self._refuse("A form field was too long.", 400)
                return
            self._field_value += data
        elif self._current is not None:
            self._current.size += len(data)
            self._enqueue(self._write, (self._current, data), len(data))

    def part_end(self) -> None:
        if self._field == "csrf" and self.session is not None:
            self._csrf_ok = self._app.csrf_ok(self.session, bytes(self._field_value))
            if not self._csrf_ok:
                self._refuse("The form's security token was wrong or expired; "
                             "reload the page and try again.", 403)
        elif self._field == "exists":
            value = self._field_value.decode("ascii", "replace")
            self.on_existing = value if value in ON_EXISTING else "refuse"
        elif self._current is not None:
            self._enqueue(self._commit, (self._current,), 0)
        self._field = None
        self._current = None

    # -- refusing and aborting ----------------------------------------------

    def _refuse(self, message: str, status: int) -> None:
        if self.refusal is None:
            self.refusal = message
            self.refusal_status = status
        self._parser = None
        self._ops.clear()
        self._queued_bytes = 0
        self._resume()
        self._enqueue(self._abort_all, (), 0)

    def account_ended(self, reason: str) -> None:
        """
        The account was locked, deleted or its password set: discard every
        file not yet committed and store nothing more.  While the body is
        still arriving the client is answered ``403`` at once and the
        connection closed, so it stops sending.
        """
        self.ended = reason
        self._refuse(f"The upload was stopped and nothing more was stored: {reason}.", 403)
        for result in self.results:
            if result.error is None and result.upload is not None:
                result.error = f"Not stored: {reason}."
        refuse_now = getattr(self._request, "refuse_now", None)
        if not self._body_done and not self._aborted and refuse_now is not None:
            self._aborted = True
            refuse_now(403, "Upload stopped",
                       f"The upload was stopped: {reason}. Files not yet complete "
                       "were not stored.")

    def _unbind(self) -> None:
        binding, self._binding = self._binding, None
        if binding is not None:
            binding.cancel()

    def connection_lost(self) -> None:
        """The client went away: drop everything not yet committed."""
        self._unbind()
        if self._aborted:
            return
        self._aborted = True
        self._parser = None
        self._ops.clear()
        self._queued_bytes = 0
        self._enqueue(self._abort_all, (), 0)
        self._body_done = True
        self._maybe_done()

    # -- the operation queue -------------------------------------------------

    def _enqueue(self, function: Callable[..., Any], args: tuple[Any, ...],
                 size: int) -> None:
        self._ops.append((function, args, size))
        self._queued_bytes += size
        if self._queued_bytes > HIGH_WATER and not self._paused:
            self._paused = True
            transport = getattr(self._request.channel, "transport", None)
            if transport is not None:
                transport.pauseProducing()
        self._run_next()

    def _resume(self) -> None:
        if self._paused and (self._queued_bytes < LOW_WATER or self._body_done
                             or self.refusal is not None):
            self._paused = False
            transport = getattr(self._request.channel, "transport", None)
            if transport is not None and not self._body_done:
                transport.resumeProducing()

    def _run_next(self) -> None:
        if self._busy or not self._ops:
            self._maybe_done()
            return
        function, args, size = self._ops.popleft()
        if function == self._write:
            # Coalesce consecutive writes to the same file into one call.
            result, first = args
            pieces, size_total = [first], size
            while (self._ops and self._ops[0][0] == self._write
                   and self._ops[0][1][0] is result and size_total < MAX_BATCH):
                _, (_, more), more_size = self._ops.popleft()
                pieces.append(more)
                size_total += more_size
            args = (result, b"".join(pieces) if len(pieces) > 1 else first)
            size = size_total
        self._busy = True
        d = self._app.server.run_in_thread(function, *args)
        d.addErrback(self._op_failed)
        d.addBoth(self._op_done, size)

    def _op_done(self, ignored: Any, size: int) -> None:
        self._busy = False
        self._queued_bytes -= size
        self._resume()
        self._run_next()

    def _op_failed(self, failure: Failure) -> None:
        _log.failure("upload operation failed", failure)
        if self.refusal is None:
            self.refusal = "The server could not store the upload."
            self.refusal_status = 500

    def body_complete(self) -> Deferred[None]:
        """
        The whole body has arrived; fires when every file is stored or
        discarded.
        """
        self._body_done = True
        if self._parser is not None:
            try:
                self._parser.close()
            except MultipartError as e:
                self._refuse(f"The upload was malformed: {e}.", 400)
        done: Deferred[None] = Deferred()
        self._done = done
        self._maybe_done()
        return done

    def _maybe_done(self) -> None:
        if self._done is not None and self._body_done and not self._busy and not self._ops:
            self._unbind()
            done, self._done = self._done, None
            done.callback(None)

    # -- in a thread ------------------------------------------------------

    def _filesystem(self) -> JailedFS:
        if self._fs is None:
            assert self.session is not None
            self._fs = self._app.open_fs(self.session.user, self.session.created)
        return self._fs

    def _open(self, result: FileResult) -> None:
        try:
            name = upload_name(result.name)
            fs = self._filesystem()
            if self.on_existing == "replace":
                result.upload = fs.open_upload(join_path(self.directory, name))
                return
            keep = self.on_existing == "keep"
            # Keyed by the home directory: a drop box has no session, and two
            # accounts' "/a.txt" are different files.
            account = str(getattr(fs, "home", "")) or (
                self.session.user if self.session is not None else "")
            for number in range(MAX_KEEP_BOTH + 1):
                candidate = name if number == 0 else numbered_name(name, number)
                path = join_path(self.directory, candidate)
                if keep and not NAME_CLAIMS.claim(account, path):
                    continue  # another upload is storing this name now
                try:
                    result.upload = fs.open_upload(path, exclusive=True)
                    result.stored_name = candidate
                    if keep:
                        result.claimed = (account, path)
                    return
                except AlreadyExists:
                    if keep:
                        NAME_CLAIMS.release(account, path)
                    else:
                        raise
                except BaseException:
                    if keep:
                        NAME_CLAIMS.release(account, path)
                    raise
            raise AlreadyExists(join_path(self.directory, name))
        except AlreadyExists:
            result.conflict = True
            if self.on_existing == "skip":
                result.skipped = True
            else:
                choices = ("\u201ckeep both\u201d or \u201creplace\u201d"
                           if "overwrite" in self._filesystem().perms
                           else "\u201ckeep both\u201d")
                result.error = (f"{result.name} already exists here; nothing was "
                                f"replaced. Choose {choices} to store it.")
        except VFSError as e:
            result.error = friendly(e)
        except AccountGone:
            result.error = "Your account is no longer available."
        except PasswordChanged:
            result.error = ("The password of this account was changed after you logged "
                            "in. Log in again with the new password.")

    def _write(self, result: FileResult, data: bytes) -> None:
        if result.upload is None or result.error is not None:
            return
        try:
            result.upload.write(data)
        except VFSError as e:
            result.error = friendly(e)
            self._discard(result.upload)
            result.upload = None

    def _release_claim(self, result: FileResult) -> None:
        claimed, result.claimed = result.claimed, None
        if claimed is not None:
            NAME_CLAIMS.release(*claimed)

    def _commit(self, result: FileResult) -> None:
        try:
            self._commit_claimed(result)
        finally:
            self._release_claim(result)

    def _commit_claimed(self, result: FileResult) -> None:
        upload, result.upload = result.upload, None
        if upload is None:
            return
        if result.error is not None or self.ended is not None:
            # The account ended while this file was queued: never commit it.
            if not upload.finished:
                self._discard(upload)
            return
        try:
            upload.commit()
        except AlreadyExists:
            # appeared while the upload ran: still not replaced
            result.conflict = True
            result.error = (f"{result.name} appeared here while it was uploaded; "
                            "nothing was replaced.")
        except VFSError as e:
            result.error = friendly(e)

    def _abort_all(self) -> None:
        for result in self.results:
            self._release_claim(result)
            upload, result.upload = result.upload, None
            if upload is not None and not upload.finished:
                self._discard(upload)
                if result.error is None:
                    result.error = "Not stored: the upload did not complete."

    def _discard(self, upload: Upload) -> None:
        """
        Abort without leaving a partial file behind.

        ``Upload.abort`` keeps the bytes of a new file under its name so an
        FTP client can resume; a browser cannot resume, and a half file that
        looks whole is worse than none, so it is removed (when the account
        may delete; otherwise it stays, as it would over FTP).
        """
        path, atomic = upload.path, upload.atomic
        if upload.abort() is AbortOutcome.KEPT_PARTIAL and atomic:
            try:
                self._filesystem().remove(path)
            except (VFSError, AccountGone, PasswordChanged):
                pass
