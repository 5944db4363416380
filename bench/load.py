#!/usr/bin/env python3
"""
Load and abuse benchmark: many FTPS sessions, idle logins and a guesser.

Starts ``twistd -n rumpus-secure`` (implicit FTPS only, free loopback port,
a fresh data directory), then, with an asyncio TLS client:

1. first vs repeat login rate with 8 concurrent clients: "first" runs against
   a second server with ``--login-cache-time 0`` (every login pays argon2id),
   "repeat" against the main server, whose verifier cache is warm;
2. opens IDLE logged-in control connections and leaves them open (memory per
   idle connection from VmRSS before and after);
3. runs SESSIONS concurrent honest sessions (login, PBSZ/PROT P, LIST, RETR
   and STOR of a small file over TLS data connections, QUIT) while GUESSERS
   clients bound to 127.0.0.2 hammer wrong passwords until they are banned.

Prints logins/s, transfer errors, p99 login latency of the honest clients,
the guesser's fate, and the server's peak memory (VmHWM).

    python bench/load.py                       # 500 sessions, 2000 idle
    python bench/load.py --sessions 50 --idle 100
    python bench/load.py --idle 10000 --sessions 0 --skip-first --no-vsftpd

Between 1 and 2 it measures the login latency one login at a time, and
again with the IDLE sessions held (target: within 10%); ``--sessions 0``
stops after that.

The run passes ``--safe-list 127.0.0.1/32`` (honest clients exempt from the
per-address limit; 127.0.0.2, the guesser, is not) and ``--max-connections``
above SESSIONS + IDLE, ``--max-sessions-per-account 0`` (a few accounts
serve every session) and ``--data-tls-reuse optional`` (asyncio cannot
resume a TLS session on the data connection).  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-Passw0rd-not-secret"
GUESSER_ADDRESS = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def proc_status(pid: int, field: str) -> int:
    """
    A VmXXX field of /proc/PID/status in KiB.
    """
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class ServerProcess:
    def __init__(self, work: Path, accounts: int, extra: list[str]) -> None:
        self.data = work / "data"
        self.port = free_port()
        self.env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.names = [f"bench{n}" for n in range(accounts)]
        cli = [sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(self.data)]
        subprocess.run([*cli, "init"], check=True, capture_output=True, env=self.env)
        for name in self.names:
            subprocess.run([*cli, "user", "add", name, "--password-stdin"],
                           input=PASSWORD + "\n", text=True, env=self.env, check=True,
                           capture_output=True)
            home = self.data / "files" / name
            home.mkdir(parents=True, exist_ok=True)
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(self.data),
             "--ftp", "none", "--http", "none", "--https", "none",
             "--ftps", f"tcp:{self.port}:interface=127.0.0.1", *extra],
            env=self.env, cwd=work, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {work / 'server.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("server did not start listening")

    def put_file(self, name: str, data: bytes) -> None:
        for account in self.names:
            (self.data / "files" / account / name).write_bytes(data)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class FTPError(Exception):
    pass


class Control:
    """
    One implicit-FTPS control connection.
    """

    def __init__(self, port: int, context: ssl.SSLContext, bind: str | None = None) -> None:
        self.port = port
        self.context = context
        self.bind = bind
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def connect(self) -> tuple[int, str]:
        local = (self.bind, 0) if self.bind else None
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, local_addr=local,
            server_hostname="localhost",
        )
        return await self.reply()

    async def reply(self) -> tuple[int, str]:
        line = await self.reader.readline()
        if not line:
            raise FTPError("connection closed")
        text = line.decode("utf-8", "replace").rstrip()
        if text[3:4] == "-":
            while True:
                more = (await self.reader.readline()).decode("utf-8", "replace")
                if not more or (more[:3] == text[:3] and more[3:4] == " "):
                    break
        return int(text[:3]), text

    async def command(self, line: str, expect: int | None = None) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        code, text = await self.reply()
        if expect is not None and code // 100 != expect // 100:
            raise FTPError(f"{line.split()[0]}: {text}")
        return code, text

    async def login(self, name: str, password: str) -> tuple[int, str]:
        await self.command(f"USER {name}", 331)
        return await self.command(f"PASS {password}")

    async def data(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        code, text = await self.command("EPSV", 229)
        port = int(re.search(r"\(\|\|\|(\d+)\|\)", text).group(1))  # type: ignore[union-attr]
        return await asyncio.open_connection(
            "127.0.0.1", port, ssl=self.context, server_hostname="localhost")

    async def download(self, command: str) -> bytes:
        reader, writer = await self.data()
        await self.command(command, 150)
        chunks = []
        while chunk := await reader.read(65536):
            chunks.append(chunk)
        writer.close()
        await self.reply_expect(226)
        return b"".join(chunks)

    async def upload(self, command: str, payload: bytes) -> None:
        reader, writer = await self.data()
        await self.command(command, 150)
        writer.write(payload)
        await writer.drain()
        writer.close()
        try:
            await writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass
        await self.reply_expect(226)

    async def reply_expect(self, expect: int) -> None:
        code, text = await self.reply()
        if code // 100 != expect // 100:
            raise FTPError(text)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


async def login_once(port: int, context: ssl.SSLContext, name: str,
                     password: str = PASSWORD) -> float:
    started = time.perf_counter()
    control = Control(port, context)
    try:
        await control.connect()
        code, text = await control.login(name, password)
        if code != 230:
            raise FTPError(text)
        elapsed = time.perf_counter() - started
        control.writer.write(b"QUIT\r\n")
        return elapsed
    finally:
        control.close()


async def login_rate(port: int, names: list[str], clients: int, logins: int,
                     password: str = PASSWORD) -> float:
    """
    Logins per second with C{clients} concurrent clients, C{logins} in all.
    """
    context = client_context()
    remaining = logins
    started = time.perf_counter()

    async def worker(n: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await login_once(port, context, names[n % len(names)], password)

    await asyncio.gather(*(worker(n) for n in range(clients)))
    return logins / (time.perf_counter() - started)


async def _login_latencies(port: int, names: list[str], logins: int) -> list[float]:
    context = client_context()
    return [await login_once(port, context, names[n % len(names)]) for n in range(logins)]


def _measure_latencies(port: int, names: list[str], logins: int) -> list[float]:
    return asyncio.run(_login_latencies(port, names, logins))


async def login_latencies(port: int, names: list[str], logins: int) -> list[float]:
    """
    Seconds per login (connect, TLS, USER/PASS), one login at a time.

    Measured from a fresh client process: this one holds the idle sessions,
    and its own garbage collector walking their objects would show up as
    login latency that the server does not cause.
    """
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with context.Pool(1) as pool:
        return await loop.run_in_executor(
            None, pool.apply, _measure_latencies, (port, names, logins))


def server_cpu(pid: int) -> float:
    """User and system CPU seconds of the server process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_logins(pid: int, port: int, names: list[str],
                       logins: int) -> tuple[list[float], float]:
    """Latencies, and the server's CPU milliseconds per login meanwhile."""
    before = server_cpu(pid)
    latencies = await login_latencies(port, names, logins)
    return latencies, (server_cpu(pid) - before) * 1000 / logins


def describe(measured: tuple[list[float], float]) -> str:
    latencies, cpu = measured
    ordered = sorted(latencies)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return (f"median {statistics.median(ordered) * 1000:.1f} ms, "
            f"p90 {p90 * 1000:.1f} ms ({len(ordered)} logins, one at a time), "
            f"server CPU {cpu:.2f} ms/login")


async def honest_session(port: int, context: ssl.SSLContext, name: str, n: int,
                         payload: bytes, results: dict) -> None:
    control = Control(port, context)
    started = time.perf_counter()
    try:
        await control.connect()
        code, text = await control.login(name, PASSWORD)
        if code != 230:
            raise FTPError(text)
        results["latency"].append(time.perf_counter() - started)
        await control.command("PBSZ 0", 200)
        await control.command("PROT P", 200)
        await control.command("TYPE I", 200)
        await control.download("LIST")
        got = await control.download("RETR small.bin")
        if got != payload:
            raise FTPError(f"RETR returned {len(got)} bytes, expected {len(payload)}")
        await control.upload(f"STOR up-{n}.bin", payload)
        await control.command("QUIT", 221)
        results["ok"] += 1
    except Exception as e:  # noqa: BLE001 - every failure is a number here
        results["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        control.close()


async def idle_login(port: int, context: ssl.SSLContext, name: str,
                     held: list[Control], failures: list[str]) -> None:
    control = Control(port, context)
    try:
        await control.connect()
        code, text = await control.login(name, PASSWORD)
        if code != 230:
            raise FTPError(text)
        held.append(control)
    except Exception as e:  # noqa: BLE001
        failures.append(f"{type(e).__name__}: {e}")
        control.close()


async def guesser(port: int, context: ssl.SSLContext, stop: asyncio.Event,
                  counts: dict) -> None:
    while not stop.is_set():
        control = Control(port, context, bind=GUESSER_ADDRESS)
        try:
            code, text = await control.connect()
            if code == 421:
                counts["refused_at_greeting"] += 1
                await asyncio.sleep(0.05)
                continue
            for _ in range(3):
                code, text = await control.login("bench0", "wrong-guess")
                counts[str(code)] = counts.get(str(code), 0) + 1
                if code == 421:
                    break
        except Exception as e:  # noqa: BLE001
            counts["errors"] = counts.get("errors", 0) + 1
            counts["last_error"] = f"{type(e).__name__}: {e}"
        finally:
            control.close()


async def main_async(args: argparse.Namespace, server: ServerProcess,
                     first_server: ServerProcess | None) -> None:
    context = client_context()
    pid = server.proc.pid
    names = server.names

    if first_server is not None:
        first = await login_rate(first_server.port, first_server.names, 8, args.rate_logins)
        print(f"first logins (argon2id every time), 8 clients: {first:8.1f} logins/s")
    if args.vsftpd:
        rate = await vsftpd_login_rate(args.rate_logins)
        print(f"vsftpd logins (PAM, same run),       8 clients: {rate:8.1f} logins/s")
    await login_rate(server.port, names, 8, len(names))  # warm the cache
    repeat = await login_rate(server.port, names, 8, args.rate_logins)
    print(f"repeat logins (verifier cache),      8 clients: {repeat:8.1f} logins/s")

    # Login latency of the idle server, the baseline of the "flat under
    # load" target; measured again below with the idle sessions held.
    quiet = await timed_logins(pid, server.port, names, args.latency_logins)
    print(f"login latency, no sessions held:     {describe(quiet)}; "
          f"load average {os.getloadavg()[0]:.2f}")

    rss_before = proc_status(pid, "VmRSS")
    held: list[Control] = []
    failures: list[str] = []
    semaphore = asyncio.Semaphore(100)

    async def one_idle(n: int) -> None:
        async with semaphore:
            await idle_login(server.port, context, names[n % len(names)], held, failures)

    started = time.perf_counter()
    await asyncio.gather(*(one_idle(n) for n in range(args.idle)))
    idle_time = time.perf_counter() - started
    await asyncio.sleep(1)
    rss_idle = proc_status(pid, "VmRSS")
    per_idle = (rss_idle - rss_before) / max(1, len(held))
    print(f"idle logged-in connections: {len(held)} of {args.idle} "
          f"({len(failures)} failed) in {idle_time:.1f} s; "
          f"server RSS {rss_before / 1024:.1f} -> {rss_idle / 1024:.1f} MiB, "
          f"{per_idle:.1f} KiB per idle connection")
    if failures:
        print(f"  first idle failure: {failures[0]}")
    busy = await timed_logins(pid, server.port, names, args.latency_logins)
    print(f"login latency, {len(held)} sessions held: {describe(busy)}; "
          f"load average {os.getloadavg()[0]:.2f}")
    again = await timed_logins(pid, server.port, names, args.latency_logins)
    print(f"login latency, {len(held)} sessions held (again): {describe(again)}")
    if not args.sessions:
        for control in held:
            control.close()
        await asyncio.sleep(2)
        after = await timed_logins(pid, server.port, names, args.latency_logins)
        print(f"login latency, sessions closed again: {describe(after)}")
        none = statistics.median(quiet[0] + after[0])
        none_cpu = (quiet[1] + after[1]) / 2
        print(f"  held / none, median latency: {statistics.median(busy[0]) / none:.2f}x "
              f"and {statistics.median(again[0]) / none:.2f}x; server CPU per login: "
              f"{busy[1] / none_cpu:.2f}x and {again[1] / none_cpu:.2f}x "
              "(none: before and after)")
        return
    print(f"  held / none, median: "
          f"{statistics.median(busy[0]) / statistics.median(quiet[0]):.2f}x "
          f"and {statistics.median(again[0]) / statistics.median(quiet[0]):.2f}x")

    payload = os.urandom(args.file_size)
    server.put_file("small.bin", payload)
    results: dict = {"ok": 0, "errors": [], "latency": []}
    stop = asyncio.Event()
    counts: dict = {"refused_at_greeting": 0}
    guessers = [asyncio.ensure_future(guesser(server.port, context, stop, counts))
                for _ in range(args.guessers)]
    started = time.perf_counter()
    await asyncio.gather(*(
        honest_session(server.port, context, names[n % len(names)], n, payload, results)
        for n in range(args.sessions)
    ))
    elapsed = time.perf_counter() - started
    # Let the guessers go on until they are turned away at the greeting.
    deadline = time.perf_counter() + args.guess_seconds
    while not counts["refused_at_greeting"] and time.perf_counter() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*guessers)
    guess_time = time.perf_counter() - started

    latencies = sorted(results["latency"])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0
    print(f"honest sessions: {results['ok']} of {args.sessions} complete in {elapsed:.1f} s; "
          f"{len(latencies) / elapsed:.1f} logins/s; transfer errors: "
          f"{len(results['errors'])}")
    if latencies:
        print(f"  login latency (connect+TLS+USER/PASS): median "
              f"{statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    for error in results["errors"][:5]:
        print(f"  error: {error}")
    print(f"guesser from {GUESSER_ADDRESS} ({args.guessers} clients, {guess_time:.1f} s): "
          "replies "
          + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for control in held:
        control.close()
    await asyncio.sleep(0.5)
    print(f"server peak memory (VmHWM): {proc_status(pid, 'VmHWM') / 1024:.1f} MiB")
    log = (Path(server.data) / "audit.log").read_text(errors="replace")
    counted = {name: log.count(f'"{name}"')
               for name in ("guard.ban", "guard.refused", "guard.limit")}
    print("audit: " + ", ".join(f"{v} {k}" for k, v in counted.items()))


async def vsftpd_login_rate(logins: int) -> float:
    """
    vsftpd's login rate over explicit FTPS, with a system user through PAM.

    Uses the vsftpd set-up of bench/ftps_throughput.py (needs root and the
    Debian package, which it installs when missing).
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ftps_throughput", Path(__file__).with_name("ftps_throughput.py"))
    assert spec is not None and spec.loader is not None
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    work = Path(tempfile.mkdtemp(prefix="rumpus-load-vsftpd-"))
    vsftpd = None
    try:
        (work / "big.bin").write_bytes(b"x")
        certs = ServerProcess(work / "certs", 1, [])  # only for its generated certificate
        cert = certs.data / "tls" / "cert.pem"
        key = certs.data / "tls" / "key.pem"
        # Implicit FTPS, like the rumpus-secure measurements above.
        vsftpd = throughput.Vsftpd(work, work / "big.bin", cert, key, implicit=True)
        certs.stop()
        return await login_rate(vsftpd.port, [throughput.USER], 8, logins,
                                password=throughput.PASSWORD)
    finally:
        if vsftpd is not None:
            vsftpd.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--guessers", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--file-size", type=int, default=4096)
    parser.add_argument("--rate-logins", type=int, default=200,
                        help="logins per first/repeat rate measurement")
    parser.add_argument("--guess-seconds", type=float, default=60.0,
                        help="keep guessing after the sessions until banned, at most this long")
    parser.add_argument("--skip-first", action="store_true",
                        help="skip the cache-off server for the first-login rate")
    parser.add_argument("--latency-logins", type=int, default=200,
                        help="logins, one at a time, for the latency without and "
                             "with the idle sessions held")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--vsftpd", action=argparse.BooleanOptionalAction,
                        default=os.geteuid() == 0,
                        help="also measure vsftpd's login rate in the same run "
                             "[default: on when run as root]")
    args = parser.parse_args()

    limit = raise_fd_limit()
    print(f"RLIMIT_NOFILE {limit}; sessions {args.sessions}, idle {args.idle}, "
          f"guessers {args.guessers} from {GUESSER_ADDRESS}, accounts {args.accounts}")
    print("server flags for the run: --safe-list 127.0.0.1/32 (not 127.0.0.2), "
          f"--max-connections {args.sessions + args.idle + 100}, "
          "--max-sessions-per-account 0, --data-tls-reuse optional")
    work = Path(tempfile.mkdtemp(prefix="rumpus-load-"))
    common = ["--safe-list", "127.0.0.1/32",
              "--max-connections", str(args.sessions + args.idle + 100),
              "--max-sessions-per-account", "0", "--data-tls-reuse", "optional"]
    server = first_server = None
    try:
        (work / "main").mkdir()
        server = ServerProcess(work / "main", args.accounts, common)
        if not args.skip_first:
            (work / "first").mkdir()
            first_server = ServerProcess(work / "first", args.accounts,
                                         [*common, "--login-cache-time", "0"])
        asyncio.run(main_async(args, server, first_server))
    finally:
        for s in (server, first_server):
            if s is not None:
                s.stop()
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
