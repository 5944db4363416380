"""
Tests for the ``rumpus-secure`` admin command.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from rumpus_secure import cli
from rumpus_secure.accounts import hashing
from rumpus_secure.accounts.hashing import verify_password
from rumpus_secure.accounts.store import ALL_PERMISSIONS, SQLiteAccountStore

REPO = Path(__file__).resolve().parent.parent
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
#: A password the policy accepts.
PW = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    In-process CLI runs hash with cheap parameters; the subprocess tests
    use the real ones.
    """
    monkeypatch.setattr(hashing, "DEFAULT_HASHER", CHEAP)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


class Run:
    """
    Calls L{cli.main} in-process with the data directory and captured output.
    """

    def __init__(self, data_dir: Path, capsys, monkeypatch) -> None:
        self.data_dir = data_dir
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["--data-dir", str(self.data_dir), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def store(self) -> SQLiteAccountStore:
        return SQLiteAccountStore.in_data_dir(self.data_dir, self.data_dir / "files")


@pytest.fixture
def bare_run(data_dir: Path, capsys, monkeypatch) -> Run:
    """
    L{Run} on a data directory that does not exist yet.
    """
    return Run(data_dir, capsys, monkeypatch)


@pytest.fixture
def run(bare_run: Run) -> Run:
    """
    L{Run} on a data directory that 'rumpus-secure init' created.
    """
    code, out, err = bare_run("init")
    assert code == 0, err
    return bare_run


def assert_one_error(code: int, err: str, fragment: str) -> None:
    assert code == 1
    assert err.startswith("rumpus-secure: error: "), err
    assert err.count("\n") == 1, err
    assert fragment in err
    assert "Traceback" not in err


def test_add_with_password_stdin(run: Run, data_dir: Path) -> None:
    code, out, err = run("user", "add", "alice", "--password-stdin", stdin="s3cret horse battery\n")
    assert (code, err) == (0, "")
    assert "added account alice" in out
    assert "s3cret" not in out
    account = run.store().get("alice")
    assert account.home == data_dir / "files" / "alice"
    assert account.home.is_dir()
    assert account.perms == ALL_PERMISSIONS
    assert verify_password(run.store().password_hash("alice"), "s3cret horse battery")


def test_password_stdin_strips_only_the_newline(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin="  spaced pw long \r\nsecond line\n")
    assert verify_password(run.store().password_hash("alice"), "  spaced pw long ")


def test_add_with_generated_password(run: Run) -> None:
    code, out, err = run("user", "add", "bob", "--generate-password")
    assert code == 0
    password = out.strip().splitlines()[-1].rsplit(" ", 1)[1]
    assert len(password) == 20
    assert verify_password(run.store().password_hash("bob"), password)
    # Shown once: a second account gets a different one.
    _, out2, _ = run("user", "add", "carol", "--generate-password")
    assert out2.strip().rsplit(" ", 1)[1] != password


def test_add_with_prompt(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["typed passphrase", "typed passphrase"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(answers))
    code, out, err = run("user", "add", "alice")
    assert code == 0
    assert verify_password(run.store().password_hash("alice"), "typed passphrase")


def test_prompt_mismatch_refused(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["one long passphrase", "two long passphrase"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(answers))
    code, out, err = run("user", "add", "alice")
    assert_one_error(code, err, "do not match")
    assert run.store().get("alice") is None


def test_prompt_without_terminal(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(cli.getpass, "getpass", eof)
    code, out, err = run("user", "add", "alice")
    assert_one_error(code, err, "--password-stdin")


def test_password_options_are_exclusive(run: Run) -> None:
    code, out, err = run("user", "add", "a", "--password-stdin", "--generate-password")
    assert code == 2
    assert "not allowed with" in err


def test_add_with_perms_and_home(run: Run, tmp_path: Path) -> None:
    home = tmp_path / "shared" / "dropbox"
    code, out, err = run(
        "user", "add", "drop", "--perms", "list,upload", "--home", str(home),
        "--allow-outside-root", "--password-stdin", stdin=PW + "\n",
    )
    assert code == 0, err
    account = run.store().get("drop")
    assert account.perms == {"list", "upload"}
    assert account.home == home and home.is_dir()
    assert "(outside root)" in out


def test_home_outside_root_needs_allow_outside_root(run: Run, data_dir: Path) -> None:
    """
    'user add bob --home /etc' was accepted; with the server running as root
    bob downloaded /etc/shadow.
    """
    code, out, err = run("user", "add", "bob", "--home", "/etc", "--password-stdin",
                         stdin=PW + "\n")
    assert_one_error(code, err, "home /etc is outside the file root")
    assert "--allow-outside-root" in err
    assert run.store().get("bob") is None
    # Inside the root (absolute or relative) needs nothing.
    inside = data_dir / "files" / "team" / "bob"
    assert run("user", "add", "bob", "--home", str(inside), "--password-stdin",
               stdin=PW + "\n")[0] == 0
    assert run("user", "add", "eve", "--home", "team/eve", "--password-stdin",
               stdin=PW + "\n")[0] == 0
    # A symbolic link inside the root that leads out counts as outside.
    (data_dir / "files" / "escape").symlink_to("/etc")
    code, out, err = run("user", "add", "mal", "--home", "escape", "--password-stdin",
                         stdin=PW + "\n")
    assert_one_error(code, err, "outside the file root")
    code, out, err = run("user", "add", "ops", "--home", "/etc", "--allow-outside-root",
                         "--password-stdin", stdin=PW + "\n")
    assert code == 0, err
    listing = run("user", "list")[1].splitlines()
    ops = next(line for line in listing if line.startswith("ops "))
    bob = next(line for line in listing if line.startswith("bob "))
    assert "/etc (outside root)" in ops and "(outside root)" not in bob


@pytest.mark.parametrize("password, fragment", [
    ("abc", "too short: 3 characters, at least 12"),
    ("password1234", "most common passwords"),
    ("PASSWORD1234", "most common passwords"),
    ("aaaaaaaaaaaaaaa", "fewer than 4 different characters"),
    ("carolcarolcarol", None),
])
def test_password_policy_on_add_and_passwd(run: Run, password: str,
                                           fragment: str | None) -> None:
    code, out, err = run("user", "add", "carol", "--password-stdin",
                         stdin=password + "\n")
    if fragment is None:
        assert code == 0, err
        return
    assert_one_error(code, err, fragment)
    assert "--generate-password" in err and password not in err
    assert run.store().get("carol") is None
    run("user", "add", "carol", "--generate-password")
    before = run.store().password_hash("carol")
    code, out, err = run("user", "passwd", "carol", "--password-stdin",
                         stdin=password + "\n")
    assert_one_error(code, err, fragment)
    assert run.store().password_hash("carol") == before


def test_password_policy_at_the_prompt_asks_once(run: Run,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "abc"

    monkeypatch.setattr(cli.getpass, "getpass", getpass)
    code, out, err = run("user", "add", "alice")
    assert_one_error(code, err, "too short")
    assert len(prompts) == 1


def test_password_min_length_option(tmp_path: Path, capsys) -> None:
    """
    The admin command reads --password-min-length from the server's config.
    """
    from rumpus_secure.config import ConfigError, build_config

    config = tmp_path / "server.toml"
    config.write_text(f'data-dir = "{tmp_path / "data"}"\npassword-min-length = 16\n')
    assert cli.main(["--config", str(config), "init"]) == 0
    out = io.StringIO()
    code = cli.main(["--config", str(config), "user", "add", "carol", "--password-stdin"],
                    stdin=io.StringIO("Tr0ub4dor&3x\n"), stdout=out)
    assert code == 1 and "at least 16 needed" in capsys.readouterr().err
    code = cli.main(["--config", str(config), "user", "add", "carol", "--password-stdin"],
                    stdin=io.StringIO("Tr0ub4dor&3x and more\n"), stdout=out)
    assert code == 0
    # At least 8 (NIST SP 800-63B), whatever the configuration says.
    assert build_config({"password-min-length": "8"}).password_min_length == 8
    with pytest.raises(ConfigError, match="from 8"):
        build_config({"password-min-length": "6"})


def test_passwd_admin_removes_the_first_start_password_file(run: Run,
                                                            data_dir: Path) -> None:
    run("user", "add", "admin", "--generate-password")
    saved = data_dir / "initial-admin-password"
    saved.write_text("first-start-password\n")
    code, out, err = run("user", "passwd", "bob", "--generate-password")
    assert saved.exists()  # an error, and another account: kept
    code, out, err = run("user", "passwd", "admin", "--password-stdin", stdin=PW + "\n")
    assert code == 0, err
    assert not saved.exists() and str(saved) in out


@pytest.mark.parametrize(
    "argv, stdin, fragment",
    [
        (["user", "add", "x", "--perms", "list,write", "--password-stdin"], PW + "\n",
         "unknown permission write"),
        (["user", "add", "x", "--perms", ",", "--password-stdin"], PW + "\n",
         "--perms needs at least one"),
        (["user", "add", ".x", "--password-stdin"], PW + "\n", "invalid account name"),
        (["user", "add", "x", "--password-stdin"], "\n", "empty password"),
        (["user", "add", "x", "--password-stdin"], "", "empty password"),
    ],
)
def test_add_bad_input(run: Run, argv: list[str], stdin: str, fragment: str) -> None:
    code, out, err = run(*argv, stdin=stdin)
    assert_one_error(code, err, fragment)


def test_add_duplicate(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    for name in ("alice", "ALICE"):
        code, out, err = run("user", "add", name, "--password-stdin", stdin=PW + "\n")
        assert_one_error(code, err, "'alice' already exists")


def test_passwd(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin="old horse battery\n")
    code, out, err = run("user", "passwd", "alice", "--password-stdin", stdin="new horse battery\n")
    assert code == 0
    assert "password of alice changed" in out
    stored = run.store().password_hash("alice")
    assert verify_password(stored, "new horse battery") and not verify_password(
        stored, "old horse battery")


def test_passwd_unlocks_and_says_so(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin="old horse battery\n")
    run("user", "lock", "alice", "--reason", "password seen in cleartext")
    code, out, err = run("user", "passwd", "alice", "--generate-password")
    assert code == 0
    assert "unlocked (was locked: password seen in cleartext)" in out
    assert not run.store().get("alice").locked


def test_passwd_unknown(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    code, out, err = run("user", "passwd", "ghost", "--password-stdin", stdin=PW + "\n")
    assert_one_error(code, err, "no account named 'ghost'")


def test_list(run: Run, data_dir: Path) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    run("user", "add", "bob", "--perms", "download,list", "--password-stdin", stdin=PW + "\n")
    run("user", "lock", "bob", "--reason", "left the company")
    code, out, err = run("user", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "HOME", "PERMS", "2FA", "LOCKED"]
    assert lines[1].split() == ["alice", str(data_dir / "files" / "alice"), "all", "off",
                                "no"]
    assert lines[2].split()[:5] == ["bob", str(data_dir / "files" / "bob"),
                                    "list,download", "off", "yes:"]
    assert lines[2].endswith("yes: left the company")


def test_two_factor_commands(run: Run, data_dir: Path) -> None:
    """
    ``user add --require-2fa``, ``user 2fa require|reset`` and the 2FA
    column of ``user list``; each is in the change log, so open FTP
    sessions of the account end.
    """
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    code, out, _ = run("user", "add", "bob", "--require-2fa", "--password-stdin",
                       stdin=PW + "\n")
    assert code == 0 and "two-factor login required" in out
    listed = {line.split()[0]: line.split()[3] for line in
              run("user", "list")[1].splitlines()[1:]}
    assert listed == {"alice": "off", "bob": "required"}
    store = run.store()
    reader = store.change_reader()
    before = reader.latest()
    assert run("user", "2fa", "require", "alice")[0] == 0
    assert store.two_factor("alice").required
    changes = reader.since(before).changes
    assert [(c.name, c.kind) for c in changes] == [("alice", "password")]
    # Enrolled, then reset: the secret and codes are gone, enrolment again.
    store.set_pending_secret("alice", b"sealed")
    assert store.enable_two_factor("alice", b"sealed", 5, [b"d1", b"d2"])
    assert run("user", "list")[1].splitlines()[1].split()[3] == "on"
    assert run("user", "2fa", "reset", "alice")[0] == 0
    row = store.two_factor("alice")
    assert row.secret is None and row.required and row.recovery_left == 0
    code, _, err = run("user", "2fa", "reset", "nobody")
    assert code == 1 and "no account named 'nobody'" in err
    reader.close()


def test_list_empty(run: Run) -> None:
    run.store()
    assert run("user", "list")[1] == "no accounts\n"


@pytest.mark.parametrize("argv", [
    ["user", "add", "carol", "--password-stdin"],
    ["user", "list"],
    ["user", "passwd", "carol", "--generate-password"],
    ["user", "lock", "carol", "--reason", "x"],
    ["audit"],
    ["ban", "list"],
    ["ban", "lift", "192.0.2.1"],
])
def test_commands_refuse_a_data_dir_without_a_database(
    bare_run: Run, data_dir: Path, argv: list[str]
) -> None:
    """
    Run in the wrong folder, 'user add carol' created a second, empty
    database the server never read, and 'audit' said "No audit log yet".
    """
    code, out, err = bare_run(*argv, stdin=PW + "\n")
    assert_one_error(code, err, f"no accounts database at {data_dir.absolute()}")
    assert "rumpus-secure init" in err and "--data-dir" in err
    assert not data_dir.exists()


def test_init_creates_the_database_once(bare_run: Run, data_dir: Path) -> None:
    code, out, err = bare_run("init")
    assert (code, err) == (0, "")
    assert (data_dir / "accounts.sqlite3").is_file()
    assert str(data_dir.absolute()) in out
    assert bare_run("user", "list")[:2] == (0, "no accounts\n")
    assert_one_error(*bare_run("init")[::2], "already exists")


def test_config_from_the_environment(tmp_path: Path, capsys,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """
    RUMPUS_SECURE_CONFIG names the file when --config is not given, for the
    admin command and the server alike.
    """
    from rumpus_secure import tap

    data = tmp_path / "env-data"
    config = tmp_path / "server.toml"
    config.write_text(f'data-dir = "{data}"\n')
    monkeypatch.setenv("RUMPUS_SECURE_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    assert (data / "accounts.sqlite3").is_file()
    assert not (tmp_path / "rumpus-data").exists()
    options = tap.Options()
    options.parseOptions([])
    assert options.server_config.data_dir == data
    # --config still wins over the environment.
    other = tmp_path / "other.toml"
    other.write_text(f'data-dir = "{tmp_path / "other"}"\n')
    assert cli.main(["--config", str(other), "user", "list"]) == 1
    assert "other" in capsys.readouterr().err


def test_lock_unlock(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    code, out, err = run("user", "lock", "alice", "--reason", "on holiday")
    assert code == 0
    assert run.store().get("alice").lock_reason == "on holiday"
    code, out, err = run("user", "unlock", "alice")
    assert code == 0
    assert not run.store().get("alice").locked


def test_lock_needs_reason(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    code, out, err = run("user", "lock", "alice")
    assert code == 2
    assert "--reason" in err


def test_lock_unknown(run: Run) -> None:
    run.store()
    code, out, err = run("user", "lock", "ghost", "--reason", "x")
    assert_one_error(code, err, "no account named 'ghost'")
    code, out, err = run("user", "unlock", "ghost")
    assert_one_error(code, err, "no account named 'ghost'")


def test_del_keeps_home(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    home = run.store().get("alice").home
    code, out, err = run("user", "del", "alice")
    assert code == 0
    assert "left in place" in out and str(home) in out
    assert home.is_dir()
    assert run.store().get("alice") is None
    code, out, err = run("user", "del", "alice")
    assert_one_error(code, err, "no account named 'alice'")


def test_root_option(run: Run, tmp_path: Path) -> None:
    code, out, err = run(
        "--root", str(tmp_path / "srv"), "user", "add", "alice",
        "--password-stdin", stdin=PW + "\n",
    )
    assert code == 0, err
    assert (tmp_path / "srv" / "alice").is_dir()


def test_config_file(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.toml"
    data = tmp_path / "server-data"
    root = tmp_path / "server-files"
    config.write_text(f'data-dir = "{data}"\nroot = "{root}"\nftp = "tcp:2121"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO(PW + "\n"))
    assert cli.main(["--config", str(config), "init"]) == 0
    code = cli.main(["--config", str(config), "user", "add", "alice", "--password-stdin"])
    assert code == 0, capsys.readouterr().err
    assert (data / "accounts.sqlite3").exists()
    assert (root / "alice").is_dir()


def test_bad_config_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "server.toml"
    config.write_text("no-such-option = 1\n")
    code = cli.main(["--config", str(config), "user", "list"])
    assert_one_error(code, capsys.readouterr().err, "unknown option")
    code = cli.main(["--config", str(tmp_path / "missing.toml"), "user", "list"])
    assert_one_error(code, capsys.readouterr().err, "does not exist")


def test_data_dir_that_cannot_be_created(tmp_path: Path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(sys, "stdin", io.StringIO(PW + "\n"))
    code = cli.main(["--data-dir", str(blocker / "data"), "init"])
    assert_one_error(code, capsys.readouterr().err, "cannot create data directory")


def test_default_data_dir(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PW + "\n"))
    assert cli.main(["init"]) == 0
    assert cli.main(["user", "add", "alice", "--password-stdin"]) == 0
    assert (tmp_path / "rumpus-data" / "accounts.sqlite3").exists()
    assert (tmp_path / "rumpus-data" / "files" / "alice").is_dir()


def test_usage_errors(capsys) -> None:
    assert cli.main([]) == 2
    assert cli.main(["user"]) == 2
    assert cli.main(["user", "frobnicate"]) == 2
    assert cli.main(["--help"]) == 0
    assert "user" in capsys.readouterr().out


def test_adding_a_command_is_one_registration(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def add_hello(subparsers) -> None:
        hello = subparsers.add_parser("hello")
        hello.set_defaults(handler=lambda args, context: context.say(
            f"data in {context.config.data_dir}") or 0)

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_hello])
    assert cli.main(["--data-dir", "/srv/x", "hello"]) == 0
    assert capsys.readouterr().out == "data in /srv/x\n"


def _subprocess(*argv: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "rumpus_secure.cli", *argv],
        input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
    )


def test_subprocess_change_seen_by_open_store(tmp_path: Path) -> None:
    """
    The real command, real argon2 parameters: a password changed by the CLI
    while the server's store is open is used at the very next check.
    """
    data = tmp_path / "data"
    server_store = SQLiteAccountStore.in_data_dir(data, data / "files")
    server_store.add("alice", "before horse battery")
    before = server_store.get("alice")

    result = _subprocess("--data-dir", str(data), "user", "passwd", "alice",
                         "--password-stdin", stdin="after horse battery\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "password of alice changed" in result.stdout

    stored = server_store.password_hash("alice")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(stored, "after horse battery")
    assert server_store.get("alice").version == before.version + 1

    result = _subprocess("--data-dir", str(data), "user", "lock", "alice",
                         "--reason", "test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert server_store.get("alice").locked


def test_subprocess_error_is_one_line(tmp_path: Path) -> None:
    assert _subprocess("--data-dir", str(tmp_path / "d"), "init", cwd=tmp_path
                       ).returncode == 0
    result = _subprocess("--data-dir", str(tmp_path / "d"), "user", "add", "bad/name",
                         "--password-stdin", stdin=PW + "\n", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("rumpus-secure: error: invalid account name")
    assert result.stderr.count("\n") == 1


# -- ban ------------------------------------------------------------------


def test_ban_list_and_lift(run: Run, data_dir: Path) -> None:
    import time

    from rumpus_secure.accounts.bans import Ban, SQLiteBanStore

    run("user", "add", "alice", "--password-stdin", stdin="s3cret horse battery\n")
    assert run("ban", "list")[:2] == (0, "no address is banned\n")
    bans = SQLiteBanStore(data_dir / "accounts.sqlite3")
    now = time.time()
    bans.save(Ban("192.0.2.7", now + 600, 1, "login_failed", now))
    bans.save(Ban("2001:db8::1", now + 60, 0, "tls_failed", now))
    bans.save(Ban("192.0.2.8", now - 60, 0, "login_failed", now - 700))  # over
    code, out, err = run("ban", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ADDRESS", "BANNED", "UNTIL", "(UTC)", "TIME", "LEFT",
                                "BAN", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ["2001:db8::1", "192.0.2.7"]
    assert "1 min" in lines[1] and "first" in lines[1] and "tls_failed" in lines[1]
    assert "10 min" in lines[2] and "2nd (time x2)" in lines[2]
    assert "login_failed" in lines[2] and "level" not in out
    # An IPv4-mapped form names the same client.
    code, out, err = run("ban", "lift", "::ffff:192.0.2.7")
    assert (code, err) == (0, "") and "192.0.2.7 lifted" in out
    assert {b.address for b in bans.load(0)} == {"2001:db8::1", "192.0.2.8"}
    assert_one_error(*run("ban", "lift", "192.0.2.99")[::2], "192.0.2.99 is not banned")
    assert_one_error(*run("ban", "lift", "not-an-ip")[::2],
                     "'not-an-ip' is not an IP address")


def test_human_durations() -> None:
    assert [cli.human_duration(s) for s in (0, 44.6, 60, 61, 3599, 3600, 3660,
                                            86400, 90000, 200000)] == [
        "0 s", "45 s", "1 min", "2 min", "1 h", "1 h", "1 h 1 min",
        "1 d", "1 d 1 h", "2 d 7 h"]


def test_ban_without_a_database_is_one_line(bare_run: Run) -> None:
    code, _, err = bare_run("ban", "list")
    assert_one_error(code, err, "no accounts database")


def test_user_perms_replaces_the_set_and_logs_the_change(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    run("user", "add", "bob", "--password-stdin", stdin=PW + "\n")
    reader = run.store().change_reader()
    before = reader.latest()
    code, out, err = run("user", "perms", "alice", "list,download")
    assert (code, err) == (0, "")
    assert "alice: permissions list,download" in out
    assert run.store().get("alice").perms == frozenset({"list", "download"})
    assert run.store().get("bob").perms == ALL_PERMISSIONS  # the other account: untouched
    # The change log row is what open sessions hear of (the account watcher).
    changes = reader.since(before).changes
    assert [(c.name, c.kind, c.detail) for c in changes] == [("alice", "perms", "list,download")]
    code, out, err = run("user", "perms", "alice", "all")
    assert code == 0 and run.store().get("alice").perms == ALL_PERMISSIONS
    reader.close()


def test_user_perms_refuses_bad_lists(run: Run) -> None:
    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    code, out, err = run("user", "perms", "alice", "list,fly")
    assert_one_error(code, err, "unknown permission fly")
    code, out, err = run("user", "perms", "alice", " , ")
    assert_one_error(code, err, "user lock")
    code, out, err = run("user", "perms", "ghost", "list")
    assert_one_error(code, err, "no account named 'ghost'")
    assert run.store().get("alice").perms == ALL_PERMISSIONS


def test_share_list_and_revoke(run: Run, data_dir: Path) -> None:
    """``share list|revoke``: the admin sees every link and its use, and ends one."""
    import time as _time

    from rumpus_secure.shares import SQLiteShareStore

    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    shares = SQLiteShareStore(data_dir / "accounts.sqlite3")
    share, token = shares.create("alice", "download", "/a.txt", _time.time() + 3600,
                                 None, 2, None, "")
    bobs, _ = shares.create("bob", "dropbox", "/in", _time.time() + 3600, None, None,
                            None, "")
    shares.take_use(share.id)
    shares.record(share.id, "download", "192.0.2.9", "a.txt")
    code, out, _ = run("share", "list", "--events", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "OWNER", "KIND"]
    row = next(line for line in lines if line.startswith(share.id)).split()
    assert row[1:4] == ["alice", "download", "active"] and "1/2" in row
    assert any("192.0.2.9" in line for line in lines)
    assert [line.split()[0] for line in run("share", "list", "--owner", "bob")[1]
            .splitlines()[1:]] == [bobs.id]
    assert run("share", "revoke", share.id)[0] == 0
    assert shares.get(share.id).state(_time.time()) == "revoked"
    assert shares.get(bobs.id).state(_time.time()) == "active"
    code, _, err = run("share", "revoke", share.id)
    assert code == 1 and "already been revoked" in err
    code, _, err = run("share", "revoke", "nope")
    assert code == 1 and "no share link" in err


def test_share_list_escapes_what_visitors_wrote(run: Run, data_dir: Path) -> None:
    """A drop-box visitor's file name with ESC/BEL must not reach the terminal raw."""
    import time as _time

    from rumpus_secure.shares import SQLiteShareStore

    run("user", "add", "alice", "--password-stdin", stdin=PW + "\n")
    shares = SQLiteShareStore(data_dir / "accounts.sqlite3")
    box, _ = shares.create("alice", "dropbox", "/in\x1b]0;x\x07", _time.time() + 3600,
                           None, None, None, "")
    other, _ = shares.create("alice", "dropbox", "/other", _time.time() + 3600,
                             None, None, None, "")
    shares.record(box.id, "upload", "192.0.2.9",
                  "evil\x1b[2J\x1b]0;pwned\x07\u202etxt.exe", 3)
    shares.record(other.id, "upload", "192.0.2.8", "plain report.txt", 4)
    code, out, _ = run("share", "list", "--events", "5")
    assert code == 0
    assert not any(c in out for c in "\x1b\x07\u202e")
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\u202etxt.exe" in out
    assert "/in\\x1b]0;x\\x07" in out
    assert "plain report.txt" in out  # the other link's event, as it was
