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

`dynamic_step(run, step, generate)` is DAPO-style dynamic sampling: drop the groups whose
rewards all agree and ask Paceline to refill the step until the batch is full again
(`DynamicStep.report` reports every group generated, naming the dropped ones).

`PacelineSampler` / `PacelineBatchSampler` plug the same batches into a
`torch.utils.data.DataLoader`.

Data parallel (DDP under torchrun or accelerate): the samplers and `train_steps` take
`num_replicas` / `rank` / `drop_last` as torch's `DistributedSampler` does (by default
the initialised process group's; one rank when none is initialised). Every rank is
served the same batch and trains on its own `Shard` of it; `report_shards` (or
`sampler.report`, `Step.report`) gathers every rank's rewards and sends the step's one
report from rank 0. `dynamic_step` serves one process only.

Importing this module imports torch; `import paceline` does not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from paceline.client import Run
from paceline.errors import Conflict
from paceline.integrations._ledger import REDONE, BatchLedger, refill_part, step_key
from paceline.integrations._shard import Shard
from paceline.integrations._steps import StepStream
from paceline.models import Batch, ReportAck

_log = logging.getLogger(__name__)

__all__ = [
    "DynamicStep",
    "PacelineBatchSampler",
    "PacelineSampler",
    "Shard",
    "Step",
    "all_equal_groups",
    "dynamic_step",
    "group_advantages",
    "loss_weights",
    "rank_shard",
    "report_shards",
    "train_steps",
    "weighted_loss",
]


def _ledger(source: Run | BatchLedger) -> BatchLedger:
    return source if isinstance(source, BatchLedger) else BatchLedger(source)


def rank_shard(num_replicas: int | None = None, rank: int | None = None,
               drop_last: bool = False) -> Shard:
    """This process's `Shard`, with torch `DistributedSampler`'s defaults: the world size
    and rank of the initialised default process group. Unlike `DistributedSampler`, no
    process group is not an error: one rank trains on the whole batch, as before."""
    if num_replicas is None or rank is None:
        grouped = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if grouped else 1
        if rank is None:
            rank = dist.get_rank() if grouped else 0
    return Shard(num_replicas, rank, drop_last)


class _StepSampler(Sampler[Any]):  # type: ignore[misc]
    """What both samplers share: the step stream, this rank's shard of each step's batch,
    and where a restored state resumes.

    A state saved while a pass is under way resumes that pass, as torchdata's
    `StatefulDataLoader` expects: a loop that resumes in the epoch it checkpointed gets
    the rest of that epoch, and an empty pass when the state was saved after the epoch's
    last step was drawn (it then began the next epoch's steps, one epoch more than an
    uninterrupted run)."""

    ledger: BatchLedger
    steps: StepStream
    shard: Shard
    #: A pass is under way (set when it draws a step, cleared when it ends).
    _in_pass = False
    #: The restored state was saved after its pass drew its epoch's last step.
    _drawn_out = False

    def _setup(self, source: Run | BatchLedger, batch_size: int, steps_per_epoch: int,
               start_step: int, shard: Shard) -> None:
        shard.size(batch_size)  # refuses a batch that leaves a rank nothing
        self.ledger = _ledger(source)
        self.shard = shard
        self.steps = StepStream(self.ledger, batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch, start_step=start_step)

    def _batches(self) -> Iterator[Batch]:
        if self._drawn_out:
            self._drawn_out = False
            return
        for batch in self.steps.epoch():
            self._in_pass = True
            yield batch
        self._in_pass = False

    def _mine(self, batch: Batch) -> list[int]:
        """This rank's sample indices of a served batch."""
        return self.shard.take(batch.indices)

    def _mid_step(self) -> int:
        """How many items of the latest drawn step were yielded, when not all were."""
        return 0

    def set_epoch(self, epoch: int) -> None:
        self.steps.set_epoch(epoch)
        self._in_pass = self._drawn_out = False

    def batch(self, step: int) -> Batch:
        """The served batch of a step in flight (every rank's prompts)."""
        return self.ledger.record(step).batch

    def local_batch(self, step: int) -> Batch:
        """This rank's part of a step in flight: its prompts and their loss weights."""
        return self.shard.local(self.batch(step))

    def report(self, step: int, rewards: Any, advantages: Any = None, *,
               group: Any = None, **extra: Any) -> ReportAck | None:
        """Report a step in flight from every rank's rewards of its own prompts (see
        `report_shards`); call it on every rank."""
        return report_shards(self.ledger.run, self.batch(step), rewards, advantages,
                             shard=self.shard, group=group, **extra)

    def _shard_state(self) -> dict[str, Any]:
        return {"num_replicas": self.shard.num_replicas, "rank": self.shard.rank,
                "drop_last": self.shard.drop_last}

    def state_dict(self) -> dict[str, Any]:
        state = {**self.steps.state_dict(), **self._shard_state()}
        offset = self._mid_step()
        if offset:  # resumes in the step, after its first `offset` items
            state.update(next_step=state["next_step"] - 1, offset=offset)
        drawn = self.steps.next_step - self.steps.start_step
        state["drawn_out"] = self._drawn_out or (  # restored and not drawn from since
            self._in_pass and not offset and drawn > 0
            and drawn % self.steps.steps_per_epoch == 0)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps.load_state_dict(state)
        self._in_pass = False
        self._drawn_out = bool(state.get("drawn_out", False))


class PacelineSampler(_StepSampler):
    """The sample indices Paceline serves, step after step, one index at a time.

    Each step's batch (`batch_size` indices) is yielded in the order GRPO trainers expect:
    every index `mini_repeat_count` times in a row (one per rollout of the group), the
    whole batch `repeat_count` times (reused for several updates). An epoch is
    `steps_per_epoch` steps (default: as many as the dataset holds batches). The served
    batches are kept in `ledger` until reported, with their reward and loss weights.
    Its state (`state_dict`) resumes at the next index, within a step too.

    With several ranks (`num_replicas`, `rank`, `drop_last`: see `rank_shard`) each
    yields only its `shard` of every step's batch, so `batch_size` stays the global
    batch; a state saved within a step resumes only with as many ranks."""

    def __init__(self, source: Run | BatchLedger, *, batch_size: int,
                 steps_per_epoch: int | None = None, num_samples: int | None = None,
                 mini_repeat_count: int = 1, repeat_count: int = 1,
                 start_step: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False) -> None:
        if steps_per_epoch is None:
            if num_samples is None:
                raise ValueError("give steps_per_epoch or num_samples (the dataset size)")
            steps_per_epoch = max(1, num_samples // batch_size)
        self._setup(source, batch_size, steps_per_epoch, start_step,
                    rank_shard(num_replicas, rank, drop_last))
        self.mini_repeat_count = mini_repeat_count
        self.repeat_count = repeat_count
        self._yielded = 0  # items of the latest drawn step yielded
        self._skip = 0  # items of the first step a restored state had yielded already

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for batch in self._batches():
            items = [index for _ in range(self.repeat_count) for index in self._mine(batch)
                     for _ in range(self.mini_repeat_count)]
            for self._yielded in range(skip + 1, len(items) + 1):
                yield items[self._yielded - 1]
            skip = 0

    def _per_step(self) -> int:
        """Items this rank yields per step."""
        return (self.shard.size(self.steps.batch_size) * self.mini_repeat_count
                * self.repeat_count)

    def __len__(self) -> int:
        return self.steps.steps_per_epoch * self._per_step()

    def _mid_step(self) -> int:
        return self._yielded if self._in_pass and self._yielded < self._per_step() else 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._yielded = self._skip = 0

    def state_dict(self) -> dict[str, Any]:
        if self._skip:  # restored within a step and not drawn from since
            return {**self.steps.state_dict(), **self._shard_state(), "offset": self._skip,
                    "drawn_out": False}
        return super().state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved position; a position within a step is refused (ValueError,
        nothing changed) under another split (`num_replicas`, `drop_last`) than it was
        saved with: its offset counts the items of the saving rank's part."""
        offset = int(state.get("offset", 0))
        saved = (state.get("num_replicas", self.shard.num_replicas),
                 state.get("drop_last", self.shard.drop_last))
        if offset and saved != (self.shard.num_replicas, self.shard.drop_last):
            raise ValueError(
                f"the paceline sampler state was saved within step {state['next_step']} "
                f"by one of {saved[0]} ranks (drop_last={saved[1]}); this sampler is one of "
                f"{self.shard.num_replicas} (drop_last={self.shard.drop_last}): resume "
                "with the same split, or from a checkpoint between steps")
        super().load_state_dict(state)
        self._yielded = 0
        self._skip = offset


class PacelineBatchSampler(_StepSampler):
    """One served batch per iteration, for `DataLoader(dataset, batch_sampler=...)` (this
    rank's shard of it with several ranks, as for `PacelineSampler`); `batch(step)` gives
    the served `paceline.Batch` (weights) of a step in flight, `local_batch(step)` this
    rank's part."""

    def __init__(self, source: Run | BatchLedger, *, batch_size: int, steps_per_epoch: int,
                 start_step: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False) -> None:
        self._setup(source, batch_size, steps_per_epoch, start_step,
                    rank_shard(num_replicas, rank, drop_last))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield self._mine(batch)

    def __len__(self) -> int:
        return self.steps.steps_per_epoch


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
    its weights and report back.

    With several ranks (`shard`), `batch` is the step's whole batch and `local` this
    rank's part: `indices`, `weighted_loss` and the rewards given to `advantages` and
    `report` are this rank's prompts only, and `report` (called on every rank) sends
    the step's one report from rank 0 (see `report_shards`)."""

    run: Run
    step: int
    batch: Batch
    #: The step whose batch `report` fetches with the ack (None: no next step).
    next_step: int | None = None
    next_size: int | None = None
    shard: Shard = field(default_factory=Shard)
    #: The process group of `shard`'s ranks (None: the default group).
    group: Any = field(default=None, repr=False, compare=False)
    _next: list[Batch] = field(default_factory=list, repr=False, compare=False)

    @property
    def local(self) -> Batch:
        """This rank's part of the batch (the whole batch for one rank)."""
        return self.shard.local(self.batch) if self.shard.num_replicas > 1 else self.batch

    @property
    def indices(self) -> torch.Tensor:
        """This rank's sample indices (the whole batch's for one rank)."""
        return torch.tensor(self.local.indices, dtype=torch.long)

    def scalarize(self, rewards: Any) -> torch.Tensor:
        """`reward_scale * Σ_k w_k u_k` of raw rewards `[n, g, k]`, `{objective: [n, g]}`
        or, with one objective, `[n, g]` (`Batch.scalarize`: u_k is objective k by its
        bounds and direction)."""
        return _scalar(self.batch, rewards)

    def advantages(self, rewards: Any, *, scale: bool = True) -> torch.Tensor:
        """GRPO advantages `[n, g]` of the scalarised rewards `[n, g, k]`."""
        return group_advantages(self.scalarize(rewards), scale=scale)

    def weighted_loss(self, per_sample: torch.Tensor) -> torch.Tensor:
        """The weighted mean of this rank's per-sample losses (see `weighted_loss`)."""
        return weighted_loss(per_sample, self.local)

    def report(self, rewards: Any, advantages: Any = None, **extra: Any) -> ReportAck | None:
        """Report rewards `[n, g, k]` (and the advantages trained on) for this step; `extra`
        passes `grad_products` / `eval_objectives` through. The ack brings the next
        step's batch along (one round trip per step; with several ranks, rank 0's ack
        is handed to every rank). None when the step was reported
        before with other rollouts (a loop resumed from an earlier checkpoint redid it):
        the first report stands, and the next step's batch is asked for on its own."""
        ack = report_shards(self.run, self.batch, rewards, advantages, shard=self.shard,
                            group=self.group, next_step=self.next_step,
                            next_size=self.next_size if self.next_step is not None else None,
                            **extra)
        if ack is not None and ack.batch is not None:
            self._next[:] = [ack.batch]
        return ack


def train_steps(run: Run, num_steps: int, *, start_step: int = 0,
                size: int | None = None, num_replicas: int | None = None,
                rank: int | None = None, drop_last: bool = False,
                group: Any = None) -> Iterator[Step]:
    """Steps `start_step .. start_step + num_steps - 1` of `run`. Each step's batch comes
    with the previous step's report (`Step.report`), so it reflects every earlier report;
    a step that was not reported through `Step.report` makes the next one ask for it.

    With several ranks (`num_replicas`, `rank`, `drop_last`: see `rank_shard`; `group`:
    their process group) every rank walks the same steps and batches and trains on its
    own part (`Step.local`); call `Step.report` on every rank."""
    shard = rank_shard(num_replicas, rank, drop_last)
    last = start_step + num_steps - 1
    batch: Batch | None = None
    for step in range(start_step, start_step + num_steps):
        if batch is None:
            batch = run.next_batch(step, size)
        current = Step(run, step, batch, None if step == last else step + 1, size,
                       shard, group)
        yield current
        batch = current._next[0] if current._next else None


def report_shards(run: Run, batch: Batch, rewards: Any, advantages: Any = None, *,
                  shard: Shard | None = None, group: Any = None,
                  **extra: Any) -> ReportAck | None:
    """The step's one report when each rank trained on its own part of `batch`: call it
    on every rank with that rank's rewards (`[m, g, k]`, `[m, g]` for one objective, or
    `{objective: [m, g]}`; m = its prompts, `shard.size`) and advantages (`[m, g]`).
    The parts are gathered over torch.distributed (`group`, default the default group),
    put back in the batch's order (padding rows left out) and reported by rank 0 under
    the step's key; every rank gets rank 0's answer: its ack, None when the step was
    reported before with other rollouts (as `Step.report`), or an exception. `extra`
    (`grad_products`, `eval_objectives`, `next_step`, ...) is rank 0's.

    Dense rewards only (every rank the same g); ragged groups and dynamic sampling
    report from one process. `shard` defaults to `rank_shard()`; with one rank this is
    a plain report of the whole batch."""
    shard = rank_shard() if shard is None else shard
    if shard.num_replicas == 1:
        return _first_report(run, batch.step, indices=batch.indices, rewards=rewards,
                             advantages=advantages, **extra)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"report_shards for {shard.num_replicas} ranks needs an "
                           "initialised torch.distributed process group")
    n = len(batch.indices)
    mine = (shard.rank, _host(rewards), None if advantages is None else _host(advantages))
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mine, group=group)
    # Every rank checks the same gathered parts, so every rank raises the same error.
    rewards_all, advantages_all = _join_parts(parts, shard, batch)
    outcome: list[Any] = [None]
    if dist.get_rank(group) == 0:
        keep = shard.reported(n)
        try:
            outcome[0] = ("ack", _first_report(
                run, batch.step, indices=batch.indices[:keep], rewards=_head(rewards_all, keep),
                advantages=None if advantages_all is None else advantages_all[:keep],
                **extra))
        except Exception as exc:
            outcome[0] = ("error", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(outcome, group=group, group_src=0)
            raise
    dist.broadcast_object_list(outcome, group=group, group_src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise RuntimeError(f"paceline: rank 0's report of step {batch.step} failed: {value}")
    return value


def _host(values: Any) -> Any:
    """Rewards or advantages as host arrays (or a mapping of them) to gather: a CUDA tensor
    pickled by one rank would be unpickled onto that rank's device elsewhere."""
    if isinstance(values, Mapping):
        return {name: _host(value) for name, value in values.items()}
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return np.asarray(values)


def _head(values: Any, rows: int) -> Any:
    if isinstance(values, Mapping):
        return {name: value[:rows] for name, value in values.items()}
    return values[:rows]


def _join(step: int, name: str, values: list[Any], rows: int) -> Any:
    """The ranks' `name` (rank order) one after another, after checking that each has
    `rows` rows and all have the same shape otherwise (and the same objectives)."""
    mapped = {isinstance(v, Mapping) for v in values}
    if len(mapped) > 1:
        raise ValueError(f"some ranks' {name} of step {step} are a mapping, others not")
    if mapped == {True}:
        keys = [list(v) for v in values]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"the ranks' {name} of step {step} name other objectives: "
                             f"{keys}")
        return {key: _join(step, f"{name}[{key!r}]", [v[key] for v in values], rows)
                for key in keys[0]}
    shapes = [np.shape(v) for v in values]
    if any(shape[:1] != (rows,) for shape in shapes) or len({s[1:] for s in shapes}) > 1:
        raise ValueError(f"each rank's {name} of step {step} must have {rows} rows (one per "
                         f"prompt of its part) and the same shape; got {shapes} by rank")
    return np.concatenate(values)


def _join_parts(parts: list[Any], shard: Shard, batch: Batch) -> tuple[Any, Any]:
    """Every rank's gathered `(rank, rewards, advantages)`, checked (one part per rank,
    each with its shard's rows, advantages from all ranks or none) and put one after
    another in rank order: the batch's rows, then any padding."""
    ranks = sorted(part[0] for part in parts)
    if ranks != list(range(shard.num_replicas)):
        raise ValueError(f"the report's parts came from ranks {ranks}; expected one from each "
                         f"of {shard.num_replicas} (shard ranks must be the group's ranks)")
    parts = sorted(parts, key=lambda part: part[0])
    rows = shard.size(len(batch.indices))
    rewards = _join(batch.step, "rewards", [part[1] for part in parts], rows)
    given = [part[2] is not None for part in parts]
    if any(given) and not all(given):
        raise ValueError(f"advantages of step {batch.step} came from some ranks only")
    advantages = (_join(batch.step, "advantages", [part[2] for part in parts], rows)
                  if all(given) else None)
    return rewards, advantages


def all_equal_groups(scalar: torch.Tensor, *, tol: float = 1e-9) -> torch.Tensor:
    """`[n]` True where every rollout of a group has the same scalar reward (`[n, g]`):
    such a group has zero GRPO advantage everywhere and teaches nothing."""
    if scalar.dim() != 2:
        raise ValueError(f"rewards must have shape [n, g]; got {list(scalar.shape)}")
    return (scalar.amax(dim=1) - scalar.amin(dim=1)) <= tol


@dataclass(frozen=True)
class DynamicStep:
    """One step of dynamic sampling: every part served (`batches`: the step's batch, then
    its refills), the rewards of every group generated `[N, g, k]` in that order, and
    which groups are trained on (`kept`). `report` sends all of them, naming the others
    in `dropped`: they were generated, so they count for learning progress too."""

    run: Run
    step: int
    batches: tuple[Batch, ...]
    rewards: torch.Tensor  # [N, g, k] (or [N, g]): every group generated, parts in order
    kept: torch.Tensor  # bool [N]

    @property
    def indices(self) -> list[int]:
        """Every sample index generated, in the order of `rewards`."""
        return [i for batch in self.batches for i in batch.indices]

    @property
    def trained_indices(self) -> list[int]:
        return [i for i, keep in zip(self.indices, self.kept.tolist(), strict=True) if keep]

    @property
    def dropped_indices(self) -> list[int]:
        return [i for i, keep in zip(self.indices, self.kept.tolist(), strict=True)
                if not keep]

    @property
    def trained_rewards(self) -> torch.Tensor:
        return self.rewards[self.kept]

    @property
    def rollouts_generated(self) -> int:
        return int(self.rewards.shape[0] * self.rewards.shape[1])

    def advantages(self, *, scale: bool = True) -> torch.Tensor:
        """GRPO advantages `[n_kept, g]` of the kept groups' scalarised rewards."""
        return group_advantages(_scalar(self.batches[0], self.trained_rewards), scale=scale)

    def loss_weights(self) -> torch.Tensor:
        """The kept groups' loss weights `[n_kept]` (each part's, ones where none)."""
        device = self.kept.device  # the rewards': a CPU tensor cannot take a CUDA mask
        return torch.cat([loss_weights(b, device=device) for b in self.batches])[self.kept]

    def report(self, advantages: Any = None, **extra: Any) -> ReportAck | None:
        """Report every generated group (`advantages`, when given, `[N, g]` for all of
        them), the dropped ones named; the ack counts rollouts generated and trained.
        A step is folded once: reported again with the same rollouts it gets the first
        ack, and None when a loop resumed from an earlier checkpoint redid it with
        other rollouts (the first report stands, as with `Step.report`)."""
        return _first_report(self.run, self.step, indices=self.indices, rewards=self.rewards,
                             advantages=advantages, dropped=self.dropped_indices, **extra)


def _first_report(run: Run, step: int, **report: Any) -> ReportAck | None:
    """Report `step` under its step key; None when it was reported before with other
    rollouts (a loop resumed from an earlier checkpoint redid it): the first stands."""
    try:
        return run.report(step, idempotency_key=step_key(run.run_id, step), **report)
    except Conflict as exc:
        if exc.code not in REDONE:
            raise
        _redone(run, step)
        return None


def _redone(run: Run, step: int) -> None:
    _log.warning("paceline: step %d of run %r was reported before (the loop resumed from "
                 "an earlier checkpoint); the first report stands", step, run.run_id)


def _scalar(batch: Batch, rewards: Any) -> torch.Tensor:
    """Scalar rewards `[n, g]` of raw rewards `[n, g, k]`, `{objective: [n, g]}`, or `[n, g]`
    when the curriculum has one objective: raw like the others (mapped by its bounds and
    direction, as the service reads the report; it was once taken as already scalar, which
    rewarded the longer answer of a minimised objective). Mapped in float64, so rewards
    near large bounds keep their differences (float32 rounded 100000.2995 and 100000.3 to
    one value); returned in the rewards' floating dtype, float32 for other inputs."""
    if isinstance(rewards, Mapping):
        parts = {name: _tensor(value) for name, value in rewards.items()}
        first = next(iter(parts))  # the result takes the first objective's dtype
        scalar = batch.scalarize({name: part.double() for name, part in parts.items()})
        return torch.as_tensor(scalar).to(_result_dtype(rewards[first], parts[first]))
    tensor = _tensor(rewards)
    if tensor.dim() == 2 and len(batch.reward_weights) == 1:
        tensor = tensor.unsqueeze(-1)
    return torch.as_tensor(batch.scalarize(tensor.double())).to(_result_dtype(rewards, tensor))


def _tensor(rewards: Any) -> torch.Tensor:
    """Rewards as a tensor without losing precision (Python floats become float64)."""
    if isinstance(rewards, torch.Tensor):
        return rewards
    tensor = torch.as_tensor(np.asarray(rewards))
    return tensor if tensor.is_floating_point() else tensor.to(torch.float32)


def _result_dtype(given: Any, tensor: torch.Tensor) -> torch.dtype:
    """A floating tensor or array keeps its dtype; anything else trains in float32."""
    floating = isinstance(given, torch.Tensor | np.ndarray) and tensor.is_floating_point()
    return tensor.dtype if floating else torch.float32


def dynamic_step(run: Run, step: int, generate: Callable[[Batch], Any], *,
                 size: int | None = None, target: int | None = None,
                 max_parts: int = 8, drop: Callable[[torch.Tensor], torch.Tensor]
                 = all_equal_groups) -> DynamicStep:
    """DAPO-style dynamic sampling for one step, with Paceline choosing the prompts.

    Serves the step's batch (`size`, default the curriculum's), calls `generate(batch)`
    for rewards `[n, g, k]`, drops the groups `drop` flags (scalar rewards `[n, g]` in,
    bool `[n]` out; default: all rollouts equal) and asks for refills — parts 1, 2, ...,
    over-provisioned by the keep rate seen so far — until `target` groups (default: the
    first batch's size) are kept or `max_parts` refills were asked for. Kept groups
    beyond `target` are dropped too, as DAPO truncates. Every group generated is
    reported by `DynamicStep.report`.

    Deterministic and resumable: the parts are fixed per (run, step, part), so a
    restarted trainer that redoes the step is served the same prompts."""
    first = run.next_batch(step, size)
    target = len(first.indices) if target is None else target
    if target < 1:
        raise ValueError("target must be at least 1")
    batches = [first]
    rewards = [_tensor(generate(first))]
    keep = [~drop(_scalar(first, rewards[0])).to(torch.bool)]
    left = run.curriculum.info.num_samples - len(first.indices)
    for part in range(1, max_parts + 1):
        kept = int(sum(int(k.sum()) for k in keep))
        if kept >= target or left <= 0:
            break
        generated = sum(len(b.indices) for b in batches)
        rate = max(kept / generated, 0.1)
        ask = min(left, math.ceil((target - kept) / rate))
        try:
            batch = refill_part(run, step, part, ask)
        except Conflict as exc:  # a redone step needs more parts than were served
            if exc.code != "STEP_ALREADY_REPORTED":
                raise
            _redone(run, step)
            break
        batches.append(batch)
        rewards.append(_tensor(generate(batch)))
        keep.append(~drop(_scalar(batch, rewards[-1])).to(torch.bool))
        left -= len(batch.indices)
    kept_mask = torch.cat(keep)
    beyond = torch.cumsum(kept_mask.to(torch.long), 0) > target
    return DynamicStep(run, step, tuple(batches), torch.cat(rewards),
                       kept_mask & ~beyond)
