"""
Client certificates with real clients: curl (explicit and implicit FTPS,
HTTPS), lftp, and Python's ssl with load_cert_chain.

One server with a throwaway client CA and CRL (made in the test's temporary
directory, never committed).  Accounts:

 - C{alice}: method C{cert}; bound: her certificate, an expired one and a
   revoked one (so that those are refused for being expired or revoked,
   not for being unknown);
 - C{bob}: method C{cert}; his own certificate;
 - C{carol}: method C{cert+password};
 - C{dave}: method C{password} (the default), no certificate;
 - C{erin}: method C{cert}, for the test that removes her certificate.

A rogue certificate (another CA, same name) is bound to alice too: it must
be refused as not from the client CA.

The server runs with C{--data-tls-reuse optional}: with resumption required
a data connection can only resume its control connection's session, which
carries the control connection's certificate anyway; optional, the
certificate check on the data connection is the only thing that stops a
data connection made with another certificate, so that is what is tested.
"""

from __future__ import annotations

import ftplib
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.client_pki import ClientCert, ClientPKI
from tests.integration.clients import TIMEOUT, ImplicitFTP_TLS, ReusingFTP_TLS
from tests.server_process import ServerProcess, require_tool

pytestmark = pytest.mark.integration

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22",
             "carol": "carol-password-333", "dave": "dave-password-4444",
             "erin": "erin-password-55555"}


@dataclass
class World:
    server: ServerProcess
    pki: ClientPKI
    certs: dict[str, ClientCert]

    def audit(self, event: str) -> list[dict[str, Any]]:
        lines = self.server.audit_path.read_text("utf-8").splitlines()
        return [e for e in (json.loads(line) for line in lines if line.strip())
                if e.get("event") == event]

    def last_login(self, event: str, account: str) -> dict[str, Any]:
        found = [e for e in self.audit(event) if e.get("account") == account]
        assert found, f"no {event} for {account}"
        return found[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("client-certs")
    pki = ClientPKI(base / "pki")
    rogue_ca = ClientPKI(base / "rogue-pki", common_name="rumpus test client CA")
    certs = {
        "alice": pki.issue("alice"),
        "bob": pki.issue("bob"),
        "carol": pki.issue("carol"),
        "dave": pki.issue("dave"),
        "erin": pki.issue("erin"),
        "expired": pki.issue("alice expired", expired=True),
        "revoked": pki.issue("alice revoked"),
        "rogue": rogue_ca.issue("alice rogue"),
    }
    pki.revoke(certs["revoked"])
    (base / "server").mkdir()
    server = ServerProcess(base / "server", client_ca=pki.ca_path,
                           client_crl=pki.crl_path, safe_list="127.0.0.0/8",
                           login_failure_delay="0", data_tls_reuse="optional")
    with server:
        for name, password in PASSWORDS.items():
            mode = {"alice": "cert", "bob": "cert", "erin": "cert",
                    "carol": "cert+password"}.get(
                name, "password")
            server.cli("user", "add", name, "--password-stdin", "--auth", mode,
                       input=password + "\n")
            (server.home(name) / f"{name}.txt").write_text(f"file of {name}\n")
        for label, account in (("alice", "alice"), ("expired", "alice"),
                               ("revoked", "alice"), ("rogue", "alice"),
                               ("bob", "bob"), ("carol", "carol"), ("erin", "erin")):
            server.cli("user", "cert", "add", account, "--cert",
                       str(certs[label].cert_path))
        yield World(server, pki, certs)
    assert "Traceback" not in server.log_text(), server.log_text()


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), check=False, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def curl_ftp(world: World, scheme: str, user: str, password: str,
             cert: ClientCert | None, path: str = "") -> subprocess.CompletedProcess[bytes]:
    curl = require_tool("curl")
    port = world.server.ftp_port if scheme == "ftp" else world.server.ftps_port
    args = [curl, "-sS", "-k", "--ssl-reqd", "-u", f"{user}:{password}"]
    if cert is not None:
        args += ["--cert", str(cert.cert_path), "--key", str(cert.key_path)]
    return run(*args, f"{scheme}://127.0.0.1:{port}/{path}")


# -- curl, FTPS -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ftp", "ftps"])
def test_curl_cert_login_without_password(world: World, scheme: str) -> None:
    """
    A cert account logs in with its certificate and no password, lists and
    downloads (the data connection carries the same certificate).
    """
    result = curl_ftp(world, scheme, "alice", "", world.certs["alice"], "alice.txt")
    assert (result.returncode, result.stdout) == (0, b"file of alice\n"), result.stderr
    login = world.last_login("ftp.login", "alice")
    assert (login["outcome"], login["method"]) == ("ok", "cert")
    assert login["certificate"] == world.certs["alice"].fingerprint


@pytest.mark.parametrize("label, reason", [
    ("bob", "cert-other-account"),
    ("expired", "cert-expired"),
    ("revoked", "cert-revoked"),
    ("rogue", "cert-untrusted"),
    (None, "cert-missing"),
])
@pytest.mark.parametrize("scheme", ["ftp", "ftps"])
def test_curl_refused_certificates(world: World, scheme: str, label: str | None,
                                   reason: str) -> None:
    """
    Bound to another account, expired, revoked, from another CA, or none:
    refused even with the account's right password, and audited with why.
    """
    cert = world.certs[label] if label is not None else None
    before = len(world.audit("ftp.login"))
    result = curl_ftp(world, scheme, "alice", PASSWORDS["alice"], cert)
    assert result.returncode == 67, (result.returncode, result.stderr)  # login denied
    new = [e for e in world.audit("ftp.login")[before:] if e.get("account") == "alice"]
    assert [(e["outcome"], e.get("reason")) for e in new] == [("failed", reason)]
    assert new[0]["method"] == "cert"


def test_curl_password_account_with_or_without_certificate(world: World) -> None:
    """
    A password account is unaffected: it logs in with its password, whether
    or not the client presents a certificate (even someone else's).
    """
    for cert in (None, world.certs["dave"], world.certs["bob"]):
        result = curl_ftp(world, "ftp", "dave", PASSWORDS["dave"], cert, "dave.txt")
        assert (result.returncode, result.stdout) == (0, b"file of dave\n"), result.stderr
    wrong = curl_ftp(world, "ftp", "dave", "wrong", world.certs["dave"])
    assert wrong.returncode == 67


def test_curl_cert_plus_password(world: World) -> None:
    carol, password = world.certs["carol"], PASSWORDS["carol"]
    ok = curl_ftp(world, "ftps", "carol", password, carol, "carol.txt")
    assert (ok.returncode, ok.stdout) == (0, b"file of carol\n"), ok.stderr
    assert world.last_login("ftp.login", "carol")["method"] == "cert+password"
    assert curl_ftp(world, "ftps", "carol", "wrong-password", carol).returncode == 67
    assert world.last_login("ftp.login", "carol")["outcome"] == "failed"
    assert curl_ftp(world, "ftps", "carol", password, None).returncode == 67
    assert world.last_login("ftp.login", "carol")["reason"] == "cert-missing"


# -- Python ssl with load_cert_chain, two clients at once -------------------


def _context(cert: ClientCert | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return context


def test_python_ssl_two_accounts_in_parallel(world: World) -> None:
    """
    alice (implicit) and bob (explicit) log in with USER alone at the same
    time from the same address; each sees only their own files.
    """
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    results: dict[str, Any] = {}

    def session(name: str, implicit: bool) -> None:
        try:
            kind = ImplicitFTP_TLS if implicit else ReusingFTP_TLS
            ftp = kind(context=_context(world.certs[name]), timeout=TIMEOUT)
            port = world.server.ftps_port if implicit else world.server.ftp_port
            ftp.connect("127.0.0.1", port)
            if not implicit:
                ftp.auth()
            barrier.wait()
            reply = ftp.sendcmd(f"USER {name}")   # no PASS
            ftp.prot_p()
            barrier.wait()
            results[name] = (reply, ftp.nlst())
            ftp.quit()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[name] = e

    threads = [threading.Thread(target=session, args=("alice", True)),
               threading.Thread(target=session, args=("bob", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert results["alice"][0].startswith("232 ") and results["bob"][0].startswith("232 ")
    assert results["alice"][1] == ["alice.txt"], results
    assert results["bob"][1] == ["bob.txt"], results


def test_python_ssl_other_account_falls_back_to_password_prompt(world: World) -> None:
    """
    USER with a certificate that does not pass answers 331, like any USER;
    the PASS that follows is refused and audited with the reason.
    """
    ftp = ImplicitFTP_TLS(context=_context(world.certs["bob"]), timeout=TIMEOUT)
    ftp.connect("127.0.0.1", world.server.ftps_port)
    assert ftp.sendcmd("USER alice").startswith("331 ")
    with pytest.raises(Exception, match="^530"):
        ftp.sendcmd(f"PASS {PASSWORDS['alice']}")
    assert world.last_login("ftp.login", "alice")["reason"] == "cert-other-account"
    ftp.close()


class FreshDataFTP(ImplicitFTP_TLS):
    """
    Data connections with a full handshake on a context of our choice.
    """

    data_context: ssl.SSLContext

    def ntransfercmd(self, cmd: str, rest: Any = None) -> Any:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        return self.data_context.wrap_socket(conn, server_hostname=self.host), size


@pytest.mark.parametrize("data_cert, allowed", [
    ("bob", True), ("alice", False), (None, False)])
def test_data_connection_must_carry_the_control_certificate(
        world: World, data_cert: str | None, allowed: bool) -> None:
    """
    bob's data connection, not resumed: with his own certificate it works;
    with alice's (or none) it is refused and audited, and nothing is listed.
    """
    ftp = FreshDataFTP(context=_context(world.certs["bob"]), timeout=TIMEOUT)
    ftp.connect("127.0.0.1", world.server.ftps_port)
    assert ftp.sendcmd("USER bob").startswith("232 ")
    ftp.prot_p()
    ftp.data_context = _context(world.certs[data_cert] if data_cert else None)
    before = len(world.audit("ftp.data_refused"))
    if allowed:
        assert ftp.nlst() == ["bob.txt"]
        assert len(world.audit("ftp.data_refused")) == before
    else:
        with pytest.raises((ftplib.Error, OSError, EOFError)):
            ftp.nlst()
        refusals = world.audit("ftp.data_refused")[before:]
        assert [(e["account"], e["reason"]) for e in refusals] == [
            ("bob", "foreign-certificate")]
        # (The NLST keeps waiting for the right data connection: a refused
        # one does not end the transfer of the session's owner.)
    ftp.close()


# -- lftp -------------------------------------------------------------------


def test_lftp_cert_file(world: World) -> None:
    lftp = require_tool("lftp")
    alice = world.certs["alice"]
    script = "; ".join([
        "set cmd:fail-exit true", "set net:max-retries 1", "set net:timeout 10",
        "set ssl:verify-certificate no", "set ftp:ssl-force true",
        "set ftp:ssl-protect-data true",
        f"set ssl:cert-file {alice.cert_path}", f"set ssl:key-file {alice.key_path}",
        f"open -u alice, ftp://127.0.0.1:{world.server.ftp_port}",
        "cat alice.txt",
    ])
    result = run(lftp, "-c", script)
    assert (result.returncode, result.stdout) == (0, b"file of alice\n"), result.stderr
    assert world.last_login("ftp.login", "alice")["method"] == "cert"


# -- HTTPS ------------------------------------------------------------------


def curl_https(world: World, cert: ClientCert | None, path: str,
               jar: Path) -> subprocess.CompletedProcess[bytes]:
    curl = require_tool("curl")
    args = [curl, "-sS", "-k", "-L", "-c", str(jar), "-b", str(jar),
            "-w", "\n%{http_code} %{url_effective}"]
    if cert is not None:
        args += ["--cert", str(cert.cert_path), "--key", str(cert.key_path)]
    return run(*args, f"https://127.0.0.1:{world.server.https_port}{path}")


def test_https_cert_login_without_form(world: World, tmp_path: Path) -> None:
    result = curl_https(world, world.certs["alice"], "/files/", tmp_path / "jar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(b"/files/") and b"\n200 " in result.stdout
    assert b"alice.txt" in result.stdout
    login = world.last_login("web.login", "alice")
    assert (login["outcome"], login["method"]) == ("ok", "cert")


@pytest.mark.parametrize("label, reason", [
    ("expired", "cert-expired"), ("revoked", "cert-revoked"),
    ("rogue", "cert-untrusted")])
def test_https_refused_certificate_shows_the_form(world: World, tmp_path: Path,
                                                  label: str, reason: str) -> None:
    result = curl_https(world, world.certs[label], "/files/", tmp_path / "jar")
    assert b"\n403 " in result.stdout and b"name=password" in result.stdout
    assert b"alice.txt" not in result.stdout
    login = world.last_login("web.login", "alice")
    assert (login["outcome"], login["reason"]) == ("failed", reason)


def test_https_password_and_cert_plus_password_accounts_get_the_form(
        world: World, tmp_path: Path) -> None:
    for label in ("carol", "dave"):
        result = curl_https(world, world.certs[label], "/files/", tmp_path / label)
        assert b"\n200 " in result.stdout and b"name=password" in result.stdout
        assert f"{label}.txt".encode() not in result.stdout


# -- rumpus-secure check ------------------------------------------------------


def test_check_shows_the_client_ca_crl_and_requests(world: World) -> None:
    """
    ``check`` with the server's options: the CA, the CRL, and each TLS port's
    certificate request naming the CA.
    """
    import sys

    from tests.server_process import subprocess_env

    result = subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", "check", *world.server.arguments()],
        check=False, capture_output=True, text=True, timeout=60, env=subprocess_env(),
        cwd=world.server.tmp_path)
    rows = {line[:41].strip(): line[41:] for line in result.stdout.splitlines()}
    ca = f"Client CA: CN={world.pki.common_name}"
    assert rows[ca].split()[0] == "PASS", result.stdout
    assert rows["Client CRL"].split()[:2] == ["PASS", "1"], result.stdout
    for port in ("FTP", "FTPS", "HTTPS"):
        row = rows[f"{port}: asks for a client certificate"]
        assert row.split()[0] == "PASS" and world.pki.common_name in row, result.stdout


def test_https_form_login_of_a_cert_plus_password_account(world: World,
                                                          tmp_path: Path) -> None:
    curl = require_tool("curl")
    base = f"https://127.0.0.1:{world.server.https_port}"

    def post(cert: ClientCert | None, password: str) -> str:
        args = [curl, "-sS", "-k", "-c", str(tmp_path / "jar"), "-o", "/dev/null",
                # The configured public origin (--public-host localhost).
                "-w", "%{http_code}", "-H",
                f"Origin: https://localhost:{world.server.https_port}",
                "--data-urlencode", "username=carol",
                "--data-urlencode", f"password={password}"]
        if cert is not None:
            args += ["--cert", str(cert.cert_path), "--key", str(cert.key_path)]
        return run(*args, f"{base}/login").stdout.decode()

    carol = world.certs["carol"]
    assert post(carol, PASSWORDS["carol"]) == "303"
    assert world.last_login("web.login", "carol")["outcome"] == "ok"
    assert post(None, PASSWORDS["carol"]) == "401"
    assert world.last_login("web.login", "carol")["reason"] == "cert-missing"
    assert post(world.certs["bob"], PASSWORDS["carol"]) == "401"
    assert world.last_login("web.login", "carol")["reason"] == "cert-other-account"
    assert post(carol, "wrong-password") == "401"


# -- account changes reach open sessions ----------------------------------------


def test_removing_a_certificate_ends_its_accounts_sessions_only(world: World) -> None:
    """
    erin and bob are logged in (same address, at once); removing erin's
    certificate ends her session at her next command; bob goes on.
    """
    sessions = {}
    for name in ("erin", "bob"):
        ftp = ImplicitFTP_TLS(context=_context(world.certs[name]), timeout=TIMEOUT)
        ftp.connect("127.0.0.1", world.server.ftps_port)
        assert ftp.sendcmd(f"USER {name}").startswith("232 ")
        sessions[name] = ftp
    world.server.cli("user", "cert", "del", "erin", world.certs["erin"].fingerprint)
    with pytest.raises(ftplib.Error, match="^421 Session ended: a client certificate"):
        sessions["erin"].sendcmd("PWD")
    assert sessions["bob"].sendcmd("PWD").startswith("257 ")
    ended = world.last_login("ftp.session_ended", "erin")
    assert ended["reason"] == "cert-del"
    # And she cannot log in again with it.
    again = ImplicitFTP_TLS(context=_context(world.certs["erin"]), timeout=TIMEOUT)
    again.connect("127.0.0.1", world.server.ftps_port)
    assert again.sendcmd("USER erin").startswith("331 ")
    with pytest.raises(ftplib.Error, match="^530"):
        again.sendcmd("PASS anything")
    assert world.last_login("ftp.login", "erin")["reason"] == "cert-not-bound"
    for ftp in (*sessions.values(), again):
        ftp.close()


def test_a_browser_sending_a_stale_bound_certificate_is_not_banned(
        world: World, tmp_path: Path) -> None:
    """
    A browser may send its (expired) certificate with every page view: that
    is no guess (it holds the key), so it is audited but not scored; before,
    15 views of /login banned the address and everyone behind it.
    """
    (tmp_path / "server").mkdir()
    server = ServerProcess(tmp_path / "server", client_ca=world.pki.ca_path,
                           login_failure_delay="0", ftp="none", ftps="none")
    with server:
        server.cli("user", "add", "alice", "--password-stdin", "--auth", "cert",
                   input=PASSWORDS["alice"] + "\n")
        server.cli("user", "cert", "add", "alice", "--cert",
                   str(world.certs["expired"].cert_path))
        server.add_user("paula", "paula-Passw0rd-web")
        curl = require_tool("curl")
        expired = world.certs["expired"]
        for _ in range(18):
            result = run(curl, "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}",
                         "--interface", "127.0.0.31", "--cert", str(expired.cert_path),
                         "--key", str(expired.key_path),
                         f"https://127.0.0.1:{server.https_port}/login")
            assert result.stdout == b"403", result.stdout
        # Another user behind the same address still gets the login page.
        result = run(curl, "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}",
                     "--interface", "127.0.0.31",
                     f"https://127.0.0.1:{server.https_port}/login")
        assert result.stdout == b"200"
        assert "127.0.0.31" not in server.cli("ban", "list").stdout
