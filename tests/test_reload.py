"""
Tests for L{rumpus_secure.reload}: certificate reload on file change and
SIGHUP, in memory with a L{Clock}, and against the real server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from rumpus_secure.audit import MemoryAuditLog, read_events
from rumpus_secure.certificates import ensure_certificate
from rumpus_secure.reload import ReloadService
from rumpus_secure.tls import TLSContextSource


def _pair(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    info = ensure_certificate(directory, host, None, None)
    return info.cert_path, info.key_path


def _replace(source: tuple[Path, Path], target: tuple[Path, Path]) -> None:
    """
    Put a new pair in place the way renewal tools do: write aside, rename.
    """
    for new, old in zip(source, target):
        aside = old.with_name(old.name + ".new")
        shutil.copyfile(new, aside)
        os.replace(aside, old)


class FakeSource:
    """
    The parts of L{TLSContextSource} the service uses.
    """

    def __init__(self, source: TLSContextSource) -> None:
        self.changed = False
        self.reloads = 0
        self.info = source.info
        self.last_error: str | None = None

    def files_changed(self) -> bool:
        return self.changed

    def reload(self) -> bool:
        self.reloads += 1
        self.changed = False
        return True


class FakeReactor:
    def __init__(self) -> None:
        self.called: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.called.append((f, args))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return _pair(tmp_path / "server")


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_file_change_triggers_reload(pair: tuple[Path, Path]) -> None:
    clock = Clock()
    fake = FakeSource(TLSContextSource(*pair))
    audit = MemoryAuditLog()
    service = ReloadService(fake, clock, 60, audit=audit)
    service.startService()
    clock.advance(60)
    assert fake.reloads == 0
    fake.changed = True
    clock.advance(59)
    assert fake.reloads == 0
    clock.advance(1)
    assert fake.reloads == 1
    [event] = audit.named("tls.reload")
    assert (event["trigger"], event["outcome"]) == ("file-change", "ok")
    service.stopService()
    fake.changed = True
    clock.advance(600)
    assert fake.reloads == 1
    assert clock.getDelayedCalls() == []


def test_interval_zero_means_no_polling(pair: tuple[Path, Path]) -> None:
    clock = Clock()
    fake = FakeSource(TLSContextSource(*pair))
    service = ReloadService(fake, clock, 0)
    service.startService()
    assert clock.getDelayedCalls() == []
    service.stopService()


def test_real_files_reloaded(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    clock = Clock()
    clock.advance(time.time())
    source = TLSContextSource(*pair, public_host="localhost", clock=clock)
    before = source.info.sha256_fingerprint
    audit = MemoryAuditLog()
    service = ReloadService(source, clock, 60, audit=audit)
    service.startService()
    new = _pair(tmp_path / "new")
    _replace(new, pair)
    clock.advance(60)
    after = source.info.sha256_fingerprint
    assert after != before
    [event] = audit.named("tls.reload")
    assert event["outcome"] == "ok" and event["fingerprint"] == after
    # Nothing changed since: no second reload.
    clock.advance(60)
    assert len(audit.named("tls.reload")) == 1
    service.stopService()


def test_broken_files_keep_old_certificate(
    tmp_path: Path, pair: tuple[Path, Path], logged: list[dict[str, Any]]
) -> None:
    clock = Clock()
    clock.advance(time.time())
    source = TLSContextSource(*pair, clock=clock)
    before = source.info.sha256_fingerprint
    context = source.context_factory([b"ftp"]).getContext()
    audit = MemoryAuditLog()
    service = ReloadService(source, clock, 60, audit=audit)
    service.startService()
    # A new certificate with the old key: they do not match.
    new_cert, _ = _pair(tmp_path / "other")
    _replace((new_cert,), (pair[0],))
    clock.advance(60)
    assert source.info.sha256_fingerprint == before
    assert source.context_factory([b"ftp"]).getContext() is context
    [event] = audit.named("tls.reload")
    assert event["outcome"] == "failed" and event["kept_fingerprint"] == before
    assert "does not belong" in event["reason"]
    assert any(e.get("log_level") == LogLevel.error for e in logged)
    # Not retried every minute; retried once the files change again.
    clock.advance(60)
    assert len(audit.named("tls.reload")) == 1
    new_cert, new_key = _pair(tmp_path / "fixed")
    _replace((new_cert, new_key), pair)
    clock.advance(60)
    assert audit.named("tls.reload")[-1]["outcome"] == "ok"
    service.stopService()


def test_expiry_nag_once_a_day(
    tmp_path: Path, pair: tuple[Path, Path], logged: list[dict[str, Any]]
) -> None:
    source = TLSContextSource(*pair)
    clock = Clock()
    # 20 days before expiry.
    clock.advance((source.info.not_after - timedelta(days=20)).timestamp())
    service = ReloadService(FakeSource(source), clock, 60)

    def nags() -> int:
        return sum("expires in" in e.get("log_format", "") for e in logged)

    service.startService()
    assert nags() == 0  # start-up warned already (tap.build_server)
    clock.pump([60.0] * (24 * 60 - 1))
    assert nags() == 0
    clock.advance(60)
    assert nags() == 1
    clock.pump([60.0] * (24 * 60))
    assert nags() == 2
    service.stopService()
    quiet = Clock()
    quiet.advance(datetime.now(UTC).timestamp())
    far = ReloadService(FakeSource(source), quiet, 60)
    far.startService()
    quiet.pump([3600.0] * 48)
    assert nags() == 2
    far.stopService()


def test_sighup_reloads_on_reactor_thread_and_chains(pair: tuple[Path, Path]) -> None:
    previous_calls: list[int] = []

    def previous(signum: int, frame: Any) -> None:
        previous_calls.append(signum)

    original = signal.signal(signal.SIGHUP, previous)
    try:
        reactor = FakeReactor()
        fake = FakeSource(TLSContextSource(*pair))
        service = ReloadService(fake, Clock(), 60, reactor=reactor)
        service.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        # The handler only schedules; the reload runs on the reactor thread.
        assert fake.reloads == 0
        assert previous_calls == [signal.SIGHUP]
        [(function, args)] = reactor.called
        function(*args)
        assert fake.reloads == 1
        service.stopService()
        assert signal.getsignal(signal.SIGHUP) is previous
    finally:
        signal.signal(signal.SIGHUP, original)


def test_default_sighup_action_not_chained(pair: tuple[Path, Path]) -> None:
    original = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        reactor = FakeReactor()
        service = ReloadService(FakeSource(TLSContextSource(*pair)), Clock(), 60,
                                reactor=reactor)
        service.startService()
        os.kill(os.getpid(), signal.SIGHUP)  # would end the process if chained
        assert len(reactor.called) == 1
        service.stopService()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, original)


def test_make_service_adds_reload(tmp_path: Path) -> None:
    from rumpus_secure import tap
    from tests.test_tap import Reactor, parse

    options = parse("--data-dir", str(tmp_path), "--cert-check-interval", "30")
    top = tap.makeService(options, reactor=Reactor())
    reload = top.getServiceNamed("tls-reload")
    assert isinstance(reload, ReloadService)
    assert reload.interval == 30.0
    assert reload.tls is top.server.tls  # type: ignore[attr-defined]
    assert reload.audit is top.server.audit  # type: ignore[attr-defined]


# -- the real server -------------------------------------------------------


def _fingerprint(sock: Any) -> str:
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def _wait_for_reload(audit: Path, count: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in read_events(audit) if e["event"] == "tls.reload"]
        if len(events) >= count:
            return events[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"no tls.reload event #{count} in {audit}")


@pytest.mark.integration
@pytest.mark.parametrize("trigger", ["signal", "file-change"])
def test_reload_keeps_open_sessions(tmp_path: Path, trigger: str) -> None:
    from tests.integration.clients import explicit_ftps, implicit_ftps
    from tests.server_process import ServerProcess

    interval = "0" if trigger == "signal" else "0.2"
    with ServerProcess(tmp_path, cert_check_interval=interval) as server:
        assert server.process is not None
        session = implicit_ftps(server.ftps_port)
        explicit = explicit_ftps(server.ftp_port)
        explicit.auth()
        try:
            old = _fingerprint(session.sock)
            key = server.data_dir / "tls" / "key.pem"
            _replace(_pair(tmp_path / "new"), (server.cert_path, key))
            if trigger == "signal":
                server.process.send_signal(signal.SIGHUP)
            event = _wait_for_reload(server.audit_path, 1)
            assert (event["trigger"], event["outcome"]) == (trigger, "ok")

            assert session.voidcmd("NOOP").startswith("200")
            assert explicit.voidcmd("NOOP").startswith("200")
            assert _fingerprint(session.sock) == old
            fresh = implicit_ftps(server.ftps_port)
            try:
                new = _fingerprint(fresh.sock)
                assert new != old
                expected = event["fingerprint"].replace(":", "").lower()
                assert new == expected
            finally:
                fresh.quit()
            session.quit()
            explicit.quit()
        finally:
            session.close()
            explicit.close()
        assert server.running
    assert "Traceback" not in server.log_text(), server.log_text()


def test_sighup_also_runs_the_signal_hooks_after_the_reload(pair: tuple[Path, Path]) -> None:
    original = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        reactor = FakeReactor()
        fake = FakeSource(TLSContextSource(*pair))
        service = ReloadService(fake, Clock(), 60, reactor=reactor)
        order: list[str] = []
        service.signal_hooks.append(lambda: order.append(f"hook after {fake.reloads}"))
        service.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        assert order == []
        for function, args in reactor.called:
            function(*args)
        assert order == ["hook after 1"]
        service.stopService()
    finally:
        signal.signal(signal.SIGHUP, original)
