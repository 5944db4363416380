"""
The owner's side of share links (L{rumpus_secure.shares}): ``/shares``.

From a folder listing, an account with ``download`` makes a download link to
a file or folder, and an account with ``upload`` makes a drop box into a
folder.  The link's URL (with its token) is shown once; the ``/shares`` page
lists every link with how often and when it was used, its visitors'
downloads and uploads (``/shares/<id>``), and a Revoke button.  What
visitors see is L{rumpus_secure.web.visit}.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.shares import DEFAULT_DAYS, MAX_NOTE, Share, ShareError
from rumpus_secure.vfs import VFSError, split_path
from rumpus_secure.web.app import WebApp, friendly
from rumpus_secure.web.listing import dir_url, parent_of
from rumpus_secure.web.pages import esc, human_size, human_time, page, url_arg
from rumpus_secure.web.respond import error_page, run, see_other, send
from rumpus_secure.web.sessions import Session
from rumpus_secure.web.visit import share_store

#: Biggest "maximum upload size" an owner may set (MiB); none means no cap.
MAX_SIZE_MIB = 1024 * 1024


def link_url(app: WebApp, token: str) -> str:
    return f"{app.origin}/s/{token}"


# -- the owner ------------------------------------------------------------------------


def _describe(share: Share) -> str:
    return ("Download link" if share.kind == "download" else "Drop box") + " \u2013 " + (
        share.path)


class SharesResource(resource.Resource):
    """
    ``/shares``: the account's links; ``/shares/new`` (GET the form, POST
    it); ``/shares/revoke`` (POST); ``/shares/<id>``: one link's visits.
    """

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def _rest(self, request: IRequest) -> str:
        return "/".join(p.decode("ascii", "replace") for p in request.postpath if p)

    def render_GET(self, request: IRequest) -> Any:
        session = self.app.session(request)
        if session is None:
            see_other(request, "/login?next=" + url_arg(request.uri.decode("latin-1")))
            return run(request, _nothing)
        rest = self._rest(request)
        if rest == "":
            return run(request, lambda: self.list(request, session))
        if rest == "new":
            return run(request, lambda: self.form(request, session))
        return run(request, lambda: self.detail(request, session, rest))

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
                       "security token has expired. Nothing was changed.",
                       link=("/shares", "Your links"), user=session.user,
                       csrf=session.csrf)
            return run(request, _nothing)
        rest = self._rest(request)
        if rest == "new":
            return run(request, lambda: self.create(request, session))
        if rest == "revoke":
            return run(request, lambda: self.revoke(request, session))
        error_page(request, 404, "Not found", "There is nothing at this address.",
                   link=("/shares", "Your links"))
        return run(request, _nothing)

    def _arg(self, request: IRequest, name: bytes) -> str:
        return (request.args.get(name) or [b""])[0].decode("utf-8", "surrogateescape")

    async def list(self, request: IRequest, session: Session) -> None:
        shares = await self.app.server.run_in_thread(share_store(self.app).list,
                                                     session.user)
        now = self.app.reactor.seconds()
        csrf = esc(session.csrf)
        rows = []
        for share in shares:
            state = share.state(now)
            uses = str(share.uses) + (f" of {share.max_uses}" if share.max_uses else "")
            revoke = ""
            if state == "active" or state == "used up":
                revoke = ("<form method=post action='/shares/revoke' class=inline>"
                          f"<input type=hidden name=csrf value='{csrf}'>"
                          f"<input type=hidden name=id value='{esc(share.id)}'>"
                          "<button type=submit class=danger>Revoke</button></form>")
            rows.append(
                f"<tr data-share='{esc(share.id)}'><td><a href='/shares/{esc(share.id)}'>"
                f"{esc(_describe(share))}</a></td><td>{esc(state)}</td>"
                f"<td>{esc(human_time(share.expires))}</td><td>{esc(uses)}</td>"
                f"<td>{esc(human_time(share.last_used)) if share.last_used else 'never'}"
                f"</td><td>{revoke}</td></tr>")
        table = ("<table class=plain-table id=shares><thead><tr><th>Link</th>"
                 "<th>State</th><th>Expires</th><th>Used</th><th>Last used</th><th>"
                 "</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                 if rows else "<p>You have no links yet. Make one from a folder: "
                 "<em>Share</em> next to a file or folder, or <em>Drop box</em> on "
                 "a folder.</p>")
        send(request, 200, page("Your links", table, user=session.user, csrf=session.csrf,
                                flash=session.take_flash()))

    async def form(self, request: IRequest, session: Session,
                   message: str | None = None, status: int = 200) -> None:
        path = self._arg(request, b"path") or "/"
        kind = self._arg(request, b"kind")
        if kind not in ("download", "dropbox"):
            kind = "download"
        max_days = self.app.config.share_max_days
        days = min(DEFAULT_DAYS, max_days)
        note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
        size = ("<label>Largest file (MiB, optional) <input type=number name=max_size "
                "min=1 inputmode=numeric></label>") if kind == "dropbox" else ""
        uses = "uploads" if kind == "dropbox" else "downloads"
        title = "New drop box" if kind == "dropbox" else "New download link"
        body = note + (
            "<form class='card narrow' method=post action='/shares/new'>"
            f"<input type=hidden name=csrf value='{esc(session.csrf)}'>"
            f"<input type=hidden name=kind value='{esc(kind)}'>"
            f"<input type=hidden name=path value='{esc(path)}'>"
            f"<p>{'Files go into' if kind == 'dropbox' else 'Shares'} "
            f"<strong>{esc(path)}</strong></p>"
            f"<label>Expires after (days, at most {max_days}) <input type=number "
            f"name=days min=1 max={max_days} value={days} required></label>"
            "<label>Password (optional) <input type=password name=password "
            "autocomplete=new-password></label>"
            f"<label>Most {uses} (optional) <input type=number name=max_uses min=1 "
            "inputmode=numeric></label>" + size +
            f"<label>Note for the visitor (optional) <textarea name=note maxlength={MAX_NOTE}"
            " rows=3></textarea></label>"
            "<button type=submit>Create link</button> "
            f"<a class='button plain' href='{esc(dir_url(parent_of(path) if kind == 'download' else path))}'>"
            "Cancel</a></form>")
        send(request, status, page(title, body, user=session.user, csrf=session.csrf))

    def _number(self, request: IRequest, name: bytes, low: int, high: int) -> int | None:
        text = self._arg(request, name).strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ShareError(f"{name.decode()} must be a whole number") from None
        if not low <= value <= high:
            raise ShareError(f"{name.decode()} must be from {low} to {high}")
        return value

    async def create(self, request: IRequest, session: Session) -> None:
        app = self.app
        kind = self._arg(request, b"kind")
        path = self._arg(request, b"path") or "/"
        max_days = app.config.share_max_days
        try:
            if kind not in ("download", "dropbox"):
                raise ShareError("choose a download link or a drop box")
            days = self._number(request, b"days", 1, max_days) or min(DEFAULT_DAYS,
                                                                       max_days)
            max_uses = self._number(request, b"max_uses", 1, 1_000_000)
            max_mib = (self._number(request, b"max_size", 1, MAX_SIZE_MIB)
                       if kind == "dropbox" else None)
        except ShareError as e:
            await self.form(request, session, str(e)[:1].upper() + str(e)[1:] + ".", 400)
            return
        password = self._arg(request, b"password")
        note = " ".join(self._arg(request, b"note").split("\r"))[:MAX_NOTE]
        expires = app.reactor.seconds() + days * 86400.0
        store = share_store(app)
        user = session.user

        def make() -> tuple[Share, str]:
            fs = app.open_fs(user, session.created)
            entry = fs.stat(path)  # needs list or download
            if kind == "download":
                if "download" not in fs.perms:
                    raise ShareError("this account may not download, so it cannot "
                                     "share files")
                if entry.kind == "dir" and "list" not in fs.perms:
                    raise ShareError("sharing a folder needs the list permission")
                if entry.kind not in ("file", "dir"):
                    raise ShareError("only files and folders can be shared")
            else:
                if "upload" not in fs.perms:
                    raise ShareError("this account may not upload, so it cannot make "
                                     "drop boxes")
                if entry.kind != "dir":
                    raise ShareError("a drop box goes into a folder")
            hashed = hash_password(password) if password else None
            return store.create(user, kind, entry_path(path), expires, hashed, max_uses,
                                max_mib * 1024 * 1024 if max_mib else None, note)

        try:
            share, token = await app.server.run_in_thread(make)
        except ShareError as e:
            await self.form(request, session, str(e)[:1].upper() + str(e)[1:] + ".", 400)
            return
        except VFSError as e:
            await self.form(request, session, friendly(e), 400)
            return
        app.audit(request, "share.created", account=user, share=share.id, kind=kind,
                  path=share.path, expires=share.expires)
        url = link_url(app, token)
        body = (
            "<p class='flash ok' role=status>Link created. Copy it now: it is shown "
            "only once (only a fingerprint of it is stored).</p>"
            f"<section class=card><p><code id=share-url class=secret>{esc(url)}</code></p>"
            f"<p>{esc(_describe(share))}, until {esc(human_time(share.expires))}"
            + (", with a password" if share.has_password else "")
            + (f", {share.max_uses} use(s)" if share.max_uses else "") + ".</p></section>"
            "<p><a class=button href='/shares'>All your links</a></p>")
        send(request, 200, page("Link created", body, user=user, csrf=session.csrf))

    async def revoke(self, request: IRequest, session: Session) -> None:
        share_id = self._arg(request, b"id")[:32]
        done = await self.app.server.run_in_thread(
            share_store(self.app).revoke, share_id, f"revoked by {session.user}",
            session.user)
        self.app.audit(request, "share.revoked", account=session.user, share=share_id,
                       outcome="ok" if done else "not-found")
        session.add_flash("ok" if done else "error",
                          "Link revoked: it works no more." if done
                          else "That link was not live.")
        see_other(request, "/shares")

    async def detail(self, request: IRequest, session: Session, share_id: str) -> None:
        store = share_store(self.app)

        def read() -> tuple[Share | None, list[Any]]:
            share = store.get(share_id)
            if share is None or share.owner != session.user:
                return None, []
            return share, store.events(share_id)

        share, events = await self.app.server.run_in_thread(read)
        if share is None:
            error_page(request, 404, "Not found", "You have no such link.",
                       link=("/shares", "Your links"), user=session.user,
                       csrf=session.csrf)
            return
        rows = "".join(
            f"<tr><td>{esc(human_time(e.at))}</td><td>{esc(e.action)}</td>"
            f"<td>{esc(e.name or '')}</td>"
            f"<td>{esc(human_size(e.size)) if e.size is not None else ''}</td>"
            f"<td>{esc(e.client or '')}</td></tr>" for e in events)
        state = share.state(self.app.reactor.seconds())
        body = (
            f"<section class=card><p>{esc(_describe(share))}</p><p>State: {esc(state)}"
            + (f" ({esc(share.revoked)})" if share.revoked else "")
            + f". Created {esc(human_time(share.created))}, expires "
            f"{esc(human_time(share.expires))}. Used {share.uses} time(s)"
            + (f" of {share.max_uses}" if share.max_uses else "") + ".</p>"
            + (f"<p>Note: {esc(share.note)}</p>" if share.note else "") + "</section>"
            + ("<table class=plain-table id=share-events><thead><tr><th>When</th>"
               "<th>What</th><th>File</th><th>Size</th><th>From</th></tr></thead><tbody>"
               + rows + "</tbody></table>" if rows else "<p>Not used yet.</p>")
            + "<p><a href='/shares'>All your links</a></p>")
        send(request, 200, page("Link " + share.id, body, user=session.user,
                                csrf=session.csrf))


def entry_path(path: str) -> str:
    """The canonical virtual path (``/a/b``) of what a link points to."""
    parts = split_path(path)
    return "/" + "/".join(parts)


async def _nothing() -> None:
    return None
