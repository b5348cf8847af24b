"""`dynamic_step`: DAPO-style drop-all-equal + refill through Paceline, in a torch loop
on the embedded service; what it reports is read back from the store."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from integration_support import reports

import paceline
from paceline.integrations.torch import all_equal_groups, dynamic_step

GROUP = 4
#: index -> pass rate: the first 40 are always solved, the last 20 never, the rest 50 %.
SOLVED, HOPELESS = range(0, 40), range(80, 100)


def generate(batch: paceline.Batch) -> torch.Tensor:
    """Rewards [n, g, 1]: all-equal for solved and hopeless prompts, mixed otherwise."""
    rows = []
    for index in batch.indices:
        if index in SOLVED:
            rows.append([1.0] * GROUP)
        elif index in HOPELESS:
            rows.append([0.0] * GROUP)
        else:
            rows.append([float(j % 2) for j in range(GROUP)])
    return torch.tensor(rows).unsqueeze(-1)


def test_all_equal_groups() -> None:
    scalar = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    assert all_equal_groups(scalar).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="shape"):
        all_equal_groups(torch.zeros(3))


def test_dynamic_step_refills_until_the_batch_is_full(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = client.create_curriculum("dyn", distributions={"all": 100},
                                       objectives=["correct"], sampler="uniform",
                                       batch_size=8, seed=5)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            for step in range(3):
                result = dynamic_step(run, step, generate)
                assert len(result.trained_indices) == 8  # the batch is full again
                assert result.kept.sum() == 8
                assert all(40 <= i < 80 for i in result.trained_indices)
                assert len(result.batches) >= 2  # part 0 alone cannot fill it here
                assert [b.part for b in result.batches] == list(range(len(result.batches)))
                assert len(set(result.indices)) == len(result.indices)
                assert result.advantages().shape == (8, GROUP)
                assert result.loss_weights().shape == (8,)
                ack = result.report()
                assert ack.rollouts_generated == result.rollouts_generated
                assert ack.rollouts_trained == 8 * GROUP
                assert ack.groups_dropped == len(result.dropped_indices)
            # a restarted trainer redoing a served step gets the same prompts
            again = dynamic_step(run, 2, generate)
            assert again.indices == result.indices
            assert run.report(2, again.indices, again.rewards,
                              dropped=again.dropped_indices).replayed
    stored = reports(db, "dyn")
    assert [r.step for r in stored] == [0, 1, 2]
    assert stored[-1].indices == result.indices  # every generated group was reported


def test_dynamic_step_stops_at_max_parts(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = client.create_curriculum("dyn", distributions={"all": 100},
                                       objectives=["correct"], sampler="uniform",
                                       batch_size=8, seed=5)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            hopeless = dynamic_step(run, 0, lambda b: torch.zeros(len(b.indices), GROUP, 1),
                                    max_parts=2)
            assert len(hopeless.batches) == 3 and hopeless.kept.sum() == 0
            assert hopeless.report().rollouts_trained == 0
            with pytest.raises(ValueError, match="target"):
                dynamic_step(run, 1, generate, target=0)


def test_one_objective_rewards_n_by_g_are_raw_and_keep_their_precision(
        tmp_path: Path) -> None:
    """`[n, g]` with one objective is raw rewards, as the report reads it: a minimised
    length rewards the shorter answer (it was taken as already scalar, and the longer
    answer got the positive advantage); float64 rewards are mapped in float64 (float32
    rounded two distinct scores near large bounds to one, and the group was dropped)."""
    with paceline.Client.embedded(tmp_path / "o.db") as client:
        cur = client.create_curriculum(
            "len", distributions={"all": 20},
            objectives=[{"name": "length", "direction": "minimize", "bounds": [0, 1000]}],
            sampler="uniform", batch_size=2, seed=1)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            result = dynamic_step(run, 0, lambda b: [[100.0, 900.0]] * len(b.indices))
            advantages = result.advantages()
            assert (advantages[:, 0] > 0).all() and (advantages[:, 1] < 0).all()
            result.report()
        elo = client.create_curriculum(
            "elo", distributions={"all": 20},
            objectives=[{"name": "elo", "bounds": [100000, 100001]}],
            sampler="uniform", batch_size=2, seed=1)
        with elo.start_run(run_id="r", heartbeat_interval=None) as run:
            close = torch.tensor([[100000.2995, 100000.3]] * 2, dtype=torch.float64)
            result = dynamic_step(run, 0, lambda b: close, max_parts=0)
            assert result.kept.all()  # not an all-equal group
            assert result.advantages()[0, 1] > 0


def test_a_resumed_loop_redoes_reported_steps_without_failing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A loop resumed from an earlier checkpoint redoes steps 1-2 with other rollouts:
    each redone step is logged and its first report stands (the report raised
    REPORT_CONFLICT, and a redo that needed one more refill STEP_ALREADY_REPORTED); the
    next new step is reported as usual."""
    def flaky(batch: paceline.Batch) -> torch.Tensor:  # the redo: the middle band solved
        rows = [[1.0] * GROUP if index < 70 else [float(j % 2) for j in range(GROUP)]
                for index in batch.indices]
        return torch.tensor(rows).unsqueeze(-1)

    with paceline.Client.embedded(tmp_path / "r.db") as client:
        cur = client.create_curriculum("dyn", distributions={"all": 100},
                                       objectives=["correct"], sampler="uniform",
                                       batch_size=8, seed=5)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            for step in range(3):
                assert dynamic_step(run, step, generate).report() is not None
            seq = cur.state().seq
            for step in (1, 2):  # resumed from the checkpoint after step 0
                redone = dynamic_step(run, step, flaky)
                assert redone.trained_indices  # the trainer still trains on its redo
                assert redone.report() is None
            assert cur.state().seq == seq  # nothing folded twice
            assert dynamic_step(run, 3, flaky).report() is not None
    assert sum("the first report stands" in r.getMessage() for r in caplog.records) >= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loss_weights_follow_the_rewards_device(tmp_path: Path) -> None:
    """Rewards on the GPU: the kept mask is there too, and the weights must be (they were
    built on the CPU and indexed with the CUDA mask, which torch refuses)."""
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = client.create_curriculum("dyn", distributions={"all": 100},
                                       objectives=["correct"], sampler="uniform",
                                       batch_size=8, seed=5)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            result = dynamic_step(run, 0, lambda b: generate(b).cuda())
            weights = result.loss_weights()
            assert weights.device == result.rewards.device
            assert weights.shape == (8,)
