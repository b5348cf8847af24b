"""Predicted zero-variance skipping (ours, GRESO-style): skip an index *before* rollout
when it will very likely give a group whose rollouts all agree (all solved or all
failed), which under GRPO gives zero advantage and no gradient. DAPO filters such groups
after the rollouts were paid for; this predicts them, from two sources:

1. the pass-rate posterior: q_x = P(all G rollouts agree) > `threshold` (the sampler's
   own posterior when it has one, e.g. `learnability`'s hierarchical one, else the
   engine's per-index table);
2. the index's recent history (GRESO, arXiv 2506.02177): after z consecutive all-equal
   groups the index is kept only with probability explore^z (z = 1: 1/2, 2: 1/4, 3: 1/8
   at the default explore = 0.5), so skipping starts after the first all-equal visit,
   while a skipped prompt keeps a chance to be tried again and end its streak. GRESO
   tunes its exploration probability online toward a target zero-variance share; we keep
   it a parameter **(ours)**. The coin is a hash of (seed, index, clock, step), not a
   draw from the batch's stream, so the predicate is a pure function of the state and
   the same index gets the same answer throughout one proposal.

Samplers redraw rejected indices, never shrink the batch: when too few candidates pass,
rejected ones fill the remaining slots and are not counted as skipped. The batch reports
`skipped` (prompts left out) and the rollouts that saved (skipped × group size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from paceline_server.strategies.posteriors import PassRateState, posterior_mean

_MIX = np.uint64(0x9E3779B97F4A7C15)


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


def coin(indices: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) value per index, a fixed function of (index, salt) (splitmix64)."""
    with np.errstate(over="ignore"):
        z = np.asarray(indices, dtype=np.uint64) * _MIX + np.uint64(salt % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) / float(2**53))


def filter_salt(seed: int, clock: int, step: int) -> int:
    """The coin's salt for one proposal: new coins after every report and every step."""
    digest = np.uint64(0)
    with np.errstate(over="ignore"):
        for value in (seed, clock, step):
            digest = (digest ^ np.uint64(value % 2**64)) * _MIX
            digest ^= digest >> np.uint64(29)
    return int(digest)


@dataclass(frozen=True)
class ZeroVarianceFilter:
    """Accept/reject predicate handed to samplers through the propose context.

    `predict` (optional) is the sampler's own agreement probability for indices;
    `explore` and `salt` drive the streak rule (explore = 1 turns it off)."""

    posteriors: PassRateState
    group_size: int
    threshold: float
    max_redraws: int
    exact: bool
    explore: float = 1.0
    salt: int = 0
    predict: Callable[[np.ndarray], np.ndarray] | None = None

    def agreement(self, indices: np.ndarray) -> np.ndarray:
        if self.predict is not None:
            return np.asarray(self.predict(indices))
        return agreement_probability(self.posteriors, indices, self.group_size, self.exact)

    def accept(self, indices: np.ndarray) -> np.ndarray:
        """True where the index is worth a rollout: q <= threshold, and the streak coin
        (if the index has an all-equal streak) keeps it. q is a probability: rounding
        above 1 (a/(a+b) + b/(a+b) for groups of 1) must not reject at threshold 1."""
        indices = np.asarray(indices, dtype=np.int64)
        ok = np.minimum(self.agreement(indices), 1.0) <= self.threshold
        streak = self.posteriors.streak
        if self.explore < 1.0 and streak is not None and indices.size:
            z = np.abs(streak[indices].astype(np.float64))
            keep = np.power(self.explore, z)
            ok &= (z == 0) | (coin(indices, self.salt) < keep)
        return np.asarray(ok)
