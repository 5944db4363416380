"""
Logging in and out with the same accounts as FTP.

The password goes to the same checker (argon2id in a thread); the reply
waits for it, so a wrong user name and a wrong password look and take the
same.  A locked account is named as locked only after a correct password.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.accounts.checker import LockedAccountError
from rumpus_secure.db import StoreUnavailable
from rumpus_secure.web.app import WebApp, client_ip
from rumpus_secure.web.manager import arg
from rumpus_secure.web.pages import esc, page
from rumpus_secure.web.respond import error_page, run, see_other, send


def ftp_note(config: Any) -> str:
    """
    How to reach the same files with an FTP client, for the login page.
    """
    host = esc(config.public_host)
    ways = []
    if config.ftp and config.ftp_security != "implicit-only":
        ways.append(f"<li>Explicit FTPS (FTP with AUTH TLS): <code>{host}</code> "
                    f"port <code>{config.ftp_port}</code></li>")
    if config.ftps:
        ways.append(f"<li>Implicit FTPS: <code>{host}</code> port "
                    f"<code>{config.ftps_port}</code></li>")
    if not ways:
        return ""
    return ("<section class=card><h2>FTP clients</h2><p>The same files and "
            "account work with an FTP client that supports TLS (FileZilla, "
            "WinSCP, lftp, curl):</p><ul>" + "".join(ways) + "</ul></section>")


def login_form(next_path: str, message: str | None = None, footer: str = "") -> bytes:
    note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
    return page("Log in", note + (
        "<form class=card method=post action='/login'>"
        f"<input type=hidden name=next value='{esc(next_path)}'>"
        "<label>User name <input type=text name=username autocomplete=username "
        "autocapitalize=none required autofocus></label>"
        "<label>Password <input type=password name=password "
        "autocomplete=current-password required></label>"
        "<button type=submit>Log in</button></form>"
    ) + footer)


def _safe_next(value: str | None) -> str:
    if (not value or not value.startswith("/") or value.startswith("//")
            or "\\" in value or not all(0x20 < ord(c) < 0x7F for c in value)):
        return "/files/"
    return value


class LoginResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request: IRequest) -> Any:
        next_path = _safe_next(arg(request, b"next"))
        if self.app.session(request) is not None:
            see_other(request, next_path)
        else:
            send(request, 200, login_form(next_path, footer=ftp_note(self.app.config)))
        return run(request, _nothing)

    render_HEAD = render_GET

    def render_POST(self, request: IRequest) -> Any:
        return run(request, lambda: self.login(request))

    async def login(self, request: IRequest) -> None:
        next_path = _safe_next(arg(request, b"next"))
        if not self.app.same_origin(request):
            self.app.audit(request, "web.login", account=arg(request, b"username"),
                           outcome="refused-origin")
            send(request, 403, login_form(next_path, "This login did not come from "
                                          "this site's own page. Please try again."))
            return
        name = (arg(request, b"username") or "").strip()
        password = arg(request, b"password") or ""
        if not name or not password:
            send(request, 400, login_form(next_path, "Enter your user name and password."))
            return
        guard = getattr(self.app.server, "guard", None)
        client = client_ip(request)
        if guard is not None:
            ban = guard.check(client, "web")
            if ban is not None:
                send(request, 403, login_form(next_path, guard.message(ban)))
                return
        credentials = UsernamePassword(name.encode("utf-8", "surrogateescape"),
                                       password.encode("utf-8", "surrogateescape"))
        try:
            avatar = await self.app.server.checker.requestAvatarId(credentials)
        except LockedAccountError as e:
            self.app.audit(request, "web.login", account=name, outcome="locked")
            reason = f" Reason: {e.reason}." if e.reason else ""
            send(request, 403, login_form(
                next_path, "This account is locked, so you cannot log in." + reason
                + " Ask your administrator to unlock it or set a new password."))
            return
        except StoreUnavailable:
            # The shared database is down: no offence, never "wrong password".
            self.app.audit(request, "web.login", account=name, outcome="unavailable")
            send(request, 503, login_form(
                next_path, "The server cannot check passwords right now; try again "
                "later."))
            return
        except UnauthorizedLogin:
            self.app.audit(request, "web.login", account=name, outcome="failed")
            if guard is not None:
                guard.offence(client, "login_failed", protocol="web", account=name)
                await guard.delayed(None)
            send(request, 401, login_form(next_path, "Wrong user name or password."))
            return
        user = avatar.decode("utf-8", "surrogateescape") if isinstance(avatar, bytes) else avatar
        self.app.start_session(request, user)
        self.app.audit(request, "web.login", account=user, outcome="ok")
        see_other(request, next_path)


class LogoutResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_POST(self, request: IRequest) -> Any:
        session = self.app.session(request)
        if session is not None and not self.app.post_allowed(request, session):
            error_page(request, 403, "Request refused",
                       "This form did not come from this site's own page.",
                       link=("/files/", "Back to your files"))
            return run(request, _nothing)
        if session is not None:
            self.app.audit(request, "web.logout", account=session.user)
        self.app.end_session(request)
        see_other(request, "/login")
        return run(request, _nothing)

    def render_GET(self, request: IRequest) -> Any:
        see_other(request, "/files/")
        return run(request, _nothing)


async def _nothing() -> None:
    return None
