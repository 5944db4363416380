"""
Issue #18: FTP control connections share one TLS context, and a session id
context (sid_ctx) of their own is what binds their data connections.

In memory, both ends pyOpenSSL.  Every test has a victim and a thief on the
same profile and the same context; the thief holds a perfectly valid session
of its own and offers it on the victim's data connection.  See
L{rumpus_secure.tls} (module docstring) for the design and its numbers.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from OpenSSL import SSL

from rumpus_secure import session_binding as session_binding_module
from rumpus_secure import tls
from rumpus_secure.tls import (
    FTP_ALPN,
    SessionBinding,
    TLSContextSource,
    bound_connection,
    ensure_certificate,
    pinned_context_factory,
    session_binding,
    session_reused,
)
from tests.test_tls import _client_context, _Handshake, _handshake, _served_leaf

MODES = ["1.3", "1.2-tickets", "1.2-session-ids"]


def _client(mode: str) -> SSL.Context:
    version = SSL.TLS1_3_VERSION if mode == "1.3" else SSL.TLS1_2_VERSION
    client = _client_context(max_version=version, min_version=version)
    if mode == "1.2-session-ids":
        client.set_options(SSL.OP_NO_TICKET)
    return client


@pytest.fixture
def source(tmp_path: Path) -> TLSContextSource:
    info = ensure_certificate(tmp_path / "tls", "localhost", None, None)
    return TLSContextSource(info.cert_path, info.key_path)


def _control(source: TLSContextSource, client: SSL.Context) -> tuple[_Handshake, SSL.Session]:
    """
    A control connection's handshake and the client's session of it.
    """
    control = _handshake(source.per_session_factory(FTP_ALPN), client, alpn=[b"ftp"])
    assert control.ok and not session_reused(control.server)
    control.exchange()  # TLS 1.3: the tickets come after the handshake
    session = control.client.get_session()
    assert session is not None
    return control, session


def _binding(control: _Handshake) -> SessionBinding:
    binding = session_binding(control.server)
    assert binding is not None
    return binding


class _Bound:
    """
    A creator of data connections with a given binding (what the transfer
    engine does with C{TLSSettings.binding}).
    """

    def __init__(self, binding: SessionBinding) -> None:
        self.binding = binding

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.binding.connection()


def _resumes(creator: object, client: SSL.Context, session: SSL.Session) -> bool:
    data = _handshake(creator, client, session=session)
    assert data.ok  # a refused resumption is a full handshake here
    reused = session_reused(data.server)
    assert reused == session_reused(data.client)
    data.close()
    return reused


@pytest.mark.parametrize("mode", MODES)
def test_the_session_id_context_alone_refuses_a_thief_on_the_shared_context(
        source: TLSContextSource, mode: str) -> None:
    """
    Victim and thief are control connections on one context (one cache, one
    set of ticket keys).  The thief's session resumes on a connection with
    the thief's sid_ctx and not on one with the victim's: the per-connection
    sid_ctx is what refuses it.  A connection made on the shared context
    without a binding resumes nobody's session (the mistake fails closed).
    """
    client = _client(mode)
    victim, victim_session = _control(source, client)
    thief, thief_session = _control(source, client)
    context = victim.server.get_context()
    assert thief.server.get_context() is context
    victim_binding, thief_binding = _binding(victim), _binding(thief)
    assert victim_binding.context is thief_binding.context is context
    assert len(victim_binding.session_id_context) == 32
    assert victim_binding.session_id_context != thief_binding.session_id_context

    assert _resumes(_Bound(victim_binding), client, victim_session)
    assert _resumes(_Bound(thief_binding), client, thief_session)
    # The thief's own, valid, session on the victim's data connection.
    assert not _resumes(_Bound(victim_binding), client, thief_session)
    # Same context, same sid_ctx bytes as the thief's, made anew: resumes.
    assert _resumes(_Bound(SessionBinding(context, thief_binding.session_id_context)),
                    client, thief_session)
    # pinned_context_factory (used by tests and tools) keeps the binding too.
    assert _resumes(pinned_context_factory(victim.server), client, victim_session)
    assert not _resumes(pinned_context_factory(victim.server), client, thief_session)

    class Unbound:
        def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
            return SSL.Connection(context, None)

    assert not _resumes(Unbound(), client, victim_session)
    assert not _resumes(Unbound(), client, thief_session)
    # And the victim's session still resumes after all those refusals.
    assert _resumes(_Bound(victim_binding), client, victim_session)


@pytest.mark.parametrize("mode", MODES)
def test_a_session_opened_before_a_reload_keeps_its_data_connections(
        tmp_path: Path, source: TLSContextSource, mode: str) -> None:
    """
    A certificate reload builds a new session context for new control
    connections.  A control connection opened before it keeps the old
    context, and its data connections resume its session on the old one
    (the old ticket keys and cache); the new context resumes neither the
    old session nor, on the old context, a thief's new one.
    """
    client = _client(mode)
    victim, victim_session = _control(source, client)
    old_leaf = _served_leaf(victim)
    assert _resumes(_Bound(_binding(victim)), client, victim_session)

    new = ensure_certificate(tmp_path / "new", "localhost", None, None)
    shutil.copyfile(new.key_path, source._key_path)
    shutil.copyfile(new.cert_path, source._cert_path)
    assert source.reload() is True

    thief, thief_session = _control(source, client)
    assert _served_leaf(thief) != old_leaf
    assert thief.server.get_context() is not victim.server.get_context()
    for _ in range(2):
        assert _resumes(_Bound(_binding(victim)), client, victim_session)
    assert not _resumes(_Bound(_binding(victim)), client, thief_session)
    assert not _resumes(_Bound(_binding(thief)), client, victim_session)
    assert _resumes(_Bound(_binding(thief)), client, thief_session)


def test_a_session_context_serves_a_bounded_number_of_control_connections(
        source: TLSContextSource, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    After SESSIONS_PER_CONTEXT control connections the next gets a new
    context, so no context's session cache fills up and evicts an open
    session (OpenSSL evicts the oldest first, and cryptography exports no
    setter for the cache size).  The first control connection's TLS 1.2
    session-id session still resumes on its data connections.
    """
    monkeypatch.setattr(tls, "SESSIONS_PER_CONTEXT", 3)
    client = _client("1.2-session-ids")
    controls = [_control(source, client) for _ in range(7)]
    contexts = [control.server.get_context() for control, _ in controls]
    assert contexts[0] is contexts[1] is contexts[2]
    assert contexts[3] is contexts[4] is contexts[5] is not contexts[0]
    assert contexts[6] is not contexts[3]
    first, first_session = controls[0]
    assert _resumes(_Bound(_binding(first)), client, first_session)
    assert not _resumes(_Bound(_binding(first)), client, controls[1][1])
    # The creator hands out the current context, not the first one.
    assert source.per_session_factory(FTP_ALPN).getContext() is contexts[6]


def test_bound_connections_made_in_many_threads_keep_their_own_session_id_context(
        source: TLSContextSource) -> None:
    """
    Control connections are made on the reactor thread and data connections
    in transfer threads, all on one context whose sid_ctx is set around
    each C{SSL_new}: made at the same time, each keeps its own.
    """
    client = _client("1.2-tickets")
    context = source.per_session_factory(FTP_ALPN).getContext()
    made: list[list[tuple[SSL.Connection, bytes]]] = [[] for _ in range(4)]
    start = threading.Barrier(len(made))

    def make(index: int) -> None:
        start.wait()
        for n in range(200):
            sid = bytes([index, n]) * 16
            made[index].append((bound_connection(context, sid), sid))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(len(made))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each connection's sessions resume only under the sid_ctx it was given.
    for index, connections in enumerate(made):
        for connection, sid in connections[::10]:

            class Made:
                def serverConnectionForTLS(self, tlsProtocol: object,
                                           connection: SSL.Connection = connection
                                           ) -> SSL.Connection:
                    return connection

            control = _handshake(Made(), client)
            assert control.ok
            control.exchange()
            session = control.client.get_session()
            assert _resumes(_Bound(SessionBinding(context, sid)), client, session)
            other = bytes([(index + 1) % len(made), 0]) * 16
            assert not _resumes(_Bound(SessionBinding(context, other)), client, session)


def test_a_session_id_context_has_one_to_32_bytes(source: TLSContextSource) -> None:
    context = source.per_session_factory(FTP_ALPN).getContext()
    with pytest.raises(ValueError):
        bound_connection(context, b"")
    with pytest.raises(ValueError):
        bound_connection(context, bytes(33))
    assert session_binding(SSL.Connection(context, None)) is None


@pytest.mark.parametrize("helper_name", ["_alpn_select_helper", "_verify_helper"])
def test_a_callback_problem_of_one_thread_is_not_raised_in_another(
        tmp_path: Path, helper_name: str) -> None:
    """
    pyOpenSSL keeps the exceptions raised in an SSL callback (our ALPN
    refusal, a client-certificate callback) in a list on the I{context} and
    raises the first one at the next error or WantRead of I{any} connection
    of that context.  Control connections (reactor thread) and data
    connections (transfer threads) now share one context, so a client
    offering a wrong ALPN on one could make an unrelated connection of
    another account fail in the other thread.  The lists are per thread
    (the callback runs in the thread of the connection that made it run).

    Also the canary for the pyOpenSSL private parts this uses
    (C{Context._alpn_select_helper}, C{Context._verify_helper} and their
    C{_problems}).
    """
    from tests.client_pki import ClientPKI

    pki = ClientPKI(tmp_path / "pki")
    info = ensure_certificate(tmp_path / "tls", "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path, client_ca=pki.ca_path)
    context = source.per_session_factory(FTP_ALPN).getContext()
    helper = getattr(context, helper_name, None)
    assert helper is not None, f"SSL.Context.{helper_name} is gone"
    assert isinstance(helper._problems, session_binding_module._ThreadProblems), (
        f"SSL.Context.{helper_name}._problems is gone or not ours")

    def fail_elsewhere() -> None:
        helper._problems.append(tls.ALPNRefused([b"http/1.1"], FTP_ALPN))

    elsewhere = threading.Thread(target=fail_elsewhere)
    elsewhere.start()
    elsewhere.join()
    innocent = source.per_session_factory(FTP_ALPN).serverConnectionForTLS(None)
    innocent.set_accept_state()
    with pytest.raises(SSL.WantReadError):
        innocent.do_handshake()
    # In its own thread the problem is raised where it belongs.
    helper._problems.append(tls.ALPNRefused([b"http/1.1"], FTP_ALPN))
    with pytest.raises(tls.ALPNRefused):
        innocent.do_handshake()
    with pytest.raises(SSL.WantReadError):
        innocent.do_handshake()


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_a_wrong_alpn_is_still_refused_with_per_thread_problems(
        source: TLSContextSource, version: int) -> None:
    client = _client_context(max_version=version)
    refused = _handshake(source.per_session_factory(FTP_ALPN), client, alpn=[b"http/1.1"])
    assert isinstance(refused.server_error, tls.ALPNRefused)
    assert "no application protocol" in str(refused.client_error)


def test_a_session_context_serves_new_control_connections_for_an_hour(
        tmp_path: Path) -> None:
    """
    Shared ticket keys should not live for days on a quiet server: after
    SESSION_CONTEXT_LIFETIME the next control connection gets a new
    context (new keys); an older session keeps resuming on its own.
    """
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1_000_000)
    info = ensure_certificate(tmp_path / "tls", "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path, clock=clock)
    client = _client("1.2-tickets")
    first, first_session = _control(source, client)
    clock.advance(tls.SESSION_CONTEXT_LIFETIME - 1)
    second, _ = _control(source, client)
    assert second.server.get_context() is first.server.get_context()
    clock.advance(1)
    third, third_session = _control(source, client)
    assert third.server.get_context() is not first.server.get_context()
    assert _resumes(_Bound(_binding(first)), client, first_session)
    assert not _resumes(_Bound(_binding(first)), client, third_session)
    assert not _resumes(_Bound(_binding(third)), client, first_session)
