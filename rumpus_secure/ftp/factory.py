"""
The FTP listeners' factories: what one plain or implicit-FTPS listener
builds, and what both share (policy, accounts, TLS, the passive port pool,
the transfer engine, pending checks).

Kept apart from L{rumpus_secure.ftp.control}, which is the protocol of one
connection; L{rumpus_secure.tap} assembles these.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol

from rumpus_secure.ftp.control import ControlProtocol
from rumpus_secure.ftp.error_reports import ErrorReports
from rumpus_secure.ftp.passive import PortPool
from rumpus_secure.ftp.policy import ControlPolicy
from rumpus_secure.ftp.transfer import TransferEngine
from rumpus_secure.long_work import LongWork
from rumpus_secure.timer_wheel import TimerWheel


class ControlFactory(protocol.ServerFactory):
    """
    Builds control connections for one listener (plain or implicit FTPS).
    """

    def __init__(self, shared: "FTPFactories", implicit: bool) -> None:
        self.shared = shared
        self.implicit = implicit
        self.reactor = shared.reactor
        self.config = shared.config
        self.policy = shared.policy
        self.audit = shared.audit
        self.portal = shared.portal
        self.passive_port_range = shared.passive_port_range
        self.timeOut = self.config.idle_timeout
        self.guard = shared.guard

    @property
    def tls_context(self) -> Any:
        # A TLS session identity per control connection: its data connections
        # can resume its session and nobody else's (tls.per_session_factory).
        return self.shared.tls.per_session_factory([b"ftp"])

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        p = ControlProtocol(self)
        p.factory = self
        p.timeOut = self.config.idle_timeout
        return p


class FTPFactories:
    """
    What the FTP listeners share: policy, accounts, TLS and pending checks.
    """

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.config = server.config
        self.audit = server.audit
        self.portal = server.portal
        self.tls = server.tls
        self.policy = ControlPolicy(
            mode=self.config.ftp_security,
            explicit_port=self.config.ftp_port,
            implicit_port=self.config.ftps_port,
        )
        if self.config.passive_ports:
            low, high = self.config.passive_ports
            self.passive_port_range: range = range(low, high + 1)
            self.port_pool: PortPool | None = PortPool(self.passive_port_range)
        else:
            self.passive_port_range = range(0, 1)
            self.port_pool = None
        self.exposure = server.exposure
        self.guard = getattr(server, "guard", None)
        self.account_watcher = getattr(server, "account_watcher", None)
        self.data_connect_timeout = self.config.data_connect_timeout
        self.engine = getattr(server, "transfer_engine", None) or TransferEngine(
            reactor, idle_timeout=self.config.data_idle_timeout)
        self.errors = ErrorReports(reactor)
        #: The control connections' idle, close and line deadlines.
        self.timers = TimerWheel(reactor)
        #: Whole-file HASH and other long work: not the shared thread pool.
        self.long_work: LongWork = getattr(server, "long_work", None) or LongWork(reactor)

    def plain(self) -> ControlFactory:
        return ControlFactory(self, implicit=False)

    def implicit(self) -> ControlFactory:
        return ControlFactory(self, implicit=True)


def build_ftp_factory(server: Any, reactor: Any) -> FTPFactories:
    """
    The FTP side of the server, for L{rumpus_secure.tap.makeService}.
    """
    return FTPFactories(server, reactor)
