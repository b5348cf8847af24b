"""Which part of a step's batch each data-parallel rank trains on.

Under DDP (torchrun, accelerate) every rank asks Paceline for the same step and gets the
same stored batch, so the ranks must split it among themselves, or each trains on all of
it. A `Shard` splits by prompt, in contiguous blocks: rank r trains on rows
`r*m .. r*m + m - 1` of the batch (m prompts per rank). Every rollout of a prompt stays
on one rank, so GRPO advantages need no communication, and putting the ranks' rows one
after the other gives the batch back in its own order, which is what the step's single
report needs. Uneven splits follow torch's `DistributedSampler`: by default the batch is
padded with its first prompts (repeated on the last ranks, reported once), with
`drop_last` its tail is left out (neither trained on nor reported). Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from paceline.models import Batch

__all__ = ["Shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `num_replicas`' part of every batch (the whole batch for one rank)."""

    num_replicas: int = 1
    rank: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be positive; got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"Invalid rank {self.rank}, rank should be in the interval "
                             f"[0, {self.num_replicas - 1}]")

    def size(self, n: int) -> int:
        """Prompts each rank trains on of a batch of `n`: n / num_replicas rounded up
        (padding), or down with `drop_last`; ValueError when that leaves none."""
        size = n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)
        if size < 1:
            raise ValueError(f"a batch of {n} prompts leaves none to each of "
                             f"{self.num_replicas} ranks with drop_last; ask for at least "
                             f"{self.num_replicas} prompts per step")
        return size

    def positions(self, n: int) -> list[int]:
        """The rows of a batch of `n` this rank trains on, in order (past the end of the
        batch they wrap around to its first rows: the padding)."""
        size = self.size(n)
        return [(self.rank * size + j) % n for j in range(size)]

    def reported(self, n: int) -> int:
        """How many leading rows of a batch of `n` the step's report covers: every row
        (padding rows are duplicates and are not reported), or with `drop_last` the
        rows some rank trained on."""
        return min(n, self.size(n) * self.num_replicas)

    def take(self, rows: Sequence[T]) -> list[T]:
        """This rank's items of a batch's per-prompt list (its indices, loss weights)."""
        return [rows[r] for r in self.positions(len(rows))]

    def local(self, batch: Batch) -> Batch:
        """This rank's part of `batch`: its prompts and their loss weights (the reward
        weights are the batch's, the same on every rank)."""
        weights = batch.loss_weights
        return batch.model_copy(update={
            "indices": self.take(batch.indices),
            "loss_weights": None if weights is None else self.take(weights)})
