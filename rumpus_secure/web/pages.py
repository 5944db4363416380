"""
HTML for people: one page skeleton, escaping helpers and error pages.

Every dynamic value goes through L{esc} (or L{attr}); pages load only the
static stylesheet and script, so the strict Content-Security-Policy holds.
"""

from __future__ import annotations

import html
import time
from typing import Iterable
from urllib.parse import quote

from rumpus_secure.vfs import wire_name


def esc(text: str) -> str:
    """Escape text for HTML content and quoted attributes."""
    return html.escape(wire_name(text), quote=True)


def url_path(vpath: str) -> str:
    """
    The URL path segment for a virtual path, each byte of the name
    percent-encoded (names that are not UTF-8 on disk round-trip).
    """
    return quote(vpath.encode("utf-8", "surrogateescape"), safe="/")


def url_arg(value: str) -> str:
    """A query-string value."""
    return quote(value.encode("utf-8", "surrogateescape"), safe="")


def human_size(size: int) -> str:
    """``1.5 MiB`` style sizes."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def human_time(timestamp: float) -> str:
    """A UTC date and time, sortable and unambiguous."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) + " UTC"


def page(title: str, body: str, *, user: str | None = None, csrf: str | None = None,
         flash: Iterable[tuple[str, str]] = (), wide: bool = False) -> bytes:
    """
    A whole HTML document: a header with the product name (and, logged in,
    the account and a log-out button), the notices, then C{body}.

    @param body: already-escaped HTML.
    @param user: shows the account name and a log-out button.
    @param wide: use the full window width (folder listings).
    """
    top, end = page_frame(title, user=user, csrf=csrf, flash=flash, wide=wide)
    return (top + body + end).encode("utf-8")


#: What closes every page after its body (L{page_frame}).
PAGE_END = "</main></body></html>"


def page_frame(title: str, *, user: str | None = None, csrf: str | None = None,
               flash: Iterable[tuple[str, str]] = (), wide: bool = False) -> tuple[str, str]:
    """
    The page of L{page} around its body, as C{(top, end)}: a streamed page
    (a big folder, L{rumpus_secure.web.listing}) sends C{top} first, then
    its body in pieces, then C{end}.
    """
    who = ""
    if user is not None:
        who = (
            f"<span class=who><span class=sr>Logged in as </span>{esc(user)}</span>"
            "<nav class=account-nav><a href='/shares'>Links</a> "
            "<a href='/account'>Account</a></nav>"
            "<form method=post action='/logout' class=inline>"
            f"<input type=hidden name=csrf value='{esc(csrf or '')}'>"
            "<button type=submit class=plain>Log out</button></form>"
        )
    header = (
        "<header class=top><a class=brand href='/files/'>rumpus-secure"
        "<span class=sub> files</span></a>" + who + "</header>"
    )
    notes = "".join(
        f"<p class='flash {esc(kind)}' role={'alert' if kind == 'error' else 'status'}>"
        f"{esc(message)}</p>"
        for kind, message in flash
    )
    main_class = " class=wide" if wide else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<meta name=color-scheme content='light dark'>"
        f"<title>{esc(title)} \u2013 rumpus-secure</title>"
        "<link rel=stylesheet href='/static/app.css'>"
        "<script src='/static/app.js' defer></script></head><body>"
        f"{header}<main{main_class}><h1>{esc(title)}</h1><div id=notes>{notes}</div>"
    ), PAGE_END


def message_page(title: str, message: str, *, link: tuple[str, str] | None = None,
                 user: str | None = None, csrf: str | None = None) -> bytes:
    """A page that explains one thing, with an optional way onwards."""
    more = ""
    if link is not None:
        more = f"<p><a href='{esc(link[0])}'>{esc(link[1])}</a></p>"
    return page(title, f"<p>{esc(message)}</p>{more}", user=user, csrf=csrf)
