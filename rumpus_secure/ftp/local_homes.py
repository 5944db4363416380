"""
Which homes may be opened on the reactor thread: those on a local
filesystem, while the mount table stays as it was.

A warm repeat login (connect, C{AUTH TLS}, C{USER}, C{PASS}, C{QUIT}) had one
thread hand-off left: the realm's home-directory open
(L{rumpus_secure.ftp.realm}).  It is there because a home on NFS or
GlusterFS can block an C{open()} for seconds, and the reactor thread must
never wait for that.  A home on a local disk (ext4, xfs, btrfs, tmpfs...)
opens in a few microseconds from the dentry cache, less than the hand-off
costs: a call into the thread pool (a queue, a lock, a waker C{write()} and
its C{epoll_wait}/C{read()} on the way back, GIL ping-pong through C{futex}).

L{LocalHomes} remembers, per home path, that the home was found on a local
filesystem (the decision is made in the thread, on the first login of that
home: resolving the path and reading C{/proc/self/mounts} may touch a
network filesystem too), and the device number the home was on.  Later
logins of that home open it on the reactor thread when:

 - the mount table has not changed since the decision: C{/proc/self/mounts}
   is pollable (a mount or unmount anywhere in our mount namespace raises
   C{POLLPRI} on an open descriptor of it, once per change), so
   L{MountWatch.changed} costs one C{poll()} with a zero timeout.  Any
   change empties the cache: the next login of every home decides again, in
   the thread;
 - the home is still a directory on the device recorded (one C{stat()}
   before the jail opens it): a home whose path was made to lead elsewhere
   (a symlink in it re-pointed) loses its entry, and its next login
   decides again.

A home that is missing (made on first login) or cannot be opened goes
through the thread, as before, and so does every home where the watch
cannot be had (not Linux: no pollable mount table).  Filesystems are
local only by name (L{LOCAL_FILESYSTEMS}); anything else (NFS, CIFS, FUSE,
autofs, a type we do not know) stays in the thread.

What it saved, a warm repeat login: the server's instructions 4.44 M ->
4.32 M (callgrind, all threads, C{bench/login_profile.py --callgrind
--logins 100}; pyftpdlib 3.15 M in the same runs), a futex hand-off, the
waker's C{write()}/C{read()} and an C{epoll_wait} less, for one C{poll()}
and one C{stat()} more.  The decision per home, not per filesystem: homes
may sit on different mounts (one NFS automount per home, say), and a
C{stat()} of a home already known costs less than reading
C{/proc/self/mounts} (a few dozen lines to parse) for every login.
"""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path
from typing import Any, Callable

from rumpus_secure.accounts.change_signal import filesystem_type

#: Filesystems whose directory opens never wait for another host.
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs",
    "jfs", "reiserfs", "bcachefs", "overlay", "vfat", "exfat", "hfsplus",
})

#: Homes remembered at most; past that the cache starts again (bounded: no
#: structure grows with the number of accounts beyond this).
MAX_HOMES = 4096


class MountWatch:
    """
    Has the mount table changed since we last looked?

    Holds C{/proc/self/mounts} open; the kernel marks it with C{POLLPRI}
    after every mount or unmount in our namespace (proc(5)).

    @raises OSError: there is no such file (not Linux).
    """

    def __init__(self, path: str = "/proc/self/mounts",
                 poller: Callable[[], Any] = select.poll) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._poll = poller()
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)

    def changed(self) -> bool:
        """Whether a mount or unmount happened since the last call."""
        if self._fd < 0:
            return True
        return bool(self._poll.poll(0))

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._poll.unregister(self._fd)
            except (KeyError, ValueError):
                pass
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def is_local(fstype: str | None) -> bool:
    """Whether opening a directory on this filesystem never waits for the network."""
    return fstype in LOCAL_FILESYSTEMS


class LocalHomes:
    """
    Per home path: may it be opened on the reactor thread?

    L{learn} is called in a thread (it resolves the path and reads the
    mount table); L{open_here} on the reactor thread.
    """

    def __init__(self, watch: MountWatch | None = None,
                 fstype: Callable[[Path], str | None] = filesystem_type) -> None:
        self._watch = watch if watch is not None else MountWatch()
        self._fstype = fstype
        #: home path -> the device the home was found on, or None for a home
        #: found on a network filesystem (not looked at again until the mount
        #: table changes: reading it costs a parse of /proc/self/mounts).
        self._devices: dict[str, int | None] = {}
        #: Mount table changes seen (by either thread).
        self._generation = 0

    def _look(self) -> None:
        """Forget everything if the mount table changed since the last look."""
        if self._watch.changed():
            self._generation += 1
            self._devices.clear()

    def known(self, home: Path) -> bool:
        """Whether L{check_open} may be tried for C{home} (reactor thread)."""
        self._look()
        return self._devices.get(str(home)) is not None

    def learn(self, home: Path) -> None:
        """
        Decide for C{home} (in a thread): remember its device if it is on a
        local filesystem.  Nothing is remembered if the mount table changed
        while it looked (seen here or by the reactor thread).
        """
        self._look()
        if str(home) in self._devices:
            return  # decided, and the mount table has not changed since
        generation = self._generation
        try:
            st = os.stat(home)
            fstype = self._fstype(home)
        except OSError:
            return
        local = is_local(fstype) and stat.S_ISDIR(st.st_mode)
        self._look()
        if self._generation != generation:
            return
        if len(self._devices) >= MAX_HOMES:
            self._devices.clear()
        self._devices[str(home)] = st.st_dev if local else None

    def check_open(self, home: Path) -> bool:
        """
        On the reactor thread: is C{home} still a directory on the device
        recorded?  It is forgotten if not (its next login decides again in
        the thread).  One C{stat()}: the open that follows is the jail's.
        """
        key = str(home)
        try:
            st = os.stat(home)
        except OSError:
            self._devices.pop(key, None)
            return False
        if st.st_dev != self._devices.get(key) or not stat.S_ISDIR(st.st_mode):
            self._devices.pop(key, None)
            return False
        return True


def local_homes() -> LocalHomes | None:
    """A L{LocalHomes}, or L{None} where the mount table cannot be watched."""
    try:
        return LocalHomes()
    except OSError:
        return None
