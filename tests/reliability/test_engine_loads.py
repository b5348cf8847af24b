"""Loading one curriculum's engine (its snapshot read and decoded: seconds for 10^7
samples) holds no lock the other curricula need: they are served meanwhile, and two
requests for the one being loaded share one load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from paceline_server.app.engines import CachedEngine, EngineCache
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import Store
from support import SPEC


class SlowSnapshots:
    """The store, with the snapshot reads of `slow` held until `release` is set (fault
    injection around the real SQLite store)."""

    def __init__(self, store: Store, slow: str) -> None:
        self.store, self.slow = store, slow
        self.entered, self.release = threading.Event(), threading.Event()
        self.loads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @contextmanager
    def snapshot_stream(self, name: str, **kwargs: Any) -> Iterator[Any]:
        self.loads.append(name)
        if name == self.slow:
            self.entered.set()
            assert self.release.wait(10), "never released"
        with self.store.snapshot_stream(name, **kwargs) as snapshot:
            yield snapshot


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    opened = open_store(url, auto_migrate=True)
    service = PacelineService(opened, Settings(database_url=url))
    for name in ("big", "small"):
        service.create_curriculum({**SPEC, "name": name})
    service.close()
    yield opened
    opened.close()


def in_thread(job: Any) -> tuple[threading.Thread, list[CachedEngine]]:
    out: list[CachedEngine] = []
    thread = threading.Thread(target=lambda: out.append(job()))
    thread.start()
    return thread, out


def test_another_curriculum_is_served_while_one_loads(store: Store) -> None:
    slow = SlowSnapshots(store, "big")
    cache = EngineCache(slow, capacity=8)  # type: ignore[arg-type]
    thread, loaded = in_thread(lambda: cache.entry(store.head("big")))
    try:
        assert slow.entered.wait(5)
        start = time.monotonic()
        small = cache.entry(store.head("small"))  # waited for "big" to load before
        assert time.monotonic() - start < 2.0
        assert small.spec.name == "small"
    finally:
        slow.release.set()
        thread.join(10)
    assert loaded and loaded[0].spec.name == "big"
    assert [name for name, _ in cache.engines()] == ["small", "big"]


def test_requests_for_the_curriculum_being_loaded_share_one_load(store: Store) -> None:
    slow = SlowSnapshots(store, "big")
    cache = EngineCache(slow, capacity=8)  # type: ignore[arg-type]
    first, got_first = in_thread(lambda: cache.entry(store.head("big")))
    assert slow.entered.wait(5)
    second, got_second = in_thread(lambda: cache.entry(store.head("big")))
    time.sleep(0.2)  # the second request waits for the first's load
    slow.release.set()
    first.join(10)
    second.join(10)
    assert got_first[0] is got_second[0]
    assert slow.loads == ["big"]
