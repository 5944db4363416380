"""
In-memory stand-ins for driving the FTP control protocol without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from rumpus_secure.audit import MemoryAuditLog
from rumpus_secure.config import ServerConfig
from rumpus_secure.exposure import ExposureGuard
from rumpus_secure.ftp.control import ControlProtocol
from rumpus_secure.ftp.factory import FTPFactories
from rumpus_secure.ftp.realm import FTPRealm
from rumpus_secure.long_work import LongWork
from tests.fake_accounts import FakeChecker, FakeStore


class FakeTLS:
    def __init__(self) -> None:
        self.context = object()

    def context_factory(self, alpn: Any) -> Any:
        return self.context

    def per_session_factory(self, alpn: Any) -> Any:
        return self.context


class TLSStringTransport(StringTransport):
    """
    A StringTransport that records startTLS and can be told it is closed.
    """

    def __init__(self, peer: str = "192.0.2.7") -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 2121),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.tls_started: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_started = context

    def lines(self) -> list[str]:
        return self.value().decode("utf-8").splitlines()


@dataclass
class FakeServer:
    config: ServerConfig
    store: FakeStore
    checker: FakeChecker
    audit: MemoryAuditLog
    tls: FakeTLS
    portal: Portal
    threaded: list[Any] = field(default_factory=list)
    exposure: Any = None
    guard: Any = None
    long_work: Any = None

    def run_in_thread(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        self.threaded.append(function)
        return defer.maybeDeferred(function, *args)


def make_server(tmp_path: Path, **config: Any) -> FakeServer:
    settings = {"data_dir": tmp_path, "root": tmp_path / "files"}
    settings.update(config)
    cfg = ServerConfig(**settings)
    store = FakeStore(cfg.file_root)
    store.add("alice", "right")
    checker = FakeChecker(store)
    server = FakeServer(
        config=cfg, store=store, checker=checker, audit=MemoryAuditLog(),
        tls=FakeTLS(), portal=Portal(FTPRealm(store), [checker]),
    )
    server.exposure = ExposureGuard(server, MemoryReactorClock())
    server.long_work = LongWork(MemoryReactorClock(), run_in_thread=server.run_in_thread)
    return server


def connect(
    server: FakeServer, implicit: bool = False, peer: str = "192.0.2.7",
    reactor: MemoryReactorClock | None = None,
) -> tuple[ControlProtocol, TLSStringTransport, MemoryReactorClock]:
    reactor = reactor or MemoryReactorClock()
    factories = FTPFactories(server, reactor)
    factory = factories.implicit() if implicit else factories.plain()
    proto = factory.buildProtocol(None)
    transport = TLSStringTransport(peer)
    proto.makeConnection(transport)
    return proto, transport, reactor
