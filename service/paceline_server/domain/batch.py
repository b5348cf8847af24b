"""A batch: the answer to "which samples next, and with which weights"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Batch:
    """Indices to train on, the reward-weight vector to scalarise rewards with (on the
    simplex, objective order), the reward scale, optional per-index loss weights (positive;
    each sampler says how they are normalised: batch mean 1 for `temperature`'s upweight,
    the batch's largest 1 for `prioritized`'s importance weights), the per-distribution
    probabilities the sampler used, how many indices were skipped as predicted
    zero-variance and the rollouts that saved (skipped × the group size skipping
    predicts for). `clock` is the number of reports folded into the state it was
    computed from."""

    run_id: str
    step: int
    indices: np.ndarray  # int64 [B]
    reward_weights: np.ndarray  # float64 [k]
    reward_scale: float
    loss_weights: np.ndarray | None  # float64 [B]
    probabilities: np.ndarray  # float64 [D]
    skipped_zero_variance: int
    clock: int
    rollouts_saved: int = 0

    def same_as(self, other: Batch) -> bool:
        """Bit-for-bit equality of every field (used to prove determinism)."""
        def eq(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

        return (self.run_id == other.run_id and self.step == other.step
                and eq(self.indices, other.indices)
                and eq(self.reward_weights, other.reward_weights)
                and self.reward_scale == other.reward_scale
                and eq(self.loss_weights, other.loss_weights)
                and eq(self.probabilities, other.probabilities)
                and self.skipped_zero_variance == other.skipped_zero_variance
                and self.rollouts_saved == other.rollouts_saved
                and self.clock == other.clock)
