"""
Pending HTTP-01 answers, kept in memory while an order is being validated.

The issuing thread adds an answer before it tells the CA to validate and
removes it when the authorization is decided; the HTTP listener (reactor
thread) reads it.  A lock makes the two threads safe; every operation is
a dictionary access.

An answer is bound to the name it was issued for: a request for the token
whose C{Host} is another name gets nothing, so a token cannot be replayed
to prove control of a name this server does not serve.
"""

from __future__ import annotations

import threading


class ChallengeResponder:
    """
    Key authorizations of the HTTP-01 challenges now pending, by token.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[str, bytes]] = {}

    def add(self, name: str, token: str, key_authorization: str) -> None:
        """
        Answer C{token} with C{key_authorization}, for requests to C{name}.
        """
        with self._lock:
            self._answers[token] = (name.lower(), key_authorization.encode("ascii"))

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def answer(self, token: str, host: str | None) -> bytes | None:
        """
        The body for C{token} requested with C{Host: host}, or L{None}.
        """
        with self._lock:
            entry = self._answers.get(token)
        if entry is None or host is None:
            return None
        name, body = entry
        return body if _host_name(host) == name else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


def _host_name(host: str) -> str:
    """
    The name in a C{Host} header value: port and trailing dot removed.
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")
