"""
The HTML of a folder listing, shaped by the account's permissions.

A control the account may not use is not drawn: a ``list,download`` account
sees no upload, new-folder, rename or delete control (the filesystem still
refuses them; this only stops the page from offering what will fail).

Every control works without JavaScript: uploads are a plain multipart form
whose ``exists`` choice defaults to refusing a taken name; the row check
boxes belong to a GET form (ZIP download, or the delete confirmation page);
rename and delete have their own pages.  ``app.js`` turns the same markup
into dialogs, a drop zone, a filter box and a row menu on phones.

Size: a row costs about 700 bytes with every permission (the name appears
in the link, the check box and its label, and quoted in four action links),
so 10,000 entries make about 7 MB of HTML, 200 KB gzipped; measured by
``bench/web_listing.py`` (see the README).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rumpus_secure.vfs import DirScan, Entry, InvalidPath, VFSError, join_path, split_path
from rumpus_secure.web.pages import esc, human_size, human_time, url_arg, url_path

SORT_KEYS = {
    "name": lambda e: e.name.lower(),
    "size": lambda e: e.size,
    "date": lambda e: e.mtime,
}

#: The icon sprite, inlined once per listing (CSP: no external fetch).
SPRITE = (Path(__file__).parent / "static" / "icons.svg").read_text("utf-8").strip()

_ICON_BY_EXTENSION = {
    "img": ("png", "jpg", "jpeg", "gif", "webp", "bmp", "svg", "ico", "tif", "tiff",
            "heic"),
    "txt": ("txt", "md", "rst", "log", "csv", "ini", "cfg", "conf", "json", "xml",
            "yaml", "yml", "toml"),
    "code": ("py", "js", "ts", "c", "h", "cpp", "go", "rs", "java", "sh", "html",
             "css", "rb", "php", "sql"),
    "zip": ("zip", "gz", "tgz", "bz2", "xz", "7z", "rar", "tar", "zst"),
    "pdf": ("pdf",),
    "av": ("mp3", "wav", "flac", "ogg", "m4a", "mp4", "mkv", "mov", "avi", "webm"),
    "doc": ("doc", "docx", "odt", "xls", "xlsx", "ods", "ppt", "pptx", "odp", "rtf"),
}
ICONS = {ext: icon for icon, exts in _ICON_BY_EXTENSION.items() for ext in exts}
#: Files the page can show in place (images by <img>, text by fetch).
PREVIEW_IMAGE = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "ico")


#: Bidirectional controls: in a name they reorder what the page shows
#: (``"\u202egnp.exe"`` reads as ``exe.png``), so a name shows them as text.
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_SHOW_BIDI = str.maketrans({c: f"[U+{ord(c):04X}]" for c in _BIDI})


def shown_name(name: str) -> str:
    """A name as the page shows it: escaped, its bidirectional controls visible."""
    return esc(name).translate(_SHOW_BIDI)


def icon_for(entry: Entry) -> str:
    """The sprite symbol for an entry: its kind, or its file type."""
    if entry.kind == "dir":
        return "dir"
    if entry.kind != "file":
        return "link"
    _, dot, extension = entry.name.rpartition(".")
    return ICONS.get(extension.lower(), "file") if dot else "file"


def files_url(vpath: str) -> str:
    return "/files" + url_path(vpath if vpath.endswith("/") or vpath == "/" else vpath)


def dir_url(vpath: str) -> str:
    return "/files" + url_path(vpath.rstrip("/") + "/")


def parent_of(vpath: str) -> str:
    """The folder above C{vpath}; ``/`` for a path that is not valid."""
    try:
        parts = split_path(vpath)
    except InvalidPath:
        return "/"
    return "/" + "/".join(parts[:-1])


def sort_entries(entries: Iterable[Entry], sort: str, descending: bool) -> list[Entry]:
    """Folders first, then by C{sort} (C{name}, C{size} or C{date})."""
    ordered = sorted(entries, key=SORT_KEYS.get(sort, SORT_KEYS["name"]), reverse=descending)
    ordered.sort(key=lambda e: e.kind != "dir")
    return ordered


def crumbs(vpath: str) -> str:
    parts = split_path(vpath)
    links = ["<a href='/files/'>Home</a>"]
    for index, name in enumerate(parts):
        target = dir_url(join_path("/", "/".join(parts[: index + 1])))
        current = " aria-current=page" if index == len(parts) - 1 else ""
        links.append(f"<a href='{esc(target)}'{current}>{shown_name(name)}</a>")
    return "<nav class=crumbs aria-label='Folder path'>" + " / ".join(links) + "</nav>"


def upload_form(vpath: str, perms: frozenset[str], csrf: str) -> str:
    """
    The upload form; the ``exists`` field comes before the files so the
    server knows the choice before any byte is stored.
    """
    replace = ("<option value=replace>Replace the old file</option>"
               if "overwrite" in perms else "")
    return (
        "<form class='card drop' id=upload-form method=post enctype='multipart/form-data' "
        f"action='/upload?dir={esc(url_arg(vpath))}'>"
        f"<input type=hidden name=csrf value='{esc(csrf)}'>"
        "<h2>Upload</h2>"
        "<label>If a name is already taken <select name=exists>"
        "<option value=refuse selected>Do not replace; tell me</option>"
        "<option value=keep>Keep both (add a number)</option>"
        f"{replace}</select></label>"
        "<label>Files <input type=file name=file multiple></label>"
        "<p class='drop-hint muted' hidden>or drop files and folders here</p>"
        "<button type=submit>Upload</button>"
        "<ul id=queue class=queue aria-live=polite></ul></form>"
    )


def mkdir_form(vpath: str, csrf: str) -> str:
    return (
        "<form class=card id=mkdir-form method=post action='/mkdir'>"
        f"<input type=hidden name=csrf value='{esc(csrf)}'>"
        f"<input type=hidden name=dir value='{esc(vpath)}'>"
        "<h2>New folder</h2>"
        "<label>Name <input type=text name=name required autocomplete=off></label>"
        "<button type=submit>Create</button></form>"
    )


def row(dir_arg: str, entry: Entry, perms: frozenset[str]) -> str:
    """
    One table row; only the actions the account may take.

    Links to the entry are relative to the folder's own URL (which ends in
    ``/``), and the name is escaped and quoted once: a row is most of a big
    listing's weight and time.

    @param dir_arg: the folder as a query value ending in ``%2F``.
    """
    name = esc(entry.name)
    shown = name.translate(_SHOW_BIDI)
    quoted = url_arg(entry.name)  # also quotes ':' so it never reads as a scheme
    icon = icon_for(entry)
    download = entry.kind == "file" and "download" in perms
    if entry.kind == "dir":
        link = f"<a href='{quoted}/'>{shown}/</a>"
        size = "<span class=kind>folder</span>"
    elif download:
        link = f"<a href='{quoted}'>{shown}</a>"
        size = human_size(entry.size)
    else:
        kind = "" if entry.kind == "file" else f" <span class=kind>({esc(entry.kind)})</span>"
        link = f"<span>{shown}</span>{kind}"
        size = human_size(entry.size) if entry.kind == "file" else ""
    actions = []
    if download:
        actions.append(f"<a href='{quoted}' download>Download</a>")
    if "download" in perms and (entry.kind == "file"
                                or (entry.kind == "dir" and "list" in perms)):
        actions.append(f"<a href='/shares/new?kind=download&amp;path={dir_arg}{quoted}' "
                       "class=share-link>Share</a>")
    if "rename" in perms:
        actions.append(f"<a href='/rename?path={dir_arg}{quoted}' data-act=rename>Rename</a>")
    if "delete" in perms:
        actions.append(f"<a href='/delete?path={dir_arg}{quoted}' data-act=delete>Delete</a>")
    pick = ""
    if ("download" in perms or "delete" in perms) and entry.kind in ("file", "dir"):
        pick = (f"<input type=checkbox form=bulk name=name value='{name}' "
                f"aria-label='Select {shown}'>")
    preview = ""
    if download:
        if icon == "img" and entry.name.rpartition(".")[2].lower() in PREVIEW_IMAGE:
            preview = " data-pv=img"
        elif icon in ("txt", "code"):
            preview = " data-pv=txt"
    return (
        f"<tr{preview}><td class=pick>{pick}</td>"
        f"<td class=name><svg class=i aria-hidden=true><use href='#i-{icon}'/></svg>{link}</td>"
        f"<td class=size>{size}</td><td class=date>{human_time(entry.mtime)}</td>"
        f"<td class=act><span class=acts>{''.join(actions)}</span></td></tr>"
    )


# -- the page, streamed ------------------------------------------------------

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
        return (f"<th class={css}{sorted_as}><a href='?sort={key}&amp;order={order}'>"
                f"{label}{mark}</a></th>")

    return (
        "<table class=files><caption class=sr>Files and folders</caption><thead><tr>"
        "<th class=pick><span class=sr>Select</span></th>"
        + head("name", "Name", "name") + head("size", "Size", "size")
        + head("date", "Modified", "date")
        + "<th class=act><span class=sr>Actions</span></th></tr></thead><tbody>"
    )


def big_folder_note(view: FolderView) -> str:
    """Said above the table of a folder too big to sort (see the module docstring)."""
    shown = ("all of them are on this page" if view.page is None
             else f"{PAGE_SIZE:,} per page; this is page {view.page:,}")
    return (
        "<p class=note id=big-folder>This folder has more than "
        f"{SORT_LIMIT:,} entries, so they are listed in the order the disk keeps "
        f"them, not sorted: {shown}. The filter box filters the entries shown; "
        "the other pages are <a href='#pages'>below the list</a>.</p>"
    )


def page_links(view: FolderView, shown: int, total: int) -> str:
    """Where the other pages of a big folder are, said after its table."""
    parts = []
    if view.page is None:
        parts.append(f"All {total:,} entries are shown.")
        parts.append(f"<a href='?page=1'>Show {PAGE_SIZE:,} per page</a>")
    else:
        pages = max(1, -(-total // PAGE_SIZE))
        first = (view.page - 1) * PAGE_SIZE
        if shown:
            parts.append(f"Entries {first + 1:,}\u2013{first + shown:,} of {total:,} "
                         f"(page {view.page:,} of {pages:,}).")
        else:
            parts.append(f"There is no page {view.page:,}: this folder has {total:,} "
                         f"entries, {pages:,} page(s).")
        if view.page > 1:
            back = min(view.page - 1, pages)
            parts.append(f"<a href='?page={back}' rel=prev>Previous page</a>")
        if view.page < pages:
            parts.append(f"<a href='?page={view.page + 1}' rel=next>Next page</a>")
        megabytes = total * ROW_BYTES / 1e6
        parts.append(f"<a href='?page=all'>Show all {total:,} on one page</a> "
                     f"<span class=muted>(about {megabytes:,.{0 if megabytes >= 10 else 1}f}"
                     " MB: slow in a "
                     "browser)</span>")
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
        entries = self._scan.entries()
        first = deque(islice(entries, SORT_LIMIT + 1))
        self.held_most = len(first)
        dir_arg = url_arg(view.vpath.rstrip("/") + "/")
        perms = view.perms
        if len(first) <= SORT_LIMIT:
            ordered = sort_entries(first, view.sort, view.descending)
            first.clear()
            yield table_head(view, sortable=True)
            yield _TABLE_OPEN
            for entry in ordered:
                yield row(dir_arg, entry, perms)
            if not ordered:
                yield "<tr><td colspan=5 class=muted>This folder is empty.</td></tr>"
            yield "</tbody></table>" + self._end
            yield _TABLE_CLOSED
            return
        yield big_folder_note(view) + table_head(view, sortable=False)
        yield _TABLE_OPEN

        def drain() -> Iterator[Entry]:
            while first:
                yield first.popleft()
            yield from entries

        start = 0 if view.page is None else (view.page - 1) * PAGE_SIZE
        seen = shown = 0
        for entry in drain():
            if seen >= start:
                yield row(dir_arg, entry, perms)
                shown += 1
                if view.page is not None and shown >= PAGE_SIZE:
                    break
            seen += 1
        if not shown:
            yield "<tr><td colspan=5 class=muted>No entries on this page.</td></tr>"
        yield "</tbody></table>"
        yield _TABLE_CLOSED
        if view.page is None:
            total = seen
        else:
            self._scan.close()
            with self._rescan() as again:
                total = sum(1 for _ in again.names())
        yield page_links(view, shown, total) + self._end
