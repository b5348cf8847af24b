"""The history cache's byte budget (`PACELINE_HISTORY_CACHE_BYTES`, app/history.py): traces
evicted by their bytes, and a history whose rows would not fit answered streamed (the
stored rows read in order, only the returned ones kept), row for row and bit for bit what
the cached path answers, in bounded memory."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_history import (
    SPEC,
    _Replayed,
    assert_same_history,
    drive,
    null_progress,
    setup,
    wait_for_fills,
    write_log,
)

from api_support import make_client
from paceline_server.app import history as history_module
from paceline_server.app.codec import encode_report
from paceline_server.app.history import HistoryService, row_bytes, store_imported_rows
from paceline_server.app.service import PacelineService
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.domain.history import pack_point
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store

#: (every, since) of the requests compared; None: left out ("head": the last report)
QUERIES: list[tuple[int | None, int | str | None]] = [
    (None, None), (1, None), (3, None), (None, 2), (1, 5), (4, 5), (2, "head"), (1, "head")]


def compare(store: Any, queries: list[tuple[int | None, Any]] = QUERIES,
            replayable: bool = True) -> None:
    """Each query answered by the cache and streamed (a budget of 1 byte: nothing fits)
    gives the same history, every column bit for bit (dtype and shape too); and, when
    the log was not pruned, the one a replay of the whole log gives."""
    head = store.head("hist").head_seq
    cached = HistoryService(store)
    for every, since in queries:
        since = head if since == "head" else since
        reference = cached.history("hist", every=every, since=since)
        assert "hist" in cached._traces and reference.complete
        streamed = HistoryService(store, max_bytes=1)
        view = streamed.history("hist", every=every, since=since)
        assert streamed._traces == {} and streamed.nbytes == 0  # nothing was kept
        assert_same_history(view, reference)
        assert (view.every, view.replayed_seq, view.objectives, view.distributions) == (
            reference.every, reference.replayed_seq, reference.objectives,
            reference.distributions), (every, since)
    if replayable:
        assert_same_history(HistoryService(store, max_bytes=1).history("hist", every=1),
                            _Replayed(store).history("hist", every=1))


@pytest.fixture(params=["batches", "one chunk at a time"])
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Checkpoints read in the default batches, or one per query and event rows one per
    page (a budget of one byte per read)."""
    if request.param != "batches":
        monkeypatch.setattr(history_module, "CHUNK_BYTES", 1)
    return str(request.param)


@pytest.mark.usefixtures("reads")
def test_streamed_equals_cached_with_rows_after_the_last_checkpoint(
        client: TestClient) -> None:
    """Chunks 1..12 (snapshot_every=3), rows 13 and 14 only in their events; then the
    same with those two events holding no row (folded from the snapshot at 12)."""
    setup(client)
    drive(client, 14)
    store = client.app.state.service.store  # type: ignore[attr-defined]
    assert store.history_checkpoints("hist")[-1].last_seq == 12
    compare(store)
    null_progress(store, "seq > 12")
    compare(store)


@pytest.mark.usefixtures("reads")
def test_streamed_equals_cached_on_pruned_logs(tmp_path: Path) -> None:
    """A pruned log with checkpoints; one without them (the rows start at the snapshot
    the log continues from), its events with and without rows."""
    with make_client(f"sqlite:///{tmp_path / 'p.db'}", snapshot_every=4,
                     prune_events=True) as client:
        setup(client)
        drive(client, 10)
        store = client.app.state.service.store  # type: ignore[attr-defined]
        assert next(iter(store.events("hist"))).seq == 9
        compare(store, replayable=False)
    for rows in (True, False):
        store = open_store(f"sqlite:///{tmp_path / f'{rows}.db'}", auto_migrate=True)
        try:
            write_log(store, 10, snapshot_at=(4, 8), rows=rows)
            store.prune_events("hist", 8)
            assert HistoryService(store, max_bytes=1).history("hist").seq.tolist() == [
                8, 9, 10]
            compare(store, [(None, None), (1, 2), (2, 9), (1, "head")], replayable=False)
        finally:
            store.close()


def test_streamed_equals_cached_across_a_pruned_gap(tmp_path: Path) -> None:
    """Rows lost in a restart whose events were pruned before a fill stored them: the
    history skips from row 3 to the snapshot the log continues from (rows 0..3, 7)."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with make_client(url, snapshot_every=3, prune_events=True) as client:
        setup(client)
        drive(client, 4)  # rows 1..3 stored; 4 only in memory
    with make_client(url, snapshot_every=3, prune_events=True) as restarted:
        service = restarted.app.state.service  # type: ignore[attr-defined]
        late: list[tuple[Any, ...]] = []
        service.histories._start_fill = lambda *args: late.append(args)
        drive(restarted, 3, start=4)
        service.histories._fill(*late[0])  # the prune won: event 4 is gone
        assert HistoryService(service.store, max_bytes=1).history("hist").seq.tolist() == [
            0, 1, 2, 3, 7]
        compare(service.store, [(None, None), (1, 2), (1, 5), (2, 3), (1, "head")],
                replayable=False)


def test_a_long_replay_is_streamed_through_a_fill(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A log from before rows were stored (nothing to read, 23 reports to fold, more than
    INLINE_FOLDS): streamed, a background fill folds it and stores the rows in chunks of
    `_chunk_rows` (here 5), and the request reads them; the next one folds nothing."""
    monkeypatch.setattr(history_module, "INLINE_FOLDS", 4)
    monkeypatch.setattr(history_module, "MERGED_ROWS", 5)
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        write_log(store, 23, snapshot_at=(10,))
        reference = _Replayed(store).history("hist", every=1)
        first = HistoryService(store, max_bytes=1)
        assert_same_history(first.history("hist", every=1), reference)
        assert first.folds == 23
        assert [(c.first_seq, c.last_seq) for c in store.history_checkpoints("hist")] == [
            (1, 5), (6, 10), (11, 15), (16, 20), (21, 23)]
        again = HistoryService(store, max_bytes=1)
        assert_same_history(again.history("hist", every=1), reference)
        assert again.folds == 0
        compare(store)
    finally:
        store.close()


class _GatedStore:
    """A log without rows in its events whose history writes after the first wait until
    released: a long replay under way."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.release = threading.Event()
        self.writes = 0

    def put_history(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.writes > 1:
            self.release.wait(20)
        return self._store.put_history(*args, **kwargs)

    def event_progress(self, *args: Any, **kwargs: Any) -> Any:
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_streamed_replay_answers_with_what_it_has(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """While the fill of a streamed history is under way, a request given `wait_s`
    answers with the rows stored so far (`complete` false, `replayed_seq` where they
    end), each equal to the complete answer's row; then completes."""
    monkeypatch.setattr(history_module, "INLINE_FOLDS", 2)
    monkeypatch.setattr(history_module, "MERGED_ROWS", 4)
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    gated = _GatedStore(store)
    try:
        write_log(store, 9)
        reference = _Replayed(store).history("hist", every=1)
        streamed = HistoryService(gated, max_bytes=1)  # type: ignore[arg-type]
        partial = streamed.history("hist", every=1, wait_s=1.0)
        assert not partial.complete and partial.replayed_seq == 4 and partial.head_seq == 9
        assert partial.seq.tolist() == [0, 1, 2, 3, 4]
        for column in ("step", "time", "reward_weights", "reward_scale", "hypervolume"):
            np.testing.assert_array_equal(getattr(partial, column),
                                          getattr(reference, column)[:5], strict=True)
        for key, values in partial.series.items():
            np.testing.assert_array_equal(values, reference.series[key][:5], strict=True)
        sparse = streamed.history("hist", every=3, wait_s=0.0)  # the last row is there
        assert sparse.seq.tolist() == [0, 3, 4] and not sparse.complete
        gated.release.set()
        done = streamed.history("hist", every=1, wait_s=None)
        wait_for_fills(streamed)
        assert_same_history(done, reference)
        assert done.replayed_seq == 9 and streamed._traces == {}
    finally:
        gated.release.set()
        store.close()


# ------------------------------------------------------------------ the budget
def write_named(store: Any, name: str, reports: int, rows: bool = True) -> None:
    write_log(store, reports, spec={**SPEC, "name": name}, rows=rows)


def test_traces_are_evicted_by_their_bytes(tmp_path: Path) -> None:
    """The least recently used trace goes when the bytes of all would pass the budget;
    the cache's count is the bytes its traces' arrays hold."""
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        for name in "abc":
            write_named(store, name, 20)
        one = HistoryService(store)
        one.history("a")
        size = one._traces["a"].nbytes
        assert size == one._traces["a"].columns.nbytes > 0  # type: ignore[attr-defined]
        histories = HistoryService(store, max_bytes=2 * size + size // 2)
        histories.history("a")
        histories.history("b")
        assert list(histories._traces) == ["a", "b"] and histories.nbytes == 2 * size
        histories.history("a")  # used again: b is now the least recent
        histories.history("c")
        assert list(histories._traces) == ["a", "c"] and histories.nbytes == 2 * size
        histories.forget("a")
        assert list(histories._traces) == ["c"] and histories.nbytes == size
    finally:
        store.close()


def test_a_trace_grown_past_the_budget_is_dropped_and_streamed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        engine = write_log(store, 20, rows=True)
        budget = 25 * row_bytes(3, 2)  # rows 0..20 fit, 0..40 do not
        histories = HistoryService(store, max_bytes=budget)
        assert histories.history("hist").seq.size == 21
        assert "hist" in histories._traces and 0 < histories.nbytes <= budget
        rng = np.random.default_rng(1)
        with store.writer("hist") as writer:  # 20 more reports, rows in their events
            for step in range(20, 40):
                batch = engine.next_batch("r1", step)
                item = Report.dense(run_id="r1", step=step, indices=batch.indices,
                                    rewards=rng.random((batch.indices.size, 4, 2)).round(2),
                                    layout=engine.layout, num_objectives=2)
                engine.apply(item)
                writer.append("report", "r1", step, None, encode_report(item),
                              progress=pack_point(engine.progress()))
        view = histories.history("hist", every=1)
        assert view.seq.tolist() == list(range(41)) and view.complete
        assert histories._traces == {} and histories.nbytes == 0
        assert_same_history(view, _Replayed(store).history("hist", every=1))
    finally:
        store.close()


def test_an_engine_over_the_budget_is_let_go(tmp_path: Path) -> None:
    """A trace whose rows were folded keeps its engine only while rows and engine fit
    the budget; without it, later folds start from a snapshot and the rows are the
    same."""
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        write_log(store, 10, snapshot_at=(5,))  # no rows stored: folded
        roomy = HistoryService(store)
        roomy.history("hist")
        trace = roomy._traces["hist"]
        assert trace.engine is not None and trace.nbytes > trace.columns.nbytes  # type: ignore[attr-defined]
        budget = trace.columns.nbytes + 1  # type: ignore[attr-defined]
        tight = HistoryService(store, max_bytes=budget)
        view = tight.history("hist", every=1)
        kept = tight._traces["hist"]
        assert kept.engine is None and tight.nbytes == kept.nbytes <= budget
        assert_same_history(view, _Replayed(store).history("hist", every=1))
    finally:
        store.close()


# ------------------------------------------------------------------ memory
WIDE = 100  # distributions
WIDE_REPORTS = 1500


def wide_log(store: Any, name: str = "wide", reports: int = WIDE_REPORTS,
             snapshot_every: int = 100) -> None:
    """A curriculum of `WIDE` distributions with `reports` reports, each report's row in
    its event and in a checkpoint every `snapshot_every` (the last ones not yet), as the
    report path leaves them."""
    spec = CurriculumSpec.from_dict({
        "name": name, "objectives": ["acc"], "batch_size": 8, "seed": 1,
        "layout": {"distributions": [{"name": f"d{i}", "size": 4} for i in range(WIDE)]}})
    engine = CurriculumEngine(spec)
    store.create_curriculum(name, spec.to_dict())
    rng = np.random.default_rng(0)
    for first in range(1, reports + 1, snapshot_every):
        with store.writer(name) as writer:
            steps, rows = [], []
            for seq in range(first, min(first + snapshot_every, reports + 1)):
                step = seq - 1
                batch = engine.next_batch("r1", step)
                item = Report.dense(run_id="r1", step=step, indices=batch.indices,
                                    rewards=(rng.random((batch.indices.size, 4, 1)) < 0.5)
                                    .astype(float), layout=engine.layout, num_objectives=1)
                engine.apply(item)
                row = pack_point(engine.progress())
                writer.append("report", "r1", step, None, encode_report(item), progress=row)
                steps.append(step)
                rows.append(row)
            if len(rows) == snapshot_every:
                store_imported_rows(writer, spec, first, steps, rows)


def test_a_long_wide_history_is_served_within_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1500 reports of 100 distributions (5 MB of rows in memory) under a 1 MiB
    budget: the history is served from the stored rows, the cache holds none of it, and
    the request's peak memory is the rows returned plus a read, not the whole history
    (it held every row, and every checkpoint's bytes at once, about 11 MB, and kept the
    rows cached after it)."""
    monkeypatch.setattr(history_module, "CHUNK_BYTES", 512 * 1024, raising=False)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    budget = 1024**2
    store = open_store(url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=url, history_cache_bytes=budget))
    try:
        wide_log(store)
        wide_log(store, "warm", reports=150)
        assert WIDE_REPORTS * row_bytes(WIDE, 1) > 5 * budget
        service.history("warm", every=25)  # imports and one-time set-up, not measured
        tracemalloc.start()
        try:
            view = service.history("wide", every=25)
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert view.complete and view.seq.tolist() == [*range(0, 1501, 25)]
        assert peak < 2 * 1024**2, peak
        assert held < 512 * 1024, held  # the answer (61 rows: about 210 KB), no cache
        histories = service.histories
        assert histories.nbytes <= budget and "wide" not in histories._traces
        cached = HistoryService(store, max_bytes=64 * 1024**2)
        assert_same_history(view, cached.history("wide", every=25))
        assert "wide" in cached._traces
        for since in (0, 777, 1450):
            assert_same_history(service.history("wide", since=since),
                                cached.history("wide", since=since))
    finally:
        service.close()
        store.close()


def test_a_streamed_history_builds_its_start_row_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seq-0 row is a fresh engine's, a whole state (hundreds of MB at 10⁷
    samples): a streamed history, read again on every request, builds it once."""
    built: list[int] = []

    class Counted(CurriculumEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        write_log(store, 12, rows=True)
        monkeypatch.setattr(history_module, "CurriculumEngine", Counted)
        streamed = HistoryService(store, max_bytes=1)
        views = [streamed.history("hist", every=1) for _ in range(3)]
        assert len(built) == 1 and streamed.folds == 0
        for view in views[1:]:
            assert_same_history(view, views[0])
    finally:
        store.close()
