#!/usr/bin/env python3
"""
Abuse benchmark: each attack against a running server, with honest FTPS
logins measured meanwhile.

For every attack row it measures the honest clients' login latency (implicit
FTPS: connect, TLS, USER/PASS, QUIT; ``--honest`` clients in a loop from
127.0.0.1) for ``--seconds`` alone ("before"), then again while the attack
runs from an address of its own ("during"), and samples the server's
resident memory; it prints one row per attack:

    ATTACK                     BEFORE p99  DURING p99  LOGINS  PEAK RSS  NOTE

By default it starts its own server (``twistd -n rumpus-secure``, every
listener on a free loopback port, a fresh data directory,
``--login-cache-time 0`` so every honest login pays argon2id,
``--safe-list 127.0.0.1/32`` so the honest clients are never limited; the
attackers use 127.0.0.2 and up, which are not safe-listed).  ``--ban off``
starts it with ``--ban-threshold 0``: the attack then runs unbanned, which
shows what the isolation alone is worth.

    python bench/abuse.py                      # every attack, 8 s per phase
    python bench/abuse.py --attack 1 --seconds 5 --ban off

Adding an attack: write ``def attack_N_name(target, stop, stats)`` that
runs until C{stop} is set (C{stats} is a dict for the NOTE column), and add
it to L{ATTACKS}.  Not a test.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
USER = "honest"
PASSWORD = "honest-Passw0rd-not-secret"
VICTIM = "victim"
VICTIM_PASSWORD = "victim-Passw0rd-not-secret"
ATTACKER = "127.0.0.2"
LISTENERS = ("ftp", "ftps", "http", "https")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the server under test ------------------------------------------------------


@dataclass
class Target:
    """
    Where the server listens, and its process id (for memory).
    """

    host: str
    ports: dict[str, int]
    pid: int | None
    user: str = USER
    password: str = PASSWORD
    #: The server's data directory, when we started it (attack 5 needs it).
    data: Path | None = None


class OwnServer:
    """
    A server of our own on free loopback ports, with the accounts we need.
    """

    def __init__(self, work: Path, ban: bool, repo: Path = REPO) -> None:
        self.work = work
        data = work / "data"
        env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
        cli = [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data)]
        # Admin commands need the accounts database 'init' creates.
        subprocess.run([*cli, "init"], check=True, capture_output=True, env=env)
        for name, password in ((USER, PASSWORD), (VICTIM, VICTIM_PASSWORD)):
            subprocess.run([*cli, "user", "add", name, "--password-stdin"],
                           input=password + "\n", text=True, env=env, check=True,
                           capture_output=True)
        self.ports = {name: free_port() for name in LISTENERS}
        listen = []
        for name, port in self.ports.items():
            listen += [f"--{name}", f"tcp:{port}:interface=127.0.0.1"]
        extra = ["--login-cache-time", "0", "--safe-list", "127.0.0.1/32"]
        if not ban:
            extra += ["--ban-threshold", "0"]
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(data), *listen,
             "--public-host", "127.0.0.1", *extra],
            env=env, cwd=work, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        waiting = set(self.ports.values())
        while waiting:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {work / 'server.log'}")
            if time.monotonic() > deadline:
                raise SystemExit("server did not start listening")
            for port in list(waiting):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    waiting.discard(port)
                except OSError:
                    pass
            time.sleep(0.1)

    def target(self) -> Target:
        return Target("127.0.0.1", self.ports, self.proc.pid, data=self.work / "data")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# -- the honest client -----------------------------------------------------------


def honest_login(target: Target, context: ssl.SSLContext) -> float:
    """
    One implicit FTPS login of the honest account from 127.0.0.1 (safe-listed);
    seconds from connect to the 230.
    """
    return timed_login(target, target.user, target.password, "127.0.0.1", context)


def measure(target: Target, seconds: float, clients: int,
            memory: list[int]) -> tuple[list[float], int]:
    """
    Honest logins for C{seconds}: their latencies and how many failed;
    the server's resident memory is sampled into C{memory}.
    """
    latencies: list[float] = []
    errors = [0]
    stop = threading.Event()
    context = tls_context()

    def loop() -> None:
        while not stop.is_set():
            try:
                latencies.append(honest_login(target, context))
            except (OSError, RuntimeError):
                errors[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if target.pid is not None:
            memory.append(rss_kib(target.pid))
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    return latencies, errors[0]


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# -- the attacks ------------------------------------------------------------------


def _pipelined_flood(target: Target, stop: threading.Event, stats: dict[str, Any],
                     make_request: Callable[[int], bytes], batch: int = 400) -> None:
    """
    Connections from L{ATTACKER} to the plain HTTP port, each pipelining
    C{batch} requests and reading every answer, until C{stop}.
    """
    connections = answered = forbidden = 0
    n = 0
    while not stop.is_set():
        try:
            with socket.create_connection((target.host, target.ports["http"]), 30,
                                          source_address=(ATTACKER, 0)) as conn:
                payload = b"".join(make_request(n + i) for i in range(batch))
                n += batch
                connections += 1
                conn.sendall(payload)
                seen = b""
                conn.settimeout(1.0)
                while not stop.is_set() and seen.count(b"HTTP/1.1 ") < batch:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    seen = seen[-16:] + chunk if len(seen) > 1 << 20 else seen + chunk
                answered += seen.count(b"HTTP/1.1 ")
                forbidden += seen.count(b"HTTP/1.1 403")
        except OSError:
            time.sleep(0.05)
    stats["note"] = (f"{connections} connections x {batch} pipelined: "
                     f"{answered} answered ({forbidden} x 403)")


def attack_1_cleartext_basic(target: Target, stop: threading.Event,
                             stats: dict[str, Any]) -> None:
    """
    Issue #12.1: one connection pipelines 400 requests with
    ``Authorization: Basic`` (a different password each) to the plain port.
    """
    def request(i: int) -> bytes:
        token = base64.b64encode(f"{VICTIM}:flood-guess-{i}".encode())
        return (b"GET /files/ HTTP/1.1\r\nHost: " + target.host.encode()
                + b"\r\nAuthorization: Basic " + token + b"\r\n\r\n")

    _pipelined_flood(target, stop, stats, request)


def attack_1_cleartext_form(target: Target, stop: threading.Event,
                            stats: dict[str, Any]) -> None:
    """
    Issue #12.1: the same flood as ``POST /login`` forms.
    """
    def request(i: int) -> bytes:
        body = f"username={VICTIM}&password=flood-guess-{i}".encode()
        return (b"POST /login HTTP/1.1\r\nHost: " + target.host.encode()
                + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    _pipelined_flood(target, stop, stats, request)


def timed_login(target: Target, user: str, password: str, source: str,
                context: ssl.SSLContext) -> float:
    """
    One implicit FTPS login from C{source}; seconds from connect to the
    230 (raises if refused).
    """
    started = time.perf_counter()
    with socket.create_connection((target.host, target.ports["ftps"]), 60,
                                  source_address=(source, 0)) as raw:
        with context.wrap_socket(raw) as tls:
            stream = tls.makefile("rb")
            if not stream.readline().startswith(b"220"):
                raise RuntimeError("no greeting")
            tls.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
            stream.readline()
            reply = stream.readline()
            elapsed = time.perf_counter() - started
            if not reply.startswith(b"230"):
                raise RuntimeError(f"login refused: {reply!r}")
            tls.sendall(b"QUIT\r\n")
    return elapsed


def _wave(hosts: list[str], per_host: int, send: Callable[[str, int], None]) -> list[
        threading.Thread]:
    """
    C{per_host} connections from each of C{hosts} at once, each running
    C{send(host, i)}; the threads, started.
    """
    threads = [threading.Thread(target=send, args=(host, i), daemon=True)
               for host in hosts for i in range(per_host)]
    for thread in threads:
        thread.start()
    return threads


def _victim_note(stats: dict[str, Any], latencies: list[float], failed: int,
                 what: str) -> None:
    if latencies:
        stats["note"] = (f"{what}: {len(latencies)} waves, victim login p50 "
                         f"{statistics.median(latencies) * 1000:.0f} ms, max "
                         f"{max(latencies) * 1000:.0f} ms, {failed} failed")
    else:
        stats["note"] = f"{what}: no wave finished ({failed} failed)"


def attack_r3_3_cleartext_name_flood(target: Target, stop: threading.Event,
                                  stats: dict[str, Any]) -> None:
    """
    Round 3, finding 3: random cleartext passwords for the victim's name,
    4 per address from 30 addresses (under the ban) on the plain FTP port;
    then the victim's own FTPS login (right password), timed.  Each wave
    uses fresh addresses.
    """
    context = tls_context()
    latencies: list[float] = []
    failed = 0
    wave = 0
    while not stop.is_set():
        wave += 1
        hosts = [f"127.3.{wave % 250}.{i}" for i in range(1, 31)]

        def send(host: str, i: int, wave: int = wave) -> None:
            try:
                with socket.create_connection((target.host, target.ports["ftp"]), 30,
                                              source_address=(host, 0)) as conn:
                    conn.recv(1024)
                    conn.sendall(f"USER {VICTIM}\r\nPASS random-{wave}-{host}-{i}\r\n".encode())
                    conn.settimeout(30)
                    while conn.recv(1024):
                        pass
            except OSError:
                pass

        threads = _wave(hosts, 4, send)
        time.sleep(0.3)  # the PASS lines are read and queued
        try:
            latencies.append(timed_login(target, VICTIM, VICTIM_PASSWORD,
                                         f"127.4.{wave % 250}.1", context))
        except (OSError, RuntimeError):
            failed += 1
        for thread in threads:
            thread.join(30)
    _victim_note(stats, latencies, failed, "120 cleartext PASS/wave")


def attack_r3_4_guess_flood(target: Target, stop: threading.Event,
                         stats: dict[str, Any]) -> None:
    """
    Round 3, finding 4: 240 wrong FTPS passwords for the victim from 60
    addresses (4 each, under the ban), and an honest login of another
    account (not cached: ``--login-cache-time 0``) from a fresh address in
    the middle, timed.  Each wave uses fresh addresses.
    """
    context = tls_context()
    latencies: list[float] = []
    failed = 0
    wave = 0
    while not stop.is_set():
        wave += 1
        hosts = [f"127.5.{wave % 250}.{i}" for i in range(1, 61)]
        sent = threading.Semaphore(0)

        def send(host: str, i: int, sent: threading.Semaphore = sent) -> None:
            try:
                with socket.create_connection((target.host, target.ports["ftps"]), 60,
                                              source_address=(host, 0)) as raw:
                    with context.wrap_socket(raw) as tls:
                        tls.recv(1024)
                        tls.sendall(f"USER {VICTIM}\r\nPASS wrong-{i}\r\n".encode())
                        sent.release()
                        tls.settimeout(60)
                        while tls.recv(1024):
                            pass
            except OSError:
                sent.release()

        threads = _wave(hosts, 4, send)
        for _ in range(len(threads) // 2):  # half the flood is in
            sent.acquire(timeout=30)
        try:
            latencies.append(timed_login(target, target.user, target.password,
                                         f"127.6.{wave % 250}.1", context))
        except (OSError, RuntimeError):
            failed += 1
        for thread in threads:
            thread.join(60)
    _victim_note(stats, latencies, failed, "240 wrong FTPS PASS/wave")


def attack_2_bodies(target: Target, stop: threading.Event, stats: dict[str, Any]) -> None:
    """
    Issue #12.2: 128 MiB request bodies without a cookie, one after another:
    multipart to a page that does not exist, to a form page and to the
    upload path, and a chunked login form (``bench/abuse_web.py``).
    """
    from abuse_web import MIB, send_body

    answers: dict[int, int] = {}
    read = 0
    while not stop.is_set():
        for path, chunked in (("/no/such/page", False), ("/mkdir", False),
                              ("/upload?dir=/", False), ("/login", True)):
            if stop.is_set():
                break
            result = send_body(target.ports["https"], path, 128 * MIB, chunked=chunked,
                               limit_s=30.0)
            answers[result["status"]] = answers.get(result["status"], 0) + 1
            read += result["sent"]
    count = sum(answers.values())
    stats["note"] = (f"{count} bodies of 128 MiB: answers {answers}; "
                     f"{read / max(count, 1) / MIB:.1f} MiB sent per body before the answer")


def attack_3_handshakes(target: Target, stop: threading.Event,
                        stats: dict[str, Any]) -> None:
    """
    Issue #12.3: 500 TLS handshakes that never finish, from 25 addresses,
    half on the implicit port and half after ``AUTH TLS``, held open
    (``bench/abuse_ftp.py``).
    """
    from abuse_ftp import STALL_SOURCES, STALLS, _dropped, _stall

    held = []
    for n in range(STALLS):
        after_auth = n % 2 == 1
        sock = _stall(target.ports["ftp" if after_auth else "ftps"],
                      STALL_SOURCES[n % len(STALL_SOURCES)], after_auth)
        if sock is not None:
            held.append(sock)
    stop.wait()
    dropped = _dropped(held)
    for sock in held:
        sock.close()
    stats["note"] = (f"{len(held)} stalled handshakes opened; the server had "
                     f"dropped {dropped} of them by the end")


def _hash_forever(target: Target, stop: threading.Event, done: list[float]) -> None:
    context = tls_context()
    while not stop.is_set():
        try:
            with socket.create_connection((target.host, target.ports["ftps"]), 30,
                                          source_address=(ATTACKER, 0)) as raw:
                with context.wrap_socket(raw) as tls:
                    tls.settimeout(120)
                    stream = tls.makefile("rb")
                    stream.readline()
                    tls.sendall(f"USER {VICTIM}\r\nPASS {VICTIM_PASSWORD}\r\n".encode())
                    stream.readline()
                    if not stream.readline().startswith(b"230"):
                        time.sleep(0.2)
                        continue
                    while not stop.is_set():
                        started = time.monotonic()
                        tls.sendall(b"HASH big.bin\r\n")
                        if not stream.readline().startswith(b"213"):
                            break
                        done.append(time.monotonic() - started)
        except OSError:
            time.sleep(0.2)


def attack_5_hash(target: Target, stop: threading.Event, stats: dict[str, Any]) -> None:
    """
    Issue #12.5: ten sessions of another account ``HASH`` a 768 MiB file
    again and again (``bench/abuse_ftp.py`` also times login + NLST).
    """
    if target.data is None:
        stats["note"] = "skipped: needs the server's data directory (own server)"
        return
    path = target.data / "files" / VICTIM / "big.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(768):
            f.write(block)
    done: list[float] = []
    workers = [threading.Thread(target=_hash_forever, args=(target, stop, done))
               for _ in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    path.unlink()
    stats["note"] = (f"10 sessions hashing a 768 MiB file: {len(done)} HASH done"
                     + (f", each {statistics.median(done):.1f} s (median)" if done else ""))


#: (row id, label, function); other attacks are added here.
ATTACKS: list[tuple[str, str, Callable[[Target, threading.Event, dict[str, Any]], None]]] = [
    ("1", "1 cleartext flood: Basic", attack_1_cleartext_basic),
    ("1", "1 cleartext flood: POST /login", attack_1_cleartext_form),
    ("2", "2 request bodies (128 MiB)", attack_2_bodies),
    ("3", "3 stalled TLS handshakes", attack_3_handshakes),
    ("5", "5 HASH of big files", attack_5_hash),
    ("r3.3", "r3.3 cleartext PASS for one name", attack_r3_3_cleartext_name_flood),
    ("r3.4", "r3.4 guesses from 60 addresses", attack_r3_4_guess_flood),
]


# -- rows ----------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    before: float
    during: float
    logins: int
    errors: int
    peak_kib: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_row(target: Target, label: str, attack: Callable[..., None], seconds: float,
            clients: int) -> Row:
    memory: list[int] = []
    before, _ = measure(target, seconds, clients, memory)
    stop = threading.Event()
    stats: dict[str, Any] = {}
    attacker = threading.Thread(target=attack, args=(target, stop, stats))
    attacker.start()
    time.sleep(0.5)  # let the attack get going
    during, errors = measure(target, seconds, clients, memory)
    stop.set()
    attacker.join()
    return Row(label, p99(before), p99(during), len(during), errors,
               max(memory, default=0), stats.get("note", ""))


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    header = ("ATTACK", "BEFORE p99", "DURING p99", "LOGINS", "ERRORS", "PEAK RSS", "NOTE")
    lines = [header] + [
        (r.label, f"{r.before * 1000:.0f} ms", f"{r.during * 1000:.0f} ms", str(r.logins),
         str(r.errors), f"{r.peak_kib / 1024:.0f} MiB" if r.peak_kib else "?", r.note)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths))
              + "  " + line[-1], file=out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append",
                        help="run only this row id (repeatable); default: all")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="length of each measuring phase")
    parser.add_argument("--honest", type=int, default=2, help="honest clients")
    parser.add_argument("--ban", choices=("on", "off"), default="on",
                        help="start the server with banning on (default) or off")
    parser.add_argument("--target", metavar="HOST",
                        help="attack a running server instead of starting one "
                        "(then give --ports, --pid, --user, --password)")
    parser.add_argument("--ports", help="ftp,ftps,http,https port numbers")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--server-repo", type=Path, default=REPO,
                        help="run the server from this checkout (to compare versions)")
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args()
    chosen = [a for a in ATTACKS if not args.attack or a[0] in args.attack]
    work = Path(tempfile.mkdtemp(prefix="rumpus-abuse-"))
    server = None
    try:
        if args.target:
            ports = dict(zip(LISTENERS, (int(p) for p in (args.ports or "").split(","))))
            target = Target(args.target, ports, args.pid, args.user, args.password)
        else:
            server = OwnServer(work, ban=args.ban == "on", repo=args.server_repo)
            target = server.target()
        rows = [run_row(target, label, attack, args.seconds, args.honest)
                for _, label, attack in chosen]
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"# {args.honest} honest FTPS clients, {args.seconds:.0f} s per phase, "
              f"ban {args.ban}; peak RSS sampled every 50 ms; load average {load}")
        print_table(rows)
        if target.pid is not None:
            print(f"# server VmHWM (life-time peak): {rss_kib(target.pid, 'VmHWM') / 1024:.0f} MiB")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
