"""When a run is stale: docs/deployment.md says a run "without a heartbeat for this long
(PACELINE_RUN_STALE_AFTER_S) is reported stale", so one whose last heartbeat is exactly
that long ago is stale, and one a microsecond short of it is not. Every read of a run
(get, list, heartbeat's answer) and every backend agree."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC


@pytest.fixture
def service_and_clock(database_url: str) -> Iterator[tuple[PacelineService, list[datetime]]]:
    now = [datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)]
    store = open_store(database_url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=database_url,
                                              run_stale_after_s=300.0),
                              clock=lambda: now[0])
    try:
        yield service, now
    finally:
        service.close()
        store.close()


def test_stale_from_exactly_the_threshold(
        service_and_clock: tuple[PacelineService, list[datetime]]) -> None:
    service, now = service_and_clock
    service.create_curriculum(SPEC)
    start = now[0]
    service.attach_run("math", {}, "r")
    now[0] = start + timedelta(seconds=300) - timedelta(microseconds=1)
    assert service.get_run("math", "r").stale is False
    assert [s.stale for s in service.list_runs("math")] == [False]
    now[0] = start + timedelta(seconds=300)
    assert service.get_run("math", "r").stale is True
    assert [s.stale for s in service.list_runs("math")] == [True]
    assert service.heartbeat("math", "r").stale is False  # a heartbeat makes it live
