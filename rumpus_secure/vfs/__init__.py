"""
The jailed filesystem shared by the FTP server and the web file manager.

``JailedFS(home, perms)`` gives one account a view of its home directory in
which no path, ``..``, absolute path or symbolic link (existing, created
later, or swapped in during an operation) reaches outside the home, and in
which the account's permissions (``list``, ``download``, ``upload``,
``overwrite``, ``delete``, ``rename``, ``mkdir``) are enforced, so every
protocol applies the same rules.

The layer is synchronous and blocking (plain OS calls); call it from a thread
pool (``twisted.internet.threads.deferToThreadPool``).  It imports nothing
from Twisted.

Policies, in one place:

* Symbolic links are never followed.  They are listed (kind ``'symlink'``)
  and can be removed or renamed as entries; any other operation through or
  on one raises ``SymlinkNotFollowed``.
* Stores are atomic: data goes to ``.rumpus-upload-<32 hex>.part`` in the
  destination directory and is renamed into place on ``commit``.  Such names
  are hidden from listings and refused in paths.
* Names are ``str``; non-UTF-8 names on disk arrive with ``surrogateescape``
  surrogates and round-trip; ``wire_name`` makes any name displayable.
"""

from ._base import ALL_PERMISSIONS, Entry
from .errors import (
    AccessDenied,
    AlreadyExists,
    DiskFull,
    HomeUnavailable,
    InvalidOffset,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotARegularFile,
    NotEmpty,
    NotFound,
    PermissionDenied,
    SymlinkNotFollowed,
    VFSError,
)
from .jail import HASH_ALGORITHMS, JailedFS
from .paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    join_path,
    normalize,
    split_path,
    wire_name,
)
from .scan import DirScan
from .upload import AbortOutcome, Upload

__all__ = [
    "ALL_PERMISSIONS",
    "HASH_ALGORITHMS",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "AbortOutcome",
    "AccessDenied",
    "AlreadyExists",
    "DirScan",
    "DiskFull",
    "Entry",
    "HomeUnavailable",
    "InvalidOffset",
    "InvalidPath",
    "IsADirectory",
    "JailedFS",
    "NotADirectory",
    "NotARegularFile",
    "NotEmpty",
    "NotFound",
    "PermissionDenied",
    "SymlinkNotFollowed",
    "Upload",
    "VFSError",
    "join_path",
    "normalize",
    "split_path",
    "wire_name",
]
