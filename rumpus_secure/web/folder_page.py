"""
A folder's page, made piece by piece as the folder is read (issue #18,
target 4); its rows and forms come from L{rumpus_secure.web.listing}.

A row costs about 880 bytes with every permission (the name appears in the
link, the check box and its label, and quoted in four action links).  The
page used to be made whole in a thread and sent at once: for 100,000
entries, 88 MB of HTML, the first byte after 1.9-4.2 s, the server's
memory +418 to +548 MiB (the list of entries, the page as text and as
bytes, and TLS's copy), and while the 88 MB went into the TLS layer in one
write the reactor stopped: another account's small page then waited up to
0.3-1.6 s.  Now (L{ListingPage}, written by
L{rumpus_secure.web.pagestream.PageProducer}):

 - the page's top (header, notices, upload and folder forms, the filter
   and the selection bar) is sent before the folder is read;
 - the folder is read as a L{DirScan} (one open descriptor, one ``lstat``
   per entry) and the rows follow in pieces of L{PIECE} bytes, each made in
   a thread while the last is sent, none while the client is not reading;
 - a folder of at most L{SORT_LIMIT} entries is still sorted (folders
   first, by name, size or date, as asked): sorting needs every entry at
   once, and 5,000 entries are about 2 MB of entries held and 4.4 MB of
   HTML, about as much as a browser takes without a long wait (Chromium:
   DOM ready after 1.2-3.5 s on the loaded 2-core bench machine,
   tests/browser/test_web_listing_browser.py); almost every folder is such
   a folder, and it looks as it always did;
 - a bigger folder is not sorted: it is shown in the order the disk keeps
   it, L{PAGE_SIZE} entries a page (``?page=2``), with a note above the
   table, the column heads no longer offering a sort, and the page links
   below the table (``?page=all`` puts every entry on one page, with its
   size said first).  Paging rather than streaming all of it by default:
   88 MB of HTML is too much for a browser (a phone gives up), the filter
   and select-all work on what the page holds, and 5,000 rows keep the page
   usable; a page of a big folder still streams, and so does ``?page=all``.
   The names before a later page are passed over without an ``lstat``, and
   the count of entries (for "page 2 of 20") is a second, names-only pass
   after the table: names cost about 50 ms per 100,000 entries, an
   ``lstat`` each about 370 ms (tmpfs).  A
   folder that changes between two pages can show an entry twice or skip
   one, as any listing by position does; the jail and every permission
   apply to each page as to a whole listing.

Measured with ``python bench/web_listing.py --entries 100000 --rounds 3
--tree before=<5764eb3>`` (loopback, 2 shared cores; two runs, load average
7-9, the median of each run):

 ==================  ==========  =========  ===========  ========  ===========
 100,000 entries     first byte  first row  total        peak RSS  2nd account
 ==================  ==========  =========  ===========  ========  ===========
 before (one page)   1.9-4.2 s   1.9-4.2 s  2.1-4.4 s    +548 MiB  473-684 ms
 after, page 1       7 ms        29-48 ms   158-302 ms   +1.4 MiB  40-132 ms
 after, ?page=all    5-8 ms      29-42 ms   1.5-3.0 s    +1.1 MiB  37-114 ms
 after, ?q= search   6 ms        84 ms      87 ms        +0 MiB    26 ms
 ==================  ==========  =========  ===========  ========  ===========

("2nd account": another account's small page, fetched in a loop meanwhile,
its worst time; its median stays 10-20 ms after, 13-27 ms before.)  Server
CPU per listing: 1.55 s before; 0.13 s for a page, 1.3-1.5 s for all of it,
0.07 s for the search (90 matches: names are read, only matches are
``lstat``-ed).  In ``bench/listings.py`` (same folder, same run as the FTP
peers): ``?page=all`` first byte 6 ms, pyftpdlib's MLSD 89 ms, vsftpd's
LIST 418 ms; server growth +2.4 MiB, pyftpdlib +9.7, vsftpd +20.8.  What
the server holds for a page, whatever the folder's size: at most
L{SORT_LIMIT} + 1 entries (the ones that tell a small folder from a big
one) and two pieces.

The search (``?q=``, offered above the table of a big folder): the entries
whose name contains the text, in any case, read as a listing is (no list
of them all); up to L{SORT_LIMIT} matches are sorted, more are paged.

A filesystem error while the folder is read (the folder deleted, a
permission refused) ends the page where it stands: a last row says what
happened, and the table and the page are closed (L{ListingPage.closing}).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterator

from rumpus_secure.vfs import DirScan, Entry, VFSError
from rumpus_secure.web.listing import (
    SPRITE,
    crumbs,
    mkdir_form,
    row,
    shown_name,
    sort_entries,
    upload_form,
)
from rumpus_secure.web.pages import esc, url_arg

#: A folder of at most this many entries is read whole, sorted as asked and
#: shown on one page (see the module docstring for the numbers).
SORT_LIMIT = 5000
#: Rows per page of a bigger folder, in the order the disk keeps them.
PAGE_SIZE = 5000
#: HTML gathered before a write: about 90 rows.
PIECE = 64 * 1024
#: Bytes per row (88 MB for 100,000 in bench/web_listing.py), for the "show all" link.
ROW_BYTES = 880

#: Markers in the stream of HTML text of L{ListingPage}.
_FLUSH = object()
_TABLE_OPEN = object()
_TABLE_CLOSED = object()


def page_number(value: str | None) -> int | None:
    """The ``page`` query value: a page number from 1, or L{None} for ``all``."""
    if value == "all":
        return None
    if value is not None and value.isdigit() and 0 < len(value) <= 9:
        return max(1, int(value))
    return 1


@dataclass(frozen=True)
class FolderView:
    """What a folder page shows: whose view, how sorted, which page."""

    vpath: str
    perms: frozenset[str]
    csrf: str
    sort: str = "name"
    descending: bool = False
    #: a page of a big folder (from 1), or L{None} for all of it
    page: int | None = 1
    #: only entries whose name contains this (any case); "" for all
    find: str = ""

    def query(self, **changes: str) -> str:
        """
        A link's query to this view with C{changes} (``page``, ``sort``,
        ``order``): the search, if any, is kept.
        """
        fields = dict(changes)
        if self.find:
            fields["q"] = self.find
        return "?" + "&amp;".join(f"{key}={url_arg(value)}" for key, value in fields.items())

    def matches(self, name: str) -> bool:
        return not self.find or self.find.casefold() in name.casefold()


def listing_top(view: FolderView) -> str:
    """Everything of a folder's page above its table: no disk work at all."""
    vpath, perms, csrf = view.vpath, view.perms, view.csrf
    tools = []
    if "upload" in perms or "overwrite" in perms:
        tools.append(upload_form(vpath, perms, csrf))
    if "mkdir" in perms:
        tools.append(mkdir_form(vpath, csrf))
    bulk_buttons = []
    if "download" in perms:
        bulk_buttons.append("<button type=submit formaction='/zip'>Download as ZIP</button>")
    if "delete" in perms:
        bulk_buttons.append("<button type=submit formaction='/delete' class=danger>"
                            "Delete\u2026</button>")
    bulk = ""
    if bulk_buttons:
        bulk = ("<form id=bulk class=bulk method=get action='/zip'>"
                f"<input type=hidden name=dir value='{esc(vpath)}'>"
                "<span class=muted>Selected: </span>" + "".join(bulk_buttons) + "</form>")
    read_only = ""
    if not tools:
        read_only = "<p class=muted>This account may look and download here, not change.</p>"
    links = []  # share links (rumpus_secure.web.shares)
    if "download" in perms and "list" in perms:
        links.append(f"<a href='/shares/new?kind=download&amp;path={url_arg(vpath)}' "
                     "id=share-folder>Share this folder</a>")
    if "upload" in perms:
        links.append(f"<a href='/shares/new?kind=dropbox&amp;path={url_arg(vpath)}' "
                     "id=make-dropbox>Make a drop box here</a>")
    share_links = ("<p class=share-links>" + " \u00b7 ".join(links) + "</p>") if links else ""
    return (
        SPRITE + crumbs(vpath)
        + (f"<div class=tools>{''.join(tools)}</div>" if tools else read_only)
        + share_links
        + "<div class=listbar><label class=filter hidden>Filter "
        "<input type=search id=filter autocomplete=off "
        "placeholder='Type part of a name'></label>" + bulk + "</div>"
    )


def table_head(view: FolderView, sortable: bool) -> str:
    """The table's opening; column heads sort only a folder that was sorted."""
    sort, descending = view.sort, view.descending

    def head(key: str, label: str, css: str) -> str:
        if not sortable:
            return f"<th class={css}>{label}</th>"
        order = "desc" if key == sort and not descending else "asc"
        mark = (" \u25be" if descending else " \u25b4") if key == sort else ""
        sorted_as = ""
        if key == sort:
            sorted_as = " aria-sort=" + ("descending" if descending else "ascending")
        return (f"<th class={css}{sorted_as}><a href='{view.query(sort=key, order=order)}'>"
                f"{label}{mark}</a></th>")

    return (
        "<table class=files><caption class=sr>Files and folders</caption><thead><tr>"
        "<th class=pick><span class=sr>Select</span></th>"
        + head("name", "Name", "name") + head("size", "Size", "size")
        + head("date", "Modified", "date")
        + "<th class=act><span class=sr>Actions</span></th></tr></thead><tbody>"
    )


def find_form(view: FolderView) -> str:
    """
    The search of a big folder, or of any folder a search was made in: the
    filter box filters only the rows on the page, this reads all of them.
    """
    said = ""
    if view.find:
        said = (f"<p class=note id=found>Entries whose name contains "
                f"\u201c{shown_name(view.find)}\u201d. <a href='?'>Show every entry</a></p>")
    return (
        "<form class=find method=get role=search>"
        "<label>Find in this folder <input type=search name=q "
        f"value='{esc(view.find)}' autocomplete=off></label> "
        "<button type=submit>Find</button></form>" + said
    )


def big_folder_note(view: FolderView) -> str:
    """Said above the table of a folder too big to sort (see the module docstring)."""
    shown = ("all of them are on this page" if view.page is None
             else f"{PAGE_SIZE:,} per page; this is page {view.page:,}")
    what = "entries" if not view.find else "entries that match"
    return (
        f"<p class=note id=big-folder>This folder has more than {SORT_LIMIT:,} {what}, "
        "so they are listed in the order the disk keeps them, not sorted: "
        f"{shown}. The filter box filters the entries shown, the search below "
        "finds names in all of them, and the other pages are "
        "<a href='#pages'>below the list</a>.</p>"
    )


def page_links(view: FolderView, shown: int, total: int) -> str:
    """Where the other pages of a big folder are, said after its table."""
    parts = []
    what = "entries" if not view.find else "matching entries"
    if view.page is None:
        parts.append(f"All {total:,} {what} are shown.")
        parts.append(f"<a href='{view.query(page='1')}'>Show {PAGE_SIZE:,} per page</a>")
    else:
        pages = max(1, -(-total // PAGE_SIZE))
        first = (view.page - 1) * PAGE_SIZE
        if shown:
            parts.append(f"Entries {first + 1:,}\u2013{first + shown:,} of {total:,} "
                         f"{'' if not view.find else 'matching '}"
                         f"(page {view.page:,} of {pages:,}).")
        else:
            parts.append(f"There is no page {view.page:,}: this folder has {total:,} "
                         f"{what}, {pages:,} page(s).")
        if view.page > 1:
            back = min(view.page - 1, pages)
            parts.append(f"<a href='{view.query(page=str(back))}' rel=prev>Previous page</a>")
        if view.page < pages:
            parts.append(f"<a href='{view.query(page=str(view.page + 1))}' rel=next>"
                         "Next page</a>")
        megabytes = total * ROW_BYTES / 1e6
        parts.append(f"<a href='{view.query(page='all')}'>Show all {total:,} on one page</a> "
                     f"<span class=muted>(about {megabytes:,.{0 if megabytes >= 10 else 1}f}"
                     " MB: slow in a browser)</span>")
    return ("<nav class=pages id=pages aria-label='Pages of this folder'><p>"
            + " ".join(parts) + "</p></nav>")


class ListingPage:
    """
    A folder's page as pieces of HTML (bytes) of about L{PIECE} bytes, each
    made by one C{next()} on L{pieces}: blocking disk work, so each runs in
    a thread (L{rumpus_secure.web.pagestream.PageProducer} asks for the
    next while the last is sent).

    The page's top goes out first, before the folder is read at all; a
    filesystem error while the folder is read ends the page where it is with
    a visible error and the page's proper end, and L{closing} does the same
    for an end that comes from outside (the account locked, a bug).

    @param scan: the open folder (closed when the pieces end or are closed).
    @param rescan: opens the folder again, for the count of a big folder's
        entries (names only: about 50 ms per 100,000 entries).
    @param top: the page's top (L{rumpus_secure.web.pages.page_frame}).
    @param end: the page's end after the body.
    @ivar held_most: the most entries held in memory at once.
    """

    def __init__(self, view: FolderView, scan: DirScan, rescan: Callable[[], DirScan],
                 top: str, end: str) -> None:
        self.view = view
        self._scan = scan
        self._rescan = rescan
        self._top = top
        self._end = end
        self.in_table = False
        self.held_most = 0
        self._made: Iterator[bytes] | None = None

    def pieces(self) -> Iterator[bytes]:
        """The pieces, made by one C{next()} each (the iterator is made once)."""
        if self._made is None:
            self._made = self._pieces()
        return self._made

    def close(self) -> None:
        """Stop: the folder is closed (never call it while a piece is made)."""
        made, self._made = self._made, iter(())
        close = getattr(made, "close", None)
        if close is not None:
            close()
        self._scan.close()

    def _pieces(self) -> Iterator[bytes]:
        parts: list[str] = []
        size = 0
        try:
            for text in self._html():
                if isinstance(text, str):
                    parts.append(text)
                    size += len(text)
                    if size < PIECE:
                        continue
                elif not parts:
                    self._mark(text)
                    continue
                piece = "".join(parts).encode("utf-8")
                parts, size = [], 0
                self._mark(text)
                yield piece
            if parts:
                yield "".join(parts).encode("utf-8")
        except VFSError as e:
            message = e.message[:1].upper() + e.message[1:]
            yield ("".join(parts) + self.closing_text(
                f"The listing stopped here: {message}. Reload the page to try again."
            )).encode("utf-8")
        finally:
            self._scan.close()

    def _mark(self, marker: object) -> None:
        if marker is _TABLE_OPEN:
            self.in_table = True
        elif marker is _TABLE_CLOSED:
            self.in_table = False

    def closing_text(self, message: str) -> str:
        """
        What ends the page where it stands (after what was sent) with
        C{message} shown as an error: a last row in the table if it is open.
        """
        note = f"<p class='flash error' role=alert>{esc(message)}</p>"
        if self.in_table:
            return f"<tr class=stopped><td colspan=5>{note}</td></tr></tbody></table>" + self._end
        return note + self._end

    def closing(self, message: str) -> bytes:
        return self.closing_text(message).encode("utf-8")

    def _html(self) -> Iterator[object]:
        view = self.view
        yield self._top + listing_top(view)
        yield _FLUSH  # the first byte, before any entry is read
        # Names before a later page are passed over without an lstat (a
        # seventh of the cost): ``skip`` is set once the first entries told
        # a big folder from a small one.
        skip = 0

        def keep(name: str) -> bool:
            nonlocal skip
            if not view.matches(name):
                return False
            if skip:
                skip -= 1
                return False
            return True

        entries = self._scan.entries(keep)
        first = deque(islice(entries, SORT_LIMIT + 1))
        self.held_most = len(first)
        dir_arg = url_arg(view.vpath.rstrip("/") + "/")
        perms = view.perms
        if len(first) <= SORT_LIMIT:
            ordered = sort_entries(first, view.sort, view.descending)
            first.clear()
            yield (find_form(view) if view.find else "") + table_head(view, sortable=True)
            yield _TABLE_OPEN
            for entry in ordered:
                yield row(dir_arg, entry, perms)
            if not ordered:
                empty = ("No entry's name contains that." if view.find
                         else "This folder is empty.")
                yield f"<tr><td colspan=5 class=muted>{empty}</td></tr>"
            yield "</tbody></table>" + self._end
            yield _TABLE_CLOSED
            return
        yield big_folder_note(view) + find_form(view) + table_head(view, sortable=False)
        yield _TABLE_OPEN

        start = 0 if view.page is None else (view.page - 1) * PAGE_SIZE

        def positioned() -> Iterator[tuple[int, Entry]]:
            """Each entry with its place in the folder's order, from 0."""
            nonlocal skip
            place = 0
            while first:
                yield place, first.popleft()
                place += 1
            if start > place:
                skip, place = start - place, start  # passed over by keep
            for entry in entries:
                yield place, entry
                place += 1

        seen = shown = 0
        for place, entry in positioned():
            seen = place + 1
            if place >= start:
                yield row(dir_arg, entry, perms)
                shown += 1
                if view.page is not None and shown >= PAGE_SIZE:
                    break
        if not shown:
            yield "<tr><td colspan=5 class=muted>No entries on this page.</td></tr>"
        yield "</tbody></table>"
        yield _TABLE_CLOSED
        if view.page is None:
            total = seen
        else:
            self._scan.close()
            with self._rescan() as again:
                total = sum(1 for name in again.names() if view.matches(name))
        yield page_links(view, shown, total) + self._end
