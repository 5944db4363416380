#!/usr/bin/env python3
"""
Many concurrent FTPS downloads against one server: errors must be zero.

    python bench/concurrent_downloads.py [--clients 1000] [--size-mib 5]
                                         [--passive-ports 40000-40099]
                                         [--login-concurrency 50]

Starts rumpus-secure on loopback, makes one account with one file, then runs
N client threads at once; each logs in over explicit FTPS, sets PROT P and
downloads the file with a data connection that resumes the control
connection's TLS session (the server's default requires it), and checks the
SHA-256.  Prints errors, wall time, aggregate MB/s and the server's peak
memory.  With --passive-ports the whole run goes through that range, which
shows that a passive port is free again as soon as its client connected.

With --login-concurrency N the clients log in at most N at a time, then all
wait on a barrier and send RETR together: every download runs at once, but
the logins do not arrive as one burst of thousands of TLS handshakes from
one address, which the server's handshake bound sheds on purpose (at most
20 handshakes in flight per address, 250 in all; the oldest, once a second
old, makes room: see rumpus_secure/handshake.py).  0 (the default) starts
everything at once.  The peak of downloads in flight at once is printed.
Not a test.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "concurrent-bench-pw"


class ReusingFTP_TLS(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):  # type: ignore[no-untyped-def]
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def peak_memory(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size-mib", type=float, default=5)
    parser.add_argument("--passive-ports", default=None)
    parser.add_argument("--login-concurrency", type=int, default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    threading.stack_size(512 * 1024)
    with tempfile.TemporaryDirectory(prefix="rumpus-conc-") as tmp:
        work = Path(tmp)
        data = work / "data"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
                        "init"], check=True, capture_output=True, env=env)
        subprocess.run([sys.executable, "-m", "rumpus_secure.cli", "--data-dir", str(data),
                        "user", "add", "bench", "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, env=env,
                       capture_output=True)
        content = os.urandom(int(args.size_mib * (1 << 20)))
        (data / "files" / "bench" / "f.bin").write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        port = free_port()
        extra = ["--passive-ports", args.passive_ports] if args.passive_ports else []
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rumpus-secure", "--data-dir", str(data),
             "--ftp", f"tcp:{port}:interface=127.0.0.1", "--ftps", "none",
             "--http", "none", "--https", "none",
             "--max-connections", str(args.clients + 100), "--max-connections-per-ip", "0",
             "--max-sessions-per-account", "0", "--safe-list", "127.0.0.0/8", *extra],
            cwd=work, env=env, stdout=open(work / "server.log", "w"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            errors: list[str] = []
            done = []
            start = threading.Barrier(args.clients + 1)
            staged = args.login_concurrency > 0
            logins = threading.Semaphore(args.login_concurrency or args.clients)
            # Every client that logged in (or failed to) passes this once.
            retr_together = threading.Barrier(args.clients) if staged else None
            in_flight = [0, 0]  # now, peak
            lock = threading.Lock()

            def client(i: int) -> None:
                stage = "start"
                ftp = None
                try:
                    start.wait()
                    with logins:
                        ftp = ReusingFTP_TLS(context=context, timeout=300)
                        stage = "connect"
                        ftp.connect("127.0.0.1", port)
                        stage = "login"
                        ftp.login("bench", PASSWORD)
                        ftp.prot_p()
                    if retr_together is not None:
                        stage = "barrier"
                        retr_together.wait()
                    h = hashlib.sha256()
                    stage = "retr"
                    with lock:
                        in_flight[0] += 1
                        in_flight[1] = max(in_flight[1], in_flight[0])
                    try:
                        ftp.retrbinary("RETR f.bin", h.update, blocksize=1 << 16)
                    finally:
                        with lock:
                            in_flight[0] -= 1
                    stage = "quit"
                    ftp.quit()
                    if h.hexdigest() != digest:
                        errors.append(f"client {i}: checksum mismatch")
                    else:
                        done.append(i)
                except Exception as e:  # noqa: BLE001 (counted and reported)
                    if retr_together is not None and stage in ("start", "connect", "login"):
                        try:  # the others must not wait for this one
                            retr_together.wait()
                        except threading.BrokenBarrierError:
                            pass
                    reply = ""
                    if stage == "retr" and not isinstance(e, ftplib.Error):
                        try:
                            reply = " / server: " + ftp.getresp()
                        except Exception as r:  # noqa: BLE001
                            reply = f" / server: {r}"
                    errors.append(f"client {i} at {stage}: {e.__class__.__name__}: {e}{reply}")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            start.wait()
            began = time.monotonic()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - began
            total = len(done) * len(content)
            print(f"clients {args.clients}, file {args.size_mib} MiB, passive ports "
                  f"{args.passive_ports or 'any'}, logins "
                  f"{args.login_concurrency or 'all'} at a time; load average "
                  f"{os.getloadavg()[0]:.2f}")
            print(f"downloads in flight at once, peak: {in_flight[1]}")
            print(f"completed {len(done)}, errors {len(errors)}, wall {elapsed:.1f} s, "
                  f"aggregate {total / elapsed / 1e6:.0f} MB/s, server peak memory "
                  f"{peak_memory(server.pid)}")
            for line in errors[:10]:
                print("  " + line)
            events: dict[str, int] = {}
            audit = data / "audit.log"
            for line in audit.read_text().splitlines() if audit.exists() else []:
                name = line.split('"event": "', 1)[1].split('"', 1)[0]
                if name not in ("ftp.login", "ftp.tls_established"):
                    events[name] = events.get(name, 0) + 1
            if events:
                print("server audit events: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(events.items())))
            log = (work / "server.log").read_text()
            if "Traceback" in log:
                start = log.index("Traceback")
                print("first server traceback:\n" + log[start:start + 3000])
            return 1 if errors else 0
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    sys.exit(main())
