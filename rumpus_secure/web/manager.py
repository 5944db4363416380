"""
The web file manager: browse, download, upload, create folders, rename and
delete, through the same jailed filesystem (and permissions) as FTP.

Every page works without JavaScript; ``/static/app.js`` only adds an upload
progress bar.  Filesystem calls run in a thread; their errors become pages
that say what went wrong and what to do.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.vfs import Entry, InvalidPath, VFSError, join_path, split_path
from rumpus_secure.web.app import (
    AccountGone,
    PasswordChanged,
    WebApp,
    friendly,
    status_for,
)
from rumpus_secure.web.download import send_file
from rumpus_secure.web.pages import esc, human_size, human_time, page, url_arg, url_path
from rumpus_secure.web.respond import error_page, run, see_other, send, send_json
from rumpus_secure.web.sessions import Session
from rumpus_secure.web.upload import UploadSink

SORT_KEYS = {
    "name": lambda e: e.name.lower(),
    "size": lambda e: e.size,
    "date": lambda e: e.mtime,
}


def arg(request: IRequest, name: bytes) -> str | None:
    """A query or form value as text (bytes that are not UTF-8 round-trip)."""
    values = request.args.get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "surrogateescape")


def parent_of(vpath: str) -> str:
    """The folder above C{vpath}; ``/`` for a path that is not valid."""
    try:
        parts = split_path(vpath)
    except InvalidPath:
        return "/"
    return "/" + "/".join(parts[:-1])


def files_url(vpath: str) -> str:
    return "/files" + url_path(vpath if vpath.endswith("/") or vpath == "/" else vpath)


def dir_url(vpath: str) -> str:
    return "/files" + url_path(vpath.rstrip("/") + "/")


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
                 back: str = "/") -> tuple[bool, Any]:
        """
        Run C{function(fs)} in a thread; on a filesystem error answer with a
        friendly page and return C{(False, None)}.
        """
        try:
            return True, await self.app.with_fs(session, function)
        except VFSError as e:
            error_page(request, status_for(e), "That did not work", friendly(e),
                       link=(dir_url(back), "Back to the folder"),
                       user=session.user, csrf=session.csrf)
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

        def look(fs: Any) -> tuple[str, Any]:
            entry = fs.stat(vpath)
            if entry.kind == "dir":
                return "dir", fs.list_dir(vpath)
            return "file", fs.open_read(vpath)

        ok, found = await self.fs(request, session, look, back=parent_of(vpath))
        if not ok:
            return
        kind, value = found
        if kind == "file":
            self.app.audit(request, "web.download", account=session.user, path=vpath)
            send_file(request, split_path(vpath)[-1], value, self.app.server.run_in_thread)
            return
        send(request, 200, self.listing(request, session, vpath, value))

    def listing(self, request: IRequest, session: Session, vpath: str,
                entries: list[Entry]) -> bytes:
        sort = arg(request, b"sort") or "name"
        if sort not in SORT_KEYS:
            sort = "name"
        descending = arg(request, b"order") == "desc"
        entries = sorted(entries, key=SORT_KEYS[sort], reverse=descending)
        entries.sort(key=lambda e: e.kind != "dir")
        parts = split_path(vpath)
        crumbs = [f"<a href='/files/'>Home</a>"]
        for index, name in enumerate(parts):
            crumbs.append(f"<a href='{esc(dir_url(join_path('/', '/'.join(parts[:index + 1]))))}'>"
                          f"{esc(name)}</a>")
        token = esc(session.csrf)
        here = esc(url_arg(vpath))

        def head(key: str, label: str, css: str) -> str:
            order = "desc" if key == sort and not descending else "asc"
            mark = (" \u25be" if descending else " \u25b4") if key == sort else ""
            return (f"<th class={css}><a href='?sort={key}&amp;order={order}'>"
                    f"{label}{mark}</a></th>")

        rows = []
        for entry in entries:
            try:
                path = join_path(vpath, entry.name)
            except InvalidPath:
                # A name no path can carry (CR or LF, made outside the
                # server): listed escaped, as FTP lists it, but not a link.
                rows.append(
                    f"<tr><td class=name>{esc(entry.name)} <span class=kind>"
                    "(name not usable here)</span></td><td class=size></td>"
                    f"<td class=date>{esc(human_time(entry.mtime))}</td>"
                    "<td class=actions></td></tr>")
                continue
            if entry.kind == "dir":
                link = f"<a href='{esc(dir_url(path))}'>{esc(entry.name)}/</a>"
                size = "<span class=kind>folder</span>"
                download = ""
            elif entry.kind == "file":
                link = f"<a href='{esc(files_url(path))}'>{esc(entry.name)}</a>"
                size = esc(human_size(entry.size))
                download = f"<a href='{esc(files_url(path))}' download>Download</a>"
            else:
                link = f"{esc(entry.name)} <span class=kind>({esc(entry.kind)})</span>"
                size = ""
                download = ""
            target = esc(url_arg(path))
            rows.append(
                f"<tr><td class=name>{link}</td><td class=size>{size}</td>"
                f"<td class=date>{esc(human_time(entry.mtime))}</td>"
                f"<td class=actions>{download}"
                f"<a href='/rename?path={target}'>Rename</a>"
                f"<a href='/delete?path={target}'>Delete</a></td></tr>"
            )
        if not rows:
            rows.append("<tr><td colspan=4 class=muted>This folder is empty.</td></tr>")
        body = (
            f"<nav class=crumbs aria-label=Path>{' / '.join(crumbs)}</nav>"
            "<div class=tools>"
            f"<form class=card id=upload-form method=post enctype='multipart/form-data' "
            f"action='/upload?dir={here}'>"
            f"<input type=hidden name=csrf value='{token}'>"
            "<label>Upload files <input type=file name=file multiple></label>"
            "<button type=submit>Upload</button> "
            "<progress id=upload-progress class=hidden value=0 max=1></progress>"
            "<span id=upload-status class=muted role=status></span></form>"
            "<form class=card method=post action='/mkdir'>"
            f"<input type=hidden name=csrf value='{token}'>"
            f"<input type=hidden name=dir value='{esc(vpath)}'>"
            "<label>New folder <input type=text name=name required "
            "autocomplete=off></label><button type=submit>Create</button></form>"
            "</div>"
            "<table class=files><thead><tr>"
            + head("name", "Name", "name") + head("size", "Size", "size")
            + head("date", "Modified", "date")
            + "<th class=actions>Actions</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>"
        )
        title = wire_title(parts) if parts else "Files"  # "//" has no parts either
        return page(title, body, user=session.user, csrf=session.csrf,
                    flash=session.take_flash())


def wire_title(parts: tuple[str, ...]) -> str:
    return parts[-1]


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
        wants_json = b"application/json" in (request.getHeader(b"accept") or b"")
        session = sink.session
        back = dir_url(sink.directory)
        if sink.refusal is not None and (session is None or not sink.results):
            if wants_json:
                send_json(request, sink.refusal_status, {"message": sink.refusal})
            else:
                error_page(request, sink.refusal_status, "Upload refused",
                           sink.refusal, link=(back, "Back to the folder"))
            return
        assert session is not None
        stored = [r for r in sink.results if r.error is None]
        failed = [r for r in sink.results if r.error is not None]
        for result in stored:
            self.app.audit(request, "web.upload", account=session.user,
                           path=join_path(sink.directory, result.name), size=result.size)
        messages = []
        if stored:
            messages.append(("ok", f"Uploaded {len(stored)} file(s): "
                             + ", ".join(r.name for r in stored) + "."))
        for result in failed:
            messages.append(("error", f"{result.name}: {result.error}"))
        if sink.refusal and not failed:
            messages.append(("error", sink.refusal))
        if not sink.results and not sink.refusal:
            messages.append(("error", "No file was chosen."))
        for kind, message in messages:
            session.add_flash(kind, message)
        if wants_json:
            status = 200 if not failed and not sink.refusal else 207
            send_json(request, status, {
                "message": " ".join(m for _, m in messages),
                "stored": [r.name for r in stored],
                "failed": {r.name: r.error for r in failed},
            })
        else:
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
            session.add_flash("ok", f"Created folder {split_path(path)[-1]}.")
            see_other(request, dir_url(directory))


class RenameResource(ManagerResource):
    """``GET /rename?path=``: the form; ``POST /rename``: do it."""

    async def get(self, request: IRequest, session: Session) -> None:
        path = arg(request, b"path") or "/"
        name = split_path(path)[-1] if split_path(path) else ""
        body = (
            "<form class=card method=post action='/rename'>"
            f"<input type=hidden name=csrf value='{esc(session.csrf)}'>"
            f"<input type=hidden name=path value='{esc(path)}'>"
            f"<label>New name <input type=text name=name value='{esc(name)}' required "
            "autocomplete=off></label>"
            "<button type=submit>Rename</button> "
            f"<a class='button plain' href='{esc(dir_url(parent_of(path)))}'>Cancel</a></form>"
        )
        send(request, 200, page(f"Rename {name}", body, user=session.user,
                                csrf=session.csrf))

    async def post(self, request: IRequest, session: Session) -> None:
        path = arg(request, b"path") or "/"
        parent = parent_of(path)

        def rename(fs: Any) -> str:
            target = join_path(parent, _one_name(arg(request, b"name")))
            fs.rename(path, target)
            return target

        ok, target = await self.fs(request, session, rename, back=parent)
        if ok:
            self.app.audit(request, "web.rename", account=session.user, path=path,
                           to=target)
            session.add_flash("ok", f"Renamed to {split_path(target)[-1]}.")
            see_other(request, dir_url(parent))


class DeleteResource(ManagerResource):
    """``GET /delete?path=``: asks to confirm; ``POST /delete``: deletes."""

    async def get(self, request: IRequest, session: Session) -> None:
        path = arg(request, b"path") or "/"
        ok, entry = await self.fs(request, session, lambda fs: fs.stat(path),
                                  back=parent_of(path))
        if not ok:
            return
        what = ("the folder and everything in it" if entry.kind == "dir"
                else "this file")
        body = (
            f"<p>Delete <strong>{esc(entry.name)}</strong>: {what}? "
            "This cannot be undone.</p>"
            "<form class=card method=post action='/delete'>"
            f"<input type=hidden name=csrf value='{esc(session.csrf)}'>"
            f"<input type=hidden name=path value='{esc(path)}'>"
            "<button type=submit class=danger>Delete</button> "
            f"<a class='button plain' href='{esc(dir_url(parent_of(path)))}'>Cancel</a></form>"
        )
        send(request, 200, page(f"Delete {entry.name}?", body, user=session.user,
                                csrf=session.csrf))

    async def post(self, request: IRequest, session: Session) -> None:
        path = arg(request, b"path") or "/"
        parent = parent_of(path)
        ok, _ = await self.fs(request, session, lambda fs: fs.remove_tree(path),
                              back=parent)
        if ok:
            self.app.audit(request, "web.delete", account=session.user, path=path)
            session.add_flash("ok", f"Deleted {split_path(path)[-1]}.")
            see_other(request, dir_url(parent))
