"""The torch helpers under data parallelism: each rank trains on its own shard of the
step's batch and the step is reported once, by rank 0, with every rank's rewards.

Most tests name `num_replicas` / `rank` and need no process group; the last one runs
two real processes (gloo) against a service over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from integration_support import reports, served_indices
from torch.utils.data import DataLoader, DistributedSampler

import paceline
from paceline.integrations.torch import (
    PacelineBatchSampler,
    PacelineSampler,
    Shard,
    rank_shard,
    report_shards,
    train_steps,
)
from paceline.integrations.torch import _join_parts as join_parts

HERE = Path(__file__).parent
SAMPLES = 16
GROUP = 4


def curriculum(client: paceline.Client, name: str = "ddp") -> paceline.Curriculum:
    return client.create_curriculum(
        name, distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        objectives=["correct", "action"], sampler="dump_ucb",
        weighting={"kind": "fixed", "weights": [1, 3]}, batch_size=4, seed=3)


# ------------------------------------------------------------------ the split
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_shards_are_disjoint_blocks_that_give_the_batch_back(
        n: int, ranks: int, drop_last: bool) -> None:
    """Every rank gets as many rows; put one after another they are the batch's rows in
    order: all of them then the padding (the batch's first rows again), or with
    drop_last the leading rows the split can hold (the report's rows either way)."""
    if drop_last and n < ranks:
        with pytest.raises(ValueError, match="none"):
            Shard(ranks, 0, drop_last).size(n)
        return
    shards = [Shard(ranks, rank, drop_last) for rank in range(ranks)]
    rows = [row for shard in shards for row in shard.positions(n)]
    size = n // ranks if drop_last else -(-n // ranks)
    assert all(len(shard.positions(n)) == size for shard in shards)
    reported = shards[0].reported(n)
    assert reported == (size * ranks if drop_last else n)
    assert rows[:reported] == list(range(reported))  # disjoint, in the batch's order
    assert rows[reported:] == [r % n for r in range(n, size * ranks)]  # only padding
    # As many rows per rank as torch's DistributedSampler gives a dataset of n.
    assert size == len(DistributedSampler(range(n), ranks, 0, shuffle=False,
                                          drop_last=drop_last))


def test_ranks_are_checked_as_torch_checks_them() -> None:
    for bad in (-1, 2):
        with pytest.raises(ValueError, match=r"Invalid rank .*\[0, 1\]"):
            rank_shard(2, bad)
        with pytest.raises(ValueError, match=r"Invalid rank .*\[0, 1\]"):
            DistributedSampler(range(4), 2, bad)
    with pytest.raises(ValueError, match="num_replicas"):
        rank_shard(0, 0)
    assert rank_shard() == Shard(1, 0)  # no process group: one rank, the whole batch
    assert rank_shard(3) == Shard(3, 0)


# ------------------------------------------------------------------ samplers
def test_each_rank_samples_its_own_part_of_every_served_batch(tmp_path: Path) -> None:
    """Two ranks (two runs attached under one id, as two processes would) draw the same
    steps: disjoint halves whose union, in rank order, is the served batch, each prompt
    repeated once per rollout; the batch sampler and the loss weights likewise."""
    dataset = list(range(SAMPLES))
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = curriculum(client)
        runs = [cur.start_run(run_id="r", heartbeat_interval=None) for _ in range(2)]
        samplers = [PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                    mini_repeat_count=GROUP, num_replicas=2, rank=rank)
                    for rank, run in enumerate(runs)]
        assert [len(s) for s in samplers] == [4 * 2 * GROUP] * 2
        loaders = [iter(DataLoader(dataset, batch_size=2 * GROUP, sampler=s))
                   for s in samplers]
        for step in range(4):
            halves = [next(loader).tolist() for loader in loaders]
            served = runs[1].next_batch(step)  # the stored batch, whoever asks
            assert halves == [[i for i in served.indices[:2] for _ in range(GROUP)],
                              [i for i in served.indices[2:] for _ in range(GROUP)]]
            assert [s.local_batch(step).indices for s in samplers] == \
                [served.indices[:2], served.indices[2:]]
            runs[0].report(step, served.indices, np.ones((4, GROUP, 2)))

        batches = [PacelineBatchSampler(run, batch_size=5, steps_per_epoch=2,
                                        start_step=50, num_replicas=2, rank=rank)
                   for rank, run in enumerate(runs)]
        rows = [[r.tolist() for r in DataLoader(dataset, batch_sampler=b)] for b in batches]
        for k, step in enumerate((50, 51)):  # 5 over 2: rank 1 pads with the first prompt
            served = runs[0].next_batch(step, 5)
            assert [rows[0][k], rows[1][k]] == [served.indices[:3],
                                                served.indices[3:] + served.indices[:1]]
            local = batches[1].local_batch(step)
            assert local.indices == rows[1][k]
            if served.loss_weights is not None:
                assert local.loss_weights == served.loss_weights[3:] + served.loss_weights[:1]
        with pytest.raises(ValueError, match="none"):
            PacelineBatchSampler(runs[0], batch_size=1, steps_per_epoch=1, num_replicas=2,
                                 rank=0, drop_last=True)


def test_a_state_saved_within_a_step_resumes_only_under_the_same_split(
        tmp_path: Path) -> None:
    """A mid-step offset counts the saving rank's items: another world size would resume
    elsewhere in the step, so it is refused (and the sampler left as it was); a state
    saved between steps resumes under any split."""
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = curriculum(client)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            sampler = PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                      mini_repeat_count=GROUP, num_replicas=2, rank=1)
            items = iter(sampler)
            for _ in range(GROUP):
                next(items)
            mid = sampler.state_dict()
            assert (mid["next_step"], mid["offset"], mid["num_replicas"]) == (0, GROUP, 2)
            other = PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                    mini_repeat_count=GROUP)
            other.load_state_dict({"next_step": 3})
            with pytest.raises(ValueError, match="within step 0 by one of 2 ranks"):
                other.load_state_dict(mid)
            assert other.state_dict()["next_step"] == 3
            resumed = PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                      mini_repeat_count=GROUP, num_replicas=2, rank=1)
            resumed.load_state_dict(mid)
            second = run.next_batch(0).indices[3]
            assert list(resumed)[:GROUP] == [second] * GROUP
            for _ in range(GROUP):  # the rest of rank 1's part of step 0
                next(items)
            between = sampler.state_dict()
            assert "offset" not in between
            other.load_state_dict(between)
            assert next(iter(other)) == run.next_batch(1).indices[0]


def test_steps_give_each_rank_its_part_and_need_a_group_to_report(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = curriculum(client)
        with cur.start_run(run_id="r", heartbeat_interval=None) as run:
            step = next(train_steps(run, 2, size=3, num_replicas=2, rank=1))
            assert step.batch == run.next_batch(0, 3)
            assert step.local.indices == step.batch.indices[2:] + step.batch.indices[:1]
            assert step.indices.tolist() == step.local.indices
            assert float(step.weighted_loss(torch.ones(2))) == pytest.approx(1.0)
            with pytest.raises(RuntimeError, match="process group"):
                step.report(np.ones((2, GROUP, 2)))
            with pytest.raises(RuntimeError, match="process group"):
                report_shards(run, step.batch, np.ones((2, GROUP, 2)), shard=Shard(2, 1))
            whole = next(train_steps(run, 1, start_step=5))  # no group: the whole batch
            assert whole.local == whole.batch and whole.shard == Shard()
            assert whole.report(np.ones((4, GROUP, 2))) is not None


def test_gathered_parts_are_checked_and_put_in_the_batch_order() -> None:
    """What every rank does with the all_gather's result (so every rank raises alike)."""
    batch = paceline.Batch(run_id="r", step=7, indices=[5, 6, 7], reward_weights={"a": 1.0})
    shard = Shard(2, 0)
    part = [np.full((2, GROUP), rank, dtype=float) for rank in range(2)]
    rewards, advantages = join_parts([(1, part[1], None), (0, part[0], None)], shard, batch)
    assert rewards.tolist() == [[0.0] * GROUP] * 2 + [[1.0] * GROUP] * 2
    assert advantages is None
    named, _ = join_parts([(r, {"a": part[r]}, part[r]) for r in range(2)], shard, batch)
    assert named["a"].shape == (4, GROUP)
    with pytest.raises(ValueError, match="2 rows"):
        join_parts([(0, part[0], None), (1, part[1][:1], None)], shard, batch)
    with pytest.raises(ValueError, match="some ranks only"):
        join_parts([(0, part[0], part[0]), (1, part[1], None)], shard, batch)
    with pytest.raises(ValueError, match=r"ranks \[0, 0\]"):
        join_parts([(0, part[0], None), (0, part[1], None)], shard, batch)


# ------------------------------------------------------------------ two real processes
def test_two_ddp_processes_train_disjoint_halves_and_report_each_step_once(
        tmp_path: Path) -> None:
    """Two gloo ranks (subprocesses) against the service over HTTP: every rank is served
    the same batch, trains on its own part (even split, drop_last, padding), and every
    step lands once, from rank 0, with all the ranks' rewards in the batch's order."""
    from support import threaded_service

    db = tmp_path / "paceline.db"
    with threaded_service(f"sqlite:///{db}") as url:
        with paceline.Client(url) as client:
            curriculum(client)
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo",
               "PYTHONPATH": os.pathsep.join(filter(None, [*sys.path]))}
        init = f"file://{tmp_path / 'rendezvous'}"
        outs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
        workers = [subprocess.Popen(
            [sys.executable, str(HERE / "ddp_worker.py"), str(rank), "2", init, url,
             str(outs[rank])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for rank in range(2)]
        logs = []
        for worker in workers:
            try:
                logs.append(worker.communicate(timeout=240)[0].decode())
            except subprocess.TimeoutExpired:
                for w in workers:
                    w.kill()
                raise
        assert all(w.returncode == 0 for w in workers), "\n".join(logs)
    ranks = [json.loads(out.read_text()) for out in outs]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas equal
    torch.manual_seed(0)  # the worker's initial policy
    assert ranks[0]["weights"] != torch.nn.Embedding(SAMPLES, 1).weight.flatten().tolist()

    stored = reports(db, "ddp")
    steps = [0, 1, 2, 10, 11, 12, 20, 21]
    assert [r.step for r in stored] == steps  # exactly one report per step
    by_step = {r.step: r for r in stored}
    trained = [rank["trained"] for rank in ranks]
    for k, step in enumerate(steps):
        mine = [rank[k] for rank in trained]
        assert [m["step"] for m in mine] == [step, step]
        served = served_indices(db, "ddp", "ddp", step)
        assert mine[0]["served"] == mine[1]["served"] == served  # the same batch
        halves = [m["indices"] for m in mine]
        report = by_step[step]
        if step < 10:  # 4 over 2: disjoint halves, all reported
            assert halves == [served[:2], served[2:]]
            assert report.indices == served
        elif step < 20:  # 5 over 2 with drop_last: the fifth neither trained nor reported
            assert halves == [served[:2], served[2:4]]
            assert report.indices == served[:4]
        else:  # 5 over 2 padded: rank 1 trains the first prompt again; reported once
            assert halves == [served[:3], served[3:] + served[:1]]
            assert report.indices == served
        rows = len(report.indices)
        assert report.rewards.tolist() == prompt_rewards(report.indices).reshape(
            -1, 2).tolist()  # every rank's rewards, in the batch's order
        advantages = [a for m in mine for a in m["advantages"]][:rows]
        assert report.advantages is not None
        np.testing.assert_allclose(report.advantages, np.ravel(advantages), rtol=1e-6)
        assert mine[0]["seq"] == mine[1]["seq"]  # rank 0's ack, on every rank


def prompt_rewards(indices: list[int]) -> np.ndarray:
    """The worker's rewards of a prompt's rollouts (ddp_worker.prompt_rewards)."""
    index = np.asarray(indices, dtype=float)[:, None]
    rollout = np.arange(GROUP, dtype=float)[None, :]
    return np.stack([(index * 3 + rollout) % 2, (index + 2 * rollout) % 4], axis=-1)
