"""The dashboard's list (app/overview.py), which the page polls every 2 s: a curriculum
deleted while the list is built is left out (the whole list answered 404 and the page
stopped refreshing), an unchanged curriculum's engine is not read again (with more
curricula than the engine cache holds, every poll reloaded them all), and a cut list
says so."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paceline_server.app.overview import Overview
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC


@pytest.fixture
def service(tmp_path: Path) -> PacelineService:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    found = PacelineService(open_store(url, auto_migrate=True),
                            Settings(database_url=url, engine_cache_size=2))
    for i in range(5):
        found.create_curriculum({**SPEC, "name": f"c{i}"})
    return found


def counting_states(service: PacelineService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    state = service.state

    def counted(name: str, *args: Any) -> Any:
        read.append(name)
        return state(name, *args)

    monkeypatch.setattr(service, "state", counted)
    return read


def test_an_unchanged_curriculum_is_not_read_again(
        service: PacelineService, monkeypatch: pytest.MonkeyPatch) -> None:
    read = counting_states(service, monkeypatch)
    overview = Overview(service)
    first = overview.listing()
    assert [s.name for s in first.curricula] == [f"c{i}" for i in range(5)]
    assert read == [f"c{i}" for i in range(5)]
    service.attach_run("c3", run_id="r")
    batch = service.next_batch("c3", "r", 0)
    service.report("c3", {"run_id": "r", "step": 0, "indices": batch.indices.tolist(),
                          "rewards": np.ones((batch.indices.size, 2, 2)).tolist()})
    second = overview.listing()
    assert read[5:] == ["c3"]  # only the curriculum a report changed
    assert [s.reports for s in second.curricula] == [0, 0, 0, 1, 0]
    assert [s.runs for s in second.curricula] == [0, 0, 0, 1, 0]  # runs are read each time


def test_a_curriculum_deleted_while_listing_is_left_out(
        service: PacelineService, monkeypatch: pytest.MonkeyPatch) -> None:
    run_summary = service.run_summary

    def deleted_meanwhile(name: str) -> Any:
        if name == "c2":
            service.delete_curriculum("c2")
        return run_summary(name)

    monkeypatch.setattr(service, "run_summary", deleted_meanwhile)
    assert [s.name for s in Overview(service).listing().curricula] == ["c0", "c1", "c3", "c4"]


def test_a_cut_list_says_so(service: PacelineService) -> None:
    overview = Overview(service)
    assert not overview.listing(limit=5).truncated
    cut = overview.listing(limit=3)
    assert cut.truncated and [s.name for s in cut.curricula] == ["c0", "c1", "c2"]


def test_runs_are_counted_not_read(service: PacelineService,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The list polls every 2 s: it counts a curriculum's runs in the database (reading
    every run of a curriculum with many put them all in memory at each poll)."""
    service.attach_run("c1", run_id="a")
    service.attach_run("c1", run_id="b")
    now = service.clock()
    monkeypatch.setattr(service, "clock", lambda: now + timedelta(
        seconds=service.settings.run_stale_after_s + 1))
    service.heartbeat("c1", "b")
    read: list[str] = []
    monkeypatch.setattr(service.store, "list_runs",
                        lambda name, *a, **k: read.append(name) or [])
    (summary,) = [s for s in Overview(service).listing().curricula if s.name == "c1"]
    assert read == []
    assert (summary.runs, summary.stale_runs) == (2, 1)
    assert summary.last_heartbeat == service.store.get_run("c1", "b").last_heartbeat
