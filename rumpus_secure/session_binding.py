"""
One TLS context for many FTP control connections, each its own session identity.

An FTPS data connection proves it belongs to its control connection by
resuming that connection's TLS session, and OpenSSL resumes a session only
on a connection with the session id context (sid_ctx) the session was
issued under (see L{rumpus_secure.tls}, "Why FTP control connections get a
session id context each").  This module gives one connection a sid_ctx of
its own on a shared context (L{bound_connection}), remembers it for the
data connections (L{SessionBinding}, L{session_binding}), and keeps
pyOpenSSL's callback errors from crossing threads on that shared context
(L{callback_problems_per_thread}).

How the sid_ctx gets onto one connection: OpenSSL's
C{SSL_set_session_id_context} is not in the bindings cryptography ships
(checked with cryptography 50 and pyOpenSSL 26.4; nor are
C{SSL_CTX_add_session} and C{SSL_CTX_sess_set_cache_size}), so
L{bound_connection} sets the I{context's} sid_ctx, creates the connection
(C{SSL_new} copies the context's sid_ctx into the connection, once) and puts
the context's unbound value back, all under one lock that every bound
connection takes.  A connection made on a session context without
L{bound_connection} therefore has the unbound sid_ctx and can resume no
bound session: the mistake fails closed.  The test named
C{test_the_private_openssl_parts_of_the_session_binding_are_still_there}
fails by name if the binding or that copy changes.

The shared context is shared across threads too: control connections on
the reactor thread, data connections in transfer threads.  pyOpenSSL keeps
an exception raised in a callback (an L{rumpus_secure.tls.ALPNRefused}) on
the context, for whichever connection of it next reports an error, so those
lists are made per thread (L{callback_problems_per_thread}).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from OpenSSL import SSL
from OpenSSL._util import lib as _openssl_lib

__all__ = [
    "SESSION_ID_CONTEXT_BYTES",
    "UNBOUND",
    "SessionBinding",
    "bound_connection",
    "callback_problems_per_thread",
    "session_binding",
]

#: The sid_ctx of a session context between two bound connections (its
#: contexts are built with it: L{rumpus_secure.tls}): a connection made on
#: it without L{bound_connection} resumes no bound session.
UNBOUND = b"rumpus-unbound/" + bytes(16)

#: Bytes of a control connection's random sid_ctx (OpenSSL's maximum).
SESSION_ID_CONTEXT_BYTES = 32

#: Serialises "set the context's sid_ctx, SSL_new, put it back" across the
#: reactor thread (control connections) and the transfer threads (data
#: connections).
_binding_lock = threading.Lock()


@dataclass(frozen=True)
class SessionBinding:
    """
    What binds an FTPS data connection to its control connection.

    @ivar context: the context the control connection was made on (kept
        through reloads and context replacements: its ticket keys and
        session cache are the ones that know the control connection's
        session).
    @ivar session_id_context: the control connection's random sid_ctx.
    """

    context: SSL.Context
    session_id_context: bytes

    def connection(self) -> SSL.Connection:
        """
        A new server connection that can resume this control connection's
        sessions and no other.
        """
        return bound_connection(self.context, self.session_id_context)


class _BoundConnection(SSL.Connection):
    """
    A server connection with a sid_ctx of its own (see L{bound_connection}).
    """

    binding: SessionBinding


def _set_context_sid(context: SSL.Context, session_id_context: bytes) -> None:
    if not _openssl_lib.SSL_CTX_set_session_id_context(
            context._context, session_id_context, len(session_id_context)):
        raise SSL.Error([("rumpus-secure", "bound_connection",
                          "SSL_CTX_set_session_id_context failed")])


def bound_connection(context: SSL.Context, session_id_context: bytes) -> SSL.Connection:
    """
    A server connection on C{context} whose sessions carry C{session_id_context}.

    The effect of C{SSL_set_session_id_context}, which cryptography does not
    export: OpenSSL copies the context's sid_ctx into a connection when it
    creates it, so the context's is set, the connection made, and the
    context's put back to the unbound value, under a lock.  Meant for the
    contexts of L{rumpus_secure.tls.TLSContextSource.per_session_factory}.

    :raises ValueError: C{session_id_context} is longer than 32 bytes.
    """
    if not 0 < len(session_id_context) <= SESSION_ID_CONTEXT_BYTES:
        raise ValueError("a session id context has 1 to 32 bytes")
    with _binding_lock:
        _set_context_sid(context, session_id_context)
        try:
            connection = _BoundConnection(context, None)
        finally:
            _set_context_sid(context, UNBOUND)
    connection.binding = SessionBinding(context, session_id_context)
    return connection


def session_binding(connection: SSL.Connection) -> SessionBinding | None:
    """
    The binding of a connection made by L{bound_connection} (an FTP control
    connection of L{rumpus_secure.tls.TLSContextSource.per_session_factory}),
    or L{None} for any other connection.
    """
    return getattr(connection, "binding", None) if isinstance(
        connection, _BoundConnection) else None


class _ThreadProblems(threading.local):
    """
    pyOpenSSL's list of exceptions raised in a context's callbacks, one list
    per thread (see L{callback_problems_per_thread}).

    A C{threading.local} itself: pyOpenSSL asks C{if helper._problems:}
    after every TLS operation (14 times a login), and the list is then one
    attribute away, with no call to find it.
    """

    def __init__(self) -> None:
        # Run again in each thread that first touches the object.
        self.problems: list[Exception] = []

    def append(self, problem: Exception) -> None:
        self.problems.append(problem)

    def pop(self, index: int = -1) -> Exception:
        return self.problems.pop(index)

    def __len__(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:
        return bool(self.problems)


def callback_problems_per_thread(context: SSL.Context) -> None:
    """
    Keep an exception raised in a callback of C{context} to its own thread.

    pyOpenSSL stores such an exception (L{rumpus_secure.tls.ALPNRefused}) in a list on
    the context and raises it at the next error or C{WantRead} of I{any}
    connection of the context, in whatever thread.  FTP control connections
    (reactor thread) and data connections (transfer threads) share one
    context, so a client offering a wrong ALPN on one could make an
    unrelated connection of another account fail in the other thread.  The
    callback runs in the thread of the connection it serves, which raises
    the exception right after, so a list per thread pins it to its
    connection.  Private pyOpenSSL parts: the test
    C{test_a_callback_problem_of_one_thread_is_not_raised_in_another}
    fails by name if they change.
    """
    for name in ("_alpn_select_helper", "_verify_helper"):
        helper = getattr(context, name, None)
        if helper is not None:
            helper._problems = _ThreadProblems()
