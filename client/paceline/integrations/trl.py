"""Paceline with TRL's `GRPOTrainer`.

```python
from paceline.integrations.trl import PacelineGRPOTrainer

trainer = PacelineGRPOTrainer(
    run,                                      # a paceline Run (cur.start_run())
    model=model, processing_class=tokenizer, args=GRPOConfig(..., max_steps=200),
    train_dataset=dataset,                    # row i is Paceline's global sample i
    reward_funcs={"correctness": correct, "length": length},   # one per objective
)
trainer.train()
```

What it is built from:

- `PacelineSampler` (from `paceline.integrations.torch`): the trainer's sampler; each
  generation round is one Paceline step, drawn when the loader needs it.
- `with_sample_index`: adds the `paceline_index` column, so rewards know their sample.
- `ScalarizedReward`: one TRL reward function calling one function per objective; it
  returns `reward_scale * Σ_k w_k r_k` with the weights served for that step and keeps
  the reward vectors for the report.
- `PacelineCallback`: reports each scored step (rewards, the advantages TRL trained on,
  group ids) at the end of the optimiser step.

Loss weights (an `upweight` curriculum) scale the advantages of each sample's rollouts:
GRPO's policy-gradient loss is linear in the advantage, so this weighs the sample's loss
(the KL term, when `beta > 0`, stays unweighted). The report carries TRL's unscaled
advantages. Accelerate's data loader fetches one batch ahead, so step s+1's batch is
computed before step s is reported: the curriculum reacts with one step of delay.
Importing this module imports trl, transformers and torch; `import paceline` does not.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer

from paceline.client import Run
from paceline.integrations._ledger import BatchLedger, Rollouts, StepRecord
from paceline.integrations._resume import Fingerprint, check_dataset_size
from paceline.integrations.torch import PacelineSampler

__all__ = [
    "INDEX_COLUMN",
    "PacelineCallback",
    "PacelineGRPOTrainer",
    "ScalarizedReward",
    "with_sample_index",
]

#: The dataset column that carries each row's global sample index to reward functions.
INDEX_COLUMN = "paceline_index"

RewardFunc = Callable[..., Sequence[float | None]]

#: Where the reward function leaves a step's rows for the trainer (StepRecord.scratch).
LOCAL = "paceline.trl.local"
#: The file in each checkpoint that says which curriculum and run it belongs to.
CHECKPOINT_FILE = "paceline.json"


def with_sample_index(dataset: Dataset, column: str = INDEX_COLUMN) -> Dataset:
    """`dataset` with `column` = the row number (Paceline's global sample index). TRL hands
    every non-prompt column to reward functions, which is how they learn the index."""
    if column in dataset.column_names:
        if list(dataset[column]) != list(range(len(dataset))):
            raise ValueError(f"column {column!r} exists and is not the row number")
        return dataset
    return dataset.add_column(column, list(range(len(dataset))))


@dataclass(frozen=True)
class LocalRows:
    """What this process's reward call scored for a step: sample index and reward vector
    of each of its rows, in generation order (gathered across processes later)."""

    indices: list[int]
    rewards: list[list[float]]


class ScalarizedReward:
    """A TRL reward function for all of a curriculum's objectives at once.

    It calls `objectives[name](prompts=..., completions=..., **kwargs)` for every
    objective, records the reward vectors under the served step the rows belong to, and
    returns `reward_scale * Σ_k w_k u_k` with that step's weights (`Batch.scalarize`: u_k is
    objective k by its bounds and direction). Rows without the index
    column (evaluation) are scored with the latest weights and not recorded."""

    def __init__(self, objectives: Mapping[str, RewardFunc], ledger: BatchLedger,
                 column: str = INDEX_COLUMN) -> None:
        if not objectives:
            raise ValueError("give one reward function per objective")
        wanted = ledger.run.curriculum.objectives
        if sorted(objectives) != sorted(wanted):
            raise ValueError(f"reward functions are given for {sorted(objectives)}; the "
                             f"curriculum's objectives are {wanted}")
        self.objectives = {name: objectives[name] for name in wanted}
        self.ledger = ledger
        self.column = column
        self.__name__ = "paceline"  # TRL logs rewards under the function's name

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float]:
        columns = {name: [_float(r) for r in func(prompts=prompts, completions=completions,
                                                   **kwargs)]
                   for name, func in self.objectives.items()}
        for name, values in columns.items():
            if len(values) != len(prompts):
                raise ValueError(f"the reward function of {name!r} returned {len(values)} "
                                 f"rewards for {len(prompts)} completions")
        rows = [list(r) for r in zip(*columns.values(), strict=True)]
        indices = kwargs.get(self.column)
        if indices is None:
            batch = self.ledger.weights()
            return [batch.scalarize(row) for row in rows]
        record = self.ledger.next_unscored(without=LOCAL)
        record.check_indices(indices, "the paceline reward function")
        record.scratch[LOCAL] = LocalRows([int(i) for i in indices], rows)
        return [record.batch.scalarize(row) for row in rows]


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


class PacelineCallback(TrainerCallback):  # type: ignore[misc]
    """Reports every scored Paceline step when an optimiser step ends (and what is left
    when training ends). Only the main process reports; the others forget their copies."""

    def __init__(self, ledger: BatchLedger) -> None:
        self.ledger = ledger

    def _flush(self, state: TrainerState) -> None:
        if state.is_world_process_zero:
            self.ledger.report_scored()
        else:
            self.ledger.pop_scored()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        self._flush(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self._flush(state)

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kwargs: Any) -> None:
        """Write `paceline.json` into the checkpoint: the curriculum, spec and run it
        belongs to (checked when training resumes from it)."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            marker = {**Fingerprint.of(self.ledger.run).to_dict(),
                      "global_step": state.global_step}
            (folder / CHECKPOINT_FILE).write_text(json.dumps(marker, indent=1))


class PacelineGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """`trl.GRPOTrainer` whose prompts, reward weights and loss weights come from a
    Paceline run, and which reports each step's rewards and advantages back.

    `reward_funcs` maps each curriculum objective to a TRL reward function; every other
    argument is GRPOTrainer's. `train_dataset` must be a `datasets.Dataset` whose row i
    is Paceline's global sample i (its length is checked against the layout).

    Resuming (`train(resume_from_checkpoint=...)` with the same run id) continues at the
    Paceline step the checkpoint stopped at: the steps the Trainer fast-forwards over are
    not scored again, and a step redone after the checkpoint keeps the report the service
    already has (the first one stands). The checkpoint's `paceline.json` must name this
    curriculum, spec and run, or training refuses to start."""

    def __init__(self, run: Run, *, reward_funcs: Mapping[str, RewardFunc],
                 train_dataset: Dataset, callbacks: list[TrainerCallback] | None = None,
                 apply_loss_weights: bool = True, **kwargs: Any) -> None:
        args = kwargs.get("args")
        if args is not None and args.reward_weights not in (None, [1.0]):
            raise ValueError("Paceline serves the reward weights; leave "
                             "GRPOConfig.reward_weights unset")
        check_dataset_size(len(train_dataset), run.curriculum, "PacelineGRPOTrainer")
        self.paceline = BatchLedger(run)
        self.paceline_reward = ScalarizedReward(reward_funcs, self.paceline)
        self.apply_loss_weights = apply_loss_weights
        super().__init__(reward_funcs=[self.paceline_reward],
                         train_dataset=with_sample_index(train_dataset),
                         callbacks=[*(callbacks or []), PacelineCallback(self.paceline)],
                         **kwargs)
        self._warn_batch_size()

    @property
    def prompts_per_step(self) -> int:
        """Prompts in one generation round, which is one Paceline step."""
        return int(self.args.generation_batch_size // self.num_generations)

    def _warn_batch_size(self) -> None:
        """GRPOConfig decides how many prompts a step generates for; a curriculum whose
        batch_size says otherwise is served GRPOConfig's number. Say so once."""
        wanted = int(self.paceline.run.curriculum.spec.get("batch_size", 0))
        if wanted and wanted != self.prompts_per_step:
            warnings.warn(
                f"PacelineGRPOTrainer: GRPOConfig generates for {self.prompts_per_step} "
                f"prompts per step (generation_batch_size {self.args.generation_batch_size}"
                f" / num_generations {self.num_generations}), curriculum "
                f"{self.paceline.run.curriculum.name!r} has batch_size {wanted}; Paceline "
                f"serves {self.prompts_per_step} prompts per step. For {wanted}, set "
                f"per_device_train_batch_size * steps_per_generation * processes = "
                f"{wanted * self.num_generations}.", UserWarning, stacklevel=3)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              **kwargs: Any) -> Any:
        """`Trainer.train`; resuming checks the checkpoint against the run first."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str | os.PathLike):
            self._resume_paceline(Path(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             **kwargs)

    def _steps_per_epoch(self) -> int:
        return max(1, len(self.train_dataset) // self.prompts_per_step)

    def _resume_paceline(self, checkpoint: Path) -> None:
        """Check `checkpoint` belongs to this run and skip, without scoring, the steps
        the Trainer fast-forwards its data loader over."""
        marker = checkpoint / CHECKPOINT_FILE
        if not marker.is_file():
            raise ValueError(f"resuming from {checkpoint}: it has no {CHECKPOINT_FILE}, so it "
                             "was not written by PacelineGRPOTrainer and the Paceline step "
                             "it stopped at is unknown")
        saved = json.loads(marker.read_text())
        fingerprint = Fingerprint.from_dict(saved)
        if fingerprint is None:
            raise ValueError(f"resuming from {checkpoint}: {CHECKPOINT_FILE} is incomplete")
        fingerprint.check(self.paceline.run, f"resuming from {checkpoint}")
        global_step = int(TrainerState.load_from_json(
            str(checkpoint / "trainer_state.json")).global_step)
        # One Paceline step is `repeat` data-loader batches (TRL's RepeatSampler shape);
        # the Trainer skips `global_step * grad_accum` batches into the current epoch.
        repeat = self.num_iterations * self.args.steps_per_generation
        per_epoch = self._steps_per_epoch()
        accumulation = self.args.gradient_accumulation_steps
        updates_per_epoch = max(per_epoch * repeat // accumulation, 1)
        epochs, into = divmod(global_step, updates_per_epoch)
        skipped = 0 if self.args.ignore_data_skip else into * accumulation
        self.paceline.skip_before = epochs * per_epoch + skipped // repeat

    def _get_train_sampler(self, dataset: Dataset | None = None) -> PacelineSampler:
        """The same shape as TRL's RepeatSampler (each prompt once per generation, the
        generation batch once per reuse), with the prompts chosen by Paceline."""
        dataset = self.train_dataset if dataset is None else dataset
        prompts_per_step = self.args.generation_batch_size // self.num_generations
        self.paceline_sampler = PacelineSampler(
            self.paceline, batch_size=prompts_per_step, num_samples=len(dataset),
            mini_repeat_count=self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation)
        return self.paceline_sampler

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]
                                        ) -> dict[str, Any]:
        output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self._record_rollouts(output)
        return output

    def _record_rollouts(self, output: dict[str, Any]) -> None:
        """Gather this generation round's rows from every process into its ledger record,
        check them against the served batch, and apply the loss weights."""
        record = self._scored_record()
        local = record.scratch.pop(LOCAL)
        assert isinstance(local, LocalRows)
        advantages: torch.Tensor = output["advantages"]
        indices = [int(i) for i in gather_object(local.indices)]
        rewards = [list(r) for r in gather_object(local.rewards)]
        all_advantages = self.accelerator.gather(advantages.detach()).tolist()
        group = self.num_generations
        served = record.batch.indices
        if len(indices) != len(served) * group or any(
                index != served[pos // group] for pos, index in enumerate(indices)):
            raise RuntimeError(f"step {record.step}: the generated rows do not follow the "
                               "served batch's order; paceline needs its own sampler")
        record.rollouts = Rollouts(indices=indices,
                                   group_ids=[pos // group for pos in range(len(indices))],
                                   rewards=rewards, advantages=all_advantages)
        self._log_objectives(rewards)
        weights = record.batch.loss_weights
        if self.apply_loss_weights and weights is not None:
            start = self.accelerator.process_index * len(local.indices)
            scale = torch.tensor([weights[(start + pos) // group]
                                  for pos in range(len(local.indices))],
                                 dtype=advantages.dtype, device=advantages.device)
            output["advantages"] = advantages * scale

    def _log_objectives(self, rewards: list[list[float]]) -> None:
        """Each objective's mean raw reward this round, logged as
        `rewards/paceline/<objective>` next to TRL's scalarised `rewards/paceline/mean`."""
        table = torch.tensor(rewards, dtype=torch.float64)
        for k, name in enumerate(self.paceline_reward.objectives):
            column = table[:, k]
            scored = column[~torch.isnan(column)]
            if scored.numel():
                self._metrics["train"][f"rewards/paceline/{name}"].append(
                    float(scored.mean()))

    def _scored_record(self) -> StepRecord:
        """The record the reward function has just filled: the oldest one holding local
        rows (records are scored in step order)."""
        record = self.paceline.next_unscored()
        if LOCAL not in record.scratch:
            raise RuntimeError("the paceline reward function did not score this round; "
                               "pass the objectives' functions as reward_funcs")
        return record
