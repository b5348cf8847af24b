"""Predicted zero-variance skipping (ours): skip an index *before* rollout when its
posterior says all G rollouts will very likely agree (all solved or all failed), which
under GRPO gives zero advantage and no gradient. DAPO filters such groups after the
rollouts were paid for; this predicts them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paceline_server.strategies.posteriors import PassRateState, posterior_mean


def agreement_probability(state: PassRateState, indices: np.ndarray, group_size: int,
                          exact: bool) -> np.ndarray:
    """q_x = P(all G rollouts agree).

    Plug-in: p^G + (1-p)^G with p the posterior mean. Exact: under Beta(a, b) the
    Beta-Binomial probabilities of G successes and of G failures,
    Π_j (a+j)/(a+b+j) + Π_j (b+j)/(a+b+j).
    """
    if not exact:
        p = posterior_mean(state, indices)
        return np.asarray(p**group_size + (1.0 - p) ** group_size)
    a = state.alpha[indices].astype(np.float64)
    b = state.beta[indices].astype(np.float64)
    all_pass = np.ones_like(a)
    all_fail = np.ones_like(a)
    for j in range(group_size):
        all_pass *= (a + j) / (a + b + j)
        all_fail *= (b + j) / (a + b + j)
    return np.asarray(all_pass + all_fail)


@dataclass(frozen=True)
class ZeroVarianceFilter:
    """Accept/reject predicate handed to samplers through the propose context."""

    posteriors: PassRateState
    group_size: int
    threshold: float
    max_redraws: int
    exact: bool

    def accept(self, indices: np.ndarray) -> np.ndarray:
        """True where the index is worth a rollout (q <= threshold)."""
        q = agreement_probability(self.posteriors, indices, self.group_size, self.exact)
        return np.asarray(q <= self.threshold)
