"""
The errors of the jailed filesystem, each with a message fit to show a user.

Messages name virtual paths only (``/docs/a.txt``), never the real location
of the home directory on the server.  Suggested protocol mapping (FTP reply,
HTTP status):

- ``NotFound``, ``NotADirectory``, ``IsADirectory``: 550, 404/409
- ``NotARegularFile``, ``SymlinkNotFollowed``, ``NotEmpty``: 550, 409
- ``PermissionDenied``, ``AccessDenied``: 550, 403
- ``AlreadyExists``, other ``InvalidPath``: 553, 409/400
- ``DiskFull``: 552, 507
- ``InvalidOffset``: 554, 416
- ``HomeUnavailable``, a plain ``VFSError``: 451, 500
"""

from __future__ import annotations

import errno

#: Human phrases for the account permissions, used in ``PermissionDenied``.
PERMISSION_VERBS: dict[str, str] = {
    "list": "list directories",
    "download": "download files",
    "upload": "upload new files",
    "overwrite": "overwrite or modify existing files",
    "delete": "delete",
    "rename": "rename",
    "mkdir": "create directories",
}


class VFSError(Exception):
    """
    Base of every error raised by the jailed filesystem.

    :ivar message: the human message (also ``str(error)``).
    :ivar path: the virtual path concerned, when there is one.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class NotFound(VFSError):
    """The path, or one of its parent directories, does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no such file or directory: {path!r}", path)


class PermissionDenied(VFSError):
    """
    The account lacks a permission; nothing on disk was changed.

    :ivar permission: the missing permission name (``'delete'``, ...).
    """

    def __init__(self, permission: str, path: str | None = None) -> None:
        verb = PERMISSION_VERBS.get(permission, permission)
        super().__init__(
            f"permission denied: this account may not {verb} "
            f"(missing permission {permission!r})",
            path,
        )
        self.permission = permission


class AccessDenied(VFSError):
    """The server's own filesystem refused (EACCES, EPERM, EROFS)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"access denied by the server's filesystem: {path!r}", path
        )


class AlreadyExists(VFSError):
    """The target exists and the operation will not replace it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"already exists: {path!r}", path)


class NotADirectory(VFSError):
    """A directory was needed (as a parent, or to list) but this is not one."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a directory: {path!r}", path)


class IsADirectory(VFSError):
    """A file was needed but this is a directory."""

    def __init__(self, path: str) -> None:
        super().__init__(f"is a directory: {path!r}", path)


class NotARegularFile(VFSError):
    """A device, FIFO or socket: never opened for reading or writing."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a regular file: {path!r}", path)


class InvalidPath(VFSError):
    """The path string itself is unacceptable (NUL byte, too long, ...)."""


class SymlinkNotFollowed(InvalidPath):
    """The path goes through, or ends at, a symbolic link: never followed."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path!r} is a symbolic link; not followed", path)


class NotEmpty(VFSError):
    """A directory to remove still has entries."""

    def __init__(self, path: str) -> None:
        super().__init__(f"directory not empty: {path!r}", path)


class DiskFull(VFSError):
    """ENOSPC or EDQUOT: the disk or the quota is full."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no space left on the server (disk or quota full) "
            f"while writing {path!r}",
            path,
        )


class InvalidOffset(VFSError):
    """A resume offset or hash range outside the file."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__(
            f"invalid offset {offset} for {path!r} (file size {size})", path
        )
        self.offset = offset
        self.size = size


class HomeUnavailable(VFSError):
    """The account's home directory is missing or not a directory."""

    def __init__(self) -> None:
        super().__init__(
            "the account's home directory is missing or is not a directory"
        )


def from_os_error(err: OSError, path: str) -> VFSError:
    """
    Translate an ``OSError`` from an operation on virtual ``path``.

    Symbolic-link cases (ELOOP) become ``SymlinkNotFollowed``; callers that can
    tell a symlink from a plain file on ENOTDIR do so before calling this.
    """
    code = err.errno
    if code == errno.ENOENT:
        return NotFound(path)
    if code == errno.EEXIST:
        return AlreadyExists(path)
    if code == errno.ENOTDIR:
        return NotADirectory(path)
    if code == errno.EISDIR:
        return IsADirectory(path)
    if code == errno.ENOTEMPTY:
        return NotEmpty(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(path)
    if code == errno.ELOOP:
        return SymlinkNotFollowed(path)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(path)
    if code == errno.ENAMETOOLONG:
        return InvalidPath(f"invalid path: name too long: {path!r}", path)
    if code == errno.EXDEV:
        return VFSError(f"cannot move {path!r} across filesystems", path)
    reason = err.strerror or "error"
    return VFSError(f"filesystem error on {path!r}: {reason}", path)
