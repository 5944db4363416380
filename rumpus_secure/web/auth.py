"""
Logging in and out with the same accounts as FTP.

The password goes to the same checker (argon2id in a thread); the reply
waits for it, so a wrong user name and a wrong password look and take the
same.  A locked account is named as locked only after a correct password.

The login obeys the same guard as FTP (L{rumpus_secure.guard}): it counts as
a failed attempt while its password is verified, waits for a verification
slot of its address, and a ban made meanwhile refuses it even when the
password was right.  It also waits for any pending check of a password the
account sent in cleartext (L{rumpus_secure.exposure}) and obeys it.

An account with two-factor login then gives a code (``/login/code``) or
enrols (``/login/enrol``) before it gets a session; see
L{rumpus_secure.web.twofactor}, whose codes the same guard counts.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.web import resource
from twisted.web.iweb import IRequest

from rumpus_secure.accounts.bans import Ban
from rumpus_secure.accounts.cert_checker import CertificateCredentials
from rumpus_secure.accounts.checker import LockedAccountError
from rumpus_secure.db import StoreUnavailable
from rumpus_secure.web import twofactor
from rumpus_secure.web.app import WebApp, client_ip
from rumpus_secure.web.client_cert_login import (
    certificate_login,
    refusal_fields,
    request_certificate,
)
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


def login_form(next_path: str, message: str | None = None, footer: str = "",
               username: str = "", notice: str | None = None) -> bytes:
    """
    The login page; after a failed attempt C{username} stays filled in
    and the password field has the focus.
    """
    note = f"<p class='flash error' role=alert>{esc(message)}</p>" if message else ""
    if notice:
        note += f"<p class='flash ok' role=status>{esc(notice)}</p>"
    focus_user, focus_password = ("", " autofocus") if username else (" autofocus", "")
    return page("Log in", note + (
        "<form class='card narrow' method=post action='/login'>"
        f"<input type=hidden name=next value='{esc(next_path)}'>"
        "<label>User name <input type=text name=username autocomplete=username "
        f"value='{esc(username)}' autocapitalize=none required{focus_user}></label>"
        "<label>Password <input type=password name=password "
        f"autocomplete=current-password required{focus_password}></label>"
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
        self.steps = {b"code": twofactor.LoginCodeResource(app),
                      b"enrol": twofactor.LoginEnrolResource(app)}

    def _step(self, request: IRequest) -> resource.Resource | None:
        """``/login/code`` and ``/login/enrol``: the second factor."""
        rest = [p for p in request.postpath if p]
        return self.steps.get(rest[0]) if len(rest) == 1 else None

    def render(self, request: IRequest) -> Any:
        step = self._step(request)
        if step is not None:
            return step.render(request)
        return super().render(request)

    def render_GET(self, request: IRequest) -> Any:
        next_path = _safe_next(arg(request, b"next"))
        if self.app.session(request) is not None:
            see_other(request, next_path)
        elif request_certificate(request) is not None and arg(request, b"out") != "1":
            return run(request, lambda: self._certificate_login(request, next_path))
        else:
            notice = "You are logged out." if arg(request, b"out") == "1" else None
            send(request, 200, login_form(next_path, footer=ftp_note(self.app.config),
                                          notice=notice))
        return run(request, _nothing)

    render_HEAD = render_GET

    async def _certificate_login(self, request: IRequest, next_path: str) -> None:
        """
        GET /login with a client certificate: log in without the form if it
        is bound to a C{cert} account (rumpus_secure.web.client_cert_login).
        """
        outcome = await certificate_login(self.app, request)
        if outcome == "ok":
            see_other(request, next_path)
            return
        send(request, 200 if outcome is None else 403,
             login_form(next_path, outcome, footer=ftp_note(self.app.config)))

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
            send(request, 400, login_form(next_path, "Enter your user name and password.",
                                          username=name))
            return
        guard = getattr(self.app.server, "guard", None)
        client = client_ip(request)
        attempt = None
        if guard is not None:
            # Verified only when this address has a verification slot, and
            # counted as a failed attempt from then on (rumpus_secure.guard).
            started = await guard.begin_login(client, "web", name)
            if isinstance(started, Ban):
                send(request, 403, login_form(next_path, guard.message(started)))
                return
            attempt = started
            if getattr(request, "_disconnected", False):
                attempt.abandoned()  # the browser left while it waited
                return
        exposure = getattr(self.app.server, "exposure", None)
        watch = exposure.watch(name, password) if exposure is not None else None
        credentials = CertificateCredentials(name.encode("utf-8", "surrogateescape"),
                                             password.encode("utf-8", "surrogateescape"),
                                             request_certificate(request), channel="web")
        try:
            avatar = await self.app.server.checker.requestAvatarId(credentials)
        except LockedAccountError as e:
            if watch is not None:
                watch.close()
            # The password was right: not a failed guess.
            if attempt is not None and (ban := attempt.succeeded()) is not None:
                send(request, 403, login_form(next_path, guard.message(ban)))
                return
            self._locked(request, next_path, name, e.reason)
            return
        except StoreUnavailable:
            # The shared database is down: no offence, never "wrong password".
            if watch is not None:
                watch.close()
            if attempt is not None:
                attempt.abandoned()
            self.app.audit(request, "web.login", account=name, outcome="unavailable")
            send(request, 503, login_form(
                next_path, "The server cannot check passwords right now; try again "
                "later."))
            return
        except UnauthorizedLogin as refused:
            if watch is not None:
                watch.close()
            self.app.audit(request, "web.login", account=name, outcome="failed",
                           **refusal_fields(refused))
            if guard is not None and attempt is not None:
                ban = attempt.failed()
                await guard.delayed(None)
                if ban is not None:
                    send(request, 403, login_form(next_path, guard.message(ban),
                                                  username=name))
                    return
            send(request, 401, login_form(next_path, "Wrong user name or password.",
                                          username=name))
            return
        except BaseException:
            if watch is not None:
                watch.close()
            if attempt is not None:
                attempt.abandoned()
            raise
        ban = attempt.succeeded() if attempt is not None else None
        # A check of a password this account sent in cleartext may be
        # pending: its outcome decides (rumpus_secure.exposure).
        locked = await watch.outcome() if watch is not None else None
        if ban is None and guard is not None and locked is not None:
            ban = guard.check(client, "web")
        if ban is not None:
            self.app.audit(request, "web.login", account=name, outcome="banned-meanwhile")
            send(request, 403, login_form(next_path, guard.message(ban)))
            return
        if locked is not None:
            self._locked(request, next_path, name, locked)
            return
        user = avatar.decode("utf-8", "surrogateescape") if isinstance(avatar, bytes) else avatar
        # A session now, or first the second factor (rumpus_secure.web.twofactor).
        await twofactor.after_password(self.app, request, user, next_path)

    def _locked(self, request: IRequest, next_path: str, name: str,
                reason: str | None) -> None:
        self.app.audit(request, "web.login", account=name, outcome="locked")
        because = f" Reason: {reason}." if reason else ""
        send(request, 403, login_form(
            next_path, "This account is locked, so you cannot log in." + because
            + " Ask your administrator to unlock it or set a new password."))


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
        see_other(request, "/login?out=1")
        return run(request, _nothing)

    def render_GET(self, request: IRequest) -> Any:
        see_other(request, "/files/")
        return run(request, _nothing)


async def _nothing() -> None:
    return None
