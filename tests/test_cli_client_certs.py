"""
``user cert add|list|del``, ``user auth`` and ``user add --auth``, in-process.
"""

from __future__ import annotations

from pathlib import Path

from rumpus_secure.accounts.client_certs import ClientCertStore

from .client_pki import ClientPKI
from .test_cli import Run, bare_run, cheap_hashing, data_dir, run  # noqa: F401


def test_user_add_auth_and_cert_commands(run: Run, tmp_path: Path) -> None:  # noqa: F811
    pki = ClientPKI(tmp_path / "pki")
    one, two = pki.issue("alice one"), pki.issue("alice two")
    code, out, _ = run("user", "add", "alice", "--auth", "cert", "--password-stdin",
                       stdin="a-long-enough-password\n")
    assert code == 0 and "account alice logs in with: cert" in out
    certs = ClientCertStore(run.store())
    assert certs.auth_mode("alice") == "cert"
    code, out, _ = run("user", "cert", "add", "alice", "--cert", str(one.cert_path))
    assert code == 0 and one.fingerprint in out and "CN=alice one" in out
    run("user", "cert", "add", "alice", "--cert", str(two.cert_path))
    code, out, _ = run("user", "cert", "list", "alice")
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["alice", "cert", one.fingerprint], ["alice", "cert", two.fingerprint]]
    code, out, _ = run("user", "cert", "del", "alice", one.fingerprint[:11])
    assert code == 0 and f"removed certificate {one.fingerprint}" in out
    assert [b.fingerprint for b in certs.list("alice")] == [two.fingerprint]
    code, out, _ = run("user", "auth", "alice", "cert+password")
    assert code == 0 and certs.auth_mode("alice") == "cert+password"
    code, out, _ = run("user", "auth", "alice")
    assert out == "account alice logs in with: cert+password (1 certificate(s) bound)\n"


def test_bad_input_is_refused_clearly_and_changes_nothing(
        run: Run, tmp_path: Path) -> None:  # noqa: F811
    pki = ClientPKI(tmp_path / "pki")
    cert = pki.issue("bob")
    run("user", "add", "bob", "--password-stdin", stdin="a-long-enough-password\n")
    run("user", "add", "carol", "--password-stdin", stdin="a-long-enough-password\n")
    run("user", "cert", "add", "bob", "--cert", str(cert.cert_path))
    certs = ClientCertStore(run.store())
    for argv, message in [
        (("user", "cert", "add", "carol", "--cert", str(cert.cert_path)),
         "already bound to account 'bob'"),
        (("user", "cert", "add", "carol", "--cert", str(cert.key_path)),
         "not an X.509 certificate"),
        (("user", "cert", "add", "carol", "--cert", str(tmp_path / "missing.pem")),
         "cannot read"),
        (("user", "cert", "del", "bob", "00:11:22:33"), "has no certificate"),
        (("user", "cert", "del", "bob", "0011"), "at least 8"),
        (("user", "auth", "nobody", "cert"), "no account named 'nobody'"),
    ]:
        code, _, err = run(*argv)
        assert code != 0 and message in err, (argv, err)
    code, _, err = run("user", "auth", "bob", "certificate")
    assert code != 0 and "invalid choice" in err
    assert [b.name for b in certs.list()] == ["bob"]
    assert certs.auth_mode("bob") == certs.auth_mode("carol") == "password"
