"""Shared machinery of distribution-level samplers (ALGORITHMS.md, "Samplers").

A distribution-level sampler only decides probabilities P over distributions; this base
turns P into a batch: slot counts per distribution (multinomial, or largest-remainder
rounding), indices drawn uniformly without replacement inside each distribution (with
replacement only when a distribution is smaller than its slots), predicted zero-variance
redraws, and a final shuffle so batch order says nothing about distributions.
Cost is O(D + B) per batch, independent of N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from paceline_server.strategies.base import Proposal, ProposeContext, Sampler

Allocation = Literal["multinomial", "largest_remainder"]
S = TypeVar("S")
P = TypeVar("P", bound="DistributionParams")


@dataclass(frozen=True)
class DistributionParams:
    """Parameters every distribution-level sampler accepts."""

    allocation: Allocation = "multinomial"


def allocate(probabilities: np.ndarray, size: int, rng: np.random.Generator,
             allocation: Allocation) -> np.ndarray:
    """Slots per distribution summing to `size`.

    `multinomial` draws counts (unbiased, noisy); `largest_remainder` gives every
    distribution floor(size·P_d) slots and hands the rest to the largest fractional parts
    (ties to the lower position), so small batches follow P as closely as integers allow.
    """
    if allocation == "multinomial":
        return rng.multinomial(size, probabilities).astype(np.int64)
    exact = probabilities * size
    counts = np.floor(exact).astype(np.int64)
    remainder = size - int(counts.sum())
    if remainder > 0:
        order = np.lexsort((np.arange(exact.size), -(exact - counts)))
        counts[order[:remainder]] += 1
    return counts


class DistributionSampler(Sampler[S, P]):
    """Base class: subclasses implement `probabilities` (and `update`, `init_state`);
    `loss_weights` may return per-index weights."""

    def loss_weights(self, state: S, distributions: np.ndarray,
                     ctx: ProposeContext) -> np.ndarray | None:
        """Per-index loss weights for a batch whose indices come from `distributions`."""
        return None

    def propose(self, state: S, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        probabilities = self.probabilities(state, ctx)
        counts = allocate(probabilities, size, rng, self.params.allocation)
        parts: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        skipped = 0
        for d in np.flatnonzero(counts):
            drawn, rejected = self._draw(int(d), int(counts[d]), rng, ctx)
            parts.append(drawn)
            owners.append(np.full(drawn.size, d, dtype=np.int64))
            skipped += rejected
        order = rng.permutation(size)
        indices = np.concatenate(parts)[order]
        distributions = np.concatenate(owners)[order]
        return Proposal(indices=indices, probabilities=probabilities,
                        loss_weights=self.loss_weights(state, distributions, ctx),
                        skipped=skipped)

    def _draw(self, d: int, count: int, rng: np.random.Generator,
              ctx: ProposeContext) -> tuple[np.ndarray, int]:
        """`count` indices of distribution d and how many candidates were rejected.

        With skipping on, one pool of distinct candidates (the batch's share plus room for
        every redraw) is drawn up front; rejected slots take the next unused candidates,
        at most `max_redraws` rounds, and the last candidates are kept whatever their
        prediction so the batch always has its full size."""
        size = int(self.layout.sizes[d])
        if count > size:
            return self.layout.draw(d, count, rng), 0
        if ctx.accept is None or ctx.max_redraws == 0:
            return self.layout.draw(d, count, rng), 0
        pool_size = min(size, count * (ctx.max_redraws + 1))
        pool = self.layout.members(d, rng.choice(size, size=pool_size, replace=False))
        chosen = pool[:count].copy()
        cursor = count
        skipped = 0
        for _ in range(ctx.max_redraws):
            bad = np.flatnonzero(~ctx.accept(chosen))
            if bad.size == 0 or cursor >= pool_size:
                break
            take = min(bad.size, pool_size - cursor)
            skipped += take
            chosen[bad[:take]] = pool[cursor:cursor + take]
            cursor += take
        return chosen, skipped

    def describe(self, state: S) -> dict[str, Any]:
        return {}
