#!/usr/bin/env python3
"""
FTPS data-channel throughput: rumpus-secure vs vsftpd vs pyftpdlib.

Starts all three servers on loopback, then measures with curl, under PROT P,
RETR and STOR of one file (1 GiB by default): MB/s, the median of N rounds
that alternate between the servers, printed side by side with ratios.

    python bench/ftps_throughput.py [--size-mib 1024] [--rounds 3] [--skip vsftpd]

Needs root for vsftpd (a system user, PAM); installs vsftpd with apt-get and
pyftpdlib with pip into a private directory when missing.  Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER = "rumpusbench"
PASSWORD = "bench-Passw0rd-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def curl(args: list[str]) -> tuple[float, float]:
    """
    Run curl; return its speed (MB/s) and the CPU seconds it used.
    """
    before = children_cpu()
    out = subprocess.run(
        ["curl", "-s", "-S", "--ssl-reqd", "-k", "--ftp-pasv", "--disable-epsv",
         "-u", f"{USER}:{PASSWORD}", *args],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out.strip()) / 1e6, children_cpu() - before


def process_cpu(pid: int) -> float | None:
    """
    CPU seconds of a server process and the children it has reaped (vsftpd
    runs a process per session), or None where /proc cannot tell.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_cpu_split(pid: int) -> tuple[float, float] | None:
    """
    (user, system) CPU seconds of a server process and its reaped children.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[13])) / tick,
            (int(fields[12]) + int(fields[14])) / tick)


def family_cpu_split(pid: int) -> tuple[float, float] | None:
    """
    L{process_cpu_split} of a process plus its live descendants (vsftpd's
    session processes are reaped only when the session ends).
    """
    total = process_cpu_split(pid)
    if total is None:
        return None
    user, system = total
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                queue.append(child)
                split = process_cpu_split(child)
                if split is not None:
                    # A child's own time only: its reaped children are
                    # counted by it, and they are not reaped yet.
                    user += split[0]
                    system += split[1]
    return user, system


class Server:
    name = "?"
    port = 0
    home: Path

    def url(self, path: str) -> str:
        return f"ftp://127.0.0.1:{self.port}/{path}"

    def cpu(self) -> float | None:
        proc = getattr(self, "proc", None)
        return process_cpu(proc.pid) if proc is not None else None

    def cpu_split(self) -> tuple[float, float] | None:
        proc = getattr(self, "proc", None)
        return family_cpu_split(proc.pid) if proc is not None else None

    def stop(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Rumpus(Server):
    name = "rumpus-secure"
    #: More server options, e.g. ["--data-tls-reuse", "optional"]
    #: (bench/small_files.py --rumpus-option).
    extra_args: list[str] = []

    def __init__(self, work: Path, big: Path) -> None:
        self.port = free_port()
        data = work / "rumpus-data"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        common = [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data)]
        subprocess.run([*common, "init"], check=True, capture_output=True, env=env)
        subprocess.run([*common, "user", "add", USER, "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, env=env,
                       capture_output=True)
        home = self.home = data / "files" / USER
        os.link(big, home / "big.bin")
        self.https_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(data),
             "--ftp", f"tcp:{self.port}:interface=127.0.0.1", "--ftps", "none",
             "--http", "none", "--https", f"tcp:{self.https_port}:interface=127.0.0.1",
             "--public-host", "127.0.0.1", *self.extra_args],
            cwd=work, env=env, stdout=open(work / "rumpus.log", "w"), stderr=subprocess.STDOUT,
        )
        wait_port(self.port)


class Vsftpd(Server):
    name = "vsftpd"

    def __init__(self, work: Path, big: Path, cert: Path, key: Path,
                 implicit: bool = False) -> None:
        if not shutil.which("vsftpd") and not Path("/usr/sbin/vsftpd").exists():
            subprocess.run(["apt-get", "install", "-y", "-qq", "vsftpd"], check=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                           capture_output=True)
        ensure_system_user()
        home = self.home = work / "vsftpd-home"
        home.mkdir()
        shutil.chown(home, USER)
        os.link(big, home / "big.bin")
        shutil.chown(home / "big.bin", USER)
        # The work directory must be reachable by the unprivileged user.
        for parent in (work,):
            parent.chmod(0o755)
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = work / "vsftpd.conf"
        conf.write_text("\n".join([
            "listen=YES", "listen_ipv6=NO", f"listen_port={self.port}",
            "listen_address=127.0.0.1", "anonymous_enable=NO", "local_enable=YES",
            "write_enable=YES", "ssl_enable=YES", f"rsa_cert_file={cert}",
            f"rsa_private_key_file={key}", "force_local_data_ssl=YES",
            "force_local_logins_ssl=YES", "require_ssl_reuse=NO",
            "pasv_enable=YES", "seccomp_sandbox=NO", "pam_service_name=vsftpd",
            "secure_chroot_dir=/var/run/vsftpd/empty", "background=NO",
            f"local_root={home}", f"implicit_ssl={'YES' if implicit else 'NO'}",
            "ssl_ciphers=HIGH", "",
        ]))
        self.proc = subprocess.Popen(["/usr/sbin/vsftpd", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)


class Pyftpdlib(Server):
    name = "pyftpdlib"

    def __init__(self, work: Path, big: Path, cert: Path, key: Path) -> None:
        lib = work / "pylib"
        try:
            import pyftpdlib  # noqa: F401
            path = ""
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target",
                            str(lib), "pyftpdlib", "pyopenssl"], check=True)
            path = str(lib)
        home = self.home = work / "pyftpd-home"
        home.mkdir()
        os.link(big, home / "big.bin")
        self.port = free_port()
        script = f"""
import sys
sys.path.insert(0, {path!r})
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer
a = DummyAuthorizer(); a.add_user({USER!r}, {PASSWORD!r}, {str(home)!r}, perm="elradfmw")
h = TLS_FTPHandler; h.certfile = {str(cert)!r}; h.keyfile = {str(key)!r}
h.tls_control_required = True; h.tls_data_required = True; h.authorizer = a
import logging; logging.disable(logging.INFO)
FTPServer(("127.0.0.1", {self.port}), h).serve_forever()
"""
        self.proc = subprocess.Popen([sys.executable, "-c", script],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)


def ensure_system_user() -> None:
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(block)


def warm_memory(work: Path, mib: int) -> None:
    """
    Write and delete C{mib} MiB once before measuring.

    On a virtual machine the first touch of guest memory that the host has
    not backed yet costs about ten times a later one (measured here: 340 MiB/s
    against 3 GiB/s for the same tmpfs writes); without this the first
    uploads measure the hypervisor, not the servers.
    """
    block = os.urandom(1 << 20)
    path = work / "warm.bin"
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    path.unlink()


def start_servers(servers: list[Server], work: Path, file: Path, skip: list[str],
                  order: tuple[str, ...] = ("vsftpd", "pyftpdlib")) -> Server:
    """
    Start rumpus-secure, then the peers not in C{skip} in C{order}, all on
    rumpus-secure's certificate, each with C{file} in its home; each one is
    appended to C{servers} as it starts (the caller stops them all).

    :returns: the rumpus-secure server.
    """
    rumpus = Rumpus(work, file)
    servers.append(rumpus)
    cert = work / "rumpus-data" / "tls" / "cert.pem"
    key = work / "rumpus-data" / "tls" / "key.pem"
    for name in order:
        if name not in skip:
            servers.append({"vsftpd": Vsftpd, "pyftpdlib": Pyftpdlib}[name](work, file, cert, key))
    return rumpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[],
                        help="server to skip: vsftpd or pyftpdlib")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="where the servers' files live [default: /dev/shm, a "
                             "tmpfs, so that disk write-back does not decide the "
                             "result; every server uses the same place]")
    args = parser.parse_args()
    if not shutil.which("curl"):
        print("curl is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rumpus-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"files in {work} ({args.size_mib} MiB)", flush=True)
        big = work / "big.bin"
        make_file(big, args.size_mib << 20)
        servers_count = 3 - len(args.skip)
        warm_memory(work, args.size_mib * (servers_count + 1))
        servers: list[Server] = []
        try:
            start_servers(servers, work, big, args.skip)
            results: dict[str, dict[str, list[float]]] = {
                s.name: {"RETR": [], "STOR": []} for s in servers}
            # CPU seconds per transfer: (client, server), and the server's
            # (user, system) apart.
            cpu: dict[str, dict[str, list[tuple[float, float | None]]]] = {
                s.name: {"RETR": [], "STOR": []} for s in servers}
            split: dict[str, dict[str, list[tuple[float, float]]]] = {
                s.name: {"RETR": [], "STOR": []} for s in servers}

            def measure(server: Server, op: str, curl_args: list[str]) -> float:
                before = server.cpu_split()
                speed, client = curl(curl_args)
                after = server.cpu_split()
                used = None
                if before is not None and after is not None:
                    user, system = after[0] - before[0], after[1] - before[1]
                    used = user + system
                    split[server.name][op].append((user, system))
                results[server.name][op].append(speed)
                cpu[server.name][op].append((client, used))
                return speed

            for round_ in range(args.rounds):
                for server in servers:
                    down = measure(server, "RETR", [server.url("big.bin"), "-o", "/dev/null",
                                                    "-w", "%{speed_download}"])
                    # The pages this upload will land on: touched once, so
                    # the upload is not charged the hypervisor's first touch
                    # (see warm_memory).
                    warm_memory(work, args.size_mib)
                    up = measure(server, "STOR", ["-T", str(big),
                                                  server.url(f"up-{round_}.bin"),
                                                  "-w", "%{speed_upload}"])
                    # Free the upload's memory again, so every upload lands
                    # on the same warm pages (see warm_memory).
                    (server.home / f"up-{round_}.bin").unlink()
                    print(f"round {round_ + 1} {server.name:14s} RETR {down:8.0f} MB/s"
                          f"  STOR {up:8.0f} MB/s", flush=True)
            print()
            print(f"{args.size_mib} MiB, PROT P, curl, median of {args.rounds} rounds")
            base = {k: statistics.median(v) for k, v in results["rumpus-secure"].items()}
            print(f"{'server':14s} {'RETR MB/s':>10s} {'STOR MB/s':>10s} "
                  f"{'rumpus/x RETR':>14s} {'rumpus/x STOR':>14s}")
            for name, r in results.items():
                down, up = statistics.median(r["RETR"]), statistics.median(r["STOR"])
                print(f"{name:14s} {down:10.0f} {up:10.0f} {base['RETR'] / down:14.2f}"
                      f" {base['STOR'] / up:14.2f}")
            # Who was the bottleneck: on two cores the client (curl) and the
            # server share the machine, so a server that leaves the client
            # at 100% of a core cannot go faster whatever it does.
            print()
            print(f"CPU seconds per GiB, median (client = curl; {os.cpu_count()} cores)")
            print(f"{'server':14s} {'RETR client':>12s} {'RETR server':>12s} "
                  f"{'STOR client':>12s} {'STOR server':>12s}")
            per_gib = 1024 / args.size_mib

            def median_cpu(values: list[float | None]) -> str:
                known = [v for v in values if v is not None]
                return f"{statistics.median(known) * per_gib:12.2f}" if known else f"{'n/a':>12s}"

            for name, ops in cpu.items():
                cells = []
                for op in ("RETR", "STOR"):
                    cells.append(median_cpu([c for c, _ in ops[op]]))
                    cells.append(median_cpu([s for _, s in ops[op]]))
                print(f"{name:14s} " + " ".join(cells))
            print()
            print("server CPU seconds per GiB, user and system apart, median "
                  "(uploads land on warmed memory)")
            print(f"{'server':14s} {'RETR user':>10s} {'RETR sys':>9s} {'STOR user':>10s} "
                  f"{'STOR sys':>9s}")
            medians: dict[str, dict[str, tuple[float, float]]] = {}
            for name, ops in split.items():
                if not ops["RETR"] or not ops["STOR"]:
                    continue
                medians[name] = {
                    op: (statistics.median(u for u, _ in ops[op]) * per_gib,
                         statistics.median(s for _, s in ops[op]) * per_gib)
                    for op in ("RETR", "STOR")}
                m = medians[name]
                print(f"{name:14s} {m['RETR'][0]:10.2f} {m['RETR'][1]:9.2f} "
                      f"{m['STOR'][0]:10.2f} {m['STOR'][1]:9.2f}")
            mine = medians.get("rumpus-secure")
            for name, m in medians.items():
                if name == "rumpus-secure" or mine is None:
                    continue
                print(f"rumpus-secure / {name} user CPU per GiB: RETR "
                      f"{mine['RETR'][0] / max(m['RETR'][0], 1e-9):.2f}x, STOR "
                      f"{mine['STOR'][0] / max(m['STOR'][0], 1e-9):.2f}x; system: RETR "
                      f"{mine['RETR'][1] / max(m['RETR'][1], 1e-9):.2f}x, STOR "
                      f"{mine['STOR'][1] / max(m['STOR'][1], 1e-9):.2f}x")
            print(f"load average {os.getloadavg()[0]:.2f}")
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
