"""
The web file manager: browse, download, upload, create folders, rename and
delete, through the same jailed filesystem (and permissions) as FTP.

Every page works without JavaScript; ``/static/app.js`` adds dialogs, a
drop zone and progress.  Filesystem calls run in a thread.  What went wrong
is said where the person is: a form's error comes back on the folder (or
form) it was sent from as a notice, never on a separate error page, and a
script that asked for JSON (``Accept: application/json``) gets
C{"ok": false, "message": ..., "conflict": ...} instead.

Nothing is replaced by surprise: a rename onto a taken name is refused
unless the form says ``replace=1`` (sent only after the person confirmed);
uploads have their own choice (see L{rumpus_secure.web.upload}).  Replacing
always needs the ``overwrite`` permission, checked by the filesystem.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.vfs import (
    AlreadyExists,
    DirScan,
    InvalidPath,
    PermissionDenied,
    VFSError,
    join_path,
    split_path,
)
from rumpus_secure.web.app import (
    AccountGone,
    PasswordChanged,
    WebApp,
    friendly,
    status_for,
)
from rumpus_secure.web.download import content_disposition, send_file
from rumpus_secure.web.folder_page import FolderView, ListingPage, page_number
from rumpus_secure.web.listing import SORT_KEYS, bidi_visible, dir_url, files_url, parent_of
from rumpus_secure.web.pages import esc, page, page_frame, url_arg
from rumpus_secure.web.pagestream import PageProducer
from rumpus_secure.web.respond import error_page, run, see_other, send, send_json
from rumpus_secure.web.sessions import Session
from rumpus_secure.web.upload import UploadSink
from rumpus_secure.web.zipstream import (
    MAX_NAMES,
    MAX_PER_ACCOUNT,
    MAX_TOTAL,
    ZipProducer,
    build_zip,
    unique_names,
    zip_name,
)

__all__ = ["DeleteResource", "FilesResource", "MkdirResource", "RenameResource",
           "SORT_KEYS", "UploadResource", "ZipResource", "arg", "dir_url", "files_url",
           "parent_of"]


def arg(request: IRequest, name: bytes) -> str | None:
    """A query or form value as text (bytes that are not UTF-8 round-trip)."""
    values = request.args.get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "surrogateescape")


def args(request: IRequest, name: bytes) -> list[str]:
    """Every value of a repeated query or form field."""
    return [v.decode("utf-8", "surrogateescape") for v in request.args.get(name, [])]


def wants_json(request: IRequest) -> bool:
    return b"application/json" in (request.getHeader(b"accept") or b"")


def answer(request: IRequest, session: Session, back: str, kind: str, message: str,
           status: int = 200, **extra: Any) -> None:
    """
    Say how a form went: JSON for a script, else a notice on the folder
    C{back} (303, so a reload does not post again).
    """
    if wants_json(request):
        send_json(request, status, {"ok": kind == "ok", "message": message, **extra})
        return
    session.add_flash(kind, message)
    see_other(request, dir_url(back))


class ManagerResource(resource.Resource):
    """Base: a logged-in session is needed; POSTs need origin and CSRF."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: IRequest) -> Any:
        session = self.app.session(request)
        if session is None:
            see_other(request, "/login?next=" + url_arg(request.uri.decode("latin-1")))
            return run(request, _nothing)
        return run(request, lambda: self.guarded(request, session, self.get))

    render_HEAD = render_GET

    def render_POST(self, request: IRequest) -> Any:
        session = self.app.session(request)
        if session is None:
            error_page(request, 401, "Please log in again",
                       "Your session has ended, so nothing was changed.",
                       link=("/login", "Log in"))
            return run(request, _nothing)
        if not self.app.post_allowed(request, session):
            error_page(request, 403, "Request refused",
                       "This form did not come from this site's own page, or its "
                       "security token has expired. Nothing was changed. Go back, "
                       "reload the page and try again.",
                       link=("/files/", "Back to your files"),
                       user=session.user, csrf=session.csrf)
            return run(request, _nothing)
        return run(request, lambda: self.guarded(request, session, self.post))

    async def guarded(self, request: IRequest, session: Session, handler: Any) -> None:
        """
        Run C{handler(request, session)}; a path the client sent that is not
        valid (a NUL, a line break, a reserved name) is a ``400`` page, not a
        ``500``, wherever it is noticed.
        """
        try:
            await handler(request, session)
        except VFSError as e:
            error_page(request, status_for(e), "That did not work", friendly(e),
                       link=("/files/", "Back to your files"),
                       user=session.user, csrf=session.csrf)

    async def get(self, request: IRequest, session: Session) -> None:
        error_page(request, 405, "Not here", "This address only accepts forms.",
                   link=("/files/", "Back to your files"))

    async def post(self, request: IRequest, session: Session) -> None:
        error_page(request, 405, "Not here", "This address does not accept forms.",
                   link=("/files/", "Back to your files"))

    async def fs(self, request: IRequest, session: Session, function: Any,
                 back: str = "/", inline: bool = False) -> tuple[bool, Any]:
        """
        Run C{function(fs)} in a thread; on a filesystem error answer where
        the person is (a notice on the folder C{back}, or JSON) and return
        C{(False, None)}.

        @param inline: for a page that has nowhere else to go (a folder
            that is not there): answer with an error page that carries the
            site's header, instead of a notice on C{back}.
        """
        try:
            return True, await self.app.with_fs(session, function)
        except VFSError as e:
            conflict = isinstance(e, AlreadyExists)
            if inline and not wants_json(request):
                error_page(request, status_for(e), "That did not work", friendly(e),
                           link=(dir_url(back), "Back to the folder"),
                           user=session.user, csrf=session.csrf)
            elif wants_json(request):
                send_json(request, status_for(e), {"ok": False, "message": friendly(e),
                                                   "conflict": conflict})
            else:
                answer(request, session, back, "error", friendly(e))
        except AccountGone:
            self.app.sessions.end_user(session.user)
            error_page(request, 403, "Account unavailable",
                       "This account has been locked or removed. Ask your "
                       "administrator.", link=("/login", "Log in"))
        except PasswordChanged:
            self.app.sessions.discard(session)
            error_page(request, 403, "Please log in again",
                       "The password of this account was changed after you "
                       "logged in. Log in again with the new password.",
                       link=("/login", "Log in"))
        return False, None


async def _nothing() -> None:
    return None


class FilesResource(ManagerResource):
    """``/files/<path>``: a folder listing or a file download."""

    async def get(self, request: IRequest, session: Session) -> None:
        raw = b"/".join(request.postpath)
        vpath = "/" + raw.decode("utf-8", "surrogateescape")

        def look(fs: Any) -> tuple[str, Any, Any]:
            entry = fs.stat(vpath)
            if entry.kind == "dir":
                # Opened here, so that a refusal is a whole error page; read
                # as the page is sent (rumpus_secure.web.listing).
                return "dir", fs.scan_dir(vpath), fs
            return "file", fs.open_read(vpath), fs.perms

        since = self.app.watch_point()  # before the account is read
        ok, found = await self.fs(request, session, look, back=parent_of(vpath),
                                  inline=True)
        if not ok:
            return
        kind, value, perms = found
        if kind == "file":
            self.app.audit(request, "web.download", account=session.user, path=vpath)
            cut: list[Any] = []
            binding = self.app.bind_transfer(
                request, session.user, "download",
                lambda reason: cut[0].cut(reason) if cut else None, since)
            producer = send_file(request, split_path(vpath)[-1], value,
                                 self.app.server.run_in_thread, on_end=binding.cancel,
                                 clock=self.app.reactor,
                                 stall_timeout=self.app.config.http_timeout)
            if producer is None:
                binding.cancel()
            else:
                cut.append(producer)
            return
        self.send_folder(request, session, vpath, value, perms, since)

    def send_folder(self, request: IRequest, session: Session, vpath: str,
                    scan: DirScan, fs: Any, since: int | None) -> None:
        """
        A folder's page, streamed as the folder is read (see
        L{rumpus_secure.web.folder_page} and L{rumpus_secure.web.pagestream}).
        """
        if not request.path.endswith(b"/") or request.method == b"HEAD" or getattr(
                request, "_disconnected", False):
            scan.close()
        if not request.path.endswith(b"/"):
            # The rows link relative to the folder's URL, which ends in "/".
            query = request.uri.partition(b"?")[2].decode("latin-1")
            see_other(request, dir_url(vpath) + ("?" + query if query else ""))
            return
        if getattr(request, "_disconnected", False):
            return
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if request.method == b"HEAD":
            request.write(b"")
            request.finish()
            return
        sort = arg(request, b"sort") or "name"
        if sort not in SORT_KEYS:
            sort = "name"
        view = FolderView(vpath, fs.perms, session.csrf, sort,
                          arg(request, b"order") == "desc", page_number(arg(request, b"page")),
                          find=(arg(request, b"q") or "").strip()[:200])
        parts = split_path(vpath)
        title = "Files" if not parts else bidi_visible(parts[-1])  # "//" has no parts either
        top, end = page_frame(title, user=session.user, csrf=session.csrf,
                              flash=list(session.take_flash()), wide=True)
        listing = ListingPage(view, scan, lambda: fs.scan_dir(vpath), top, end)
        producers: list[PageProducer] = []
        binding = self.app.bind_transfer(
            request, session.user, "listing",
            lambda reason: producers[0].cut(reason) if producers else None, since)
        producer = PageProducer(request, listing.pieces(), self.app.server.run_in_thread,
                                listing.closing, close=listing.close, on_end=binding.cancel,
                                clock=self.app.reactor,
                                stall_timeout=self.app.config.http_timeout)
        producers.append(producer)
        producer.start()


class UploadResource(ManagerResource):
    """``POST /upload?dir=<path>``: the body was streamed by L{UploadSink}."""

    def render_POST(self, request: IRequest) -> Any:
        sink = request.content
        if not isinstance(sink, UploadSink):
            error_page(request, 400, "Upload refused",
                       "The upload must be sent from the upload form.",
                       link=("/files/", "Back to your files"))
            return run(request, _nothing)
        return run(request, lambda: self.finish_upload(request, sink))

    async def finish_upload(self, request: IRequest, sink: UploadSink) -> None:
        await sink.body_complete()
        session = sink.session
        back = dir_url(sink.directory)
        if sink.refusal is not None and (session is None or not sink.results):
            if wants_json(request):
                send_json(request, sink.refusal_status, {"message": sink.refusal})
            elif session is not None and sink.refusal_status not in (401, 403):
                # a malformed or empty form; a forged one (403) gets no notice
                session.add_flash("error", sink.refusal)
                see_other(request, back)
            else:
                error_page(request, sink.refusal_status, "Upload refused",
                           sink.refusal, link=(back, "Back to the folder"))
            return
        assert session is not None
        stored = [r for r in sink.results if r.error is None and not r.skipped]
        skipped = [r for r in sink.results if r.skipped]
        failed = [r for r in sink.results if r.error is not None]
        for result in stored:
            self.app.audit(request, "web.upload", account=session.user,
                           path=join_path(sink.directory, result.stored_name),
                           size=result.size)
        messages = []
        if stored:
            names = ", ".join(r.stored_name if r.stored_name == r.name
                              else f"{r.name} (as {r.stored_name})" for r in stored)
            messages.append(("ok", f"Uploaded {len(stored)} file(s): {names}."))
        if skipped:
            messages.append(("ok", f"Skipped {len(skipped)} file(s) whose name was "
                             "taken: " + ", ".join(r.name for r in skipped) + "."))
        for result in failed:
            messages.append(("error", result.error if result.conflict
                             else f"{result.name}: {result.error}"))
        if sink.refusal and not failed:
            messages.append(("error", sink.refusal))
        if not sink.results and not sink.refusal:
            messages.append(("error", "No file was chosen."))
        if wants_json(request):
            status = 200 if not failed and not sink.refusal else 207
            if failed and all(r.conflict for r in failed) and not stored:
                status = 409
            send_json(request, status, {
                "message": " ".join(m for _, m in messages),
                "stored": [r.stored_name for r in stored],
                "skipped": [r.name for r in skipped],
                "conflicts": [r.name for r in failed if r.conflict],
                "failed": {r.name: r.error for r in failed},
            })
        else:
            for kind, message in messages:
                session.add_flash(kind, message)
            see_other(request, back)


def _one_name(name: str | None) -> str:
    if name is None or not name.strip() or "/" in name:
        raise InvalidPath("invalid name: give one name, without '/'")
    name = name.strip()
    if name in (".", ".."):
        raise InvalidPath("invalid name: '.' and '..' are not names")
    return name


class MkdirResource(ManagerResource):
    """``POST /mkdir``: a new folder."""

    async def post(self, request: IRequest, session: Session) -> None:
        directory = arg(request, b"dir") or "/"

        def make(fs: Any) -> str:
            path = join_path(directory, _one_name(arg(request, b"name")))
            fs.mkdir(path)
            return path

        ok, path = await self.fs(request, session, make, back=directory)
        if ok:
            self.app.audit(request, "web.mkdir", account=session.user, path=path)
            answer(request, session, directory, "ok",
                   f"Created folder {split_path(path)[-1]}.", path=path)


def rename_form(session: Session, path: str, name: str, *, taken: bool = False,
                may_replace: bool = False, message: str = "") -> bytes:
    """
    The rename page (the fallback of the rename dialog); with C{taken} it
    asks before replacing the file that has the chosen name.
    """
    note = ""
    confirm = ""
    if message:
        note = f"<p class='flash error' role=alert>{esc(message)}</p>"
    if taken and may_replace:
        note = (f"<p class='flash error' role=alert><strong>{esc(name)}</strong> already "
                "exists here. Replace it? The file now called "
                f"{esc(name)} will be lost.</p>")
        confirm = ("<button type=submit name=replace value=1 class=danger>"
                   "Replace it</button> ")
    elif taken:
        note = (f"<p class='flash error' role=alert><strong>{esc(name)}</strong> already "
                "exists here, and this account may not replace files. Choose "
                "another name.</p>")
    body = (
        note + "<form class=card method=post action='/rename'>"
        f"<input type=hidden name=csrf value='{esc(session.csrf)}'>"
        f"<input type=hidden name=path value='{esc(path)}'>"
        f"<label>New name <input type=text name=name value='{esc(name)}' required "
        "autocomplete=off></label>"
        f"{confirm}<button type=submit>Rename</button> "
        f"<a class='button plain' href='{esc(dir_url(parent_of(path)))}'>Cancel</a></form>"
    )
    old = split_path(path)[-1] if split_path(path) else ""
    return page(f"Rename {old}", body, user=session.user, csrf=session.csrf)


class RenameResource(ManagerResource):
    """``GET /rename?path=``: the form; ``POST /rename``: do it."""

    async def get(self, request: IRequest, session: Session) -> None:
        """
        The form, only for an account that may rename (round 3: a read-only
        account was offered forms whose POST was then refused) and an entry
        that is there.
        """
        path = arg(request, b"path") or "/"
        name = split_path(path)[-1] if split_path(path) else ""

        def check(fs: Any) -> None:
            if "rename" not in fs.perms:
                raise PermissionDenied("rename", path)
            fs.stat(path)

        ok, _ = await self.fs(request, session, check, back=parent_of(path))
        if ok:
            send(request, 200, rename_form(session, path, name))

    async def post(self, request: IRequest, session: Session) -> None:
        path = arg(request, b"path") or "/"
        parent = parent_of(path)
        replace = arg(request, b"replace") == "1"
        new_name = (arg(request, b"name") or "").strip()

        def rename(fs: Any) -> tuple[str, frozenset[str]]:
            target = join_path(parent, _one_name(new_name))
            try:
                fs.rename(path, target, replace=replace)
            except AlreadyExists:
                if fs.is_dir(target):
                    raise
                return "", fs.perms
            return target, fs.perms

        ok, done = await self.fs(request, session, rename, back=parent)
        if not ok:
            return
        target, perms = done
        if not target:
            may = "overwrite" in perms
            message = (f"{new_name} already exists here." + (" Replace it?" if may else
                       " This account may not replace files; choose another name."))
            if wants_json(request):
                send_json(request, 409, {"ok": False, "conflict": True,
                                         "may_replace": may, "message": message})
            else:
                send(request, 409, rename_form(session, path, new_name, taken=True,
                                               may_replace=may))
            return
        self.app.audit(request, "web.rename", account=session.user, path=path,
                       to=target, replaced=replace)
        answer(request, session, parent, "ok", f"Renamed to {split_path(target)[-1]}.")


def _targets(request: IRequest) -> tuple[str, list[str]]:
    """
    The folder and the paths a delete (or ZIP) names: C{path=} once, or
    C{dir=} with one C{name=} per selected entry.
    """
    single = arg(request, b"path")
    if single is not None:
        return parent_of(single), [single]
    directory = arg(request, b"dir") or "/"
    return directory, [join_path(directory, _one_name(n)) for n in args(request, b"name")]


class DeleteResource(ManagerResource):
    """``GET /delete?...``: asks to confirm; ``POST /delete``: deletes."""

    async def get(self, request: IRequest, session: Session) -> None:
        try:
            parent, paths = _targets(request)
        except InvalidPath as e:
            answer(request, session, arg(request, b"dir") or "/", "error", friendly(e), 400)
            return
        if not paths:
            answer(request, session, parent, "error", "Select something to delete first.",
                   400)
            return
        def look(fs: Any) -> list[Any]:
            # No confirmation form for an account that may not delete.
            if "delete" not in fs.perms:
                raise PermissionDenied("delete", paths[0])
            return [fs.stat(p) for p in paths]

        ok, entries = await self.fs(request, session, look, back=parent)
        if not ok:
            return
        if len(entries) == 1:
            entry = entries[0]
            what = ("the folder and everything in it" if entry.kind == "dir"
                    else "this file")
            question = f"Delete <strong>{esc(entry.name)}</strong>: {what}?"
        else:
            question = (f"Delete these {len(entries)} entries (folders with everything "
                        "in them)?<ul class=names>"
                        + "".join(f"<li>{esc(e.name)}</li>" for e in entries) + "</ul>")
        body = (
            f"<p>{question} This cannot be undone.</p>"
            "<form class=card method=post action='/delete'>"
            f"<input type=hidden name=csrf value='{esc(session.csrf)}'>"
            f"<input type=hidden name=dir value='{esc(parent)}'>"
            + "".join(f"<input type=hidden name=name value='{esc(e.name)}'>"
                      for e in entries)
            + "<button type=submit class=danger>Delete</button> "
            f"<a class='button plain' href='{esc(dir_url(parent))}'>Cancel</a></form>"
        )
        title = f"Delete {entries[0].name}?" if len(entries) == 1 else "Delete?"
        send(request, 200, page(title, body, user=session.user, csrf=session.csrf))

    async def post(self, request: IRequest, session: Session) -> None:
        try:
            parent, paths = _targets(request)
        except InvalidPath as e:
            answer(request, session, arg(request, b"dir") or "/", "error", friendly(e), 400)
            return
        if not paths:
            answer(request, session, parent, "error", "Nothing was selected.", 400)
            return

        deleted: list[str] = []

        def delete(fs: Any) -> None:
            for path in paths:
                fs.remove_tree(path)
                deleted.append(path)

        ok, _ = await self.fs(request, session, delete, back=parent)
        # An error may stop the rest after some are gone: audit what went.
        for path in deleted:
            self.app.audit(request, "web.delete", account=session.user, path=path)
        if ok:
            names = ", ".join(split_path(p)[-1] for p in paths)
            answer(request, session, parent, "ok", f"Deleted {names}.")


class ZipResource(ManagerResource):
    """
    ``GET /zip?dir=<folder>&name=a&name=b``: the selected entries as one
    ZIP, streamed (see L{rumpus_secure.web.zipstream}).  A GET so that the
    browser downloads it; it changes nothing, and the session cookie is
    SameSite=Strict.
    """

    def __init__(self, app: WebApp) -> None:
        super().__init__(app)
        #: ZIP downloads in progress per account
        self.running: dict[str, int] = {}

    async def get(self, request: IRequest, session: Session) -> None:
        try:
            directory, paths = _targets(request)
        except InvalidPath as e:
            answer(request, session, arg(request, b"dir") or "/", "error", friendly(e), 400)
            return
        paths = unique_names(paths)  # a name listed twice is archived once
        names = [split_path(p)[-1] for p in paths]
        if not names:
            answer(request, session, directory, "error",
                   "Select the files and folders to download first.", 400)
            return
        if len(names) > MAX_NAMES:
            answer(request, session, directory, "error",
                   f"A ZIP download may select at most {MAX_NAMES} entries; "
                   "select a folder instead.", 400)
            return
        running = self.running
        if (running.get(session.user, 0) >= MAX_PER_ACCOUNT
                or sum(running.values()) >= MAX_TOTAL):
            answer(request, session, directory, "error",
                   "Too many ZIP downloads are running; try again when one has "
                   "finished.", 503)
            return

        def check(fs: Any) -> None:
            # Refuse before the first byte: permissions, and every name there.
            if "download" not in fs.perms:
                raise PermissionDenied("download", directory)
            for path in paths:
                fs.stat(path)

        since = self.app.watch_point()  # before the account is read
        ok, _ = await self.fs(request, session, check, back=directory)
        if not ok:
            return
        user, logged_in = session.user, session.created
        running[user] = running.get(user, 0) + 1
        producers: list[ZipProducer] = []
        binding = self.app.bind_transfer(
            request, user, "zip",
            lambda reason: producers[0].cut(reason) if producers else None, since)

        def done() -> None:
            binding.cancel()
            running[user] -= 1
            if running[user] <= 0:
                del running[user]

        self.app.audit(request, "web.zip", account=user, path=directory, names=names)
        request.setHeader(b"content-type", b"application/zip")
        request.setHeader(b"content-disposition",
                          content_disposition(zip_name(directory, names)))
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        if request.method == b"HEAD":
            done()
            request.write(b"")
            request.finish()
            return
        build = build_zip(lambda: self.app.open_fs(user, logged_in), directory, names)
        producer = ZipProducer(request, build, self.app.reactor.callFromThread, done=done,
                               clock=self.app.reactor,
                               stall_timeout=self.app.config.http_timeout)
        producers.append(producer)
        producer.start()
