"""
Several nodes behind a real HAProxy on loopback (issue #17).

HAProxy (Debian's ``haproxy``, 2.6) listens on the virtual address
127.0.0.2; the nodes listen on 127.0.0.11, .12, .13 with ``haproxy:``
listeners and each its own passive port range, routed by HAProxy to that
node alone (``bind :LOW-HIGH`` -> ``server nN <ip>`` with no port: the same
destination port).  Clients bind their own source addresses (127.0.0.50 and
up): from 127.0.0.1 every client looks alike and half of the bugs of the
issue stay hidden.

The nodes share one data directory (the accounts, bans and audit log in one
SQLite file, safe for processes on one machine with a local filesystem;
production needs the PostgreSQL store) and one file root.  HAProxy's own
outgoing connections leave from 127.0.0.2 (``source``), the one trusted
proxy.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.server_process import ServerProcess, port_accepts, require_tool

VIRTUAL = "127.0.0.2"
NODE_HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
#: Ports per node's passive range.
RANGE_SIZE = 40


def client_address(n: int) -> str:
    """
    The source address of client C{n}: 127.0.0.50, .51, ... then 127.0.1.x.
    """
    value = 50 + n
    return f"127.0.{value // 250}.{value % 250}"


def _free_everywhere(port: int, hosts: tuple[str, ...]) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


#: The listeners every node has behind HAProxy, in port order.
LABELS = ("ftp", "ftps", "https")


def _pick_ports(count: int, size: int = RANGE_SIZE) -> tuple[dict[str, int], list[range]]:
    """
    A port per listener and C{count} passive ranges, free on every rig address.
    """
    hosts = (VIRTUAL, *NODE_HOSTS[:count])
    rng = random.SystemRandom()
    for _ in range(50):
        base = rng.randrange(20000, 31000 - size * (count + 1))
        ports = {label: base + n for n, label in enumerate(LABELS)}
        first = base + len(LABELS)
        ranges = [range(first + n * size, first + (n + 1) * size)
                  for n in range(count)]
        wanted = [*ports.values(), *(p for r in ranges for p in r)]
        if all(_free_everywhere(p, hosts) for p in wanted):
            return ports, ranges
    raise RuntimeError("no free ports for the HAProxy rig")


def haproxy_config(ports: dict[str, int], ranges: list[range], hosts: tuple[str, ...],
                   check_interval_ms: int = 300) -> str:
    """
    The HAProxy configuration the README documents, for loopback.

    - each listener: ``balance source`` with consistent hashing (a client
      stays on its node, and a node that goes away moves only its own
      clients), ``send-proxy-v2``, health checks, ``option redispatch``;
    - one frontend per node passive range, routed to that node only, with
      ``send-proxy-v2`` so the node checks the real client's address;
    - timeouts longer than the longest transfer.
    """
    control = ""
    for label, port in ports.items():
        servers = "\n".join(
            f"    server n{n + 1} {host}:{port} send-proxy-v2 "
            f"check inter {check_interval_ms}ms fall 1 rise 2"
            for n, host in enumerate(hosts))
        control += (f"frontend {label}\n"
                    f"    bind {VIRTUAL}:{port}\n"
                    f"    maxconn 6000\n"
                    f"    default_backend {label}_nodes\n"
                    f"backend {label}_nodes\n"
                    f"    balance source\n"
                    f"    hash-type consistent\n"
                    f"    source {VIRTUAL}\n"
                    f"{servers}\n\n")
    passive = "\n".join(
        f"frontend passive_n{n + 1}\n"
        f"    bind {VIRTUAL}:{r.start}-{r.stop - 1}\n"
        f"    default_backend passive_n{n + 1}\n"
        f"backend passive_n{n + 1}\n"
        f"    source {VIRTUAL}\n"
        f"    server n{n + 1} {host} send-proxy-v2\n"
        for n, (host, r) in enumerate(zip(hosts, ranges)))
    return f"""\
global
    maxconn 6000
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch

{control}{passive}"""


@dataclass
class Rig:
    """
    HAProxy and C{nodes} rumpus-secure nodes over one shared folder.
    """

    tmp_path: Path
    nodes: int = 3
    range_size: int = RANGE_SIZE
    options: dict[str, Any] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ranges: list[range] = field(default_factory=list)
    servers: list[ServerProcess] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None

    @property
    def control(self) -> int:
        """
        The FTP control port (the same on HAProxy and on every node).
        """
        return self.ports["ftp"]

    @property
    def data_dir(self) -> Path:
        return self.tmp_path / "shared-data"

    @property
    def root(self) -> Path:
        return self.tmp_path / "shared-files"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"

    def node_of_port(self, port: int) -> int:
        """
        Which node (0-based) a passive port belongs to.
        """
        for n, r in enumerate(self.ranges):
            if port in r:
                return n
        raise AssertionError(f"port {port} in no node's passive range")

    def start(self) -> Rig:
        haproxy = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
        if haproxy is None:
            require_tool("haproxy")
        self.ports, self.ranges = _pick_ports(self.nodes, self.range_size)
        hosts = NODE_HOSTS[:self.nodes]
        for n, host in enumerate(hosts):
            r = self.ranges[n]
            options = dict(
                http="none",
                **{label: f"haproxy:tcp:{port}:interface={host}"
                   for label, port in self.ports.items()},
                root=str(self.root), trusted_proxies=VIRTUAL,
                passive_ports=f"{r.start}-{r.stop - 1}", passive_address=VIRTUAL,
                passive_bind=host, ftp_security="allow-plain", data_tls="optional",
            )
            if n == 1:
                # Node 2 finds its bind address itself (the address the
                # control connection reached), the others are told.
                del options["passive_bind"]
            options.update(self.options)
            directory = self.tmp_path / f"node{n + 1}"
            directory.mkdir(exist_ok=True)
            server = ServerProcess(directory, data_dir=self.data_dir, **options)
            self.servers.append(server)
            # One after the other: the first creates the certificate and the
            # database the others open.
            server.start()
            self.wait_node(n)
        config = self.tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(self.ports, self.ranges, hosts))
        checked = subprocess.run([str(haproxy), "-c", "-f", str(config)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.haproxy_log = self.tmp_path / "haproxy.log"
        with open(self.haproxy_log, "wb") as log:
            self.haproxy = subprocess.Popen(
                [str(haproxy), "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_accepts(self.control, VIRTUAL):
            assert self.haproxy.poll() is None, self.haproxy_log.read_text()
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)
        return self

    def wait_node(self, n: int, limit: float = 30.0) -> None:
        server = self.servers[n]
        deadline = time.monotonic() + limit
        while not all(port_accepts(port, NODE_HOSTS[n]) for port in self.ports.values()):
            if not server.running:
                raise AssertionError(f"node {n + 1} exited:\n{server.log_text()}")
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)

    def kill(self, n: int) -> None:
        """
        SIGKILL node C{n}: no goodbye to anyone.
        """
        process = self.servers[n].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(10)
            self.haproxy = None
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Rig:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli(self, *args: str, input: str | None = None) -> Any:
        return self.servers[0].cli(*args, input=input)
