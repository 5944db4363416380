"""
The web side of two-factor login and app passwords.

B{Login in two steps.}  After a right password (L{rumpus_secure.web.auth})
an account with two-factor login on gets no session yet: it gets a
I{pending login} (a 256-bit id in its own short-lived cookie, a SHA-256 of
it kept in memory for L{PENDING_TTL} seconds) and the code page.  The code
is checked like a password: the guard counts it while it is verified and
keeps a wrong one as an offence (L{rumpus_secure.guard.Guard.begin_login}),
so codes cannot be guessed faster than passwords; after L{MAX_CODE_TRIES}
wrong codes the pending login ends and the password must be given again.
An account that must enrol (required by the administrator, or reset) is
taken to the enrolment page instead, and gets its session only once a code
from the new secret was right.
A pending login remembers the account's state when the password was right
(L{account_stamp}); if the password was changed, the account locked or
deleted, or its two-factor login reset or required since, the code or
enrolment step ends the pending login (409, "log in again"), so an admin's
``user passwd`` also ends logins half-way through.

B{The account page} (``/account``) turns two-factor login on (QR code and
the secret as text; one right code before it is on; ten recovery codes
shown once) and creates, lists and revokes app passwords
(L{rumpus_secure.accounts.app_passwords}).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.accounts import app_passwords
from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.hashing import hash_password
from rumpus_secure.accounts.secretbox import SecretBox
from rumpus_secure.accounts.totp import TwoFactor, provisioning_uri, qr_svg
from rumpus_secure.web.app import WebApp, client_ip
from rumpus_secure.web.pages import esc, human_time, page
from rumpus_secure.web.respond import error_page, run, see_other, send
from rumpus_secure.web.sessions import Session

#: Seconds a pending login (password right, code not yet given) lives.
PENDING_TTL = 300.0
#: Wrong codes before a pending login ends.
MAX_CODE_TRIES = 5
#: Pending logins kept at most (the oldest go first).
MAX_PENDING = 10_000


@dataclass
class Pending:
    user: str
    next_path: str
    created: float
    enrol: bool
    tries: int = 0
    #: The account's credential state when the password was right
    #: (L{account_stamp}); the code or enrol step refuses if it moved.
    stamp: tuple[Any, ...] | None = None


class PendingLogins:
    """Logins between the password and the code, keyed by a hash of their id."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._pending: dict[bytes, Pending] = {}

    @staticmethod
    def _key(pending_id: str) -> bytes:
        return hashlib.sha256(pending_id.encode("ascii", "replace")).digest()

    def create(self, user: str, next_path: str, enrol: bool,
               stamp: tuple[Any, ...] | None = None) -> str:
        now = self._clock.seconds()
        for key in [k for k, p in self._pending.items() if now - p.created >= PENDING_TTL]:
            del self._pending[key]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        pending_id = secrets.token_urlsafe(32)
        self._pending[self._key(pending_id)] = Pending(user, next_path, now, enrol,
                                                       stamp=stamp)
        return pending_id

    def get(self, pending_id: str | None) -> Pending | None:
        if not pending_id or len(pending_id) > 128:
            return None
        key = self._key(pending_id)
        pending = self._pending.get(key)
        if pending is not None and self._clock.seconds() - pending.created >= PENDING_TTL:
            del self._pending[key]
            return None
        return pending

    def end(self, pending_id: str | None) -> None:
        if pending_id:
            self._pending.pop(self._key(pending_id), None)


def account_stamp(store: Any, user: str) -> tuple[Any, ...] | None:
    """
    In a thread: what must not change between the password and the code
    (or the enrolment) of one login, or L{None} when the account may not
    log in at all (gone, locked or quarantined).

    The password's time and the account's creation (``user passwd``, and
    since two-factor ``require``/``reset`` move ``password_changed`` too,
    those), and the two-factor row's ``required``/``enabled`` (for stores
    that keep it apart from the account).
    """
    account = store.get(user)
    if account is None or account.locked:
        return None
    reader = getattr(store, "two_factor", None)
    row = None if reader is None else reader(user)
    factor = None if row is None else (row.required, row.secret is not None)
    return (account.password_changed, getattr(account, "created", None), factor)


def service(app: WebApp) -> TwoFactor:
    """The app's L{TwoFactor}, made on first use (the key file with it)."""
    found = getattr(app, "_two_factor", None)
    if found is None:
        found = TwoFactor(app.server.store, SecretBox.in_data_dir(app.config.data_dir),
                          clock=app.reactor.seconds)
        app._two_factor = found  # type: ignore[attr-defined]
    return found


def pending_logins(app: WebApp) -> PendingLogins:
    found = getattr(app, "_pending_logins", None)
    if found is None:
        found = PendingLogins(app.reactor)
        app._pending_logins = found  # type: ignore[attr-defined]
    return found


def _cookie_name(app: WebApp) -> bytes:
    return b"__Host-rumpus-login" if app.secure else b"rumpus-login"


def _set_pending_cookie(app: WebApp, request: IRequest, value: str | None) -> None:
    parts = [_cookie_name(app) + b"=" + (value or "").encode("ascii"), b"Path=/",
             b"HttpOnly", b"SameSite=Strict", b"Max-Age=%d" % (PENDING_TTL if value else 0)]
    if app.secure:
        parts.append(b"Secure")
    request.responseHeaders.addRawHeader(b"set-cookie", b"; ".join(parts))


def _pending_id(app: WebApp, request: IRequest) -> str | None:
    raw = request.getCookie(_cookie_name(app))
    try:
        return raw.decode("ascii") if raw else None
    except UnicodeDecodeError:
        return None


async def after_password(app: WebApp, request: IRequest, user: str, next_path: str) -> None:
    """
    The password was right and nothing refused the login: a session, or
    first the code (or the enrolment) when the account uses two factors.
    """
    status = await app.server.run_in_thread(service(app).status, user)
    if not status.on:
        app.start_session(request, user)
        app.audit(request, "web.login", account=user, outcome="ok")
        see_other(request, next_path)
        return
    enrol = not status.enabled
    stamp = await app.server.run_in_thread(account_stamp, app.server.store, user)
    pending_id = pending_logins(app).create(user, next_path, enrol, stamp)
    _set_pending_cookie(app, request, pending_id)
    app.audit(request, "web.login", account=user,
              outcome="needs-enrolment" if enrol else "needs-code")
    see_other(request, "/login/enrol" if enrol else "/login/code")


def code_form(message: str | None = None) -> bytes:
    note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
    return page("Enter your code", note + (
        "<form class='card narrow' method=post action='/login/code'>"
        "<p>Open your authenticator app and enter the 6-digit code for "
        "rumpus-secure. Lost your phone? Enter one of your recovery codes.</p>"
        "<label>Code <input type=text name=code inputmode=numeric "
        "autocomplete=one-time-code autocapitalize=none spellcheck=false "
        "maxlength=24 required autofocus></label>"
        "<button type=submit>Continue</button></form>"
        "<p><a href='/login'>Start again</a></p>"))


def enrol_body(user: str, secret: str, action: str, csrf: str | None,
               message: str | None = None) -> str:
    """The QR code, the secret as text, and the confirmation form."""
    note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
    spaced = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    token = f"<input type=hidden name=csrf value='{esc(csrf)}'>" if csrf else ""
    return note + (
        "<section class='card narrow'><h2>1. Scan this code</h2>"
        "<p>Scan it with an authenticator app (FreeOTP, Aegis, Google "
        "Authenticator, 1Password...).</p>"
        f"<div class=qr>{qr_svg(provisioning_uri(secret, user))}</div>"
        "<p>Or type this key into the app:</p>"
        f"<p><code id=totp-secret class=secret>{esc(spaced)}</code></p></section>"
        f"<form class='card narrow' method=post action='{esc(action)}'>"
        "<h2>2. Enter the code the app shows</h2>" + token +
        "<label>Code <input type=text name=code inputmode=numeric "
        "autocomplete=one-time-code maxlength=12 required></label>"
        "<button type=submit>Turn on two-factor login</button></form>")


def recovery_body(codes: list[str], onward: tuple[str, str]) -> str:
    items = "".join(f"<li><code>{esc(c)}</code></li>" for c in codes)
    return (
        "<p class='flash ok' role=status>Two-factor login is on.</p>"
        "<section class='card narrow'><h2>Your recovery codes</h2>"
        "<p>Each works once, instead of a code, if you lose your phone. Keep "
        "them somewhere safe: <strong>they are shown only now</strong>.</p>"
        f"<ol id=recovery-codes class=codes>{items}</ol></section>"
        f"<p><a class=button href='{esc(onward[0])}'>{esc(onward[1])}</a></p>")


def _count_try(pending: Pending) -> bool:
    """
    Count a code attempt as it starts (on the reactor thread: no other
    request runs between the test and the increment); L{False} once
    L{MAX_CODE_TRIES} were made.
    """
    if pending.tries >= MAX_CODE_TRIES:
        return False
    pending.tries += 1
    return True


def _changed_since(app: WebApp, pending: Pending) -> bool:
    """In a thread: the account changed (or went) since the password step."""
    now = account_stamp(app.server.store, pending.user)
    return now is None or now != pending.stamp


def _end_changed(app: WebApp, request: IRequest, pending_id: str | None,
                 pending: Pending, step: str) -> None:
    """The account changed under a pending login: end it, back to /login."""
    pending_logins(app).end(pending_id)
    _set_pending_cookie(app, request, None)
    app.audit(request, step, account=pending.user, outcome="account-changed")
    send(request, 409, page("Please log in again", (
        "<p class='flash error' role=alert>Your account was changed (its password, "
        "its two-factor login, or it was locked) while you were logging in. "
        "Please log in again.</p><p><a class=button href='/login'>Log in</a></p>")))


class LoginCodeResource(resource.Resource):
    """``/login/code``: the second step of a two-factor login."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: IRequest) -> Any:
        pending = pending_logins(self.app).get(_pending_id(self.app, request))
        if pending is None:
            see_other(request, "/login")
        elif pending.enrol:
            see_other(request, "/login/enrol")
        else:
            send(request, 200, code_form())
        return run(request, _nothing)

    render_HEAD = render_GET

    def render_POST(self, request: IRequest) -> Any:
        return run(request, lambda: self.check(request))

    async def check(self, request: IRequest) -> None:
        app = self.app
        pending_id = _pending_id(app, request)
        pending = pending_logins(app).get(pending_id)
        if pending is None or pending.enrol:
            see_other(request, "/login")
            return
        if not app.same_origin(request):
            send(request, 403, code_form("This form did not come from this site's own "
                                         "page. Please try again."))
            return
        code = " ".join(((request.args.get(b"code") or [b""])[0]
                         .decode("utf-8", "replace")).split())[:24]
        if not code:
            send(request, 400, code_form("Enter the code from your app."))
            return
        if not _count_try(pending):
            # Counted when it starts, on the reactor thread (so atomic): codes
            # sent in parallel cannot all be checked while none has failed yet.
            pending_logins(app).end(pending_id)
            _set_pending_cookie(app, request, None)
            send(request, 401, code_form("Too many wrong codes: log in again."))
            return
        guard = getattr(app.server, "guard", None)
        client = client_ip(request)
        attempt = None
        if guard is not None:
            started = await guard.begin_login(client, "web", pending.user)
            if isinstance(started, Ban):
                send(request, 403, code_form(guard.message(started)))
                return
            attempt = started
        user = pending.user

        def verify() -> str | None:
            if _changed_since(app, pending):
                return "changed"
            return service(app).verify(user, code)

        try:
            used = await app.server.run_in_thread(verify)
        except BaseException:
            if attempt is not None:
                attempt.abandoned()
            raise
        if used == "changed":
            if attempt is not None:
                attempt.abandoned()
            _end_changed(app, request, pending_id, pending, "web.login_code")
            return
        if used is None:
            app.audit(request, "web.login_code", account=user, outcome="failed")
            ban = attempt.failed() if attempt is not None else None
            if guard is not None:
                await guard.delayed(None)
            if ban is not None:
                pending_logins(app).end(pending_id)
                send(request, 403, code_form(guard.message(ban)))
                return
            if pending.tries >= MAX_CODE_TRIES:
                pending_logins(app).end(pending_id)
                _set_pending_cookie(app, request, None)
                send(request, 401, code_form("Too many wrong codes: log in again."))
                return
            send(request, 401, code_form("That code is not right, or was used already. "
                                         "Wait for the next code and try again."))
            return
        ban = attempt.succeeded() if attempt is not None else None
        if ban is not None:
            pending_logins(app).end(pending_id)
            send(request, 403, code_form(guard.message(ban)))
            return
        pending_logins(app).end(pending_id)
        _set_pending_cookie(app, request, None)
        session = app.start_session(request, user)
        if used == "recovery":
            left = (await app.server.run_in_thread(service(app).status, user)).recovery_left
            session.add_flash("ok", f"You used a recovery code; {left} left. Make new "
                              "ones on the Account page if you are running out.")
        app.audit(request, "web.login", account=user, outcome="ok", factor=used)
        see_other(request, pending.next_path)


class LoginEnrolResource(resource.Resource):
    """``/login/enrol``: enrolment forced at login (required, or reset)."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def _pending(self, request: IRequest) -> tuple[str | None, Pending | None]:
        pending_id = _pending_id(self.app, request)
        pending = pending_logins(self.app).get(pending_id)
        if pending is not None and not pending.enrol:
            return pending_id, None
        return pending_id, pending

    def render_GET(self, request: IRequest) -> Any:
        return run(request, lambda: self.show(request))

    render_HEAD = render_GET

    async def show(self, request: IRequest, message: str | None = None,
                   status: int = 200) -> None:
        pending_id, pending = self._pending(request)
        if pending is None:
            see_other(request, "/login")
            return
        app = self.app

        def read() -> str | None:
            if _changed_since(app, pending):
                return None
            return service(app).pending_secret(pending.user)

        secret = await app.server.run_in_thread(read)
        if secret is None:
            _end_changed(app, request, pending_id, pending, "web.2fa_enrol")
            return
        body = ("<p>Your administrator requires two-factor login for this account. "
                "Set it up now to continue.</p>"
                + enrol_body(pending.user, secret, "/login/enrol", None, message))
        send(request, status, page("Set up two-factor login", body))

    def render_POST(self, request: IRequest) -> Any:
        return run(request, lambda: self.confirm(request))

    async def confirm(self, request: IRequest) -> None:
        app = self.app
        pending_id, pending = self._pending(request)
        if pending is None:
            see_other(request, "/login")
            return
        if not app.same_origin(request):
            await self.show(request, "This form did not come from this site's own page.",
                            403)
            return
        code = (request.args.get(b"code") or [b""])[0].decode("utf-8", "replace")[:24]
        if not _count_try(pending):
            pending_logins(app).end(pending_id)
            _set_pending_cookie(app, request, None)
            see_other(request, "/login")
            return

        def confirm() -> list[str] | None | bool:
            if _changed_since(app, pending):
                return False
            return service(app).confirm(pending.user, code)

        codes = await app.server.run_in_thread(confirm)
        if codes is False:
            _end_changed(app, request, pending_id, pending, "web.2fa_enrol")
            return
        if not codes:
            app.audit(request, "web.2fa_enrol", account=pending.user, outcome="wrong-code")
            if pending.tries >= MAX_CODE_TRIES:
                pending_logins(app).end(pending_id)
                see_other(request, "/login")
                return
            await self.show(request, "That code is not right. Check the time on your "
                            "phone and try the next code.", 400)
            return
        assert isinstance(codes, list)
        pending_logins(app).end(pending_id)
        _set_pending_cookie(app, request, None)
        session = app.start_session(request, pending.user)
        app.audit(request, "web.2fa_enrol", account=pending.user, outcome="on")
        app.audit(request, "web.login", account=pending.user, outcome="ok", factor="enrol")
        send(request, 200, page("Two-factor login is on",
                                recovery_body(codes, (pending.next_path, "Continue")),
                                user=session.user, csrf=session.csrf))


class AccountResource(resource.Resource):
    """
    ``/account``: two-factor login and app passwords of the logged-in
    account; POSTs to ``/account/2fa``, ``/account/app-passwords`` and
    ``/account/app-passwords/revoke``.
    """

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def _action(self, request: IRequest) -> str:
        return "/".join(p.decode("latin-1") for p in request.postpath if p)

    async def _still_valid(self, request: IRequest, session: Session) -> bool:
        """
        The session's account is still there, unlocked, and its credentials
        did not change since the login (a new password, two-factor login
        required or reset: L{rumpus_secure.accounts.two_factor_store}).
        Otherwise the session ends and an answer is sent: this page mints
        app passwords, so a password-only session or a thief's must stop
        here, not only at the files.
        """
        account = await self.app.server.run_in_thread(self.app.server.store.get,
                                                      session.user)
        if account is None or account.locked:
            self.app.sessions.end_user(session.user)
            error_page(request, 403, "Account unavailable",
                       "This account has been locked or removed. Ask your "
                       "administrator.", link=("/login", "Log in"))
            return False
        if account.password_changed > session.created:
            self.app.sessions.discard(session)
            error_page(request, 403, "Please log in again",
                       "The password or two-factor login of this account was "
                       "changed after you logged in. Log in again.",
                       link=("/login", "Log in"))
            return False
        return True

    def render_GET(self, request: IRequest) -> Any:
        session = self.app.session(request)
        if session is None:
            see_other(request, "/login?next=/account")
            return run(request, _nothing)

        async def get() -> None:
            if not await self._still_valid(request, session):
                return
            if self._action(request) == "2fa":
                await self.enrol_page(request, session)
            else:
                await self.show(request, session)

        return run(request, get)

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
                       link=("/account", "Back to your account"),
                       user=session.user, csrf=session.csrf)
            return run(request, _nothing)
        handlers = {"2fa": self.confirm, "app-passwords": self.create,
                    "app-passwords/revoke": self.revoke}
        handler = handlers.get(self._action(request))
        if handler is None:
            error_page(request, 404, "Not found", "There is nothing at this address.",
                       link=("/account", "Your account"))
            return run(request, _nothing)
        async def post() -> None:
            if await self._still_valid(request, session):
                await handler(request, session)  # type: ignore[operator]

        return run(request, post)

    async def show(self, request: IRequest, session: Session,
                   shown: tuple[str, str] | None = None) -> None:
        user = session.user
        store = self.app.server.store

        def read() -> tuple[Any, list[Any]]:
            return service(self.app).status(user), store.app_passwords(user)

        status, apps = await self.app.server.run_in_thread(read)
        csrf = esc(session.csrf)
        if status.enabled:
            factor = (f"<p>Two-factor login is <strong>on</strong>. Unused recovery "
                      f"codes: {status.recovery_left}.</p><p>Lost your phone and your "
                      "codes? Your administrator can reset it.</p>")
        else:
            required = (" Your administrator requires it." if status.required else "")
            factor = ("<p>Two-factor login is <strong>off</strong>: your password "
                      f"alone opens this account.{required}</p>"
                      "<p><a class=button href='/account/2fa'>Turn on two-factor "
                      "login</a></p>")
        new = ""
        if shown is not None:
            new = (f"<p class='flash ok' role=status>App password "
                   f"<strong>{esc(shown[0])}</strong> created. Copy it now: it is "
                   "shown only once.</p><p><code id=new-app-password class=secret>"
                   f"{esc(shown[1])}</code></p>")
        rows = "".join(
            f"<tr><td>{esc(a.label)}</td><td>{esc(human_time(a.created))}</td>"
            f"<td>{esc(human_time(a.last_used)) if a.last_used else 'never'}</td><td>"
            "<form method=post action='/account/app-passwords/revoke' class=inline>"
            f"<input type=hidden name=csrf value='{csrf}'>"
            f"<input type=hidden name=id value='{esc(a.id)}'>"
            f"<button type=submit class=danger aria-label='Revoke {esc(a.label)}'>"
            "Revoke</button></form></td></tr>" for a in apps)
        table = ("<table class=plain-table id=app-passwords><thead><tr><th>Name</th>"
                 "<th>Created</th><th>Last used</th><th></th></tr></thead><tbody>"
                 + rows + "</tbody></table>") if apps else "<p>No app passwords yet.</p>"
        body = (
            "<section class=card><h2>Two-factor login</h2>" + factor + "</section>"
            "<section class=card><h2>App passwords for FTP clients</h2>"
            "<p>FTP clients cannot ask for a code. Give each client its own app "
            "password; it works only over FTPS (FTP with TLS), never on this web "
            "page. With two-factor login on, your main password does not work in "
            "FTP clients at all.</p>" + new + table +
            "<form method=post action='/account/app-passwords' class=row>"
            f"<input type=hidden name=csrf value='{csrf}'>"
            "<label>Name <input type=text name=label maxlength=60 required "
            "placeholder='FileZilla on my laptop'></label>"
            "<button type=submit>Create app password</button></form></section>")
        send(request, 200, page("Account", body, user=user, csrf=session.csrf,
                                flash=session.take_flash()))

    async def enrol_page(self, request: IRequest, session: Session,
                         message: str | None = None, status_code: int = 200) -> None:
        status = await self.app.server.run_in_thread(service(self.app).status,
                                                     session.user)
        if status.enabled:
            see_other(request, "/account")
            return
        secret = await self.app.server.run_in_thread(service(self.app).pending_secret,
                                                     session.user)
        send(request, status_code, page(
            "Turn on two-factor login",
            enrol_body(session.user, secret, "/account/2fa", session.csrf, message),
            user=session.user, csrf=session.csrf))

    async def confirm(self, request: IRequest, session: Session) -> None:
        code = (request.args.get(b"code") or [b""])[0].decode("utf-8", "replace")[:24]
        codes = await self.app.server.run_in_thread(service(self.app).confirm,
                                                    session.user, code)
        if codes is None:
            self.app.audit(request, "web.2fa_enrol", account=session.user,
                           outcome="wrong-code")
            await self.enrol_page(request, session, "That code is not right. Check the "
                                  "time on your phone and try the next code.", 400)
            return
        self.app.audit(request, "web.2fa_enrol", account=session.user, outcome="on")
        send(request, 200, page("Two-factor login is on",
                                recovery_body(codes, ("/account", "Back to your account")),
                                user=session.user, csrf=session.csrf))

    async def create(self, request: IRequest, session: Session) -> None:
        user = session.user
        try:
            label = app_passwords.clean_label(
                (request.args.get(b"label") or [b""])[0].decode("utf-8", "replace"))
        except ValueError as e:
            session.add_flash("error", str(e)[:1].upper() + str(e)[1:] + ".")
            see_other(request, "/account")
            return
        store = self.app.server.store

        def make() -> str | None:
            if len(store.app_passwords(user)) >= app_passwords.MAX_PER_ACCOUNT:
                return None
            new = app_passwords.generate()
            store.add_app_password(user, new.ident, label, hash_password(new.password))
            return new.password

        password = await self.app.server.run_in_thread(make)
        if password is None:
            session.add_flash("error", f"An account may have at most "
                              f"{app_passwords.MAX_PER_ACCOUNT} app passwords; revoke "
                              "one first.")
            see_other(request, "/account")
            return
        self.app.audit(request, "web.app_password", account=user, outcome="created",
                       label=label)
        await self.show(request, session, shown=(label, password))

    async def revoke(self, request: IRequest, session: Session) -> None:
        ident = (request.args.get(b"id") or [b""])[0].decode("ascii", "replace")[:32]
        done = await self.app.server.run_in_thread(
            self.app.server.store.revoke_app_password, session.user, ident)
        self.app.audit(request, "web.app_password", account=session.user,
                       outcome="revoked" if done else "not-found", id=ident)
        session.add_flash("ok" if done else "error",
                          "App password revoked; clients using it are logged out."
                          if done else "That app password was already gone.")
        see_other(request, "/account")


async def _nothing() -> None:
    return None
