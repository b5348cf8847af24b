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
  returns `reward_scale * Σ_k w_k u_k` (u_k: objective k's raw reward mapped by its
  bounds and direction, `Batch.scalarize`) with the weights served for that step and
  keeps the raw reward vectors for the report.
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
from paceline.errors import Conflict
from paceline.integrations._ledger import BatchLedger, Rollouts, StepRecord, refill_part
from paceline.integrations._resume import Fingerprint, check_dataset_size
from paceline.integrations.torch import PacelineSampler, all_equal_groups
from paceline.models import Batch, ReportAck

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
#: The sample indices of a step's refill parts so far (dynamic sampling; StepRecord.scratch).
REFILLS = "paceline.trl.refills"
#: What TRL's generation output may hold for dynamic sampling to merge parts: the rest
#: (vision inputs, tool masks, vLLM importance ratios) is refused rather than mis-merged.
MERGEABLE = frozenset({"prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                       "advantages", "num_items_in_batch", "old_per_token_logps",
                       "ref_per_token_logps", "sampling_per_token_logps"})
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
    objective k by its bounds and direction). Rows of an evaluation (`evaluating`, set by
    `PacelineGRPOTrainer` while its model is not training), or without the index column,
    are scored with the latest weights and not recorded: an evaluation set built with
    `with_sample_index` was taken for a training batch ("not served")."""

    #: Set while the trainer evaluates: rows are scored, not recorded.
    evaluating: bool = False

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
        if indices is None or self.evaluating:
            batch = self.ledger.weights()
            return [batch.scalarize(row) for row in rows]
        record = self.ledger.next_unscored(without=LOCAL)
        refills = record.scratch.get(REFILLS, [])
        assert isinstance(refills, list)
        record.check_indices(indices, "the paceline reward function", also=refills)
        record.scratch[LOCAL] = LocalRows([int(i) for i in indices], rows)
        return [record.batch.scalarize(row) for row in rows]


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


class PacelineCallback(TrainerCallback):  # type: ignore[misc]
    """Reports every scored Paceline step when an optimiser step ends (and what is left
    when training ends). Only the main process reports; the others forget their copies."""

    def __init__(self, ledger: BatchLedger) -> None:
        self.ledger = ledger
        #: The acknowledgements of the reports sent, oldest first.
        self.acks: list[ReportAck] = []

    def _flush(self, state: TrainerState) -> None:
        if state.is_world_process_zero:
            self.acks.extend(self.ledger.report_scored())
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
    curriculum, spec and run, or training refuses to start.

    `dynamic_sampling=True` is DAPO's dynamic sampling inside each generation round: the
    groups whose scalarised rewards all agree are dropped, and Paceline is asked for
    refill parts (`Run.refill`) whose prompts are generated and scored in the same round,
    until the round holds as many kept groups as it was served prompts or
    `max_refill_parts` refills were asked for. The report names the dropped groups. Off
    by default; one process only (see docs/integrations.md)."""

    def __init__(self, run: Run, *, reward_funcs: Mapping[str, RewardFunc],
                 train_dataset: Dataset, callbacks: list[TrainerCallback] | None = None,
                 apply_loss_weights: bool = True, dynamic_sampling: bool = False,
                 max_refill_parts: int = 8, **kwargs: Any) -> None:
        args = kwargs.get("args")
        if args is not None and args.reward_weights not in (None, [1.0]):
            raise ValueError("Paceline serves the reward weights; leave "
                             "GRPOConfig.reward_weights unset")
        check_dataset_size(len(train_dataset), run.curriculum, "PacelineGRPOTrainer")
        self.paceline = BatchLedger(run)
        self.paceline_reward = ScalarizedReward(reward_funcs, self.paceline)
        self.apply_loss_weights = apply_loss_weights
        if max_refill_parts < 0:
            raise ValueError(f"max_refill_parts must be >= 0; got {max_refill_parts}")
        self.dynamic_sampling = dynamic_sampling
        self.max_refill_parts = max_refill_parts
        self.paceline_callback = PacelineCallback(self.paceline)
        super().__init__(reward_funcs=[self.paceline_reward],
                         train_dataset=with_sample_index(train_dataset),
                         callbacks=[*(callbacks or []), self.paceline_callback], **kwargs)
        if dynamic_sampling and self.accelerator.num_processes > 1:
            raise ValueError("PacelineGRPOTrainer: dynamic_sampling runs on one process "
                             f"only; this one has {self.accelerator.num_processes}")
        extra = list(getattr(self, "reward_func_names", [])[1:])
        if extra:
            # TRL adds an environment's `get_reward` as one more reward source of weight 1:
            # the policy would train on Paceline's scalarised reward plus it, while Paceline
            # weights and learns from its objectives alone (a second objective it never sees).
            raise ValueError(
                "PacelineGRPOTrainer: the environment's get_reward adds the reward source(s) "
                f"{extra} that Paceline does not weight; score the environment's outcome in "
                "a function of reward_funcs (one of the curriculum's objectives) instead")
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
        # As the Trainer counts them (transformers 5): a last, shorter accumulation at
        # an epoch's end is an update of its own.
        updates_per_epoch = max(-(-per_epoch * repeat // accumulation), 1)
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
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            num_replicas=1, rank=0)  # accelerate shards the loader's batches itself
        return self.paceline_sampler

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]
                                        ) -> dict[str, Any]:
        self.paceline_reward.evaluating = not self.model.training
        try:
            output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        finally:
            self.paceline_reward.evaluating = False
        if self.model.training:
            if self.dynamic_sampling:
                return self._dynamic_sampling(output)
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
        self._check_order(record.step, indices, record.batch)
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

    def _check_order(self, step: int, indices: list[int], batch: Batch) -> None:
        group = self.num_generations
        served = batch.indices
        if len(indices) != len(served) * group or any(
                index != served[pos // group] for pos, index in enumerate(indices)):
            raise RuntimeError(f"step {step}: the generated rows do not follow the "
                               "served batch's order; paceline needs its own sampler")

    def _dynamic_sampling(self, output: dict[str, Any]) -> dict[str, Any]:
        """DAPO dynamic sampling for one generation round (one process).

        Part 0 is the served batch, already generated and scored in `output`. While fewer
        groups than the batch had prompts are kept (not all rewards equal), ask Paceline
        for refill part 1, 2, ... (over-provisioned by the keep rate so far, as
        `dynamic_step` does), generate and score it with TRL's own code, and stop at
        `max_refill_parts`. The round trains on the first `target` kept groups; when
        fewer were kept, dropped groups fill the round up (their advantages are all 0,
        so they add no policy gradient) to keep TRL's batch shape. Every group is in the
        step's record; the ones not kept are named `dropped`."""
        record = self._scored_record()
        group = self.num_generations
        batches = [record.batch]
        outputs = [output]
        rows = [self._take_local(record, record.batch)]
        keep = [self._kept_groups(record.batch, rows[0])]
        target = len(record.batch.indices)
        left = self.paceline.run.curriculum.info.num_samples - target
        refilled: list[int] = []
        for part in range(1, self.max_refill_parts + 1):
            kept = sum(sum(k) for k in keep)
            if kept >= target or left <= 0:
                break
            generated = sum(len(b.indices) for b in batches)
            ask = min(left, math.ceil((target - kept) / max(kept / generated, 0.1)))
            try:
                # A step redone after a crash may need another size for a part it was
                # served before: it gets the part as served (parts are fixed per step).
                batch = refill_part(self.paceline.run, record.step, part, ask)
            except Conflict as exc:  # a resumed trainer redoing a reported step
                if exc.code != "STEP_ALREADY_REPORTED":
                    raise
                break
            refilled.extend(batch.indices)
            record.scratch[REFILLS] = refilled
            inputs = [self.train_dataset[int(i)] for i in batch.indices for _ in range(group)]
            outputs.append(super()._generate_and_score_completions(inputs))
            batches.append(batch)
            rows.append(self._take_local(record, batch))
            keep.append(self._kept_groups(batch, rows[-1]))
            left -= len(batch.indices)
        record.scratch.pop(REFILLS, None)
        kept_flat = [k for part_keep in keep for k in part_keep]
        trained = [g for g, k in enumerate(kept_flat) if k][:target]
        fill = [g for g, k in enumerate(kept_flat) if not k][:target - len(trained)]
        chosen = sorted(trained + fill)
        indices = [i for part_rows in rows for i in part_rows.indices]
        trained_set = set(trained)
        record.rollouts = Rollouts(
            indices=indices, group_ids=[pos // group for pos in range(len(indices))],
            rewards=[list(r) for part_rows in rows for r in part_rows.rewards],
            advantages=[a for o in outputs for a in o["advantages"].detach().tolist()],
            dropped=[indices[g * group] for g in range(len(kept_flat))
                     if g not in trained_set])
        self._log_objectives(record.rollouts.rewards)
        metrics = self._metrics["train"]
        metrics["paceline/groups_dropped"].append(float(len(kept_flat) - len(trained)))
        metrics["paceline/refill_parts"].append(float(len(batches) - 1))
        merged = self._merge(outputs, [r for g in chosen
                                       for r in range(g * group, (g + 1) * group)])
        weights = [w for b in batches
                   for w in (b.loss_weights or [1.0] * len(b.indices))]
        if self.apply_loss_weights and any(b.loss_weights is not None for b in batches):
            advantages = merged["advantages"]
            scale = torch.tensor([weights[g] for g in chosen for _ in range(group)],
                                 dtype=advantages.dtype, device=advantages.device)
            merged["advantages"] = advantages * scale
        return merged

    def _take_local(self, record: StepRecord, batch: Batch) -> LocalRows:
        """The rows the reward function just scored for `batch` (a part of `record`)."""
        if LOCAL not in record.scratch:
            raise RuntimeError("the paceline reward function did not score this round; "
                               "pass the objectives' functions as reward_funcs")
        local = record.scratch.pop(LOCAL)
        assert isinstance(local, LocalRows)
        self._check_order(record.step, local.indices, batch)
        return local

    def _kept_groups(self, batch: Batch, local: LocalRows) -> list[bool]:
        """Per group of `batch`: False when its scalarised rewards all agree (DAPO)."""
        scalar = torch.tensor([batch.scalarize(row) for row in local.rewards],
                              dtype=torch.float64).reshape(-1, self.num_generations)
        return [not flat for flat in all_equal_groups(scalar).tolist()]

    def _merge(self, outputs: list[dict[str, Any]], rows: list[int]) -> dict[str, Any]:
        """TRL's generation outputs of several parts as one, keeping `rows` (positions in
        the parts' concatenation): prompts re-padded on the left, completions and their
        per-token values on the right, as TRL pads them."""
        keys = set().union(*outputs)
        unknown = sorted(keys - MERGEABLE)
        if unknown:
            raise RuntimeError(f"dynamic_sampling cannot merge TRL's {unknown} (vision "
                               "inputs, tools or vLLM importance sampling)")
        pad_id = self.processing_class.pad_token_id
        merged: dict[str, Any] = {}
        for key in keys - {"num_items_in_batch"}:
            parts = [o[key] for o in outputs]
            if parts[0].dim() == 1:
                merged[key] = torch.cat(parts)[rows]
                continue
            width = max(p.shape[1] for p in parts)
            value = pad_id if key in ("prompt_ids", "completion_ids") else 0
            left = key.startswith("prompt")
            padded = [torch.nn.functional.pad(
                p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]), value=value)
                for p in parts]
            merged[key] = torch.cat(padded)[rows]
        merged["num_items_in_batch"] = merged["completion_mask"].sum()
        return merged

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
