"""
ACME HTTP-01 challenges (``/.well-known/acme-challenge/<token>``) served
over plain HTTP, so a certificate authority can validate the host while
everything else is redirected.

Two sources, in this order: the answers the built-in client
(``--acme-directory``, L{rumpus_secure.acme}) has pending, in memory and
each bound to the name it was issued for (a request whose ``Host`` is
another name gets 404); then files in ``--acme-webroot`` (for an external
client such as certbot).

Only a plain regular file directly in the directory, named by a token of
``[A-Za-z0-9_-]``, is ever served: no listing, no subdirectories, no
symbolic links (``O_NOFOLLOW``), no FIFOs or devices, nothing over 64 KiB.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

from twisted.web.iweb import IRequest

ACME_PREFIX = b"/.well-known/acme-challenge/"
TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,255}")
MAX_SIZE = 64 * 1024


def read_challenge(webroot: Path, token: bytes) -> bytes | None:
    """
    Blocking: the content of challenge C{token}, or L{None} if there is no
    such plain file.
    """
    if not TOKEN.fullmatch(token):
        return None
    try:
        dir_fd = os.open(webroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(token.decode("ascii"),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EACCES,
                           errno.EISDIR, errno.ENOTDIR):
            raise
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIZE:
            return None
        chunks = []
        remaining = MAX_SIZE + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > MAX_SIZE else data
    finally:
        os.close(fd)


def acme_token(target: bytes) -> bytes | None:
    """
    The token if C{target} (the raw request target) is in the challenge
    directory, else L{None}; an empty token means "the directory itself".
    """
    path = target.split(b"?", 1)[0]
    if not path.startswith(ACME_PREFIX):
        return None
    return path[len(ACME_PREFIX):]


async def serve_challenge(server_state: Any, request: IRequest, token: bytes) -> tuple[int, bytes]:
    """
    The status and body for a challenge request (never a listing).
    """
    webroot = server_state.config.acme_webroot
    responder = getattr(server_state, "acme_responder", None)
    data = None
    if token and request.method in (b"GET", b"HEAD"):
        if responder is not None and TOKEN.fullmatch(token):
            host = request.getHeader(b"host")
            data = responder.answer(token.decode("ascii"),
                                    host.decode("latin-1") if host is not None else None)
        if data is None and webroot is not None:
            data = await server_state.run_in_thread(read_challenge, Path(webroot), token)
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"Only GET and HEAD are allowed here.\n"
    if data is None:
        return 404, b"No such challenge.\n"
    return 200, data
