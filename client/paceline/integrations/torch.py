"""Paceline in a hand-written torch training loop.

```python
from paceline.integrations.torch import train_steps

for step in train_steps(run, num_steps=100):
    R = score(generate([dataset[i] for i in step.batch.indices]))   # [n, g, k]
    A = step.advantages(R)                  # GRPO advantages of the scalarised reward
    loss = step.weighted_loss(policy_loss(A))   # per-sample losses times loss weights
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    step.report(R, A)
```

`PacelineSampler` / `PacelineBatchSampler` plug the same batches into a
`torch.utils.data.DataLoader`. Importing this module imports torch; `import paceline`
does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Sampler

from paceline.client import Run
from paceline.integrations._ledger import BatchLedger
from paceline.integrations._steps import StepStream
from paceline.models import Batch, ReportAck

__all__ = [
    "PacelineBatchSampler",
    "PacelineSampler",
    "Step",
    "group_advantages",
    "loss_weights",
    "train_steps",
    "weighted_loss",
]


def _ledger(source: Run | BatchLedger) -> BatchLedger:
    return source if isinstance(source, BatchLedger) else BatchLedger(source)


class PacelineSampler(Sampler[int]):  # type: ignore[misc]
    """The sample indices Paceline serves, step after step, one index at a time.

    Each step's batch (`batch_size` indices) is yielded in the order GRPO trainers expect:
    every index `mini_repeat_count` times in a row (one per rollout of the group), the
    whole batch `repeat_count` times (reused for several updates). An epoch is
    `steps_per_epoch` steps (default: as many as the dataset holds batches). The served
    batches are kept in `ledger` until reported, with their reward and loss weights."""

    def __init__(self, source: Run | BatchLedger, *, batch_size: int,
                 steps_per_epoch: int | None = None, num_samples: int | None = None,
                 mini_repeat_count: int = 1, repeat_count: int = 1,
                 start_step: int = 0) -> None:
        self.ledger = _ledger(source)
        if steps_per_epoch is None:
            if num_samples is None:
                raise ValueError("give steps_per_epoch or num_samples (the dataset size)")
            steps_per_epoch = max(1, num_samples // batch_size)
        self.steps = StepStream(self.ledger, batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch, start_step=start_step)
        self.mini_repeat_count = mini_repeat_count
        self.repeat_count = repeat_count

    def __iter__(self) -> Iterator[int]:
        for batch in self.steps.epoch():
            for _ in range(self.repeat_count):
                for index in batch.indices:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return (self.steps.steps_per_epoch * self.steps.batch_size
                * self.mini_repeat_count * self.repeat_count)

    def set_epoch(self, epoch: int) -> None:
        self.steps.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.steps.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps.load_state_dict(state)


class PacelineBatchSampler(Sampler[list[int]]):  # type: ignore[misc]
    """One served batch per iteration, for `DataLoader(dataset, batch_sampler=...)`;
    `batch(step)` gives the served `paceline.Batch` (weights) of a step in flight."""

    def __init__(self, source: Run | BatchLedger, *, batch_size: int, steps_per_epoch: int,
                 start_step: int = 0) -> None:
        self.ledger = _ledger(source)
        self.steps = StepStream(self.ledger, batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch, start_step=start_step)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.steps.epoch():
            yield list(batch.indices)

    def __len__(self) -> int:
        return self.steps.steps_per_epoch

    def batch(self, step: int) -> Batch:
        return self.ledger.record(step).batch

    def set_epoch(self, epoch: int) -> None:
        self.steps.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.steps.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps.load_state_dict(state)


def group_advantages(rewards: torch.Tensor, *, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages of scalar rewards `[n, g]`: each rollout's reward minus its group's
    mean, divided by the group's (unbiased) standard deviation plus `eps` when `scale`
    (as TRL and verl compute them). Groups of one rollout get advantage 0."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [n, g]; got {list(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def loss_weights(batch: Batch, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The batch's per-sample loss weights `[n]` (ones when the sampler serves none)."""
    if batch.loss_weights is None:
        return torch.ones(len(batch.indices), device=device, dtype=dtype)
    return torch.tensor(batch.loss_weights, device=device, dtype=dtype)


def weighted_loss(per_sample: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The mean of per-sample losses `[n]` (or per-rollout `[n, g, ...]`) each multiplied by
    its sample's loss weight: how an `upweight` curriculum changes the gradient."""
    if per_sample.shape[0] != len(batch.indices):
        raise ValueError(f"per_sample has {per_sample.shape[0]} rows; the batch has "
                         f"{len(batch.indices)} samples")
    weights = loss_weights(batch, device=per_sample.device, dtype=per_sample.dtype)
    weights = weights.reshape(-1, *([1] * (per_sample.dim() - 1)))
    return (per_sample * weights).mean()


@dataclass(frozen=True)
class Step:
    """One training step of a hand-written loop: the served batch and the calls that use
    its weights and report back."""

    run: Run
    step: int
    batch: Batch
    #: The step whose batch `report` fetches with the ack (None: no next step).
    next_step: int | None = None
    next_size: int | None = None
    _next: list[Batch] = field(default_factory=list, repr=False, compare=False)

    @property
    def indices(self) -> torch.Tensor:
        return torch.tensor(self.batch.indices, dtype=torch.long)

    def scalarize(self, rewards: Any) -> torch.Tensor:
        """`reward_scale * Σ_k w_k u_k` over the last axis of rewards `[n, g, k]`
        (`Batch.scalarize`: u_k is objective k by its bounds and direction)."""
        return torch.as_tensor(self.batch.scalarize(torch.as_tensor(rewards,
                                                                    dtype=torch.float32)))

    def advantages(self, rewards: Any, *, scale: bool = True) -> torch.Tensor:
        """GRPO advantages `[n, g]` of the scalarised rewards `[n, g, k]`."""
        return group_advantages(self.scalarize(rewards), scale=scale)

    def weighted_loss(self, per_sample: torch.Tensor) -> torch.Tensor:
        return weighted_loss(per_sample, self.batch)

    def report(self, rewards: Any, advantages: Any = None, **extra: Any) -> ReportAck:
        """Report rewards `[n, g, k]` (and the advantages trained on) for this step; `extra`
        passes `grad_products` / `eval_objectives` through. The ack brings the next
        step's batch along (one round trip per step)."""
        ack = self.run.report(self.step, indices=self.batch.indices, rewards=rewards,
                              advantages=advantages, next_step=self.next_step,
                              next_size=self.next_size if self.next_step is not None
                              else None, **extra)
        if ack.batch is not None:
            self._next[:] = [ack.batch]
        return ack


def train_steps(run: Run, num_steps: int, *, start_step: int = 0,
                size: int | None = None) -> Iterator[Step]:
    """Steps `start_step .. start_step + num_steps - 1` of `run`. Each step's batch comes
    with the previous step's report (`Step.report`), so it reflects every earlier report;
    a step that was not reported through `Step.report` makes the next one ask for it."""
    last = start_step + num_steps - 1
    batch: Batch | None = None
    for step in range(start_step, start_step + num_steps):
        if batch is None:
            batch = run.next_batch(step, size)
        current = Step(run, step, batch, None if step == last else step + 1, size)
        yield current
        batch = current._next[0] if current._next else None
