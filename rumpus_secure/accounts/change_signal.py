"""
Has the accounts database been written since we last looked?

Before this, every command of a logged-in FTP session (and every PASS)
waited for a read of the change log in the watcher's thread
(L{rumpus_secure.accounts.watch}): a hand-off to a thread and back (a waker
write, about 20 futex calls of GIL ping-pong) and a SQLite query with its
fcntl locks, although the log almost never has anything new.  Linux says
for free whether anything was written: L{FileChangeSignal} holds an inotify
descriptor (non-blocking) on the database file and its C{-wal} (and
C{-journal}) file, and on their directory for files created, deleted or
renamed there (a C{-wal} file made anew, the database replaced).
L{FileChangeSignal.changed} drains the queued events with one C{read()}
system call (C{EAGAIN} when nothing came) and says whether any concerned
the database.

What it saved, with L{rumpus_secure.accounts.snapshots} (a warm repeat
login over explicit FTPS: connect, C{AUTH TLS}, C{USER}, C{PASS},
C{QUIT}): server CPU per login 2.75, 2.26, 2.40 ms before, 1.74, 1.57,
1.80, 1.56 ms after, against pyftpdlib's 0.53-0.64 ms in the same runs
(4.31x, 3.84x, 4.41x -> 2.88x, 2.67x, 3.16x, 2.93x; C{bench/logins.py
--logins 800 --rounds 2 --skip vsftpd}, 2 cores shared with other work);
system calls per login (C{strace -c -f}, 300 logins one at a time)
128 -> 80: C{futex} 27.2 -> 5.2, C{fcntl} 14.1 -> 0, C{write} 7.0 -> 3.0
(thread wakers).  The one hand-off left is the home directory check
(L{rumpus_secure.ftp.realm}).

Why that is enough to know that a command sent after ``rumpus-secure user
lock`` returned finds the lock: a commit C{write()}s its pages to the
C{-wal} file (or the database file in rollback mode) before it returns, and
the kernel queues the C{IN_MODIFY} event inside that C{write()} call
(fsnotify is synchronous).  So the event is queued before the admin command
returns, before the client sends its command, before the server drains the
queue for it.  The event comes I{before} the commit is visible to readers
(the write-ahead index in C{-shm} is updated after the write, in shared
memory, which makes no event); the watcher therefore takes the write lock
for an instant (C{BEGIN IMMEDIATE; ROLLBACK}) before it reads, which waits
for a commit in progress (L{rumpus_secure.accounts.store.ChangeReader.settle}).

Events from writes that change nothing a session relies on (the server's
own re-hash, a checkpoint copying the C{-wal} into the database) only cost a
read, as before.  The signal is not used where it could miss a write:
when inotify is missing (not Linux, no more watches: C{OSError}), and on
network filesystems (NFS, CIFS, FUSE, ...), where another host's writes make
no local event; the watcher then reads for every command, as before.  The
PostgreSQL store has no file; its nodes hear each other through
C{LISTEN}/C{NOTIFY} and the watcher reads for every command there too.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

#: Events of the database files themselves.
FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
#: Events of their directory: a file of the database made, removed or renamed.
DIRECTORY_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO

_EVENT = struct.Struct("iIII")

#: Filesystems where a write by another host makes no local event.
REMOTE_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs",
    "lustre", "gpfs", "ocfs2", "gfs2", "beegfs", "davfs", "sshfs",
})


class _Inotify:
    """The three inotify calls, through ctypes (the standard library has none)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
        except (OSError, AttributeError) as e:
            raise OSError(f"inotify is not available: {e}") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int

    def init(self) -> int:
        fd = int(self._init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return fd

    def add_watch(self, fd: int, path: Path, mask: int) -> int:
        wd = int(self._add(fd, os.fsencode(path), mask))
        if wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
        return wd


def filesystem_type(path: Path, mounts: str = "/proc/self/mounts") -> str | None:
    """
    The type of the filesystem C{path} is on (the longest mount point above
    it in C{mounts}), or L{None} if it cannot be told.
    """
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = (target == point or point == "/"
                  or target.startswith(point.rstrip("/") + "/"))
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]


def is_remote(fstype: str | None) -> bool:
    """Whether writes on a filesystem of this type may come from another host."""
    if fstype is None:
        return True  # cannot tell: do not trust the events
    return fstype in REMOTE_FILESYSTEMS or fstype.startswith("fuse")


class FileChangeSignal:
    """
    Tells whether the SQLite database at C{path} was written since the last
    call of L{changed}.

    @raises OSError: inotify is not available, or C{path} is on a network
        filesystem (L{is_remote}).
    """

    def __init__(self, path: Path, *, check_filesystem: bool = True) -> None:
        self.path = Path(os.path.abspath(path))
        self.directory = self.path.parent
        if check_filesystem:
            fstype = filesystem_type(self.directory)
            if is_remote(fstype):
                raise OSError(f"{self.directory} is on a {fstype or 'unknown'} "
                              "filesystem: writes by other hosts make no event")
        self._inotify = _Inotify()
        # A file object owns the descriptor, so that a signal dropped without
        # close() (a server built and thrown away, in tests) gives back its
        # inotify instance (128 per user by default) when it is collected.
        self._file: io.FileIO | None = io.FileIO(self._inotify.init(), "rb", closefd=True)
        self._fd: int | None = self._file.fileno()
        try:
            self._directory_wd = self._inotify.add_watch(self._fd, self.directory,
                                                         DIRECTORY_EVENTS)
        except OSError:
            self.close()
            raise
        base = self.path.name
        self.names = frozenset({base, base + "-wal", base + "-journal"})
        self._watch_files()

    def _watch_files(self) -> None:
        """Watch each database file that exists now (again after a rename)."""
        assert self._fd is not None
        for name in self.names:
            try:
                self._inotify.add_watch(self._fd, self.directory / name, FILE_EVENTS)
            except FileNotFoundError:
                pass  # made later: the directory's IN_CREATE tells

    def changed(self) -> bool:
        """
        Drain the queued events: whether any says the database may have
        been written (or events were lost) since the last call.
        """
        if self._fd is None:
            return True
        found = rewatch = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    found = rewatch = True
                elif wd == self._directory_wd:
                    if mask & IN_IGNORED:
                        # The directory itself went away: nothing can be
                        # vouched for any more; read every time from now on.
                        self.close()
                        return True
                    if os.fsdecode(name.rstrip(b"\0")) in self.names:
                        found = rewatch = True
                else:
                    found = True
                    if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                        rewatch = True
        if rewatch:
            self._watch_files()
        return found

    def close(self) -> None:
        self._fd = None
        file, self._file = self._file, None
        if file is not None:
            file.close()


def file_change_signal(path: Path) -> FileChangeSignal | None:
    """
    A L{FileChangeSignal} on C{path}, or L{None} where events cannot be
    trusted or had (the watcher then reads for every command).
    """
    try:
        return FileChangeSignal(path)
    except OSError:
        return None
