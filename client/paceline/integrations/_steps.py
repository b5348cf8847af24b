"""The step numbers a sampler walks through, kept across epochs and checkpoints.

A Paceline batch is addressed by (run, step), so a sampler must never restart at step 0
when the trainer starts a new epoch or resumes: it would train on the same batches again.
Pure Python, shared by the torch and verl samplers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from paceline.integrations._ledger import BatchLedger
from paceline.integrations._resume import Fingerprint
from paceline.models import Batch

__all__ = ["StepStream"]


class StepStream:
    """Consecutive steps' batches of `batch_size` indices, `steps_per_epoch` per epoch.

    `set_epoch(e)` (called by transformers/accelerate before each epoch) jumps to the first
    step of epoch e; without it each pass simply continues where the last one stopped.
    `state_dict` / `load_state_dict` follow torchdata's stateful-sampler protocol so a
    checkpointed data loader resumes at the right step; the state names its curriculum
    and run, and loading it into another (or a recreated one) raises ValueError."""

    def __init__(self, ledger: BatchLedger, *, batch_size: int, steps_per_epoch: int,
                 start_step: int = 0) -> None:
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be positive; got "
                             f"{batch_size} and {steps_per_epoch}")
        self.ledger = ledger
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.start_step = start_step
        self.next_step = start_step

    def set_epoch(self, epoch: int) -> None:
        self.next_step = self.start_step + epoch * self.steps_per_epoch

    def epoch(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches, fetched lazily: a step's batch is asked
        for only when the loader needs its first index, so it reflects every report that
        arrived before."""
        first = self.next_step - (self.next_step - self.start_step) % self.steps_per_epoch
        for step in range(self.next_step, first + self.steps_per_epoch):
            batch = self.ledger.fetch(step, self.batch_size)
            self.next_step = step + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self.next_step, **Fingerprint.of(self.ledger.run).to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = Fingerprint.from_dict(state)
        if saved is not None:  # state saved before fingerprints is taken as it is
            saved.check(self.ledger.run, "loading the paceline sampler state")
        self.next_step = int(state["next_step"])
