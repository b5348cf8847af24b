"""Which served batch a trainer is working on, step by step.

Trainers pull sample indices through a sampler long before they know the rewards of those
samples (data loaders prefetch; GRPO reuses one generation for several optimiser steps),
and they score and train in the order the batches were drawn. The ledger keeps the served
batches of the steps in flight in that order, so the code that sees the rewards (a reward
function, a callback, a curriculum `update`) can tell which step — and so which reward
weights and which report — they belong to. Pure Python: shared by every integration.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from paceline.client import Run
from paceline.errors import Conflict
from paceline.models import Batch, ReportAck, weights_view

__all__ = ["GRAD_PRODUCTS", "BatchLedger", "Rollouts", "StepRecord", "refill_part",
           "step_key"]

#: StepRecord.scratch key of a step's k×k gradient products, sent with its report.
GRAD_PRODUCTS = "paceline.grad_products"

def step_key(run_id: str, step: int, part: int = 0) -> str:
    """The idempotency key of a step's report: the same for every attempt, in this
    process or in the one that resumes it, so a report the service already applied is
    answered with its first ack instead of being counted twice. (`part` numbers the
    reports of one step, for trainers that report a step in pieces.)"""
    return f"paceline/{run_id}/{step}/{part}"



def refill_part(run: Run, step: int, part: int, size: int) -> Batch:
    """Refill `part` of `step` with `size` prompts, or, when that part was served before
    with another size, the part as served. Parts are fixed per (run, step, part), and a
    step redone after a crash (served, not reported) keeps other groups than the first
    attempt did, so it asks other sizes; every integration's refill loop asks again
    when a part falls short."""
    try:
        return run.refill(step, part, size)
    except Conflict as exc:
        if exc.code != "IDEMPOTENCY_CONFLICT":
            raise
        return run.refill(step, part)


_log = logging.getLogger(__name__)

#: How the service refuses a step reported before with other rollouts (a trainer resumed
#: from an earlier checkpoint redid it): REPORT_CONFLICT, or IDEMPOTENCY_CONFLICT when the
#: report carries the step's own key (`step_key`), which the first report used.
REDONE = ("REPORT_CONFLICT", "IDEMPOTENCY_CONFLICT")

#: Steps kept after they were served and not reported (a trainer that reports on its own
#: never pops them); far more than any loader prefetches.
DEFAULT_WINDOW = 64


@dataclass
class Rollouts:
    """One step's rollouts in the service's flat form: one row per rollout."""

    indices: list[int]
    group_ids: list[int]
    rewards: list[list[float]]  # [m, k], k in objective order
    advantages: list[float] | None = None
    #: Sample indices of groups generated but not trained on (dynamic sampling).
    dropped: list[int] | None = None

    def without_unscored(self) -> Rollouts:
        """Drop rollouts with a NaN reward (a reward function that returned None): the
        service rejects NaN, and such a rollout carries no signal."""
        keep = [i for i, row in enumerate(self.rewards) if not any(map(math.isnan, row))]
        if len(keep) == len(self.rewards):
            return self
        advantages = self.advantages
        indices = [self.indices[i] for i in keep]
        present = set(indices)
        dropped = None if self.dropped is None else [i for i in self.dropped
                                                     if i in present]
        return Rollouts(indices=indices,
                        group_ids=[self.group_ids[i] for i in keep],
                        rewards=[self.rewards[i] for i in keep],
                        advantages=None if advantages is None else [advantages[i] for i in keep],
                        dropped=dropped)


@dataclass
class StepRecord:
    """A served batch and, once the trainer has scored it, its rollouts."""

    step: int
    batch: Batch
    rollouts: Rollouts | None = None
    scratch: dict[str, object] = field(default_factory=dict)  # integration-private state

    def check_indices(self, indices: Sequence[int], where: str,
                      also: Sequence[int] = ()) -> None:
        """Fail loudly when rows do not come from this step's batch (or `also`: the
        step's refill parts): the dataset is not in Paceline's index order, or the index
        column is not the global index."""
        served = set(self.batch.indices) | {int(i) for i in also}
        stray = sorted({int(i) for i in indices} - served)
        if stray:
            raise ValueError(
                f"{where}: sample indices {stray[:8]} were not served for step {self.step} "
                f"(served: {self.batch.indices[:8]}...); the dataset must be addressed by "
                "Paceline's global sample indices")


class BatchLedger:
    """The batches served to one run, kept in step order until they are reported.

    `fetch` asks the service for a step's batch (the same step always gets the same
    batch, so a resumed trainer re-fetching old steps is harmless) and remembers it;
    `next_unscored` hands the oldest batch whose rollouts are not yet known to the code
    that scores them; `report_scored` sends every scored step's report, oldest first.
    Thread-safe: data loaders may fetch from another thread than the trainer's."""

    def __init__(self, run: Run, window: int = DEFAULT_WINDOW) -> None:
        self.run = run
        self.window = window
        self._open: OrderedDict[int, StepRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.latest: Batch | None = None
        #: Steps below this one are drawn only to be skipped (a resumed trainer fast-
        #: forwarding its data loader): they are not kept for scoring.
        self.skip_before = 0
        #: Steps whose report the service refused as already reported with other content.
        self.already_reported: list[int] = []

    def fetch(self, step: int, size: int | None = None) -> Batch:
        batch = self.run.next_batch(step, size)
        if size is not None and len(batch.indices) != size:
            raise RuntimeError(f"paceline served {len(batch.indices)} indices for step {step}; "
                               f"the trainer needs exactly {size}")
        if step < self.skip_before:
            return batch
        with self._lock:
            if step not in self._open:
                self._open[step] = StepRecord(step, batch)
                while len(self._open) > self.window:
                    self._open.popitem(last=False)
            self.latest = batch
        return batch

    def record(self, step: int) -> StepRecord:
        """The open record of `step`; raises KeyError when it was never fetched (or was
        reported, or fell out of the window)."""
        with self._lock:
            return self._open[step]

    def next_unscored(self, without: str | None = None) -> StepRecord:
        """The oldest served step whose rollouts are not known yet (and, with `without`,
        whose scratch lacks that key): trainers score steps in the order they drew them."""
        with self._lock:
            for record in self._open.values():
                if record.rollouts is None and (without is None
                                                or without not in record.scratch):
                    return record
        raise RuntimeError("no served paceline batch is waiting for rewards: rows were "
                           "scored that the paceline sampler did not draw")

    def weights(self) -> Batch:
        """The batch whose reward weights apply now (the latest served one); before the
        first batch, the curriculum's current weights as a batch-shaped view."""
        if self.latest is not None:
            return self.latest
        curriculum = self.run.curriculum
        state = curriculum.state()
        return weights_view(state.reward_weights, state.reward_scale, curriculum.spec,
                            self.run.run_id)

    def pop_scored(self) -> list[StepRecord]:
        """Remove and return the scored steps, oldest first."""
        with self._lock:
            done = [r for r in self._open.values() if r.rollouts is not None]
            for record in done:
                del self._open[record.step]
        return done

    def report_scored(self) -> list[ReportAck]:
        """Report every scored step (oldest first) and forget it."""
        acks = [self.report(record) for record in self.pop_scored()]
        return [ack for ack in acks if ack is not None]

    def report(self, record: StepRecord) -> ReportAck | None:
        """Report one scored step; None when no rollout of it could be scored."""
        if record.rollouts is None:
            raise ValueError(f"step {record.step} has no rollouts to report")
        rollouts = record.rollouts.without_unscored()
        if not rollouts.indices:
            return None
        try:
            return self.run.report(record.step, indices=rollouts.indices,
                                   rewards=rollouts.rewards, advantages=rollouts.advantages,
                                   group_ids=rollouts.group_ids,
                                   grad_products=record.scratch.get(GRAD_PRODUCTS),
                                   dropped=rollouts.dropped,
                                   idempotency_key=step_key(self.run.run_id, record.step))
        except Conflict as exc:
            if exc.code not in REDONE:
                raise
            # A resumed trainer redoing a step it reported before its checkpoint was
            # restored: the curriculum counted the first rollouts; these are not counted.
            _log.warning("paceline: step %d of run %r was reported before (the trainer "
                         "resumed from an earlier checkpoint); the first report stands",
                         record.step, self.run.run_id)
            self.already_reported.append(record.step)
            return None
