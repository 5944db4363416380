"""
The objects start-up made are frozen out of the cyclic collector's full
collections once the reactor runs (rumpus_secure.tap.freeze_startup_heap).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure import tap


def test_freezing_moves_the_heap_out_of_full_collections() -> None:
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        tap.freeze_startup_heap()
        assert gc.get_freeze_count() > 1000
        # Objects made afterwards are still collected.
        cycle: list[Any] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()


def test_make_service_freezes_once_the_reactor_runs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_tap import Reactor, parse

    reactor = Reactor()
    tap.makeService(parse("--data-dir", str(tmp_path / "data")), reactor=reactor)
    hooks = [hook for hook, args, kwargs in reactor.whenRunningHooks]
    assert tap.freeze_startup_heap in hooks
