"""
Request bodies on the HTTPS site: how big each may be, and which requests
are refused from their headers, before a byte of body is read.

twisted.web collects a body (in memory, or a temporary file past 100 KB) and
parses it whole, on the reactor thread, before any resource sees the
request.  Measured before this module: one 128 MiB multipart POST to a page
that does not exist, with no cookie, took the server from 181 to 1717 MiB
and stalled every protocol for 2.9 s.  Now:

* the streamed uploads (``POST /upload``, L{rumpus_secure.web.upload}, and
  a drop box's ``POST /s/<token>/upload``) are the only requests whose body
  may be large; they never sit in memory;
* every other body is capped: L{MAX_LOGIN_BODY} (16 KiB) for the login
  and logout forms, whose fields are a name, a password, a token and the
  page to return to (an ASCII path, percent-encoded once more in the form:
  16 KiB keeps a return path of some 5,000 characters);
  L{MAX_FORM_BODY} (64 KiB) for everything else, which covers the largest
  real form (``/rename``: a 4 KiB path and a 255-byte name, each
  percent-encoded three times over, plus the token).  A ``Content-Length``
  over the cap gets ``413`` at once; a chunked body gets ``413`` as soon as
  it passes the cap (L{rumpus_secure.web.site.SecureRequest});
* a request with a body to a page that needs a session (the file manager
  and the upload) is refused with ``401`` when its cookie names no live
  session, and a POST there with ``403`` when its Origin is not ours, before
  the body is read.  The CSRF token is in the body, so it is still checked
  later, by the resource;
* an address the guard has banned gets its ``403`` page before the body.

Requests without a body (``Content-Length: 0`` or none) take the ordinary
path, so the resources' own checks and pages stay the only ones they meet.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from rumpus_secure.shares import is_dropbox_upload, is_share_form
from rumpus_secure.web.multipart import boundary_from_content_type
from rumpus_secure.web.upload import UPLOAD_PATH

MAX_LOGIN_BODY = 16 * 1024
MAX_FORM_BODY = 64 * 1024

#: First path segments of the pages that need a logged-in session.
SESSION_PAGES = frozenset({b"files", b"upload", b"mkdir", b"rename", b"delete",
                           b"account", b"shares"})
#: The login steps (password, two-factor code, enrolment code) are small too.
_SMALL_FORMS = frozenset({b"/login", b"/logout", b"/login/code", b"/login/enrol"})

#: C{(status, title, message)} of an answer given before the body.
Refusal = tuple[int, str, str]


def body_cap(path: bytes) -> int:
    """The most body bytes a request to C{path} may send (not the upload)."""
    if path in _SMALL_FORMS or is_share_form(path):  # a link's password form
        return MAX_LOGIN_BODY
    return MAX_FORM_BODY


def too_large(cap: int) -> Refusal:
    return (413, "Request too large",
            f"This form may send at most {cap // 1024} KiB; nothing was changed.")


def needs_session(path: bytes) -> bool:
    """Whether the page at C{path} is only for a logged-in session."""
    if not path.startswith(b"/"):
        return False
    return path[1:].split(b"/", 1)[0] in SESSION_PAGES


def early_refusal(app: Any, request: IRequest, command: bytes, path: bytes,
                  length: int | None) -> Refusal | None:
    """
    Whether to refuse this request from its headers alone.

    @param length: the body's C{Content-Length}; L{None} for a chunked body.
    @returns: the refusal, or L{None} to read the body.
    """
    if length == 0:
        return None
    ban = request._ban()  # type: ignore[attr-defined]
    if ban is not None:
        return 403, "Access refused", app.server.guard.message(ban)
    # The manager's upload and a drop box's (rumpus_secure.web.visit) stream.
    upload = command == b"POST" and (path == UPLOAD_PATH or is_dropbox_upload(path))
    if not upload:
        cap = body_cap(path)
        if length is not None and length > cap:
            return too_large(cap)
    if not needs_session(path):
        return None
    if app.session(request) is None:
        return (401, "Please log in again",
                "Your session has ended, so nothing was changed or stored.")
    if command == b"POST" and not app.same_origin(request):
        return (403, "Request refused",
                "This form did not come from this site's own page. Nothing was "
                "changed. Go back, reload the page and try again.")
    if upload and boundary_from_content_type(
            request.getHeader(b"content-type") or b"") is None:
        return 400, "Upload refused", "The upload must be sent as multipart/form-data."
    return None
