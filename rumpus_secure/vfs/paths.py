"""
Virtual paths: parsing, normalisation and names for the wire.

A virtual path is POSIX-style and rooted at ``/``, which is the account's
home.  Normalisation is purely lexical: empty components and ``.`` vanish,
``..`` drops the previous component and stays at ``/`` when there is none.
No path string can therefore name anything above the home; what is *on disk*
(symbolic links) is dealt with by the descriptor walk in ``jail.py``.

Names are ``str``.  Components are turned into bytes with ``os.fsencode``
(UTF-8 with ``surrogateescape``), so a name read from disk that is not valid
UTF-8 (decoded by ``os.fsdecode``) round-trips back to the same bytes.  For
display or for the wire, ``wire_name`` makes any name safe to encode.
"""

from __future__ import annotations

import os

from .errors import InvalidPath

#: Longest component, in bytes (NAME_MAX).
MAX_NAME_BYTES = 255
#: Longest path, in bytes (PATH_MAX).
MAX_PATH_BYTES = 4096
#: Prefix of the hidden temporary files of uploads in progress.
TEMP_PREFIX = ".rumpus-upload-"
#: Suffix of the same.
TEMP_SUFFIX = ".part"

Parts = tuple[str, ...]


#: This process's node name in its temporary upload names
#: (``.rumpus-upload-<node>-<32 hex>.part``), so that nodes sharing one
#: file folder each clean up only their own leftovers
#: (L{rumpus_secure.vfs.cleanup}).  L{None}: the single-node form
#: ``.rumpus-upload-<32 hex>.part``.  Process-wide like the process itself;
#: set once at start-up (L{set_temp_node}).
temp_node: str | None = None


def set_temp_node(node: str | None) -> None:
    """Put C{node} (a C{--node-id}, file-name safe) in later temporary names."""
    global temp_node
    temp_node = node


def temp_name(token: str) -> str:
    """The temporary name of an upload, with this process's node if set."""
    node = f"{temp_node}-" if temp_node else ""
    return f"{TEMP_PREFIX}{node}{token}{TEMP_SUFFIX}"


def temp_name_node(name: str) -> str | None:
    """
    The node that made temporary name C{name}: ``""`` for the single-node
    form, L{None} if C{name} is not a temporary upload name at all.
    """
    if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
        return None
    middle = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)]
    token = middle[-32:]
    if len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
        return None
    if len(middle) == 32:
        return ""
    if middle[-33] != "-" or len(middle) < 34:
        return None
    return middle[:-33]


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is reserved for an upload in progress."""
    return name.startswith(TEMP_PREFIX)


def split_path(path: str) -> Parts:
    """
    Normalise a virtual path into its components.

    ``split_path("/a/./b/../c")`` is ``("a", "c")``; ``split_path("/")`` and
    ``split_path("/../..")`` are ``()``.  Relative paths are taken from ``/``
    (join with a working directory first, see ``join_path``).

    :raises InvalidPath: on a NUL byte, CR or LF, a string that cannot be
        encoded, a component over 255 bytes, a path over 4096 bytes, or a
        component reserved for upload temporary files.
    """
    if not isinstance(path, str):
        raise TypeError(f"virtual paths are str, not {type(path).__name__}")
    if "\x00" in path:
        raise InvalidPath("invalid path: contains a NUL byte")
    if "\r" in path or "\n" in path:
        raise InvalidPath("invalid path: contains a line break (CR or LF)")
    if len(path) > MAX_PATH_BYTES:
        raise InvalidPath(f"invalid path: longer than {MAX_PATH_BYTES} bytes")
    try:
        raw_length = len(os.fsencode(path))
    except UnicodeEncodeError:
        raise InvalidPath(
            "invalid path: not encodable as UTF-8 (lone surrogate)"
        ) from None
    if raw_length > MAX_PATH_BYTES:
        raise InvalidPath(f"invalid path: longer than {MAX_PATH_BYTES} bytes")
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        if len(os.fsencode(name)) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"invalid path: name longer than {MAX_NAME_BYTES} bytes: "
                f"{name[:40]!r}..."
            )
        if is_temp_name(name):
            raise InvalidPath(
                f"invalid path: names starting with {TEMP_PREFIX!r} are "
                "reserved for uploads in progress"
            )
        parts.append(name)
    return tuple(parts)


def join_parts(parts: Parts) -> str:
    """The canonical string of normalised components: ``/`` or ``/a/b``."""
    return "/" + "/".join(parts)


def normalize(path: str) -> str:
    """Canonical form of a virtual path (see ``split_path``)."""
    return join_parts(split_path(path))


def join_path(cwd: str, path: str) -> str:
    """
    Resolve ``path`` against a virtual working directory.

    An absolute ``path`` (leading ``/``) ignores ``cwd``.  The result is
    normalised, so ``join_path("/a", "../../..")`` is ``/``.
    """
    if path.startswith("/"):
        return normalize(path)
    return normalize(cwd.rstrip("/") + "/" + path)


def wire_name(name: str) -> str:
    """
    A name that is always safe to encode as UTF-8 and to put on one line.

    Names from disk that are not valid UTF-8 carry ``surrogateescape``
    surrogates; those bytes become U+FFFD, as do CR and LF (which would let a
    file name forge extra lines in an FTP listing).  The result is for display
    and listings only: it may no longer name the file on disk.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace")
    return text.replace("\r", "\ufffd").replace("\n", "\ufffd")
