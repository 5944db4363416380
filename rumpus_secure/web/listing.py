"""
The HTML of a folder listing: its rows, forms and links, shaped by the
account's permissions.

A control the account may not use is not drawn: a ``list,download`` account
sees no upload, new-folder, rename or delete control (the filesystem still
refuses them; this only stops the page from offering what will fail).

Every control works without JavaScript: uploads are a plain multipart form
whose ``exists`` choice defaults to refusing a taken name; the row check
boxes belong to a GET form (ZIP download, or the delete confirmation page);
rename and delete have their own pages.  ``app.js`` turns the same markup
into dialogs, a drop zone, a filter box and a row menu on phones.

A row costs about 880 bytes with every permission (the name appears in the
link, the check box and its label, and quoted in four action links): 88 MB
for 100,000 entries, which is why a big folder's page is made and sent in
pieces, and paged (L{rumpus_secure.web.folder_page}).  Names show
bidirectional controls as text (``[U+202E]``), so ``"\\u202egnp.exe"``
cannot pose as ``exe.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from rumpus_secure.vfs import Entry, InvalidPath, join_path, split_path
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
#: (``"\\u202egnp.exe"`` reads as ``exe.png``), so a name shows them as text.
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_SHOW_BIDI = str.maketrans({c: f"[U+{ord(c):04X}]" for c in _BIDI})


def shown_name(name: str) -> str:
    """A name as the page shows it: escaped, its bidirectional controls visible."""
    return esc(name).translate(_SHOW_BIDI)


def bidi_visible(text: str) -> str:
    """C{text} with its bidirectional controls as text, not yet escaped (titles)."""
    return text.translate(_SHOW_BIDI)


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
