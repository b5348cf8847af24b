"""DAPO dynamic sampling in `PacelineGRPOTrainer`: TRL's real GRPOTrainer and the tiny
local Llama of test_trl_integration, with rewards that make some prompts' groups all
equal, against an embedded Paceline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("tokenizers")

import torch
from integration_support import reports, served_indices
from test_trl_integration import (
    GROUP,
    PROMPTS_PER_STEP,
    dataset,
    grpo_args,
    make_curriculum,
    tiny_model,
    tiny_tokenizer,
)

import paceline
from paceline.integrations._ledger import Rollouts
from paceline.integrations.trl import PacelineGRPOTrainer


def flat(index: int) -> bool:
    """Prompts whose rollouts all get the same rewards (DAPO drops their groups)."""
    return index % 3 != 1


class FlatRewards:
    """Rewards of the prompt and the rollout's place in its group: equal across a group
    for `flat` prompts, different otherwise. Remembers every index it scored."""

    def __init__(self) -> None:
        self.scored: list[list[int]] = []

    @staticmethod
    def _values(indices: list[int], salt: float) -> list[float]:
        seen: dict[int, int] = {}
        values = []
        for index in indices:
            seen[index] = seen.get(index, 0) + 1
            values.append(((index * 7 + salt) % 5) / 5
                          + (0.0 if flat(index) else 0.1 * seen[index]))
        return values

    def correct(self, completions: list[str], paceline_index: list[int] | None = None,
                **kwargs: Any) -> list[float]:
        indices = list(paceline_index or [0] * len(completions))
        self.scored.append(indices)
        return self._values(indices, 1.0)

    def short(self, completions: list[str], paceline_index: list[int] | None = None,
              **kwargs: Any) -> list[float]:
        return self._values(list(paceline_index or [0] * len(completions)), 3.0)


def trainer_for(tmp_path: Path, run: paceline.Run, rewards: FlatRewards,
                **options: Any) -> PacelineGRPOTrainer:
    tokenizer = tiny_tokenizer()
    return PacelineGRPOTrainer(run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                               args=grpo_args(tmp_path, max_steps=2), train_dataset=dataset(),
                               reward_funcs={"correct": rewards.correct,
                                             "short": rewards.short}, **options)


class Refills:
    """Wraps `Run.refill`, remembering each (step, part, size) asked and what came back."""

    def __init__(self, run: paceline.Run) -> None:
        self.asked: list[tuple[int, int, int | None]] = []
        self.served: dict[tuple[int, int], list[int]] = {}
        self._refill = run.refill

    def __call__(self, step: int, part: int, size: int | None = None) -> paceline.Batch:
        self.asked.append((int(step), int(part), size))
        batch = self._refill(step, part, size)
        self.served[(int(step), int(part))] = list(batch.indices)
        return batch


def test_dynamic_sampling_drops_flat_groups_refills_and_reports_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "p.db"
    rewards = FlatRewards()
    trained: list[dict[str, Any]] = []
    with paceline.Client.embedded(db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            refills = Refills(run)
            monkeypatch.setattr(run, "refill", refills)
            trainer = trainer_for(tmp_path, run, rewards, dynamic_sampling=True)
            original = trainer._generate_and_score_completions

            def spy(inputs: Any) -> Any:
                output = original(inputs)
                trained.append(output)
                return output

            monkeypatch.setattr(trainer, "_generate_and_score_completions", spy)
            before = [p.detach().clone() for p in trainer.model.parameters()]
            trainer.train()
            acks = list(trainer.paceline_callback.acks)
            served = {step: served_indices(db, "trl", "dapo", step) for step in (0, 1)}
    assert any(not torch.equal(b, p.detach()) for b, p in
               zip(before, trainer.model.parameters(), strict=True)), "the model did not train"

    # Refill parts were asked for, in order from part 1, for the steps that needed them.
    assert refills.asked, "no refill was requested"
    for step in (0, 1):
        parts = [part for s, part, _ in refills.asked if s == step]
        assert parts == list(range(1, len(parts) + 1))
    stored = reports(db, "trl")
    assert [r.step for r in stored] == [0, 1] and len(acks) == 2
    for report, ack, output in zip(stored, acks, trained, strict=True):
        step = report.step
        generated = served[step] + [i for (s, _), got in sorted(refills.served.items())
                                    if s == step for i in got]
        # Every group generated (the served batch, then each refill) is reported.
        assert report.indices == generated
        assert report.rollout_indices == [i for i in generated for _ in range(GROUP)]
        kept = [i for i in generated if not flat(i)][:PROMPTS_PER_STEP]
        assert len(kept) == PROMPTS_PER_STEP, "the refills did not fill the batch"
        # The ack counts what was generated and what was trained; the rest was dropped.
        assert ack.rollouts_generated == len(generated) * GROUP
        assert ack.rollouts_trained == PROMPTS_PER_STEP * GROUP
        assert ack.groups_dropped == len(generated) - PROMPTS_PER_STEP
        assert any(flat(i) for i in generated)  # some groups were dropped as all equal
        # TRL trained on exactly the kept groups: a full batch, every group informative.
        assert output["completion_ids"].shape[0] == PROMPTS_PER_STEP * GROUP
        advantages = output["advantages"].reshape(PROMPTS_PER_STEP, GROUP)
        assert bool((advantages.abs().amax(dim=1) > 0).all())
        assert output["num_items_in_batch"] == output["completion_mask"].sum()
    scored = [i for call in rewards.scored for i in call]
    assert sorted(set(scored)) == sorted({i for r in stored for i in r.indices})


def test_merged_rounds_feed_several_optimiser_steps(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two optimiser steps per generation round, the round used twice: the merged round
    (with its per-token old log-probabilities) is split by TRL, and the Paceline step is
    reported once."""
    rewards = FlatRewards()
    rounds: list[dict[str, Any]] = []
    tokenizer = tiny_tokenizer()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            args = grpo_args(tmp_path, max_steps=4, per_device_train_batch_size=PROMPTS_PER_STEP,
                             steps_per_generation=2, num_iterations=2)
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer, args=args,
                train_dataset=dataset(), dynamic_sampling=True,
                reward_funcs={"correct": rewards.correct, "short": rewards.short})
            original = trainer._generate_and_score_completions

            def spy(inputs: Any) -> Any:
                output = original(inputs)
                rounds.append(output)
                return output

            monkeypatch.setattr(trainer, "_generate_and_score_completions", spy)
            trainer.train()
            acks = trainer.paceline_callback.acks
    assert trainer.prompts_per_step == PROMPTS_PER_STEP
    # One round (Paceline step 0) serves 2 slices x 2 iterations = the 4 optimiser steps.
    assert len(rounds) == 1 and [a.rollouts_trained for a in acks] == [PROMPTS_PER_STEP * GROUP]
    for output in rounds:
        logps = output["old_per_token_logps"]
        assert logps.shape == output["completion_mask"].shape
        assert output["prompt_ids"].shape[0] == PROMPTS_PER_STEP * GROUP
        assert bool(torch.isfinite(logps).all())


def test_the_report_names_the_dropped_groups(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ledger sends: every group, with the all-equal and the surplus ones in
    `dropped` (checked on the call, since the stored event keeps only the fold)."""
    rewards = FlatRewards()
    sent: list[dict[str, Any]] = []
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            report = run.report

            def spy(step: int, **kwargs: Any) -> Any:
                sent.append({"step": step, **kwargs})
                return report(step, **kwargs)

            monkeypatch.setattr(run, "report", spy)
            trainer_for(tmp_path, run, rewards, dynamic_sampling=True).train()
    assert [s["step"] for s in sent] == [0, 1]
    for call in sent:
        groups = call["indices"][::GROUP]
        kept = [i for i in groups if not flat(i)][:PROMPTS_PER_STEP]
        assert call["dropped"] == [i for i in groups if i not in kept]
        assert call["idempotency_key"] == f"paceline/dapo/{call['step']}/0"


def test_without_refills_flat_groups_fill_the_batch_and_are_reported_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rewards = FlatRewards()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            refills = Refills(run)
            monkeypatch.setattr(run, "refill", refills)
            trainer = trainer_for(tmp_path, run, rewards, dynamic_sampling=True,
                                  max_refill_parts=0)
            trainer.train()
            acks = trainer.paceline_callback.acks
            served = [served_indices(tmp_path / "p.db", "trl", "dapo", s) for s in (0, 1)]
    assert refills.asked == []
    for ack, batch in zip(acks, served, strict=True):
        flats = sum(flat(i) for i in batch)
        assert ack.rollouts_generated == PROMPTS_PER_STEP * GROUP
        assert ack.groups_dropped == flats
        assert ack.rollouts_trained == (PROMPTS_PER_STEP - flats) * GROUP


def test_off_by_default_no_refill_and_nothing_dropped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rewards = FlatRewards()
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="plain", heartbeat_interval=None) as run:
            refills = Refills(run)
            monkeypatch.setattr(run, "refill", refills)
            trainer = trainer_for(tmp_path, run, rewards)
            assert trainer.dynamic_sampling is False
            trainer.train()
            acks = trainer.paceline_callback.acks
            served = [served_indices(db, "trl", "plain", s) for s in (0, 1)]
    assert refills.asked == []
    assert any(flat(i) for batch in served for i in batch)  # flat groups were there ...
    for report, batch, ack in zip(reports(db, "trl"), served, acks, strict=True):
        assert report.indices == batch  # ... and trained on, as TRL does
        assert ack.groups_dropped in (None, 0)
        assert ack.rollouts_trained in (None, PROMPTS_PER_STEP * GROUP)


def test_a_redone_reported_step_keeps_its_first_report(tmp_path: Path) -> None:
    """A trainer restarted on the same run redoes steps 0-1, which were reported without
    refills: a new refill part of a reported step is refused, the redone rounds train on
    what they have, and their reports replay the first acks (nothing folded twice)."""
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            first_trainer = trainer_for(tmp_path, run, FlatRewards(), dynamic_sampling=True,
                                        max_refill_parts=0)
            first_trainer.train()
            first = cur.state()
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            refills = Refills(run)
            run.refill = refills  # type: ignore[method-assign]
            again = trainer_for(tmp_path, run, FlatRewards(), dynamic_sampling=True)
            again.train()
            assert refills.asked and refills.served == {}  # asked, refused, stopped
            acks = again.paceline_callback.acks
            assert [a.replayed for a in acks] == [True, True]
            assert [a.seq for a in acks] == [a.seq for a in first_trainer.paceline_callback.acks]
            assert cur.state().model_dump() == first.model_dump()
    assert [r.step for r in reports(db, "trl")] == [0, 1]


def test_a_redone_unreported_step_takes_its_refill_parts_as_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process crashed after step 0's refill part 1 was served and before the step was
    reported: the resumed round keeps other groups, so it asks part 1 with another size.
    It gets the part as served (parts are fixed per step), as `dynamic_step` does,
    instead of failing IDEMPOTENCY_CONFLICT, and the step is reported once."""
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="dapo", heartbeat_interval=None) as run:
            served = list(run.next_batch(0, PROMPTS_PER_STEP).indices)
            crashed_part = list(run.refill(0, 1, 1).indices)  # the crashed process's
            refills = Refills(run)
            monkeypatch.setattr(run, "refill", refills)
            trainer_for(tmp_path, run, FlatRewards(), dynamic_sampling=True).train()
    asked = [size for step, part, size in refills.asked if (step, part) == (0, 1)]
    assert asked and asked[0] != 1, "the round did not need part 1 with another size"
    assert refills.served[(0, 1)] == crashed_part
    stored = reports(db, "trl")
    assert [r.step for r in stored] == [0, 1]
    assert stored[0].indices[:PROMPTS_PER_STEP + 1] == served + crashed_part


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(heartbeat_interval=None) as run, pytest.raises(
                ValueError, match="max_refill_parts must be >= 0"):
            trainer_for(tmp_path, run, FlatRewards(), dynamic_sampling=True,
                        max_refill_parts=-1)


def test_unscored_rollouts_leave_dropped_consistent() -> None:
    rollouts = Rollouts(indices=[3, 3, 5, 5], group_ids=[0, 0, 1, 1],
                        rewards=[[1.0], [1.0], [float("nan")], [float("nan")]],
                        advantages=[0.0, 0.0, 0.0, 0.0], dropped=[3, 5])
    kept = rollouts.without_unscored()
    assert kept.indices == [3, 3] and kept.dropped == [3]
    np.testing.assert_array_equal(kept.rewards, [[1.0], [1.0]])
