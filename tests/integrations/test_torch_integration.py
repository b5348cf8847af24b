"""The torch helpers in a hand-written GRPO loop (a tiny softmax policy over the samples'
answers), a DataLoader driven by the Paceline samplers, and the GRPO arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from integration_support import grpo_advantages, reports, served_indices
from torch.utils.data import DataLoader

import paceline
from paceline.integrations.torch import (
    PacelineBatchSampler,
    PacelineSampler,
    group_advantages,
    train_steps,
    weighted_loss,
)

SAMPLES = 16
ACTIONS = 4
GROUP = 4
TARGET = torch.arange(SAMPLES) % ACTIONS  # the right answer of each sample


def curriculum(client: paceline.Client, sampler: object = "uniform") -> paceline.Curriculum:
    return client.create_curriculum(
        "loop", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        objectives=["correct", "action"],
        sampler=sampler, weighting={"kind": "fixed", "weights": [1, 3]}, batch_size=4, seed=3)


def test_a_hand_written_grpo_loop_trains_and_reports(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    torch.manual_seed(0)
    logits = torch.zeros(SAMPLES, ACTIONS, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    trained: list[tuple[int, torch.Tensor]] = []
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client, sampler={"kind": "temperature", "mode": "upweight",
                                          "t0": 5.0, "schedule": "constant"})
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            for step in train_steps(run, num_steps=6):
                policy = torch.distributions.Categorical(logits=logits[step.indices])
                actions = policy.sample((GROUP,)).T                          # [n, g]
                correct = (actions == TARGET[step.indices, None]).float()
                R = torch.stack([correct, actions.float()], dim=-1)          # [n, g, k]
                A = step.advantages(R)                                       # [n, g]
                per_sample = -(policy.log_prob(actions.T).T * A).mean(dim=1)  # [n]
                step.weighted_loss(per_sample).backward()
                optimizer.step()
                optimizer.zero_grad()
                step.report(R, A)
                trained.append((step.step, A))
            run_id = run.run_id
    stored = reports(db, "loop")
    assert [r.step for r in stored] == list(range(6))
    for report, (step_number, advantages) in zip(stored, trained, strict=True):
        assert report.indices == served_indices(db, "loop", run_id, step_number)
        # The served weights 1:3 gave the advantages that were trained on and reported.
        scalar = report.rewards @ np.array([0.25, 0.75])
        expected = grpo_advantages(scalar, report.group_of)
        assert report.advantages is not None
        np.testing.assert_allclose(report.advantages, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(advantages.flatten().numpy(), expected, rtol=1e-4,
                                   atol=1e-5)
    assert any(np.abs(r.advantages).max() > 0 for r in stored if r.advantages is not None)
    assert torch.count_nonzero(logits.detach()) > 0, "the policy did not train"


def test_train_steps_take_one_round_trip_per_step(tmp_path: Path) -> None:
    """Each step's batch comes with the previous report; a step not reported through
    `Step.report` makes the next one ask. Either way the batches are the stored ones."""
    with paceline.Client.embedded(tmp_path / "paceline.db") as client:
        cur = curriculum(client)
        with cur.start_run(run_id="trips", heartbeat_interval=None) as run:
            calls: list[str] = []
            send = client._send

            def counting(request: Any) -> Any:
                calls.append(request.operation)
                return send(request)

            client._send = counting  # type: ignore[method-assign]
            steps = []
            for step in train_steps(run, num_steps=5, size=3):
                R = torch.ones(3, GROUP, 2)
                if step.step == 2:  # reported around the helper: no batch handed over
                    run.report(step.step, step.batch.indices, R)
                else:
                    assert step.report(R).batch is not None or step.step == 4
                steps.append(step)
            client._send = send  # type: ignore[method-assign]
            assert calls == ["next_batch", "report", "report", "report", "next_batch",
                             "report", "report"]
            for step in steps:
                assert step.batch == run.next_batch(step.step, 3)


def test_weighted_loss_applies_the_served_loss_weights(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "paceline.db") as client:
        cur = curriculum(client, sampler={"kind": "temperature", "mode": "upweight",
                                          "t0": 5.0, "schedule": "constant"})
        with cur.start_run(run_id="weights", heartbeat_interval=None) as run:
            batches = [run.next_batch(s) for s in range(8)]
    batch = next(b for b in batches if b.loss_weights and len(set(b.loss_weights)) > 1)
    assert batch.loss_weights is not None
    losses = torch.arange(1.0, 5.0)
    expected = float(np.mean(np.array(batch.loss_weights) * np.arange(1.0, 5.0)))
    assert float(weighted_loss(losses, batch)) == pytest.approx(expected)
    rollouts = losses[:, None].expand(4, GROUP)
    assert float(weighted_loss(rollouts, batch)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="rows"):
        weighted_loss(torch.ones(3), batch)


def test_samplers_feed_a_dataloader_step_after_step_across_epochs(tmp_path: Path) -> None:
    dataset = list(range(SAMPLES))
    with paceline.Client.embedded(tmp_path / "paceline.db") as client:
        cur = curriculum(client)
        with cur.start_run(heartbeat_interval=None) as run:
            sampler = PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                      mini_repeat_count=GROUP, repeat_count=2)
            loader = DataLoader(dataset, batch_size=4 * GROUP, sampler=sampler)
            assert len(sampler) == 4 * 4 * GROUP * 2 and len(loader) == 8
            seen = [row.tolist() for epoch in range(2) for row in loader]
            assert sampler.state_dict()["next_step"] == 8
            for step in range(8):
                served = run.next_batch(step).indices
                expected = [i for i in served for _ in range(GROUP)]
                assert seen[2 * step] == seen[2 * step + 1] == expected
            sampler.set_epoch(1)  # transformers does this on resume: back to step 4
            assert next(iter(sampler)) == run.next_batch(4).indices[0]

            batches = PacelineBatchSampler(sampler.ledger, batch_size=4, steps_per_epoch=2,
                                           start_step=100)
            rows = [row.tolist() for row in DataLoader(dataset, batch_sampler=batches)]
            assert rows == [run.next_batch(100).indices, run.next_batch(101).indices]
            assert batches.batch(101).step == 101


def test_group_advantages_match_grpo() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 3.0, 4.0]])
    got = group_advantages(rewards)
    expected = grpo_advantages(rewards.flatten().numpy(), [0] * 4 + [1] * 4 + [2] * 4)
    np.testing.assert_allclose(got.flatten().numpy(), expected, rtol=1e-5)
    assert torch.equal(group_advantages(rewards, scale=False)[1], torch.zeros(4))
    assert torch.equal(group_advantages(torch.ones(3, 1)), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\[n, g\]"):
        group_advantages(torch.ones(4))


def test_importing_paceline_does_not_import_the_frameworks() -> None:
    code = ("import sys, paceline, paceline.integrations\n"
            "heavy = {'torch', 'trl', 'transformers', 'verl', 'datasets', 'omegaconf'}\n"
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ crash and resume
def prompt_rewards(indices: list[int]) -> np.ndarray:
    """[n, g, 2] rewards of the prompts alone (what a resumed run redoes is then equal)."""
    index = np.asarray(indices, dtype=float)[:, None]
    rollout = np.arange(GROUP, dtype=float)[None, :]
    return np.stack([(index * 3 + rollout) % 2, (index + 2 * rollout) % 4], axis=-1)


def loop(run: paceline.Run, start: int, stop: int) -> None:
    for step in train_steps(run, num_steps=stop - start, start_step=start):
        R = prompt_rewards(step.batch.indices)
        step.report(R, step.advantages(R))


def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed after step 5, resumed from a checkpoint taken after step 2: steps 3-5 are
    done again (answered from the log) and the state equals an uninterrupted run's."""
    sampler = "dump_ucb"  # batches depend on the reports folded before them
    with paceline.Client.embedded(tmp_path / "straight.db") as client:
        cur = curriculum(client, sampler)
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            loop(run, 0, 10)
        straight = cur.state()
    with paceline.Client.embedded(tmp_path / "resumed.db") as client:
        cur = curriculum(client, sampler)
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            loop(run, 0, 6)
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            loop(run, 3, 10)
        resumed = cur.state()
    assert resumed.seq == straight.seq == 10
    assert resumed == straight
    got, want = reports(tmp_path / "resumed.db", "loop"), reports(tmp_path / "straight.db", "loop")
    assert [(r.step, r.indices) for r in got] == [(r.step, r.indices) for r in want]


def test_sampler_state_of_another_run_or_curriculum_is_refused(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = curriculum(client)
        other_cur = client.create_curriculum(
            "other", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
            objectives=["correct", "action"], batch_size=4)
        with cur.start_run(run_id="a", heartbeat_interval=None) as run:
            first = PacelineSampler(run, batch_size=4, num_samples=SAMPLES)
            next(iter(first))
            saved = first.state_dict()
        for run_id, target, pattern in (
                ("b", cur, r"run 'a'.*run 'b'"),
                ("a", other_cur, r"curriculum 'loop'.*curriculum 'other'")):
            run = target.start_run(run_id=run_id, heartbeat_interval=None)
            with pytest.raises(ValueError, match=pattern):
                PacelineSampler(run, batch_size=4, num_samples=SAMPLES).load_state_dict(saved)
            run.close()
        with cur.start_run(run_id="a", heartbeat_interval=None) as run:
            resumed = PacelineSampler(run, batch_size=4, num_samples=SAMPLES)
            resumed.load_state_dict(saved)  # saved within step 0, after its first index
            assert (resumed.state_dict()["next_step"], resumed.state_dict()["offset"]) == (0, 1)
            resumed.load_state_dict({"next_step": 2})  # state saved before fingerprints
            assert resumed.state_dict()["next_step"] == 2
        cur.delete()
        recreated = curriculum(client)
        with recreated.start_run(run_id="a", heartbeat_interval=None) as run, \
                pytest.raises(ValueError, match="recreated"):
            PacelineSampler(run, batch_size=4, num_samples=SAMPLES).load_state_dict(saved)


def test_redone_steps_with_other_rollouts_keep_their_first_reports(tmp_path: Path) -> None:
    """A real resume regenerates: steps 3-5 come back with other rewards. Their reports
    are refused (Step.report gives None, logged) and the state is the uninterrupted run's."""
    with paceline.Client.embedded(tmp_path / "straight.db") as client:
        cur = curriculum(client, "dump_ucb")
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            loop(run, 0, 8)
        straight = cur.state()
    with paceline.Client.embedded(tmp_path / "resumed.db") as client:
        cur = curriculum(client, "dump_ucb")
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            loop(run, 0, 6)
        answers = []
        with cur.start_run(run_id="loop", heartbeat_interval=None) as run:
            for step in train_steps(run, num_steps=5, start_step=3):
                R = prompt_rewards(step.batch.indices)
                if step.step <= 5:
                    R = 1.0 - R  # regenerated rollouts
                answers.append(step.report(R, step.advantages(R)))
        assert answers[:3] == [None, None, None] and all(a is not None for a in answers[3:])
        assert cur.state() == straight


# ------------------------------------------------ a checkpointed StatefulDataLoader
def loader_fit(db: Path, *, crash_after: int | None = None,
               resume: dict[str, Any] | None = None, ranks: int = 1,
               ) -> tuple[list[tuple[int, list[list[int]]]], list[dict[str, Any]], Any]:
    """A loop over a torchdata `StatefulDataLoader` of a `PacelineSampler` per rank
    (`ranks` of them, in lockstep as DDP runs them, each with its own sampler, loader
    and loader state), each step's batch used for two updates (two loader batches),
    2 epochs of 4 steps: `set_epoch` before each epoch, each update reported (the
    step's second report replays its first) and checkpointed with its epoch; a resumed
    loop restores every rank's loader state and starts in the checkpoint's epoch.
    Returns the (step, rows of each rank) trained, the checkpoints and the curriculum's
    state. The ranks' rows put together must be the step's served batch."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    trained: list[tuple[int, list[list[int]]]] = []
    checkpoints: list[dict[str, Any]] = []
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client, "dump_ucb") if resume is None else client.curriculum("loop")
        runs = [cur.start_run(run_id="loader", heartbeat_interval=None) for _ in range(ranks)]
        samplers = [PacelineSampler(run, batch_size=4, num_samples=SAMPLES,
                                    mini_repeat_count=GROUP, repeat_count=2,
                                    num_replicas=ranks, rank=rank)
                    for rank, run in enumerate(runs)]
        per_update = 4 * GROUP // ranks
        loaders = [StatefulDataLoader(list(range(SAMPLES)), batch_size=per_update,
                                      sampler=sampler) for sampler in samplers]
        start = 0
        if resume is not None:
            for loader, state in zip(loaders, resume["loaders"], strict=True):
                loader.load_state_dict(state)
            start = resume["epoch"]

        def checkpoint(epoch: int) -> None:
            checkpoints.append({"epoch": epoch,
                                "loaders": [loader.state_dict() for loader in loaders]})

        for epoch in range(start, 2):
            for sampler in samplers:
                sampler.set_epoch(epoch)
            iterators = [iter(loader) for loader in loaders]
            while True:  # every rank draws its update, as DDP ranks do in lockstep
                drawn = [next(it, None) for it in iterators]
                if all(rows is None for rows in drawn):
                    break
                assert all(rows is not None for rows in drawn), "the ranks fell apart"
                batch = samplers[0].ledger.latest
                assert batch is not None
                assert all(s.ledger.latest == batch for s in samplers)
                rows = [r.tolist() for r in drawn if r is not None]
                trained.append((batch.step, rows))
                prompts = [i for part in rows for i in part[::GROUP]]
                assert prompts == batch.indices, "the ranks' shards are not the batch"
                runs[0].report(batch.step, prompts, prompt_rewards(prompts))
                checkpoint(epoch)
                if len(trained) == crash_after:
                    return trained, checkpoints, cur.state()
            if crash_after == -1 - epoch:  # checkpointed after the epoch's loop
                checkpoint(epoch + 1)
                return trained, checkpoints, cur.state()
        return trained, checkpoints, cur.state()


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize(("crash_after", "resume_at"), [
    (3, 3), (6, 5),  # within a step (its first update done): the step's second update
    (8, 8), (8, 6), (16, 16),  # after an epoch's last update: nothing more of that epoch
    (-1, 9),  # checkpointed after the first epoch's loop ended: the next epoch, whole
])
def test_a_checkpointed_stateful_dataloader_resumes_where_it_stopped(
        tmp_path: Path, crash_after: int, resume_at: int, ranks: int) -> None:
    """Killed after an update and resumed from the checkpoint of update `resume_at`
    (1-based), the loop trains the uninterrupted run's updates, in order, and the
    curriculum ends in its state. The sampler state once named the step after the one
    in training (a checkpoint between a step's two updates skipped its second), and a
    checkpoint after an epoch's last update resumed that epoch with the next epoch's
    steps, then drew them again: one epoch more than the uninterrupted run. With two
    ranks each resumes its own half of the step from its own loader state."""
    straight, _, want = loader_fit(tmp_path / "straight.db", ranks=ranks)
    assert [s for s, _ in straight] == [s for s in range(8) for _ in range(2)]
    first, checkpoints, _ = loader_fit(tmp_path / "resumed.db", crash_after=crash_after,
                                       ranks=ranks)
    checkpoint = checkpoints[resume_at - 1]
    redone, _, got = loader_fit(tmp_path / "resumed.db", resume=checkpoint, ranks=ranks)
    kept = min(resume_at, len(first))
    assert first[:kept] + redone == straight
    assert got == want
    assert [(r.step, r.indices) for r in reports(tmp_path / "resumed.db", "loop")] == \
        [(r.step, r.indices) for r in reports(tmp_path / "straight.db", "loop")]
