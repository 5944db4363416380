"""
Client certificates without sockets: the bindings in the account store, the
CA/CRL judgement, the login methods in the checker, the FTP login's audit
and guard, the TLS contexts' certificate request, and the end of sessions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from OpenSSL import SSL
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from rumpus_secure.accounts.bans import MemoryBanStore
from rumpus_secure.accounts.cert_checker import (
    CertificateAwareChecker,
    CertificateCredentials,
    CertificateRefused,
)
from rumpus_secure.accounts.checker import LockedAccountError
from rumpus_secure.accounts.client_certs import (
    CertificateLogin,
    CertVerdict,
    ClientCA,
    ClientCertStore,
    PeerCertificate,
)
from rumpus_secure.accounts.store import AccountError, SQLiteAccountStore
from rumpus_secure.ftp.account_state import ENDING, end_reason
from rumpus_secure.ftp.realm import FTPRealm
from rumpus_secure.guard import Guard, GuardSettings
from rumpus_secure.tls import TLSContextSource, ensure_certificate

from .client_pki import ClientPKI
from .ftp_fakes import connect, make_server

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClientPKI:
    return ClientPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def store(tmp_path: Path) -> SQLiteAccountStore:
    s = SQLiteAccountStore(tmp_path / "accounts.sqlite3", tmp_path / "files", hasher=FAST)
    s.add("alice", "alice-password")
    s.add("bob", "bob-password")
    return s


# -- the bindings -------------------------------------------------------------


def test_bindings_add_list_owner_delete(store: SQLiteAccountStore, pki: ClientPKI) -> None:
    certs = ClientCertStore(store)
    one, two = pki.issue("alice one"), pki.issue("alice two")
    certs.add("alice", one.cert_path.read_bytes())
    certs.add("alice", two.cert_path.read_bytes())
    assert [b.fingerprint for b in certs.list("alice")] == [one.fingerprint, two.fingerprint]
    assert certs.owner(one.fingerprint) == "alice" and certs.list("bob") == []
    with pytest.raises(AccountError, match="already bound to account 'alice'"):
        certs.add("bob", one.cert_path.read_bytes())
    with pytest.raises(AccountError, match="no account"):
        certs.add("nobody", two.cert_path.read_bytes())
    with pytest.raises(AccountError, match="not an X.509"):
        certs.add("bob", one.key_path.read_bytes())
    with pytest.raises(AccountError, match="at least 8"):
        certs.delete("alice", one.fingerprint[:5])
    certs.delete("alice", one.fingerprint[:14].replace(":", "").lower())
    assert [b.fingerprint for b in certs.list()] == [two.fingerprint]
    assert certs.owner(one.fingerprint) is None


def test_auth_mode_default_set_and_refused(store: SQLiteAccountStore) -> None:
    certs = ClientCertStore(store)
    assert certs.auth_mode("alice") == "password"
    assert certs.auth_mode("nobody") == "password"
    certs.set_auth_mode("alice", "cert+password")
    assert certs.auth_mode("alice") == "cert+password"
    with pytest.raises(AccountError, match="unknown login method"):
        certs.set_auth_mode("alice", "certificate")
    with pytest.raises(AccountError, match="no account"):
        certs.set_auth_mode("nobody", "cert")


def test_every_change_is_in_the_change_log_and_ends_sessions(
        store: SQLiteAccountStore, pki: ClientPKI) -> None:
    """
    Adding a certificate is logged but harmless; removing one or changing
    the method ends the account's sessions (FTP through the log, web through
    password_changed) and nobody else's.
    """
    certs = ClientCertStore(store, clock=lambda: 5e9)
    reader = store.change_reader()
    start = reader.latest()
    bob_before = store.get("bob")
    cert = pki.issue("alice log")
    certs.add("alice", cert.cert_path.read_bytes())
    certs.set_auth_mode("alice", "cert")
    certs.delete("alice", cert.fingerprint)
    changes = reader.since(start).changes
    assert [(c.name, c.kind, c.detail) for c in changes] == [
        ("alice", "cert-add", cert.fingerprint), ("alice", "auth", "cert"),
        ("alice", "cert-del", cert.fingerprint)]
    assert [c.kind in ENDING for c in changes] == [False, True, True]
    assert "removed" in end_reason(changes[2]) and "cert" in end_reason(changes[1])
    alice = store.get("alice")
    assert alice is not None and alice.password_changed == 5e9
    assert store.get("bob") == bob_before


def test_deleted_account_leaves_no_binding_for_a_namesake(
        store: SQLiteAccountStore, pki: ClientPKI) -> None:
    certs = ClientCertStore(store)
    cert = pki.issue("alice deleted")
    certs.add("alice", cert.cert_path.read_bytes())
    certs.set_auth_mode("alice", "cert")
    store.delete("alice")
    store.add("alice", "a-new-alice")
    assert certs.owner(cert.fingerprint) is None
    assert certs.auth_mode("alice") == "password"


# -- the CA and the CRL -------------------------------------------------------


def test_ca_judges_validity_chain_and_revocation(tmp_path: Path, pki: ClientPKI) -> None:
    ca = ClientCA(pki.ca_path, pki.crl_path)
    rogue = ClientPKI(tmp_path / "rogue", common_name=pki.common_name)
    good, expired = pki.issue("good"), pki.issue("old", expired=True)
    assert ca.problem(PeerCertificate(good.cert)) is None
    assert ca.problem(PeerCertificate(expired.cert)) == "cert-expired"
    assert ca.problem(PeerCertificate(rogue.issue("rogue").cert)) == "cert-untrusted"
    # At a time before the certificate's start it is not valid either.
    early = ClientCA(pki.ca_path, clock=lambda: pki.now.timestamp() - 5 * 86400)
    assert early.problem(PeerCertificate(good.cert)) == "cert-untrusted"


def test_crl_is_reread_when_it_changes(tmp_path: Path) -> None:
    pki = ClientPKI(tmp_path / "pki")
    ca = ClientCA(pki.ca_path, pki.crl_path)
    victim, bystander = pki.issue("victim"), pki.issue("bystander")
    assert ca.problem(PeerCertificate(victim.cert)) is None
    pki.revoke(victim)
    os.utime(pki.crl_path, ns=(1, 1))  # a new file, whatever the clock's grain
    assert ca.problem(PeerCertificate(victim.cert)) == "cert-revoked"
    assert ca.problem(PeerCertificate(bystander.cert)) is None


def test_a_crl_from_another_ca_is_refused_and_the_last_good_one_stays(
        tmp_path: Path) -> None:
    """
    A list anyone could make (an attacker's CA with the same name, an empty
    list) must not un-revoke everything, as a garbled file does not.
    """
    pki = ClientPKI(tmp_path / "pki")
    other = ClientPKI(tmp_path / "other")  # same default name: "rumpus test client CA"
    victim, bystander = pki.issue("victim"), pki.issue("bystander")
    other.write_crl()  # an empty list, signed by the wrong key
    with pytest.raises(ValueError, match="not signed"):
        ClientCA(pki.ca_path, other.crl_path)  # at start: one clear error
    pki.revoke(victim)
    ca = ClientCA(pki.ca_path, pki.crl_path)
    assert ca.problem(PeerCertificate(victim.cert)) == "cert-revoked"
    pki.crl_path.write_bytes(other.crl_path.read_bytes())  # swapped while serving
    os.utime(pki.crl_path, ns=(2, 2))
    assert ca.problem(PeerCertificate(victim.cert)) == "cert-revoked"
    assert ca.problem(PeerCertificate(bystander.cert)) is None


# -- the login methods ----------------------------------------------------------


class SyncPool:
    def callInThreadWithCallback(self, on_result: Any, function: Any, *args: Any,
                                 **kwargs: Any) -> None:
        try:
            result = function(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - handed over, as a thread pool does
            on_result(False, Failure())
        else:
            on_result(True, result)


class SyncReactor:
    def callFromThread(self, function: Any, *args: Any) -> None:
        function(*args)

    def getThreadPool(self) -> SyncPool:
        return SyncPool()


class RecordingInner:
    """The password checker: right is 'pw'; records its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def requestAvatarId(self, credentials: Any) -> Any:
        from twisted.internet import defer

        self.calls.append(credentials.username.decode())
        if credentials.password == b"pw":
            return defer.succeed(credentials.username)
        return defer.fail(UnauthorizedLogin())


def outcome(checker: Any, name: str, password: str, presented: Any) -> Any:
    d = checker.requestAvatarId(CertificateCredentials(name.encode(), password.encode(),
                                                       presented))
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    return result.value if isinstance(result, Failure) else result


def test_login_methods(store: SQLiteAccountStore, pki: ClientPKI) -> None:
    certs = ClientCertStore(store)
    store.add("carol", "carol-password")
    alice, bob, carol = pki.issue("a"), pki.issue("b"), pki.issue("c")
    for name, cert in (("alice", alice), ("bob", bob), ("carol", carol)):
        certs.add(name, cert.cert_path.read_bytes())
    certs.set_auth_mode("alice", "cert")
    certs.set_auth_mode("carol", "cert+password")
    inner = RecordingInner()
    checker = CertificateAwareChecker(inner, CertificateLogin(certs, ClientCA(pki.ca_path)),
                                      SyncReactor())
    presented = {n: PeerCertificate(c.cert) for n, c in
                 (("alice", alice), ("bob", bob), ("carol", carol))}
    # cert: no password needed, and the password checker is not asked.
    assert outcome(checker, "alice", "", presented["alice"]) == b"alice"
    assert inner.calls == []
    # cert: refused with the reason, after the password check ran too
    # (a refusal costs what a wrong password costs).
    refused = outcome(checker, "alice", "pw", presented["bob"])
    assert isinstance(refused, CertificateRefused) and refused.reason == "cert-other-account"
    assert outcome(checker, "alice", "pw", None).reason == "cert-missing"
    assert inner.calls == ["alice", "alice"]
    # cert+password: both.
    assert outcome(checker, "carol", "pw", presented["carol"]) == b"carol"
    assert isinstance(outcome(checker, "carol", "wrong", presented["carol"]),
                      UnauthorizedLogin)
    assert outcome(checker, "carol", "pw", None).reason == "cert-missing"
    # password (bob): the certificate plays no part.
    assert outcome(checker, "bob", "pw", None) == b"bob"
    assert outcome(checker, "bob", "pw", presented["alice"]) == b"bob"
    # A locked cert account says so only to its certificate.
    store.lock("alice", "gone")
    assert isinstance(outcome(checker, "alice", "", presented["alice"]), LockedAccountError)
    assert isinstance(outcome(checker, "alice", "", presented["carol"]), CertificateRefused)


def test_no_client_ca_means_no_certificate_passes(store: SQLiteAccountStore,
                                                  pki: ClientPKI) -> None:
    certs = ClientCertStore(store)
    alice = pki.issue("alice no ca")
    certs.add("alice", alice.cert_path.read_bytes())
    certs.set_auth_mode("alice", "cert")
    checker = CertificateAwareChecker(RecordingInner(), CertificateLogin(certs, None),
                                      SyncReactor())
    assert outcome(checker, "alice", "pw", PeerCertificate(alice.cert)).reason == (
        "cert-untrusted")


# -- FTP: audit and guard -------------------------------------------------------


class FixedLogin:
    """A CertificateLogin whose verdict is fixed per account."""

    def __init__(self, store: Any, verdicts: dict[str, CertVerdict]) -> None:
        self.verdicts = verdicts
        self.ca = object()
        self.bindings = type("B", (), {"store": store})()

    def check(self, name: str, presented: Any) -> CertVerdict:
        return self.verdicts.get(name, CertVerdict("password", None, None))


def test_refused_certificate_login_is_audited_and_counted_by_the_guard(
        tmp_path: Path) -> None:
    """
    Two refusals ban at threshold 2, although the password was right; a
    password account from the same address, logged in meanwhile, is
    untouched.
    """
    server = make_server(tmp_path, ftp_security="allow-plain")
    server.store.add("bob", "bobs")
    login = FixedLogin(server.store, {"alice": CertVerdict("cert", "cert-expired", "AB:CD")})
    server.checker = CertificateAwareChecker(server.checker, login, SyncReactor())
    server.portal = Portal(FTPRealm(server.store), [server.checker])
    reactor = MemoryReactorClock()
    reactor.advance(1e9)
    server.guard = Guard(GuardSettings(threshold=2, login_failure_delay=1.0), reactor,
                         store=MemoryBanStore(), audit=server.audit)
    bob, bob_transport, _ = connect(server, reactor=reactor)
    alice, transport, _ = connect(server, reactor=reactor)
    bob.dataReceived(b"USER bob\r\nPASS bobs\r\n")
    reactor.advance(0)
    assert bob_transport.lines()[-1].startswith("230 ")
    transport.clear()
    alice.dataReceived(b"USER alice\r\nPASS right\r\n")
    reactor.advance(1)
    reactor.advance(0)
    assert transport.lines()[-1] == "530 Login incorrect."
    failed = [e for e in server.audit.named("ftp.login") if e["outcome"] == "failed"]
    assert [(e["account"], e["method"], e["reason"], e["certificate"]) for e in failed] == [
        ("alice", "cert", "cert-expired", "AB:CD")]
    alice.dataReceived(b"USER alice\r\nPASS right\r\n")
    reactor.advance(1)
    assert transport.lines()[-1].startswith("421 Too many failed attempts")
    [ban] = server.audit.named("guard.ban")
    assert ban["account"] == "alice" and ban["reason"] == "login_failed"


# -- TLS: the certificate request --------------------------------------------------


def _handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        for a, b in ((client, server), (server, client)):
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    server.do_handshake()


@pytest.mark.parametrize("per_session", [False, True])
@pytest.mark.parametrize("with_cert", ["ours", "rogue", None])
def test_contexts_ask_for_an_optional_certificate(
        tmp_path: Path, pki: ClientPKI, per_session: bool, with_cert: str | None) -> None:
    """
    Every context asks (naming the client CA), takes any certificate or none,
    and the server side sees exactly the one presented.
    """
    info = ensure_certificate(tmp_path / "data", "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path, client_ca=pki.ca_path)
    creator = (source.per_session_factory([b"ftp"]) if per_session
               else source.context_factory([b"ftp"]))
    server = SSL.Connection(creator.getContext(), None)
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cert = None
    if with_cert == "ours":
        cert = pki.issue("tls client")
    elif with_cert == "rogue":
        cert = ClientPKI(tmp_path / "rogue").issue("rogue")
    if cert is not None:
        client_context.use_certificate_file(str(cert.cert_path))
        client_context.use_privatekey_file(str(cert.key_path))
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    _handshake(server, client)
    names = [n.CN for n in client.get_client_ca_list()]
    assert names == [pki.common_name]
    seen = PeerCertificate.of(server)
    if cert is None:
        assert seen is None
    else:
        assert seen is not None and seen.fingerprint == cert.fingerprint


def test_without_client_ca_no_certificate_is_asked_for(tmp_path: Path) -> None:
    info = ensure_certificate(tmp_path / "data", "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path)
    server = SSL.Connection(source.context_factory([b"ftp"]).getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    _handshake(server, client)
    assert client.get_client_ca_list() == []


def test_reload_applies_a_new_client_ca_to_the_request(tmp_path: Path) -> None:
    first = ClientPKI(tmp_path / "first", common_name="first client CA")
    second = ClientPKI(tmp_path / "second", common_name="second client CA")
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(first.ca_path.read_bytes())
    info = ensure_certificate(tmp_path / "data", "localhost", None, None)
    source = TLSContextSource(info.cert_path, info.key_path, client_ca=ca_file)

    def named() -> list[str]:
        server = SSL.Connection(source.per_session_factory([b"ftp"]).getContext(), None)
        server.set_accept_state()
        client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        client.set_connect_state()
        _handshake(server, client)
        return [n.CN for n in client.get_client_ca_list()]

    assert named() == ["first client CA"]
    ca_file.write_bytes(second.ca_path.read_bytes())
    assert source.reload()
    assert named() == ["second client CA"]
    ca_file.write_bytes(b"not a certificate")
    assert not source.reload() and "--client-ca" in (source.last_error or "")
    assert named() == ["second client CA"]


def test_client_crl_needs_client_ca(tmp_path: Path) -> None:
    from rumpus_secure.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="--client-crl needs --client-ca"):
        build_config({"data-dir": str(tmp_path), "client-crl": str(tmp_path / "x.crl")},
                     None)
    config = build_config({"data-dir": str(tmp_path), "client-ca": "ca.pem"}, None)
    assert config.client_ca == Path("ca.pem") and config.client_crl is None


@pytest.mark.parametrize("option", ["client-ca", "client-crl"])
def test_unusable_client_ca_or_crl_stops_the_start_with_one_line(
        tmp_path: Path, pki: ClientPKI, option: str) -> None:
    from rumpus_secure import tap

    from .test_tap import Reactor

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    options = {"data-dir": str(tmp_path / "d"), "client-ca": str(pki.ca_path),
               option: str(bad)}
    with pytest.raises(SystemExit) as e:
        tap.makeService(options, reactor=Reactor())
    message = str(e.value.code)
    assert message.startswith("rumpus-secure: error: --" + option) and "\n" not in message


def test_the_server_checker_applies_login_methods(tmp_path: Path, pki: ClientPKI) -> None:
    """
    Assembled by makeService: the portal and the web use the certificate-aware
    checker, with the client CA when one is given.
    """
    from rumpus_secure import tap

    from .test_tap import Reactor

    service = tap.makeService({"data-dir": str(tmp_path / "d"),
                               "client-ca": str(pki.ca_path)}, reactor=Reactor())
    server = service.server  # type: ignore[attr-defined]
    assert isinstance(server.checker, CertificateAwareChecker)
    assert server.checker.login.ca is not None
    assert server.portal.checkers[server.checker.credentialInterfaces[0]] is server.checker
