"""What the history service holds outside its cache's budget (app/history.py): the rows
the report path keeps until it stores them, bounded in bytes as well as in count, and
the background fills and merges, let go once they are done."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_history import _Replayed, assert_same_history, write_log

from api_support import make_client
from paceline_server.app import history as history_module
from paceline_server.app.history import HistoryService, pending_rows, row_bytes
from paceline_server.domain import CurriculumSpec
from paceline_server.store import open_store

WIDE = 64  # distributions: a row is row_bytes(64, 2) = 2296 bytes
WIDE_SPEC: dict[str, Any] = {
    "name": "wide",
    "layout": {"distributions": [{"name": f"d{i}", "size": 2} for i in range(WIDE)]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "dump_ucb",
    "weighting": "hypervolume",
    "batch_size": 8,
    "seed": 3,
}
MOST = 10  # rows kept at most under the bound the tests set


def report(client: TestClient, step: int) -> None:
    """One step of a toy trainer on the wide curriculum: served batch, rewards, report."""
    rng = np.random.default_rng(step)
    batch = client.post("/v1/curricula/wide/batches", json={"run_id": "r1", "step": step})
    indices = batch.json()["indices"]
    acc = (rng.random((len(indices), 4)) < (np.asarray(indices) % 3 / 2)[:, None])
    length = rng.integers(10, 90, size=(len(indices), 4))
    rewards = np.stack([acc.astype(float), length.astype(float)], axis=-1).tolist()
    answer = client.post("/v1/curricula/wide/reports",
                         headers={"Idempotency-Key": f"r1/{step}"},
                         json={"run_id": "r1", "step": step, "indices": indices,
                               "rewards": rewards})
    assert answer.status_code == 200, answer.text


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report path's pending rows bounded to `MOST` wide rows' bytes (the default,
    4 MiB, is 11 rows at 10 000 distributions)."""
    monkeypatch.setattr(history_module, "MAX_PENDING_BYTES", MOST * row_bytes(WIDE, 2))


@pytest.mark.usefixtures("bounded")
def test_pending_rows_of_a_wide_curriculum_are_bounded_in_bytes(tmp_path: Path) -> None:
    """With snapshots 1000 reports apart, a wide curriculum's rows are stored every
    `MOST` reports, when their bytes reach the bound, so no more than that is kept; the
    history reads back complete, without a fold, equal to a replay of the log, and an
    import of it stores the same chunks. (They were kept up to 1000 rows per curriculum
    reported to, 350 MB at 10 000 distributions, outside any budget.)"""
    with make_client(f"sqlite:///{tmp_path / 'w.db'}", snapshot_every=1000) as client:
        assert client.post("/v1/curricula", json=WIDE_SPEC).status_code == 201
        assert client.post("/v1/curricula/wide/runs", json={"run_id": "r1"}
                           ).status_code == 201
        service = client.app.state.service  # type: ignore[attr-defined]
        for step in range(35):
            report(client, step)
            pending = service.histories._pending.get("wide")
            assert pending is None or len(pending.steps) < MOST
        store = service.store
        assert [(c.first_seq, c.last_seq) for c in store.history_checkpoints("wide")] == [
            (1, 10), (11, 20), (21, 30)]  # 31..35 kept, each also in its event
        cold = HistoryService(store)
        view = cold.history("wide", every=1)
        assert cold.folds == 0 and view.complete and view.seq.tolist() == list(range(36))
        assert_same_history(view, _Replayed(store).history("wide", every=1))
        ndjson = {"Content-Type": "application/x-ndjson"}
        created = client.post("/v1/imports?name=copy", headers=ndjson,
                              content=client.get("/v1/curricula/wide/export").content)
        assert created.status_code == 201, created.text
        assert [(c.first_seq, c.last_seq) for c in store.history_checkpoints("copy")] == [
            (1, 10), (11, 20), (21, 30), (31, 35)]
        copy = HistoryService(store).history("copy", every=1)
        for key in view.series:
            np.testing.assert_array_equal(copy.series[key], view.series[key], err_msg=key)
    assert pending_rows(CurriculumSpec.from_dict(WIDE_SPEC)) == MOST


def test_narrow_curricula_keep_the_count_bound() -> None:
    """Below the byte bound the chunks are where they were: at most 1000 rows."""
    assert pending_rows(CurriculumSpec.from_dict({**WIDE_SPEC, "layout": {
        "distributions": [{"name": "a", "size": 4}, {"name": "b", "size": 4}]}})) == 1000
    many = {"distributions": [{"name": f"d{i}", "size": 1} for i in range(10_000)]}
    assert pending_rows(CurriculumSpec.from_dict({**WIDE_SPEC, "layout": many})) == 11


def test_finished_fills_are_let_go_and_can_be_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fill started leaves no thread behind once done, however many ran (each
    was kept for good: a long-running service held one Thread per fill ever started);
    `wait_for_fills` still waits for the running ones, with a timeout."""
    started: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
    real = threading.Thread

    class Tracked(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.add(self)

    monkeypatch.setattr(history_module.threading, "Thread", Tracked)
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}", auto_migrate=True)
    try:
        write_log(store, 6, rows=True)
        created_at = store.head("hist").created_at
        histories = HistoryService(store)
        for _ in range(40):
            histories._start_fill("hist", created_at, 0, 6)
            assert histories.wait_for_fills(30)
        gc.collect()
        assert len(started) <= 1  # the last one, let go when the next starts

        release = threading.Event()
        put = store.put_history

        def gated(*args: Any, **kwargs: Any) -> None:
            release.wait(30)
            put(*args, **kwargs)

        store.put_history = gated
        histories._start_fill("hist", created_at, 0, 6)
        assert not histories.wait_for_fills(0.2)  # still storing
        release.set()
        assert histories.wait_for_fills(30)
        assert [(c.first_seq, c.last_seq) for c in store.history_checkpoints("hist")] == [
            (1, 6)]
        assert_same_history(HistoryService(store).history("hist", every=1),
                            _Replayed(store).history("hist", every=1))
    finally:
        store.close()
