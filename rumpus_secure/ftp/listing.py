"""
Directory listings and time stamps in the forms FTP clients parse.

Pure functions, no I/O: ``ls -l`` lines for LIST and STAT, RFC 3659 facts
for MLSD and MLST (with the ``perm`` fact derived from the account's
permissions), the ``YYYYMMDDHHMMSS`` times of MDTM and MFMT, and the line-end
conversion of TYPE A.  Every name goes through ``vfs.wire_name`` so a name
that is not UTF-8 on disk (or holds a line break) cannot break a listing.

Listings stream: LIST, NLST and MLSD are generators over a
``vfs.DirScan``, formatted and gathered into ``LISTING_BATCH`` blocks by
``encode_lines`` in the transfer's worker thread as it sends, so a folder of
100,000 entries costs a block of memory, not the folder (bench/listings.py:
the whole MLSD once took a 40 MB list and the full directory read before
the first byte).
"""

from __future__ import annotations

import calendar
import functools
import stat
import time
from collections.abc import Iterable, Iterator

from rumpus_secure.vfs import Entry, wire_name

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: ls shows the year instead of the time for entries older than this.
SIX_MONTHS = 182 * 24 * 3600

#: The MLST facts we can give, in the order they are listed.
MLST_FACTS: tuple[str, ...] = ("type", "size", "modify", "perm", "unique", "UNIX.mode")
#: The facts sent when the client has not chosen with OPTS MLST.
DEFAULT_FACTS: tuple[str, ...] = ("type", "size", "modify", "perm", "unique")


#: Bytes of listing lines gathered into one send: one TLS write and one
#: system call per block, about 700 MLSD lines.
LISTING_BATCH = 64 * 1024


def encode_lines(lines: Iterable[str], batch: int = LISTING_BATCH) -> Iterator[bytes]:
    """
    Listing lines as CRLF-ended UTF-8, gathered into blocks of about
    C{batch} bytes (the last may be shorter; no empty block).
    """
    gathered: list[str] = []
    size = 0
    for line in lines:
        gathered.append(line)
        size += len(line) + 2
        if size >= batch:
            gathered.append("")
            yield "\r\n".join(gathered).encode("utf-8", "surrogateescape")
            gathered = []
            size = 0
    if gathered:
        gathered.append("")
        yield "\r\n".join(gathered).encode("utf-8", "surrogateescape")


def feat_mlst() -> str:
    """The ``MLST`` line of FEAT: every fact, ``*`` on the default ones."""
    return "MLST " + "".join(
        f"{fact}{'*' if fact in DEFAULT_FACTS else ''};" for fact in MLST_FACTS
    )


def choose_facts(wanted: str) -> tuple[str, ...]:
    """
    The facts an ``OPTS MLST a;b;c;`` asks for, those we know, in our order.

    Unknown facts are ignored, as RFC 3659 section 7.9 asks.
    """
    asked = {name.strip().lower() for name in wanted.split(";") if name.strip()}
    return tuple(fact for fact in MLST_FACTS if fact.lower() in asked)


def ftp_time(mtime: float) -> str:
    """``YYYYMMDDHHMMSS`` in UTC (MDTM, and the modify fact)."""
    return _ftp_time_of_second(int(mtime // 1))


# A listing formats the times of files written together: remembering the
# last seconds seen halves the cost of an MLSD line (bench/listings.py).
@functools.lru_cache(maxsize=4096)
def _ftp_time_of_second(second: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(second))


def parse_ftp_time(text: str) -> float:
    """
    Seconds since the epoch from ``YYYYMMDDHHMMSS[.sss]`` (UTC).

    :raises ValueError: when the text is not such a time.
    """
    text = text.strip()
    whole, _, fraction = text.partition(".")
    if len(whole) != 14 or not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"not a YYYYMMDDHHMMSS time: {text!r}")
    parsed = time.strptime(whole, "%Y%m%d%H%M%S")
    seconds = calendar.timegm(parsed)
    if fraction:
        seconds += int(fraction) / 10 ** len(fraction)
    return float(seconds)


@functools.lru_cache(maxsize=256)
def _perm_fact(kind: str, perms: frozenset[str]) -> str:
    """RFC 3659 section 7.5.5, from the account's permissions."""
    if kind in ("dir", "cdir", "pdir"):
        letters = [("c", "upload"), ("d", "delete"), ("e", None), ("f", "rename"),
                   ("l", "list"), ("m", "mkdir"), ("p", "delete")]
    elif kind == "file":
        letters = [("a", "overwrite"), ("d", "delete"), ("f", "rename"),
                   ("r", "download"), ("w", "overwrite")]
    else:  # a symlink or other entry: it can only be removed or renamed
        letters = [("d", "delete"), ("f", "rename")]
    return "".join(letter for letter, need in letters if need is None or need in perms)


def _mlsx_type(entry: Entry, kind: str | None) -> str:
    if kind is not None:
        return kind
    if entry.kind in ("file", "dir"):
        return entry.kind
    if entry.kind == "symlink":
        return "OS.unix=symlink"
    return "OS.unix=other"


def mlsx_line(entry: Entry, name: str, facts: Iterable[str], perms: frozenset[str],
              kind: str | None = None) -> str:
    """
    One MLSD/MLST line: ``fact=value;...; name`` (no leading space).

    :param kind: ``"cdir"`` or ``"pdir"`` to describe a directory as such.
    """
    fact_type = _mlsx_type(entry, kind)
    values: list[str] = []
    for fact in facts:
        if fact == "type":
            values.append(f"type={fact_type}")
        elif fact == "size" and entry.kind == "file":
            values.append(f"size={entry.size}")
        elif fact == "modify":
            values.append(f"modify={ftp_time(entry.mtime)}")
        elif fact == "perm":
            perm_kind = "dir" if fact_type in ("cdir", "pdir") else entry.kind
            values.append(f"perm={_perm_fact(perm_kind, perms)}")
        elif fact == "unique":
            values.append(f"unique={entry.unique}")
        elif fact == "UNIX.mode":
            values.append(f"UNIX.mode=0{stat.S_IMODE(entry.mode):o}")
    return "".join(value + ";" for value in values) + " " + wire_name(name)


def _ls_date(mtime: float, now: float) -> str:
    return _ls_date_of_second(int(mtime // 1), now - SIX_MONTHS < mtime <= now + 3600)


@functools.lru_cache(maxsize=4096)
def _ls_date_of_second(second: int, recent: bool) -> str:
    when = time.gmtime(second)
    month = _MONTHS[when.tm_mon - 1]
    if recent:
        return f"{month} {when.tm_mday:2d} {when.tm_hour:02d}:{when.tm_min:02d}"
    return f"{month} {when.tm_mday:2d}  {when.tm_year:4d}"


def ls_line(entry: Entry, name: str, owner: str, now: float) -> str:
    """
    One ``ls -l`` line, the form every client's LIST parser knows::

        -rw-r--r--   1 alice    alice        1234 Mar  4 12:30 report.pdf

    Times are UTC; the year replaces the time for entries more than six
    months old (or in the future).
    """
    owner = (owner or "ftp")[:16]
    return (
        f"{stat.filemode(entry.mode)} {1:>3} {owner:<8} {owner:<8} "
        f"{entry.size:>12} {_ls_date(entry.mtime, now)} {wire_name(name)}"
    )


class LineEndEncoder:
    """
    TYPE A download: each LF becomes CRLF (a CRLF already there is kept).
    """

    def __init__(self) -> None:
        self._last_cr = False

    def convert(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._last_cr and data.startswith(b"\n"):
            out = out[1:]  # the CR of this CRLF went out with the last chunk
        self._last_cr = data.endswith(b"\r")
        return out


class LineEndDecoder:
    """
    TYPE A upload: CRLF becomes LF; a lone CR is kept.  A CR at the end of a
    chunk waits for the next chunk, which may start with its LF.
    """

    def __init__(self) -> None:
        self._held_cr = False

    def convert(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            self._held_cr = True
            data = data[:-1]
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        """What is still held at the end of the upload."""
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""
