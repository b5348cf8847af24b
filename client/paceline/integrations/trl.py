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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOTrainer

from paceline.client import Run
from paceline.integrations._ledger import BatchLedger, Rollouts, StepRecord
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


class PacelineGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """`trl.GRPOTrainer` whose prompts, reward weights and loss weights come from a
    Paceline run, and which reports each step's rewards and advantages back.

    `reward_funcs` maps each curriculum objective to a TRL reward function; every other
    argument is GRPOTrainer's. `train_dataset` must be a `datasets.Dataset` whose row i
    is Paceline's global sample i."""

    def __init__(self, run: Run, *, reward_funcs: Mapping[str, RewardFunc],
                 train_dataset: Dataset, callbacks: list[TrainerCallback] | None = None,
                 apply_loss_weights: bool = True, **kwargs: Any) -> None:
        args = kwargs.get("args")
        if args is not None and args.reward_weights not in (None, [1.0]):
            raise ValueError("Paceline serves the reward weights; leave "
                             "GRPOConfig.reward_weights unset")
        self.paceline = BatchLedger(run)
        self.paceline_reward = ScalarizedReward(reward_funcs, self.paceline)
        self.apply_loss_weights = apply_loss_weights
        super().__init__(reward_funcs=[self.paceline_reward],
                         train_dataset=with_sample_index(train_dataset),
                         callbacks=[*(callbacks or []), PacelineCallback(self.paceline)],
                         **kwargs)

    def _get_train_sampler(self, dataset: Dataset | None = None) -> PacelineSampler:
        """The same shape as TRL's RepeatSampler (each prompt once per generation, the
        generation batch once per reuse), with the prompts chosen by Paceline."""
        dataset = self.train_dataset if dataset is None else dataset
        prompts_per_step = self.args.generation_batch_size // self.num_generations
        return PacelineSampler(self.paceline, batch_size=prompts_per_step,
                               num_samples=len(dataset),
                               mini_repeat_count=self.num_generations,
                               repeat_count=self.num_iterations * self.args.steps_per_generation)

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
        weights = record.batch.loss_weights
        if self.apply_loss_weights and weights is not None:
            start = self.accelerator.process_index * len(local.indices)
            scale = torch.tensor([weights[(start + pos) // group]
                                  for pos in range(len(local.indices))],
                                 dtype=advantages.dtype, device=advantages.device)
            output["advantages"] = advantages * scale

    def _scored_record(self) -> StepRecord:
        """The record the reward function has just filled: the oldest one holding local
        rows (records are scored in step order)."""
        record = self.paceline.next_unscored()
        if LOCAL not in record.scratch:
            raise RuntimeError("the paceline reward function did not score this round; "
                               "pass the objectives' functions as reward_funcs")
        return record
