"""/metrics of a process that did not serve a curriculum's delete (another replica, or
another uvicorn worker, on the same database): the curriculum's series go too, and one
deleted and created again elsewhere is not shown with the old state. Two apps on one
SQLite file stand for two replicas; nothing tells the second of the first's delete."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.domain.errors import Unavailable
from support import SPEC


def series_of(client: TestClient, curriculum: str) -> list[str]:
    text = client.get("/metrics").text
    return [line for line in text.splitlines()
            if not line.startswith("#") and f'curriculum="{curriculum}"' in line]


def sample(client: TestClient, line_start: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextmanager
def two_replicas(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with make_client(url) as a, make_client(url) as b:
        yield a, b


def train(client: TestClient, name: str, steps: range, *, create: bool = False) -> None:
    if create:
        assert client.post("/v1/curricula", json={**SPEC, "name": name}).status_code == 201
        assert client.post(f"/v1/curricula/{name}/runs",
                           json={"run_id": "r"}).status_code == 201
    for step in steps:
        batch = client.post(f"/v1/curricula/{name}/batches", json={"run_id": "r", "step": step})
        assert batch.status_code == 200, batch.text
        indices = batch.json()["indices"]
        report = client.post(f"/v1/curricula/{name}/reports", json={
            "run_id": "r", "step": step, "indices": indices,
            "rewards": [[[1.0, 5.0], [0.0, 7.0]] for _ in indices]})
        assert report.status_code == 200, report.text


def test_a_curriculum_deleted_through_another_replica_leaves_its_series(
        tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (a, b):
        train(a, "gone", range(1), create=True)
        train(b, "gone", range(1, 3))  # b caches the engine and counts
        train(b, "kept", range(2), create=True)
        assert series_of(b, "gone")
        assert a.delete("/v1/curricula/gone", params={"confirm": "gone"}).status_code == 204
        b.get("/metrics")  # a scrape finds the delete out, for the next one
        assert series_of(b, "gone") == []
        assert b.app.state.service.engines.peek("gone") is None  # type: ignore[attr-defined]
        assert sample(b, 'paceline_curriculum_seq{curriculum="kept"}') == 2.0  # untouched
        assert sample(b, 'paceline_reports_total{curriculum="kept"}') == 2.0


def test_a_curriculum_recreated_through_another_replica_is_not_shown_as_the_old_one(
        tmp_path: Path) -> None:
    """Replica b folded five reports of the first `x`; a deletes it and creates `x`
    again, which has one. The dashboard shows the replica with the highest
    `paceline_curriculum_seq`, so b's old engine (seq 5) hid the new curriculum."""
    with two_replicas(tmp_path) as (a, b):
        train(a, "x", range(1), create=True)
        train(b, "x", range(1, 5))
        assert sample(b, 'paceline_curriculum_seq{curriculum="x"}') == 5.0
        assert a.delete("/v1/curricula/x", params={"confirm": "x"}).status_code == 204
        train(a, "x", range(1), create=True)
        b.get("/metrics")
        assert series_of(b, "x") == []  # the old lifetime's gauges and counters
        train(b, "x", range(1, 2))  # served again: the new curriculum, counted from zero
        assert sample(b, 'paceline_curriculum_seq{curriculum="x"}') == 2.0
        assert sample(b, 'paceline_reports_total{curriculum="x"}') == 1.0


def test_metrics_are_served_when_the_store_cannot_say_what_was_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads the database; when it cannot (the database is down), /metrics
    still answers, with the series as they were: they matter most then."""
    with two_replicas(tmp_path) as (a, b):
        train(a, "m", range(1), create=True)
        service = b.app.state.service  # type: ignore[attr-defined]

        def down(names: object) -> object:
            raise Unavailable("database unreachable")

        monkeypatch.setattr(service.store, "heads", down)
        train(b, "m", range(1, 2))
        for _ in range(2):
            assert b.get("/metrics").status_code == 200
        assert sample(b, 'paceline_curriculum_seq{curriculum="m"}') == 2.0
