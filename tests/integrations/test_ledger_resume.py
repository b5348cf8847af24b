"""The ledger every integration reports through, across a restart: deterministic keys, a
redone step with other rollouts left as first reported, fast-forwarded steps not kept."""

from __future__ import annotations

from pathlib import Path

import pytest

import paceline
from paceline.integrations import BatchLedger, Rollouts
from paceline.integrations._ledger import step_key
from paceline_server.store import open_store


def rollouts(indices: list[int], value: float) -> Rollouts:
    rows = [i for i in indices for _ in range(2)]
    return Rollouts(indices=rows, group_ids=[pos // 2 for pos in range(len(rows))],
                    rewards=[[value, 1.0 - value], [1.0 - value, value]] * len(indices))


def test_a_redone_step_keeps_its_first_report(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = client.create_curriculum("ledger", distributions={"a": 8, "b": 8},
                                       objectives=["x", "y"], batch_size=4)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            first = BatchLedger(run)
            batch = first.fetch(0)
            first.record(0).rollouts = rollouts(batch.indices, 1.0)
            (ack,) = first.report_scored()
            assert (ack.seq, ack.replayed) == (1, False)
        state = cur.state()
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:  # after a restart
            resumed = BatchLedger(run)
            assert resumed.fetch(0).indices == batch.indices
            resumed.record(0).rollouts = rollouts(batch.indices, 1.0)  # the same rollouts
            (again,) = resumed.report_scored()
            assert (again.seq, again.replayed) == (1, True)
            resumed.fetch(0)
            resumed.record(0).rollouts = rollouts(batch.indices, 0.0)  # regenerated
            assert resumed.report_scored() == []
            assert resumed.already_reported == [0]
            assert "the first report stands" in caplog.text
        assert cur.state() == state
    store = open_store(f"sqlite:///{db}")
    try:
        assert [e.idempotency_key for e in store.events("ledger")] == [step_key("r", 0)]
    finally:
        store.close()
    assert step_key("r", 0) == "paceline/r/0/0" and step_key("r", 3, 1) == "paceline/r/3/1"


def test_steps_fast_forwarded_over_are_not_kept(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = client.create_curriculum("ledger", distributions={"a": 8, "b": 8},
                                       objectives=["x", "y"], batch_size=4)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            ledger = BatchLedger(run)
            ledger.skip_before = 2
            for step in range(3):
                ledger.fetch(step)
            assert ledger.next_unscored().step == 2
            with pytest.raises(KeyError):
                ledger.record(1)


def test_other_conflicts_are_raised(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = client.create_curriculum("ledger", distributions={"a": 8, "b": 8},
                                       objectives=["x", "y"], batch_size=4)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            ledger = BatchLedger(run)
            batch = ledger.fetch(0)
            outside = next(i for i in range(16) if i not in batch.indices)
            ledger.record(0).rollouts = rollouts([outside], 1.0)
            with pytest.raises(paceline.Conflict) as refused:
                ledger.report_scored()
            assert refused.value.code == "INDICES_NOT_SERVED"
