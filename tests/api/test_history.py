"""GET /v1/curricula/{name}/history: per-report series rebuilt from the event log, its
downsampling, its agreement with /state and with an offline replay, pruned logs, bad
input; and the explanations /state carries."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.app import history as history_module
from paceline_server.app.codec import decode_report, encode_report
from paceline_server.app.history import MAX_POINTS, HistoryService, auto_every
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.domain.history import (
    DISTRIBUTION_SERIES,
    RowChunk,
    pack_point,
    pack_rows,
    unpack_points,
    unpack_rows,
)
from paceline_server.engine import CurriculumEngine
from paceline_server.store import open_store
from paceline_server.strategies import registry
from paceline_server.strategies.state_codec import StateVersionError
from test_state_versions import (  # noqa: F401  (evolving: the fixture)
    EvolvingV2Unmigrated,
    evolving,
    stored_curriculum,
)

SPEC: dict[str, Any] = {
    "name": "hist",
    "layout": {"distributions": [{"name": "easy", "size": 40}, {"name": "mid", "size": 30},
                                 {"name": "hard", "size": 30}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "dump_ucb",
    "weighting": "hypervolume",
    "batch_size": 8,
    "seed": 3,
}
PASS_RATE = {"easy": 0.9, "mid": 0.5, "hard": 0.0}


def drive(client: TestClient, reports: int, start: int = 0, name: str = "hist",
          run: str = "r1") -> None:
    """`reports` steps of a toy trainer: served batch, rewards by difficulty, report."""
    rng = np.random.default_rng(start)
    for step in range(start, start + reports):
        batch = client.post(f"/v1/curricula/{name}/batches",
                            json={"run_id": run, "step": step}).json()
        bounds = np.cumsum([40, 30, 30])
        rate = np.array([PASS_RATE[n] for n in ("easy", "mid", "hard")])
        owner = np.searchsorted(bounds, np.asarray(batch["indices"]), side="right")
        acc = (rng.random((len(owner), 4)) < rate[owner][:, None]).astype(float)
        length = rng.integers(10, 90, size=(len(owner), 4)).astype(float)
        rewards = np.stack([acc, length], axis=-1).tolist()
        answer = client.post(f"/v1/curricula/{name}/reports",
                             headers={"Idempotency-Key": f"{run}/{step}"},
                             json={"run_id": run, "step": step, "indices": batch["indices"],
                                   "rewards": rewards})
        assert answer.status_code == 200, answer.text


def setup(client: TestClient, spec: dict[str, Any] | None = None) -> None:
    assert client.post("/v1/curricula", json=spec or SPEC).status_code == 201
    name = (spec or SPEC)["name"]
    assert client.post(f"/v1/curricula/{name}/runs", json={"run_id": "r1"}).status_code == 201


def replayed(client: TestClient, name: str, upto: int) -> CurriculumEngine:
    """A fresh engine folding the stored reports 1..upto (what the history should show)."""
    service = client.app.state.service  # type: ignore[attr-defined]
    engine = CurriculumEngine(CurriculumSpec.from_dict(service.get_curriculum(name).spec))
    for event in service.store.events(name, after_seq=0, limit=upto):
        engine.apply(decode_report(event.payload))
    return engine


def test_history_rows_match_state_and_replay(client: TestClient) -> None:
    setup(client)
    drive(client, 12)
    answer = client.get("/v1/curricula/hist/history")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["head_seq"] == 12 and body["first_seq"] == 0 and body["every"] == 1
    assert body["seq"] == list(range(13)) and body["step"] == [-1, *range(12)]
    assert body["distributions"] == ["easy", "mid", "hard"]
    assert body["objectives"] == ["acc", "len"]
    assert all(b >= a for a, b in zip(body["time"], body["time"][1:], strict=False))
    per = body["per_distribution"]
    probabilities = np.array([per[d]["probability"] for d in body["distributions"]])
    assert np.allclose(probabilities.sum(axis=0), 1.0)
    assert per["easy"]["success"][0] is None  # nothing reported before seq 1
    # the last row is what /state says now
    state = client.get("/v1/curricula/hist/state").json()
    for d in state["distributions"]:
        assert per[d["name"]]["probability"][-1] == pytest.approx(d["probability"])
        assert per[d["name"]]["success"][-1] == pytest.approx(d["success"])
        assert per[d["name"]]["mean_abs_advantage"][-1] == pytest.approx(
            d["mean_abs_advantage"])
        assert per[d["name"]]["zero_variance_fraction"][-1] == pytest.approx(
            d["zero_variance_fraction"])
        for flag in ("stalled", "saturated", "hopeless"):
            assert per[d["name"]][flag][-1] == d["health"][flag]
    for objective, weight in state["reward_weights"].items():
        assert body["reward_weights"][objective][-1] == pytest.approx(weight)
    assert body["reward_scale"][-1] == pytest.approx(state["reward_scale"])
    assert body["hypervolume"][-1] == pytest.approx(
        state["hypervolume_history"][-1]["hypervolume"])
    # a middle row is the state after folding the first 5 reports
    point = replayed(client, "hist", 5).progress()
    assert [per[d]["probability"][5] for d in body["distributions"]] == pytest.approx(
        point.probabilities.tolist())
    assert [body["reward_weights"][o][5] for o in body["objectives"]] == pytest.approx(
        point.reward_weights.tolist())


def test_downsampling_and_incremental_fold(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 10)
    body = client.get("/v1/curricula/hist/history", params={"every": 4}).json()
    assert body["seq"] == [0, 4, 8, 10] and body["every"] == 4  # the head is always there
    body = client.get("/v1/curricula/hist/history", params={"every": 3, "since": 4}).json()
    assert body["seq"] == [6, 9, 10]
    body = client.get("/v1/curricula/hist/history", params={"since": 10}).json()
    assert body["seq"] == [10]
    # reports committed after the first request are folded into the cached history
    drive(client, 5, start=10)
    body = client.get("/v1/curricula/hist/history").json()
    assert body["seq"] == list(range(16)) and body["head_seq"] == 15
    # ... and give what a fresh replay of the whole log gives
    service = client.app.state.service  # type: ignore[attr-defined]
    fresh = HistoryService(service.store).history("hist")
    hard = body["per_distribution"]["hard"]
    assert np.allclose(np.array(hard["probability"]),
                       fresh.series["probability"][:, 2])
    assert hard["hopeless"] == fresh.series["hopeless"][:, 2].tolist()


def test_default_every_caps_the_rows() -> None:
    assert auto_every(10) == 1
    assert auto_every(MAX_POINTS) == 1
    assert auto_every(MAX_POINTS + 1) == 2
    assert auto_every(100_000) == 100


@pytest.mark.parametrize("head", [1, 999, 1000, 1001, 1999, 2000, 2001, 100_000])
@pytest.mark.parametrize("since", [0, 1, 7])
def test_the_default_every_answers_at_most_max_points_rows(head: int, since: int) -> None:
    """Without `every`, at most MAX_POINTS rows, the last among them, with the smallest
    `every` that does so (seqs 0..1000 answered 1001 rows, 0..100 000 too, at every
    100)."""
    from datetime import UTC, datetime

    since = min(since, head)  # (a later since is refused before _select)
    spec = CurriculumSpec.from_dict(SPEC)
    columns = history_module._Columns(3, 2)
    columns._reserve(head + 1)
    columns.seq[:head + 1] = np.arange(head + 1)
    columns.size = head + 1
    trace = history_module._Trace(datetime.now(UTC), spec, None, 0, head, 0, columns)
    view = history_module._select("hist", trace, head, head, None, since)
    assert 0 < view.seq.size <= MAX_POINTS and view.seq[-1] == head
    assert view.seq[0] == since or view.seq[0] % view.every == 0
    fewer = history_module._select("hist", trace, head, head, view.every - 1, since) \
        if view.every > 1 else view
    assert view.every == 1 or fewer.seq.size > MAX_POINTS


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"since": 99}, 422, "HISTORY_OUT_OF_RANGE"),
    ({"since": -1}, 422, "HISTORY_OUT_OF_RANGE"),
    ({"every": 0}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": -2}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": 2**53 + 1}, 422, "INVALID_DOWNSAMPLING"),
    ({"every": 2**70}, 422, "INVALID_DOWNSAMPLING"),
])
def test_bad_history_requests(sqlite_client: TestClient, params: dict[str, int], status: int,
                              code: str) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 3)
    before = client.get("/v1/curricula/hist/state").json()
    answer = client.get("/v1/curricula/hist/history", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert client.get("/v1/curricula/hist/state").json() == before


def test_unknown_curriculum_history(sqlite_client: TestClient) -> None:
    answer = sqlite_client.get("/v1/curricula/nope/history")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "CURRICULUM_NOT_FOUND"


class _Replayed(HistoryService):
    """The history as a full replay of the log computes it (stored checkpoints and the
    rows stored with the events unread)."""

    def _load_checkpoints(self, *args: Any) -> int:
        return 0

    def _stored_rows(self, name: str, spec: Any, columns: Any, after: int,
                     head_seq: int) -> int:
        return after


def assert_same_history(cold: Any, warm: Any) -> None:
    """Every column of two histories equal, bit for bit (NaN equal to NaN)."""
    for column in ("seq", "step", "time", "reward_weights", "reward_scale", "hypervolume"):
        np.testing.assert_array_equal(getattr(cold, column), getattr(warm, column),
                                      err_msg=column, strict=True)
    assert cold.series.keys() == warm.series.keys()
    for key in cold.series:
        np.testing.assert_array_equal(cold.series[key], warm.series[key], err_msg=key,
                                      strict=True)
    assert (cold.head_seq, cold.first_seq, cold.complete) == (
        warm.head_seq, warm.first_seq, warm.complete)


def test_checkpoints_answer_a_cold_history_exactly(client: TestClient) -> None:
    """snapshot_every=3: the report path stores rows 1..3, 4..6, ... with the snapshots
    and each report's row in its event; a fresh HistoryService reads the chunks and the
    rows of the events after the last one, folds nothing, and its answer equals a full
    replay of the log in every column."""
    setup(client)
    drive(client, 14)
    service = client.app.state.service  # type: ignore[attr-defined]
    stored = service.store.history_checkpoints("hist")
    assert [(c.first_seq, c.last_seq) for c in stored] == [
        (1, 3), (4, 6), (7, 9), (10, 12)]
    cold_service = HistoryService(service.store)
    cold = cold_service.history("hist", every=1)
    assert cold.seq.tolist() == list(range(15)) and cold.complete
    assert cold_service.folds == 0 and cold_service._traces["hist"].engine is None
    replay = _Replayed(service.store)
    assert_same_history(cold, replay.history("hist", every=1))
    assert replay.folds == 14  # the reference really is a replay
    # at a checkpoint: the chunks alone
    drive(client, 1, start=14)
    at_checkpoint = HistoryService(service.store)
    view = at_checkpoint.history("hist", every=1)
    assert at_checkpoint.folds == 0 and view.head_seq == 15
    assert_same_history(view, _Replayed(service.store).history("hist", every=1))
    # and later requests read the new reports' rows too
    drive(client, 4, start=15)
    assert_same_history(at_checkpoint.history("hist", every=1),
                        _Replayed(service.store).history("hist", every=1))
    assert at_checkpoint.folds == 0 and at_checkpoint._traces["hist"].engine is None


def test_every_head_position_is_answered_without_a_fold(tmp_path: Any) -> None:
    """snapshot_every=100: a cold history with the head 1, 50 and 99 reports past the
    checkpoint folds no report and equals the full replay."""
    with make_client(f"sqlite:///{tmp_path / 'h.db'}", snapshot_every=100) as client:
        setup(client)
        store = client.app.state.service.store  # type: ignore[attr-defined]
        done = 0
        for head in (101, 150, 199):
            drive(client, head - done, start=done)
            done = head
            assert [c.last_seq for c in store.history_checkpoints("hist")] == [100]
            cold = HistoryService(store)
            view = cold.history("hist", every=1)
            assert view.seq.tolist() == list(range(head + 1)) and view.complete
            assert cold.folds == 0, head
            assert_same_history(view, _Replayed(store).history("hist", every=1))


def null_progress(store: Any, where: str, value: bytes | None = None) -> None:
    """Set the rows stored with some events of `hist` (as an older version left them:
    NULL, or damaged bytes)."""
    from sqlalchemy import text

    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE events SET progress = :value WHERE {where}"),
                     {"value": value})


def test_events_without_rows_are_replayed(client: TestClient) -> None:
    """Events whose row is missing (written before rows were stored with them, or not
    readable) are folded from the snapshot before them, as before: same answer."""
    setup(client)
    drive(client, 14)
    service = client.app.state.service  # type: ignore[attr-defined]
    store = service.store
    reference = _Replayed(store).history("hist", every=1)
    null_progress(store, "seq > 12")  # the tail after the last chunk (1..12)
    cold = HistoryService(store)
    assert_same_history(cold.history("hist", every=1), reference)
    trace = cold._traces["hist"]
    assert cold.folds == 2 and trace.engine is not None and trace.engine_seq == 14
    null_progress(store, "seq = 14")  # rows up to 13 read, 14 folded from the snapshot
    cold = HistoryService(store)
    assert_same_history(cold.history("hist", every=1), reference)
    assert cold.folds == 2  # 13 folded again on the way, its row not taken twice
    null_progress(store, "seq >= 13", b"\x01damaged")
    cold = HistoryService(store)
    assert_same_history(cold.history("hist", every=1), reference)
    assert cold.folds == 2


def test_rows_stored_with_the_events_are_read_in_pages(
        sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of `STORED_PAGE` rows: a long run is read whole across pages, and the read
    stops at the first event without a row (from there on, folds)."""
    setup(sqlite_client)
    drive(sqlite_client, 11)
    store = sqlite_client.app.state.service.store  # type: ignore[attr-defined]
    reference = _Replayed(store).history("hist", every=1)
    monkeypatch.setattr(history_module, "STORED_PAGE", 2)
    reads: list[int] = []
    original = store.event_progress

    def counted(name: str, after_seq: int, limit: int | None = None) -> Any:
        reads.append(after_seq)
        return original(name, after_seq, limit)

    monkeypatch.setattr(store, "event_progress", counted)

    class NoChunks(HistoryService):
        def _load_checkpoints(self, *args: Any) -> Any:
            return []

    paged = NoChunks(store)
    assert_same_history(paged.history("hist", every=1), reference)
    assert paged.folds == 0 and reads == [0, 2, 4, 6, 8, 10]  # 11 rows, pages of 2
    null_progress(store, "seq = 6")
    reads.clear()
    stopped = NoChunks(store)
    assert_same_history(stopped.history("hist", every=1), reference)
    # rows 1..5 read; at 5 the request looks once more, then folds from a fresh engine
    # (no snapshot at or before 5 is kept: 6 and 9 are), its rows taken from 6 on
    assert reads == [0, 2, 4, 5] and stopped.folds == 11


def test_points_pack_and_unpack() -> None:
    engine = CurriculumEngine(CurriculumSpec.from_dict(SPEC))
    point = engine.progress()
    packed = pack_point(point)
    assert len(packed) == 1 + 8 * (4 * 3 + 2 + 2) + 3 * 3
    chunk = unpack_points(5, np.array([4, 9]), np.array([1.0, 2.0]), [packed, packed], 3, 2)
    assert (chunk.first_seq, chunk.last_seq) == (5, 6)
    np.testing.assert_array_equal(chunk.series["probability"][1], point.probabilities)
    np.testing.assert_array_equal(chunk.series["success"][0], point.success)  # NaN kept
    np.testing.assert_array_equal(chunk.series["stalled"][0], point.stalled)
    assert chunk.series["stalled"].dtype == bool
    np.testing.assert_array_equal(chunk.reward_weights[0], point.reward_weights)
    np.testing.assert_array_equal(chunk.hypervolume, [point.hypervolume] * 2)
    assert chunk.step.tolist() == [4, 9] and chunk.time.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="expected"):
        unpack_points(1, np.array([1]), np.array([1.0]), [packed[:-1]], 3, 2)
    with pytest.raises(ValueError, match="expected"):
        unpack_points(1, np.array([1]), np.array([1.0]), [packed], 2, 2)  # another D
    with pytest.raises(ValueError, match="unknown format"):
        unpack_points(1, np.array([1]), np.array([1.0]), [b"\x02" + packed[1:]], 3, 2)


def test_a_pruned_log_is_answered_from_checkpoints(tmp_path: Any) -> None:
    with make_client(f"sqlite:///{tmp_path / 'p.db'}", snapshot_every=4,
                     prune_events=True) as pruned, \
            make_client(f"sqlite:///{tmp_path / 'q.db'}", snapshot_every=4) as kept:
        for client in (pruned, kept):
            setup(client)
            drive(client, 10)
        store = pruned.app.state.service.store  # type: ignore[attr-defined]
        assert next(iter(store.events("hist"))).seq == 9  # 1..8 pruned
        body = pruned.get("/v1/curricula/hist/history").json()
        assert body["first_seq"] == 0 and body["seq"] == list(range(11))
        # chunks 1..8, then the rows stored with events 9 and 10: nothing folded
        assert pruned.app.state.service.histories.folds == 0  # type: ignore[attr-defined]
        twin = kept.get("/v1/curricula/hist/history").json()
        assert body["per_distribution"] == twin["per_distribution"]
        assert body["reward_weights"] == twin["reward_weights"]
        assert body["step"] == twin["step"]
        state = pruned.get("/v1/curricula/hist/state").json()
        for d in state["distributions"]:
            assert body["per_distribution"][d["name"]]["probability"][-1] == pytest.approx(
                d["probability"])


def test_a_pruned_log_without_checkpoints_starts_at_a_snapshot(tmp_path: Any) -> None:
    """A log written before checkpoints existed (straight through the store), then
    pruned: the history starts at the snapshot the log continues from."""
    with make_client(f"sqlite:///{tmp_path / 'p.db'}") as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        write_log(service.store, 10, snapshot_at=(4, 8))
        assert service.store.prune_events("hist", 8) == 8
        body = client.get("/v1/curricula/hist/history").json()
        assert body["first_seq"] == 8 and body["seq"] == [8, 9, 10]
        answer = client.get("/v1/curricula/hist/history", params={"since": 2})
        assert answer.json()["seq"] == [8, 9, 10]  # what the store still holds


def test_a_pruned_log_without_checkpoints_reads_the_rows_after_its_snapshot(
        tmp_path: Any) -> None:
    """The same log with each report's row in its event: the rows after the snapshot
    are read, not folded, and equal the replayed ones."""
    stores = []
    for rows in (True, False):
        store = open_store(f"sqlite:///{tmp_path / f'{rows}.db'}", auto_migrate=True)
        write_log(store, 10, snapshot_at=(4, 8), rows=rows)
        assert store.prune_events("hist", 8) == 8
        stores.append(store)
    read, replayed = HistoryService(stores[0]), HistoryService(stores[1])
    view = read.history("hist", every=1)
    assert view.seq.tolist() == [8, 9, 10] and view.first_seq == 8
    assert read.folds == 0 and read._traces["hist"].engine is None
    reference = replayed.history("hist", every=1)
    assert replayed.folds == 2
    for column in ("reward_weights", "reward_scale", "hypervolume"):
        np.testing.assert_array_equal(getattr(view, column), getattr(reference, column))
    for key in view.series:
        np.testing.assert_array_equal(view.series[key], reference.series[key], err_msg=key)
    for store in stores:
        store.close()


def write_log(store: Any, reports: int, snapshot_at: tuple[int, ...] = (),
              spec: dict[str, Any] | None = None, rows: bool = False) -> CurriculumEngine:
    """`reports` reports appended straight to the log (no service, so no checkpoints;
    with `rows`, each report's history row in its event, as the report path stores it)."""
    engine = CurriculumEngine(CurriculumSpec.from_dict(spec or SPEC))
    store.create_curriculum(engine.spec.name, engine.spec.to_dict())
    rng = np.random.default_rng(7)
    with store.writer(engine.spec.name) as writer:
        for step in range(reports):
            batch = engine.next_batch("r1", step)
            rewards = rng.random((batch.indices.size, 4, len(engine.spec.objectives)))
            item = Report.dense(run_id="r1", step=step, indices=batch.indices,
                                rewards=rewards.round(2), layout=engine.layout,
                                num_objectives=len(engine.spec.objectives))
            engine.apply(item)
            seq = writer.append("report", "r1", step, None, encode_report(item),
                                progress=pack_point(engine.progress()) if rows else None)
            if seq in snapshot_at:
                writer.put_snapshot(seq, engine.to_bytes())
    return engine


def wait_for_fills(histories: HistoryService) -> None:
    assert histories.wait_for_fills(60), "a background fill or merge did not finish"


def test_rows_lost_in_a_restart_are_filled(client: TestClient, database_url: str) -> None:
    """Rows kept in memory when the process stops are gone: the next checkpoint notices
    the gap and a background fill stores them, so the chain from seq 1 is whole again."""
    setup(client)
    drive(client, 7)  # rows 1..6 stored (snapshot_every=3); 7 only in memory
    with make_client(database_url, snapshot_every=3) as restarted:
        drive(restarted, 5, start=7)  # checkpoint at 9 holds 8..9; 10..12 stored
        service = restarted.app.state.service  # type: ignore[attr-defined]
        wait_for_fills(service.histories)
        assert [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints(
            "hist")] == [(1, 3), (4, 6), (7, 7), (8, 9), (10, 12)]
        assert service.histories.folds == 0  # row 7 was read from its event
        assert_same_history(HistoryService(service.store).history("hist", every=1),
                            _Replayed(service.store).history("hist", every=1))


def test_a_gap_pruned_before_its_fill_skips_to_the_snapshot(tmp_path: Any) -> None:
    """The fill of rows lost in a restart runs in the background, and pruning, right
    after the report whose checkpoint found the gap, may delete their events first: the
    history then skips from the rows before the gap to the snapshot the log continues
    from, exact where it answers. (It folded from the snapshot before the gap, which the
    log no longer continued from, and every request failed with a 500.)"""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with make_client(url, snapshot_every=3, prune_events=True) as client:
        setup(client)
        drive(client, 4)  # rows 1..3 stored; 4 only in memory
    with make_client(url, snapshot_every=3, prune_events=True) as restarted, \
            make_client(f"sqlite:///{tmp_path / 'q.db'}", snapshot_every=3) as kept:
        service = restarted.app.state.service  # type: ignore[attr-defined]
        late: list[tuple[Any, ...]] = []
        service.histories._start_fill = lambda *args: late.append(args)
        drive(restarted, 3, start=4)  # checkpoint 5..6 finds the gap at 4; 1..6 pruned
        assert late == [("hist", late[0][1], 3, 4)]
        service.histories._fill(*late[0])  # the prune won: event 4 is gone
        assert [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints(
            "hist")] == [(1, 3), (5, 6)]
        assert next(iter(service.store.events("hist"))).seq == 7
        answer = restarted.get("/v1/curricula/hist/history")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["seq"] == [0, 1, 2, 3, 7] and body["complete"]
        setup(kept)
        drive(kept, 4)
        drive(kept, 3, start=4)  # the same reports, nothing pruned
        twin = kept.get("/v1/curricula/hist/history").json()
        rows = [0, 1, 2, 3, 7]
        for name, series in body["per_distribution"].items():
            for key, values in series.items():
                assert values == [twin["per_distribution"][name][key][i] for i in rows], key
        assert body["reward_weights"] == {
            o: [w[i] for i in rows] for o, w in twin["reward_weights"].items()}


@pytest.mark.parametrize("rows", ["none", "all", "first four"])
def test_a_log_from_before_checkpoints_is_backfilled(sqlite_client: TestClient,
                                                     rows: str) -> None:
    """A fill reads the rows stored with the events and folds from the first event
    without one (from the snapshot before it: here the log's start)."""
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    write_log(service.store, 10, rows=rows != "none")
    if rows == "first four":
        null_progress(service.store, "seq > 4")
    assert sqlite_client.post("/v1/curricula/hist/runs", json={"run_id": "r1"}
                              ).status_code in (200, 201)
    drive(sqlite_client, 2, start=10)  # seq 11, 12: a checkpoint of 11..12 and a fill
    wait_for_fills(service.histories)
    assert [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints("hist")
            ] == [(1, 10), (11, 12)]
    assert service.histories.folds == {"none": 10, "all": 0, "first four": 10}[rows]
    assert_same_history(HistoryService(service.store).history("hist", every=1),
                        _Replayed(service.store).history("hist", every=1))


def test_a_retried_transaction_replaces_its_rows(sqlite_client: TestClient) -> None:
    """`record` of a seq already kept drops the rows from there on; a seq that does not
    follow, or an engine reloaded after a failed commit, starts the rows afresh."""
    setup(sqlite_client)
    drive(sqlite_client, 2)
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    cached = service.engines.entry(service.store.head("hist"))
    histories = HistoryService(service.store)
    with cached.lock, service.store.writer("hist") as writer:
        point = cached.engine.progress()
        histories.record(writer, cached, 1, 0, 100, point)
        histories.record(writer, cached, 2, 1, 100, point)
        histories.record(writer, cached, 3, 7, 100, point)
        histories.record(writer, cached, 2, 5, 100, point)  # the retry
        pending = histories._pending["hist"]
        assert (pending.first_seq, pending.steps) == (1, [0, 5])
        histories.record(writer, cached, 9, 9, 100, point)  # a gap: starts afresh
        assert (histories._pending["hist"].first_seq, histories._pending["hist"].steps) \
            == (9, [9])
        cached.engine = CurriculumEngine(cached.spec)  # reloaded after a failed commit
        histories.record(writer, cached, 10, 10, 100, point)
        assert (histories._pending["hist"].first_seq, histories._pending["hist"].steps) \
            == (10, [10])


def test_history_needs_a_read_token(tmp_path: Any) -> None:
    with make_client(f"sqlite:///{tmp_path / 'a.db'}",
                     api_tokens={"w": "write", "r": "read"}) as client:
        write = {"Authorization": "Bearer w"}
        assert client.post("/v1/curricula", json=SPEC, headers=write).status_code == 201
        assert client.get("/v1/curricula/hist/history").status_code == 401
        answer = client.get("/v1/curricula/hist/history",
                            headers={"Authorization": "Bearer r"})
        assert answer.status_code == 200 and answer.json()["seq"] == [0]


def test_state_explains_each_probability(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 40)
    state = client.get("/v1/curricula/hist/state").json()
    explanations = {e["name"]: e for e in state["explanations"]}
    assert list(explanations) == ["easy", "mid", "hard"]
    for d in state["distributions"]:
        e = explanations[d["name"]]
        assert e["probability"] == pytest.approx(d["probability"])
        assert e["sentence"].startswith(f"`{d['name']}` gets ")
        ucb = e["terms"]["learnability"] + e["terms"]["exploration_bonus"]
        assert e["terms"]["ucb"] == pytest.approx(ucb)
        assert e["terms"]["learnability"] == pytest.approx(
            state["sampler"]["learnability"][state["distributions"].index(d)])
    assert "learnability" in explanations["easy"]["sentence"]


def test_explanation_names_the_health_flag(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client, {**SPEC, "name": "flat", "sampler": "uniform", "batch_size": 32})
    drive(client, 25, name="flat")
    state = client.get("/v1/curricula/flat/state").json()
    hard = state["explanations"][2]
    assert state["distributions"][2]["health"]["hopeless"]
    assert hard["flags"] == ["hopeless"] and hard["sentence"].endswith("flagged hopeless.")
    assert "success is 0.00" in hard["sentence"] and "30 of the 100 indices" in hard["sentence"]
    assert hard["terms"]["data_share"] == pytest.approx(0.3)
    assert state["explanations"][0]["flags"] == []


class _HeldStore:
    """A store without history checkpoints whose event reads wait until released: a
    replay that takes long."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.release = threading.Event()

    def events(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(10)
        return self._store.events(*args, **kwargs)

    def history_checkpoints(self, *args: Any, **kwargs: Any) -> Any:
        return []  # as a log from before checkpoints: everything is replayed

    def event_progress(self, *args: Any, **kwargs: Any) -> Any:
        return []  # nor rows stored with the events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_long_replay_answers_with_what_it_has(sqlite_client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 9)
    monkeypatch.setattr(history_module, "INLINE_FOLDS", 2)  # 9 reports: a background replay
    monkeypatch.setattr(history_module, "CHUNK", 4)
    service = client.app.state.service  # type: ignore[attr-defined]
    held = _HeldStore(service.store)
    histories = HistoryService(held)  # type: ignore[arg-type]
    partial = histories.history("hist", wait_s=0.05)
    assert not partial.complete and partial.replayed_seq == 0 and partial.head_seq == 9
    assert partial.seq.tolist() == [0]
    assert histories.history("hist", since=5, wait_s=0.0).seq.tolist() == []
    held.release.set()
    done = histories.history("hist", wait_s=None)
    assert done.complete and done.replayed_seq == 9 and done.seq.tolist() == list(range(10))
    inline = HistoryService(service.store).history("hist")
    assert np.array_equal(done.series["probability"], inline.series["probability"])
    assert np.array_equal(done.reward_weights, inline.reward_weights)
    body = client.get("/v1/curricula/hist/history").json()
    assert body["complete"] is True and body["replayed_seq"] == 9


def test_a_deleted_curriculum_leaves_no_history(sqlite_client: TestClient) -> None:
    client = sqlite_client
    setup(client)
    drive(client, 3)
    assert client.get("/v1/curricula/hist/history").json()["seq"] == [0, 1, 2, 3]
    service = client.app.state.service  # type: ignore[attr-defined]
    assert "hist" in service.histories._traces
    assert client.delete("/v1/curricula/hist", params={"confirm": "hist"}).status_code == 204
    assert "hist" not in service.histories._traces
    assert client.get("/v1/curricula/hist/history").status_code == 404
    setup(client)  # the same name again: a new curriculum, a new history
    assert client.get("/v1/curricula/hist/history").json()["seq"] == [0]


@pytest.mark.usefixtures("evolving")
def test_an_unreadable_snapshot_is_replayed_from_the_log(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot whose strategy state no longer migrates: the history's tail is folded
    by an engine replayed from the first event, and the rows are those of a replay."""
    store, _, _ = stored_curriculum(tmp_path, steps=6, snapshot_at=4)
    histories = HistoryService(store)
    histories._fill("c", store.head("c").created_at, 0, 4)  # rows 1..4, written by V1
    expected = _Replayed(store).history("c", every=1)
    registry.register_sampler(EvolvingV2Unmigrated)
    with caplog.at_level("WARNING", logger="paceline_server.app.history"):
        view = HistoryService(store).history("c", every=1)
    assert "snapshot at seq 4 not readable" in caplog.text
    assert view.seq.tolist() == list(range(7))
    assert_same_history(view, expected)
    store.close()


@pytest.mark.usefixtures("evolving")
def test_an_unreadable_snapshot_of_a_pruned_log_is_a_clear_error(tmp_path: Any) -> None:
    store, _, _ = stored_curriculum(tmp_path, steps=6, snapshot_at=4)
    assert store.prune_events("c", 4) == 4
    registry.register_sampler(EvolvingV2Unmigrated)
    with pytest.raises(StateVersionError, match="cannot be rebuilt by replay") as info:
        HistoryService(store).history("c")
    assert info.value.details["snapshot_seq"] == 4
    store.close()


def test_rows_pack_and_unpack() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 5, 3, 2
    chunk = RowChunk(first_seq=11, step=np.arange(n), time=rng.random(n),
                     series={name: (rng.random((n, d)) > 0.5 if name in (
                         "stalled", "saturated", "hopeless") else rng.random((n, d)))
                         for name in DISTRIBUTION_SERIES},
                     reward_weights=rng.random((n, k)), reward_scale=rng.random(n),
                     hypervolume=np.full(n, np.nan))
    data = pack_rows(chunk)
    assert len(data) == 40 + n * (8 * (4 * d + k + 4) + 3 * d)
    back = unpack_rows(data)
    assert (back.first_seq, back.last_seq) == (11, 15)
    for name in DISTRIBUTION_SERIES:
        np.testing.assert_array_equal(back.series[name], chunk.series[name], strict=True)
    np.testing.assert_array_equal(back.hypervolume, chunk.hypervolume)
    np.testing.assert_array_equal(back.reward_weights, chunk.reward_weights)
    for bad in (b"", data[:-1], b"\x02" + data[1:], data + b"\x00"):
        with pytest.raises(ValueError, match="packed history rows"):
            unpack_rows(bad)


class _CountingHistory(HistoryService):
    builds = 0

    def _build(self, *args: Any) -> Any:
        type(self).builds += 1
        return super()._build(*args)


def test_a_prefetch_builds_the_history_once(sqlite_client: TestClient) -> None:
    setup(sqlite_client)
    drive(sqlite_client, 4)
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    histories = _CountingHistory(service.store)
    then: list[str] = []
    histories.prefetch("hist", then=lambda: then.append("called"))
    histories.prefetch("hist")  # one at a time per curriculum
    view = histories.history("hist", every=1)  # waits for the prefetch, builds nothing
    assert view.seq.tolist() == list(range(5)) and _CountingHistory.builds == 1
    histories.prefetch("hist")  # cached: nothing to do
    histories.prefetch("no-such-curriculum")  # the request that follows reports it
    for _ in range(100):
        if not histories._building and then:
            break
        threading.Event().wait(0.05)
    assert _CountingHistory.builds == 1 and not histories._building
    assert list(histories._traces) == ["hist"] and then == ["called"]


def test_the_dashboard_shell_prefetches_the_history(sqlite_client: TestClient) -> None:
    setup(sqlite_client)
    drive(sqlite_client, 2)
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    assert "hist" not in service.histories._traces
    service.engines.forget("hist")
    assert sqlite_client.get("/ui/c/hist").status_code == 200
    for _ in range(100):
        if "hist" in service.histories._traces and service.engines.peek("hist") is not None:
            break
        threading.Event().wait(0.05)
    assert "hist" in service.histories._traces
    assert service.engines.peek("hist") is not None  # loaded for /state as well
    assert sqlite_client.get("/ui/c/nope").status_code == 200  # the page reports it


def test_many_small_chunks_are_merged(sqlite_client: TestClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A first request that reads many chunks stores them again as fewer, larger ones
    (in the background); the next process reads the same rows from those."""
    monkeypatch.setattr(history_module, "MERGE_CHUNKS", 2)
    monkeypatch.setattr(history_module, "MERGED_ROWS", 6)
    setup(sqlite_client)
    drive(sqlite_client, 16)  # chunks 1..3, 4..6, ..., 13..15 (snapshot_every=3)
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    histories = HistoryService(service.store)
    before = histories.history("hist", every=1)
    wait_for_fills(histories)
    assert [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints("hist")
            ] == [(1, 6), (7, 12), (13, 15)]
    again = HistoryService(service.store).history("hist", every=1)
    assert_same_history(again, before)
    assert_same_history(again, _Replayed(service.store).history("hist", every=1))


def recreated_before_history_writes(store: Any, reports: int) -> list[int]:
    """Make the next `store.put_history` first delete `hist` and create it again with
    `reports` reports of its own (another replica, between a background writer's read
    and its write); returns the list the number of such writes goes to."""
    real = store.put_history
    calls: list[int] = []

    def recreated_first(*args: Any, **kwargs: Any) -> None:
        if not calls:
            store.delete_curriculum("hist")
            write_log(store, reports, rows=True)
        calls.append(1)
        real(*args, **kwargs)

    store.put_history = recreated_first
    return calls


@pytest.mark.parametrize("writer", ["fill", "merge"])
def test_background_rows_of_a_recreated_curriculum_are_not_stored(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    """A background fill (rows lost in a restart) or merge (many small chunks) computes
    rows of the curriculum, then stores them. When the curriculum was deleted and
    created again in between, they are refused and the new one's history stays its own.
    (They were stored by name, into the new curriculum's history: another curriculum's
    rows, served as its own from then on.)"""
    monkeypatch.setattr(history_module, "MERGE_CHUNKS", 2)
    monkeypatch.setattr(history_module, "MERGED_ROWS", 6)
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}", auto_migrate=True)
    try:
        write_log(store, 9, rows=True)
        old = store.head("hist").created_at
        if writer == "merge":
            for after in (0, 3, 6):  # three small chunks: a first request merges them
                HistoryService(store)._fill("hist", old, after, after + 3)
            assert len(store.history_checkpoints("hist")) == 3
        histories = HistoryService(store)
        calls = recreated_before_history_writes(store, 12)
        if writer == "fill":
            histories._fill("hist", old, 0, 9)
        else:
            histories.history("hist", every=1)
            wait_for_fills(histories)
        assert calls  # the background writer did try
        assert store.head("hist").created_at != old
        assert store.history_checkpoints("hist") == []
        assert_same_history(HistoryService(store).history("hist", every=1),
                            _Replayed(store).history("hist", every=1))
    finally:
        store.close()


def test_an_imported_curriculum_answers_its_history_without_a_fold(
        client: TestClient) -> None:
    """An import stores each report's row with its event and the rows as checkpoint
    chunks (snapshot_every=3, the rest in a last chunk), a merge through the report
    path's `record`: a fresh server folds nothing, its answer equals a replay of the
    imported log, and the series equal the original curriculum's."""
    setup(client)
    drive(client, 14)
    service = client.app.state.service  # type: ignore[attr-defined]
    ndjson = {"Content-Type": "application/x-ndjson"}
    created = client.post("/v1/imports?name=copy", headers=ndjson,
                          content=client.get("/v1/curricula/hist/export").content)
    assert created.status_code == 201, created.text
    assert [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints("copy")] \
        == [(1, 3), (4, 6), (7, 9), (10, 12), (13, 14)]
    cold = HistoryService(service.store)
    view = cold.history("copy", every=1)
    assert cold.folds == 0 and view.complete and view.head_seq == 14
    assert_same_history(view, _Replayed(service.store).history("copy", every=1))
    original = HistoryService(service.store).history("hist", every=1)
    for key in view.series:
        np.testing.assert_array_equal(view.series[key], original.series[key], err_msg=key)
    np.testing.assert_array_equal(view.reward_weights, original.reward_weights)

    drive(client, 5, start=14)
    merged = client.post("/v1/imports?name=copy&merge=true", headers=ndjson,
                         content=client.get("/v1/curricula/hist/export").content)
    assert merged.status_code == 200 and merged.json()["reports_added"] == 5, merged.text
    cold = HistoryService(service.store)
    view = cold.history("copy", every=1)
    assert cold.folds == 0 and view.head_seq == 19
    assert_same_history(view, _Replayed(service.store).history("copy", every=1))
    chunks = [(c.first_seq, c.last_seq) for c in service.store.history_checkpoints("copy")]
    assert all(last + 1 == first for (_, last), (first, _) in itertools.pairwise(chunks))
    assert chunks[0][0] == 1 and chunks[-1][1] == 18  # no gap to fill; 19 is in its event


def test_with_auth_on_the_shell_prefetches_nothing(tmp_path: Path) -> None:
    """The shell needs no token, so with authentication on asking for pages would have
    anyone load engines (evicting trainers') and read histories."""
    with make_client(f"sqlite:///{tmp_path / 'auth.db'}", api_tokens={"w": "write"}) as client:
        headers = {"Authorization": "Bearer w"}
        assert client.post("/v1/curricula", json={**SPEC, "name": "hist"},
                           headers=headers).status_code == 201
        service = client.app.state.service  # type: ignore[attr-defined]
        service.engines.forget("hist")
        assert client.get("/ui/c/hist").status_code == 200
        threading.Event().wait(0.3)
        assert "hist" not in service.histories._traces
        assert service.engines.peek("hist") is None


def test_fresh_engines_for_seq_zero_are_built_one_at_a_time(
        sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each history's seq-0 row needs a fresh engine, a whole state (hundreds of MB at 10⁷
    samples); the dashboard prefetches several at once, which multiplied the peak."""
    for name in ("h1", "h2", "h3"):
        setup(sqlite_client, {**SPEC, "name": name})
    active, most = [0], [0]
    guard = threading.Lock()

    class Counted(CurriculumEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            threading.Event().wait(0.1)
            super().__init__(*args, **kwargs)
            with guard:
                active[0] -= 1

    monkeypatch.setattr(history_module, "CurriculumEngine", Counted)
    service = sqlite_client.app.state.service  # type: ignore[attr-defined]
    histories = HistoryService(service.store)
    threads = [threading.Thread(target=histories.history, args=(name,))
               for name in ("h1", "h2", "h3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1
