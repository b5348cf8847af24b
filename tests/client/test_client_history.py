"""`Curriculum.history()` (sync, async, embedded, gRPC): the same columns the REST route
gives, records and columns that pandas takes as they are, and the explanations in
`state()`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paceline
from support import CLIENT_SPEC as SPEC

SERIES = {"probability", "success", "mean_abs_advantage", "zero_variance_fraction",
          "stalled", "saturated", "hopeless"}


def train(cur: Any, steps: int) -> None:
    rng = np.random.default_rng(0)
    with cur.start_run("r1", heartbeat_interval=None) as run:
        for step in range(steps):
            batch = run.next_batch(step)
            hard = np.asarray(batch.indices) >= 60
            acc = np.where(hard[:, None], 0.0, rng.random((hard.size, 4)) < 0.7)
            length = rng.integers(10, 90, size=(hard.size, 4))
            run.report(step, batch.indices, np.stack([acc, length], axis=-1).astype(float))


def check(history: paceline.History, reports: int) -> None:
    assert history.complete and history.head_seq == reports
    assert history.seq == list(range(reports + 1)) and len(history) == reports + 1
    assert history.distributions == ["easy", "hard"]
    assert history.per_distribution["easy"].success[0] is None
    records = history.records()
    assert len(records) == 2 * (reports + 1)
    assert set(records[0]) == {"seq", "step", "time", "reward_scale", "hypervolume",
                               "weight/acc", "weight/len", "distribution"} | SERIES
    assert [r["distribution"] for r in records[:2]] == ["easy", "hard"]
    columns = history.columns()
    assert all(len(v) == reports + 1 for v in columns.values())
    assert {"probability/hard", "weight/acc", "hopeless/easy"} <= set(columns)
    assert columns["weight/acc"] == pytest.approx([0.75] * (reports + 1))  # fixed 3:1
    total = np.add(columns["probability/easy"], columns["probability/hard"])
    assert total == pytest.approx(np.ones(reports + 1))
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(records)
    assert frame.shape[0] == 2 * (reports + 1)
    assert pandas.DataFrame(columns).shape == (reports + 1, len(columns))


def test_embedded_history_and_explanations(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("math", **SPEC)
    train(cur, 6)
    check(cur.history(), 6)
    assert cur.history(every=4).seq == [0, 4, 6]
    assert cur.history(since=5).seq == [5, 6]
    state = cur.state()
    assert [e.name for e in state.explanations] == ["easy", "hard"]
    assert state.explanations[1].sentence.startswith("`hard` gets ")
    assert state.explanations[0].terms["data_share"] == pytest.approx(0.6)
    with pytest.raises(paceline.InvalidInput) as error:
        cur.history(since=99)
    assert error.value.code == "HISTORY_OUT_OF_RANGE"
    with pytest.raises(paceline.InvalidInput) as error:
        cur.history(every=0)
    assert error.value.code == "INVALID_DOWNSAMPLING"


def test_async_history(tmp_path: Path) -> None:
    async def body() -> None:
        async with paceline.AsyncClient.embedded(tmp_path / "a.db") as client:
            cur = await client.create_curriculum("math", **SPEC)
            async with await cur.start_run("r1", heartbeat_interval=None) as run:
                for step in range(3):
                    batch = await run.next_batch(step)
                    rewards = np.ones((len(batch.indices), 2, 2))
                    await run.report(step, batch.indices, rewards)
            history = await cur.history(every=2)
            assert history.seq == [0, 2, 3] and history.complete
            missing = paceline.AsyncCurriculum(client, cur.info.model_copy(update={"name": "nope"}))
            with pytest.raises(paceline.NotFound):
                await missing.history()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_grpc_history_matches_rest(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grpc"))
    from test_grpc_server import start

    server, service = start(tmp_path)
    try:
        with paceline.Client(f"grpc://127.0.0.1:{server.port}") as client:
            cur = client.create_curriculum("math", **SPEC)
            train(cur, 5)
            over_grpc = cur.history()
            check(over_grpc, 5)
            assert cur.history(every=2, since=1).seq == [2, 4, 5]
            explanations = cur.state().explanations
            assert [e.name for e in explanations] == ["easy", "hard"]
            with pytest.raises(paceline.InvalidInput) as error:
                cur.history(every=-1)
            assert error.value.code == "INVALID_DOWNSAMPLING"
        with paceline.Client.embedded(tmp_path / "g.db") as rest:
            over_rest = rest.curriculum("math").history()
        assert over_rest.model_dump(exclude={"time"}) == over_grpc.model_dump(exclude={"time"})
        assert over_rest.time == pytest.approx(over_grpc.time)
    finally:
        server.stop(0)
        service.store.close()
