"""
The streamed ZIP: what goes in (jail, permissions, no symlinks), that it
is a valid archive written without seeking, and that the building thread
waits for the network instead of filling memory.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from rumpus_secure.vfs import JailedFS
from rumpus_secure.web import zipstream
from rumpus_secure.web.zipstream import CHUNK, WINDOW, ZipProducer, build_zip, zip_name

ALL = frozenset({"list", "download"})


class FakeRequest:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.finished = False
        self.producer: Any = None
        self.channel = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def finish(self) -> None:
        self.finished = True


class Loop:
    """A reactor stand-in: calls from the thread run when the test says."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue()

    def call_from_thread(self, function: Any, *args: Any) -> None:
        self.calls.put((function, args))

    def run_one(self, timeout: float = 10.0) -> None:
        function, args = self.calls.get(timeout=timeout)
        function(*args)


def tree(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "docs" / "deep").mkdir(parents=True)
    (home / "docs" / "a.txt").write_bytes(b"alpha")
    (home / "docs" / "deep" / "b.bin").write_bytes(os.urandom(3 * CHUNK))
    (home / "top.txt").write_bytes(b"top")
    (tmp_path / "secret").write_bytes(b"outside the jail")
    os.symlink(tmp_path / "secret", home / "docs" / "link")
    return home


def run_to_end(request: FakeRequest, loop: Loop, producer: ZipProducer) -> None:
    producer.start()
    while not request.finished:
        loop.run_one()


def test_archive_holds_the_selection_and_no_symlink(tmp_path):
    home = tree(tmp_path)
    request, loop = FakeRequest(), Loop()
    build = build_zip(lambda: JailedFS(home, ALL), "/", ["docs", "top.txt"])
    run_to_end(request, loop, ZipProducer(request, build, loop.call_from_thread))
    with zipfile.ZipFile(io.BytesIO(b"".join(request.chunks))) as archive:
        assert archive.testzip() is None
        names = sorted(archive.namelist())
        assert names == ["docs/", "docs/a.txt", "docs/deep/", "docs/deep/b.bin", "top.txt"]
        assert archive.read("docs/deep/b.bin") == (home / "docs" / "deep" / "b.bin").read_bytes()
    assert b"outside the jail" not in b"".join(request.chunks)


def test_download_permission_is_needed(tmp_path, monkeypatch):
    home = tree(tmp_path)
    request, loop = FakeRequest(), Loop()
    build = build_zip(lambda: JailedFS(home, frozenset({"list"})), "/", ["top.txt"])
    failures: list[Any] = []
    monkeypatch.setattr(zipstream._log, "failure", lambda *a, **k: failures.append(a))
    aborted = threading.Event()

    class Transport:
        def abortConnection(self) -> None:
            aborted.set()

    request.channel = type("Channel", (), {"transport": Transport()})()
    producer = ZipProducer(request, build, loop.call_from_thread)
    producer.start()
    loop.run_one()
    assert aborted.is_set() and not request.finished
    assert request.chunks == []  # not even an empty archive that looks whole
    assert failures


def test_thread_waits_while_the_network_is_paused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "big.bin").write_bytes(os.urandom(40 * CHUNK))
    request, loop = FakeRequest(), Loop()
    build = build_zip(lambda: JailedFS(home, ALL), "/", ["big.bin"])
    producer = ZipProducer(request, build, loop.call_from_thread)
    producer.pauseProducing()
    producer.start()
    for _ in range(WINDOW):
        loop.run_one()
    # The window is full: nothing more comes while the transport is paused.
    with pytest.raises(queue.Empty):
        loop.calls.get(timeout=0.5)
    assert len(request.chunks) == WINDOW
    producer.resumeProducing()
    while not request.finished:
        loop.run_one()
    with zipfile.ZipFile(io.BytesIO(b"".join(request.chunks))) as archive:
        assert archive.read("big.bin") == (home / "big.bin").read_bytes()


def test_stop_ends_the_thread(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "big.bin").write_bytes(os.urandom(40 * CHUNK))
    request, loop = FakeRequest(), Loop()
    threads: list[threading.Thread] = []

    def start(function: Any) -> None:
        thread = threading.Thread(target=function)
        threads.append(thread)
        thread.start()

    build = build_zip(lambda: JailedFS(home, ALL), "/", ["big.bin"])
    producer = ZipProducer(request, build, loop.call_from_thread, start_thread=start)
    producer.pauseProducing()
    producer.start()
    loop.run_one()
    producer.stopProducing()
    threads[0].join(5)
    assert not threads[0].is_alive()


def test_zip_name():
    assert zip_name("/photos", ["2024"]) == "2024.zip"
    assert zip_name("/photos", ["a", "b"]) == "photos.zip"
    assert zip_name("/", ["a", "b"]) == "files.zip"

