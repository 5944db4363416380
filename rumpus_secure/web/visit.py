"""
What a visitor of a share link sees and does: ``/s/<token>`` and below.

A page of its own, without the file manager's header or any link into it.
A download link offers its file, or its folder as one streamed ZIP
(L{rumpus_secure.web.zipstream}; at most L{MAX_SHARE_ZIPS_PER_OWNER} per
link owner and L{MAX_SHARE_ZIPS} in all run at once, a visitor over the cap
gets 503 with Retry-After and spends no use); a drop box offers an upload form and
nothing else: no listing, no download, and a name that exists is stored as
``name (1).ext`` (the upload sink's "keep both", L{rumpus_secure.web.upload}),
so nothing is ever overwritten.  The visitor is not told the stored names,
which would reveal what is there.  The visitor acts with the owner's jailed
filesystem, narrowed to ``list``/``download`` (download link) or ``upload``
alone (drop box), and only while the owner still has those permissions and
is not locked.  Viewing the page takes no use; only a download (GET, not
HEAD) or a file received does.

B{Brute force.}  An unknown token scores a failed login with the guard; a
link password is verified like an account password (counted while it is
checked, a wrong one kept as an offence), so an address is banned after
C{--ban-threshold} wrong guesses of either.  A right password gives the
browser a grant (256 random bits in a cookie, SHA-256 kept in memory for
L{GRANT_TTL} seconds) for that link only.

Over plain HTTP a link is redirected like every other path; a link password
posted there is refused, and ends the link if it was the link's password
(L{rumpus_secure.web.redirect}, L{rumpus_secure.shares.disable_exposed}).
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.hashing import verify_password
from rumpus_secure.shares import (
    Share,
    owner_allows,
    share_target,
    store_of,
    valid_token,
)
from rumpus_secure.vfs import JailedFS, VFSError, split_path
from rumpus_secure.web.app import WebApp, client_ip
from rumpus_secure.web.download import content_disposition, send_file
from rumpus_secure.web.listing import parent_of
from rumpus_secure.web.pages import esc, human_size, human_time
from rumpus_secure.web.respond import run, see_other, send, send_json
from rumpus_secure.web.upload import UploadSink
from rumpus_secure.web.zipstream import ZipProducer, build_zip, zip_name

#: Seconds a right link password is remembered by the browser that gave it.
GRANT_TTL = 3600.0
MAX_GRANTS = 10_000
#: Folder ZIPs for visitors running at once, per link owner and in all.
#: Each holds a thread and about 1 MiB (L{rumpus_secure.web.zipstream})
#: for as long as the slowest reader wants: 40 anonymous slow readers of
#: one link cost +135 MiB and +40 threads before this cap.  It is apart
#: from the file manager's (2 per account, 6 in all), so visitors cannot
#: take the slots of the accounts' own downloads.
MAX_SHARE_ZIPS_PER_OWNER = 2
MAX_SHARE_ZIPS = 4
#: Seconds a visitor refused over the cap is told to wait.
ZIP_RETRY_AFTER = 30
#: What a drop-box visitor is told when a file could not be stored for a
#: reason of the server's (the details name paths: audit log only).
STORE_FAILED = "could not store this file"
#: Starts a ZIP's thread (None: a daemon thread); tests replace it.
start_zip_thread: Any = None


def share_store(app: WebApp) -> Any:
    return store_of(app.server)


class ZipSlots:
    """Visitors' ZIP downloads running, by link owner (reactor thread only)."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}

    def take(self, owner: str) -> bool:
        if (self.running.get(owner, 0) >= MAX_SHARE_ZIPS_PER_OWNER
                or sum(self.running.values()) >= MAX_SHARE_ZIPS):
            return False
        self.running[owner] = self.running.get(owner, 0) + 1
        return True

    def give_back(self, owner: str) -> None:
        left = self.running.get(owner, 0) - 1
        if left > 0:
            self.running[owner] = left
        else:
            self.running.pop(owner, None)


def zip_slots(app: WebApp) -> ZipSlots:
    found = getattr(app, "_share_zip_slots", None)
    if found is None:
        found = ZipSlots()
        app._share_zip_slots = found  # type: ignore[attr-defined]
    return found


# -- grants ---------------------------------------------------------------------


class Grants:
    """Browsers that gave a link's right password, by a hash of their cookie."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._grants: dict[bytes, tuple[str, float]] = {}

    @staticmethod
    def _key(value: str) -> bytes:
        return hashlib.sha256(value.encode("ascii", "replace")).digest()

    def give(self, share_id: str) -> str:
        now = self._clock.seconds()
        for key in [k for k, (_, t) in self._grants.items() if now - t >= GRANT_TTL]:
            del self._grants[key]
        while len(self._grants) >= MAX_GRANTS:
            del self._grants[next(iter(self._grants))]
        value = secrets.token_urlsafe(32)
        self._grants[self._key(value)] = (share_id, now)
        return value

    def allows(self, value: str | None, share_id: str) -> bool:
        if not value or len(value) > 128:
            return False
        found = self._grants.get(self._key(value))
        return (found is not None and found[0] == share_id
                and self._clock.seconds() - found[1] < GRANT_TTL)


def grants(app: WebApp) -> Grants:
    found = getattr(app, "_share_grants", None)
    if found is None:
        found = Grants(app.reactor)
        app._share_grants = found  # type: ignore[attr-defined]
    return found


def _grant_cookie(app: WebApp) -> bytes:
    return b"__Host-rumpus-link" if app.secure else b"rumpus-link"


def _granted(app: WebApp, request: IRequest, share: Share) -> bool:
    if not share.has_password:
        return True
    raw = request.getCookie(_grant_cookie(app))
    value = raw.decode("ascii", "replace") if raw else None
    return grants(app).allows(value, share.id)


# -- the visitor ------------------------------------------------------------------


def visitor_page(title: str, body: str) -> bytes:
    """
    A page for visitors: the product name, nothing that leads into the file
    manager (they have no account).
    """
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<meta name=color-scheme content='light dark'>"
        f"<title>{esc(title)} \u2013 rumpus-secure</title>"
        "<link rel=stylesheet href='/static/app.css'></head><body class=visitor>"
        "<header class=top><span class=brand>rumpus-secure"
        "<span class=sub> shared with you</span></span></header>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    ).encode()


def _note(share: Share) -> str:
    if not share.note:
        return ""
    return f"<section class=card><h2>Note</h2><p class=note>{esc(share.note)}</p></section>"


def _gone(request: IRequest, status: int, message: str) -> None:
    send(request, status, visitor_page("Link not available", f"<p>{esc(message)}</p>"))


def visitor_fs(app: WebApp, share: Share) -> JailedFS:
    """
    In a thread: the owner's filesystem, narrowed to what this kind of link
    may do, with the owner's permissions of now.

    @raises LookupError: the owner no longer vouches for the link.
    """
    account = app.server.store.get(share.owner)
    if not owner_allows(account, share):
        raise LookupError("owner gone or locked")
    allowed = {"list", "download"} if share.kind == "download" else {"upload"}
    return JailedFS(account.home, frozenset(account.perms & allowed))


class VisitorResource(resource.Resource):
    """``/s/<token>`` and below: what a visitor sees and does."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: IRequest) -> Any:
        return run(request, lambda: self.get(request))

    render_HEAD = render_GET

    def render_POST(self, request: IRequest) -> Any:
        return run(request, lambda: self.post(request))

    async def resolve(self, request: IRequest) -> tuple[Share, str | None, str] | None:
        """
        The live link of this request, its password hash and the action; or
        an answer was sent (and an unknown token scored) and L{None} comes back.
        """
        target = share_target(request.path)
        if target is None:
            _gone(request, 404, "There is nothing at this address.")
            return None
        token, action = target
        store = share_store(self.app)
        found = await self.app.server.run_in_thread(store.find, token) \
            if valid_token(token) else None
        client = client_ip(request)
        if found is None:
            self.app.audit(request, "share.unknown_token")
            guard = getattr(self.app.server, "guard", None)
            if guard is not None:
                ban = guard.offence(client, "login_failed", protocol="web")
                await guard.delayed(None)
                if ban is not None:
                    _gone(request, 403, guard.message(ban))
                    return None
            _gone(request, 404, "This link does not exist. Check that you copied "
                  "all of it.")
            return None
        share, password_hash = found
        state = share.state(self.app.reactor.seconds())
        if state == "active":
            account = await self.app.server.run_in_thread(self.app.server.store.get,
                                                          share.owner)
            if not owner_allows(account, share):
                state = "ended"
        if state != "active":
            messages = {"expired": "This link has expired.",
                        "revoked": "This link was turned off by the person who "
                                   "shared it.",
                        "used up": "This link has been used as often as it may be.",
                        "ended": "This link is no longer available."}
            _gone(request, 410, messages[state] + " Ask the person who sent it for a "
                  "new one.")
            return None
        return share, password_hash, action

    async def get(self, request: IRequest) -> None:
        resolved = await self.resolve(request)
        if resolved is None:
            return
        share, _, action = resolved
        if not _granted(self.app, request, share):
            if action:
                see_other(request, f"/s/{share_target(request.path)[0]}")  # type: ignore[index]
            else:
                send(request, 200, self.password_form(share))
            return
        if action == "get" and share.kind == "download":
            if request.method == b"HEAD":
                # A link checker or preview bot: no use is taken, no file sent.
                send(request, 200, b"", b"application/octet-stream")
                return
            await self.download(request, share)
            return
        if action:
            see_other(request, f"/s/{share_target(request.path)[0]}")  # type: ignore[index]
            return
        await self.show(request, share)

    def password_form(self, share: Share, message: str | None = None) -> bytes:
        note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
        return visitor_page("This link needs a password", note + (
            "<form class='card narrow' method=post>"
            "<label>Password <input type=password name=password "
            "autocomplete=off required autofocus></label>"
            "<button type=submit>Open</button></form>"))

    async def show(self, request: IRequest, share: Share, flash: str = "",
                   status: int = 200) -> None:
        token = share_target(request.path)[0]  # type: ignore[index]
        expires = f"<p class=muted>This link works until {esc(human_time(share.expires))}"
        if share.max_uses is not None:
            left = max(0, share.max_uses - share.uses)
            what = "download" if share.kind == "download" else "file"
            expires += f", for {left} more {what}{'' if left == 1 else 's'}"
        expires += ".</p>"
        if share.kind == "dropbox":
            limit = (f" Each file may be up to {human_size(share.max_size)}."
                     if share.max_size else "")
            body = (flash + _note(share) + (
                f"<form class=card method=post action='/s/{esc(token)}/upload' "
                "enctype=multipart/form-data>"
                "<h2>Send files</h2><p>The files you send go straight to the person "
                "who shared this drop box. You cannot see or download what is in "
                f"it, and nothing already there is replaced.{limit}</p>"
                "<label>Files <input type=file name=file multiple required></label>"
                "<button type=submit>Send</button></form>") + expires)
            send(request, status, visitor_page("Drop box", body))
            return

        def look(fs: JailedFS) -> Any:
            return fs.stat(share.path)

        try:
            entry = await self.app.server.run_in_thread(
                lambda: look(visitor_fs(self.app, share)))
        except (VFSError, LookupError):
            _gone(request, 410, "What this link pointed to is no longer there.")
            return
        name = split_path(share.path)[-1] if split_path(share.path) else "files"
        what = (f"<p><strong>{esc(name)}</strong>, {esc(human_size(entry.size))}</p>"
                if entry.kind == "file" else
                f"<p>The folder <strong>{esc(name)}</strong>, as one ZIP file.</p>")
        label = "Download" if entry.kind == "file" else "Download as ZIP"
        body = (flash + _note(share) + "<section class=card>" + what +
                f"<p><a class=button id=download href='/s/{esc(token)}/get'>{label}</a>"
                "</p></section>" + expires)
        send(request, status, visitor_page("Download", body))

    async def download(self, request: IRequest, share: Share) -> None:
        app = self.app
        store = share_store(app)

        def start() -> Any:
            fs = visitor_fs(app, share)
            entry = fs.stat(share.path)
            if entry.kind == "dir":
                fs.list_dir(share.path)  # the permission, before a use is taken
                return "dir", fs
            handle = fs.open_read(share.path)
            if not store.take_use(share.id):
                handle.close()
                return None
            return "file", handle

        try:
            started = await app.server.run_in_thread(start)
        except (VFSError, LookupError):
            _gone(request, 410, "What this link pointed to is no longer there.")
            return
        if started is None:
            _gone(request, 410, "This link has been used as often as it may be.")
            return
        kind, value = started
        slots = zip_slots(app)
        if kind == "dir":
            # The slot first (on the reactor: no race), then the use, so a
            # visitor refused for a full server does not spend a use.
            if not slots.take(share.owner):
                app.audit(request, "share.download", share=share.id, account=share.owner,
                          outcome="busy")
                request.setHeader(b"retry-after", b"%d" % ZIP_RETRY_AFTER)
                _gone(request, 503, "Too many downloads of shared folders are running "
                      "right now. Please try again in a minute.")
                return
            try:
                taken = await app.server.run_in_thread(store.take_use, share.id)
            except BaseException:
                slots.give_back(share.owner)
                raise
            if not taken:
                slots.give_back(share.owner)
                _gone(request, 410, "This link has been used as often as it may be.")
                return
        try:
            await self._send(request, share, kind, value, slots)
        except BaseException:
            if kind == "dir":
                slots.give_back(share.owner)
            raise

    async def _send(self, request: IRequest, share: Share, kind: str, value: Any,
                    slots: ZipSlots) -> None:
        """The file, or the folder as a ZIP holding one of C{slots} till its end."""
        app = self.app
        parts = split_path(share.path)
        name = parts[-1] if parts else "files"
        app.audit(request, "share.download", share=share.id, account=share.owner,
                  path=share.path)
        await app.server.run_in_thread(share_store(app).record, share.id, "download",
                                       client_ip(request), name, None)
        if kind == "file":
            send_file(request, name, value, app.server.run_in_thread)
            return
        directory = parent_of(share.path) if parts else "/"
        names = [name] if parts else [e.name for e in await app.server.run_in_thread(
            value.list_dir, "/")]
        request.setHeader(b"content-type", b"application/zip")
        request.setHeader(b"content-disposition",
                          content_disposition(zip_name(directory, names)))
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        build = build_zip(lambda: visitor_fs(app, share), directory, names)
        ZipProducer(request, build, app.reactor.callFromThread,
                    start_thread=start_zip_thread,
                    done=lambda: slots.give_back(share.owner)).start()

    async def post(self, request: IRequest) -> None:
        target = share_target(request.path)
        if target is not None and target[1] == "upload":
            await self.finish_upload(request)
            return
        resolved = await self.resolve(request)
        if resolved is None:
            return
        share, password_hash, action = resolved
        if action or not share.has_password or password_hash is None:
            see_other(request, request.path.decode("ascii", "replace"))
            return
        if not self.app.same_origin(request):
            send(request, 403, self.password_form(share, "This form did not come from "
                                                  "this site's own page."))
            return
        password = (request.args.get(b"password") or [b""])[0].decode("utf-8", "replace")
        guard = getattr(self.app.server, "guard", None)
        client = client_ip(request)
        attempt = None
        if guard is not None:
            started = await guard.begin_login(client, "web", "link:" + share.id)
            if isinstance(started, Ban):
                _gone(request, 403, guard.message(started))
                return
            attempt = started
        try:
            right = await self.app.server.run_in_thread(verify_password, password_hash,
                                                        password)
        except BaseException:
            if attempt is not None:
                attempt.abandoned()
            raise
        if not right:
            self.app.audit(request, "share.password", share=share.id, outcome="failed")
            ban = attempt.failed() if attempt is not None else None
            if guard is not None:
                await guard.delayed(None)
            if ban is not None:
                _gone(request, 403, guard.message(ban))
                return
            send(request, 401, self.password_form(share, "Wrong password."))
            return
        ban = attempt.succeeded() if attempt is not None else None
        if ban is not None:
            _gone(request, 403, guard.message(ban))
            return
        value = grants(self.app).give(share.id)
        parts = [_grant_cookie(self.app) + b"=" + value.encode("ascii"), b"Path=/",
                 b"HttpOnly", b"SameSite=Strict", b"Max-Age=%d" % GRANT_TTL]
        if self.app.secure:
            parts.append(b"Secure")
        request.responseHeaders.addRawHeader(b"set-cookie", b"; ".join(parts))
        self.app.audit(request, "share.password", share=share.id, outcome="ok")
        see_other(request, request.path.decode("ascii", "replace"))

    async def finish_upload(self, request: IRequest) -> None:
        sink = request.content
        if not isinstance(sink, DropBoxSink):
            _gone(request, 400, "The upload must be sent from the drop box's page.")
            return
        await sink.body_complete()
        share = sink.share
        if share is None:
            if sink.unknown:
                guard = getattr(self.app.server, "guard", None)
                self.app.audit(request, "share.unknown_token")
                if guard is not None:
                    ban = guard.offence(client_ip(request), "login_failed", protocol="web")
                    await guard.delayed(None)
                    if ban is not None:
                        _gone(request, 403, guard.message(ban))
                        return
            _gone(request, 404 if sink.unknown else 410, sink.refusal
                  or "This drop box is no longer available.")
            return
        stored = [r for r in sink.results if r.error is None and not r.skipped]
        failed = [r for r in sink.results if r.error is not None]
        client = client_ip(request)
        for result in stored:
            self.app.audit(request, "share.upload", share=share.id, account=share.owner,
                           path=share.path.rstrip("/") + "/" + result.stored_name,
                           size=result.size)
            await self.app.server.run_in_thread(share_store(self.app).record, share.id,
                                                "upload", client, result.stored_name,
                                                result.size)
        for result in failed:
            self.app.audit(request, "share.upload", share=share.id, account=share.owner,
                           outcome="failed", name=result.name,
                           reason=getattr(result, "detail", None) or result.error)
        messages = []
        if stored:
            messages.append(("ok", f"Received {len(stored)} file(s): "
                             + ", ".join(r.name for r in stored) + ". Thank you."))
        for result in failed:
            messages.append(("error", f"{result.name}: {result.error}"))
        if sink.refusal and not failed:
            messages.append(("error", sink.refusal))
        if not sink.results and not sink.refusal:
            messages.append(("error", "No file was chosen."))
        status = 200 if stored and not failed and not sink.refusal else (
            413 if sink.too_large and not stored else 207 if stored else 400)
        if b"application/json" in (request.getHeader(b"accept") or b""):
            send_json(request, status, {"message": " ".join(m for _, m in messages),
                                        "received": len(stored),
                                        "failed": {r.name: r.error for r in failed}})
            return
        flash = "".join(f"<p class='flash {kind}' role={'alert' if kind == 'error' else 'status'}>"
                        f"{esc(text)}</p>" for kind, text in messages)
        fresh = await self.app.server.run_in_thread(share_store(self.app).get, share.id)
        await self.show(request, fresh or share, flash, status)


class DropBoxSink(UploadSink):
    """
    The upload sink for a drop box: no session, the link instead; names
    that exist are kept both (``name (1).ext``), never replaced; each file
    stored takes one use (taken when it starts, given back if nothing was
    stored: too large, aborted, refused name or path); a file over the
    link's size limit is dropped; names with control characters are refused
    (they end up in the admin's terminal); errors that would name paths
    are shown as L{STORE_FAILED}, their details go to the audit log.
    """

    def __init__(self, app: WebApp, request: IRequest, token: str) -> None:
        self.token = token
        self.share: Share | None = None
        self.unknown = False
        self.too_large = False
        self._home: Any = None
        raw = request.getCookie(_grant_cookie(app))
        self._grant = raw.decode("ascii", "replace") if raw else None
        super().__init__(app, request, "/")

    def _admit(self, app: WebApp, request: IRequest) -> None:
        from rumpus_secure.web.multipart import (
            MultipartParser,
            boundary_from_content_type,
        )

        boundary = boundary_from_content_type(request.getHeader(b"content-type") or b"")
        if not app.same_origin(request):
            self._refuse("This upload did not come from the drop box's own page.", 403)
        elif boundary is None:
            self._refuse("The upload must be sent as multipart/form-data.", 400)
        else:
            self._csrf_ok = True  # no session: the link is the credential
            self.on_existing = "keep"
            self._parser = MultipartParser(boundary, self)
            self._enqueue(self._resolve, (), 0)

    def part_end(self) -> None:
        super().part_end()
        self.on_existing = "keep"  # whatever the form says

    def _resolve(self) -> None:
        """In a thread, before any file: the link, its state, the owner."""
        found = share_store(self._app).find(self.token) if valid_token(self.token) else None
        if found is None:
            self.unknown = True
            self.refusal = "This link does not exist."
            return
        share, _ = found
        if share.kind != "dropbox" or share.revoked or \
                share.expires <= self._app.reactor.seconds():
            self.refusal = "This drop box is no longer available."
            return
        # A lookup in a dict the reactor thread owns: one atomic get.
        if share.has_password and not grants(self._app).allows(self._grant, share.id):
            self.refusal = "Open the drop box's page and give its password first."
            return
        try:
            self._fs = visitor_fs(self._app, share)
            self._home = self._app.server.store.get(share.owner).home
        except (LookupError, AttributeError):
            self.refusal = "This drop box is no longer available."
            return
        self.share = share
        self.directory = share.path

    def _filesystem(self) -> JailedFS:
        if self._fs is None:
            raise VFSError("drop box not available")  # pragma: no cover
        return self._fs

    def _hide(self, result: Any, before: str | None) -> None:
        """
        An error the upload sink just gave (a path, "Is a directory",
        "is a symbolic link") becomes the generic L{STORE_FAILED}: the
        visitor may not learn what is in the drop box.  The detail stays
        for the audit log (L{VisitorResource.finish_upload}).
        """
        if result.error is not None and result.error != before:
            result.detail = result.error
            result.error = STORE_FAILED

    def _settle(self, result: Any) -> None:
        """In the sink's thread: nothing was stored, give the use back."""
        share = self.share
        if share is not None and getattr(result, "use_taken", False) \
                and result.error is not None:
            result.use_taken = False
            share_store(self._app).refund_use(share.id)

    def _open(self, result: Any) -> None:
        share = self.share
        if share is None:
            result.error = self.refusal or "This drop box is no longer available."
            return
        if any(unicodedata.category(c) == "Cc" for c in result.name):
            result.detail = "control characters in the file name"
            result.error = STORE_FAILED + " (its name has control characters)"
            return
        if not share_store(self._app).take_use(share.id):
            result.error = "This drop box takes no more files."
            return
        result.use_taken = True
        before = result.error
        super()._open(result)
        self._hide(result, before)
        self._settle(result)

    def _write(self, result: Any, data: bytes) -> None:
        share = self.share
        if (share is not None and share.max_size is not None
                and result.upload is not None and result.size > share.max_size):
            result.error = (f"too large: this drop box takes files up to "
                            f"{human_size(share.max_size)}; it was not stored")
            self.too_large = True
            self._discard(result.upload)
            result.upload = None
            return
        before = result.error
        super()._write(result, data)
        self._hide(result, before)

    def _abort_all(self) -> None:
        super()._abort_all()
        for result in self.results:
            self._settle(result)

    def _discard(self, upload: Any) -> None:
        """
        Abort, and remove what the visitor started: the drop box may not
        delete, but a half file it made itself must not stay as if whole.
        """
        from rumpus_secure.vfs import AbortOutcome

        path, atomic = upload.path, upload.atomic
        if upload.abort() is AbortOutcome.KEPT_PARTIAL and atomic and self._home:
            try:
                JailedFS(self._home, frozenset({"delete"})).remove(path)
            except VFSError:
                pass

    def _commit(self, result: Any) -> None:
        share = self.share
        if (share is not None and share.max_size is not None
                and result.upload is not None and result.size > share.max_size):
            self._write(result, b"")
            self._settle(result)
            return
        before = result.error
        super()._commit(result)
        self._hide(result, before)
        self._settle(result)


async def _nothing() -> None:
    return None
