"""`prioritized`: per-sample sampling from each sample's own history (ours, built on
prioritized experience replay and PLR).

The earlier per-sample sampler. `learnability` (strategies/learnability.py) does its job
better for new curricula: its posterior pools each distribution's evidence, so a prompt
seen once already moves, where a flat Beta(1, 1) here barely does. `prioritized` stays
for the curricula that use it and for its two features `learnability` lacks: the
staleness bonus in reports and importance-sampling loss weights.

priority_x = p̂_x (1 - p̂_x) + β · (1 - exp(-(t - last_x) / h)), with p̂ the mean of the
sample's Beta pass-rate posterior (the shared table the engine keeps): p(1-p) is the
Bernoulli reward variance, largest where a GRPO group has the most signal and zero where
the group would be all solved or all failed; the staleness bonus brings back samples not
seen for a while, since the policy has moved since. Unseen samples get 0.25, the prior's
value. Indices are drawn ∝ priority^α without replacement through a sum-tree.

Staleness changes for *every* sample at every step, but rewriting N leaves per report is
exactly the O(N) cost a sum-tree exists to avoid. So (ours) the priority is stored as two
channels, priority = A_x - c(t) B_x with A_x = p̂(1-p̂) + β, B_x = β exp((last_x - t0)/h)
and c(t) = exp(-(t - t0)/h): only reported samples change, and the tree samples with the
coefficients (1, -c(t)). When (t - t0)/h grows past 20 the reference t0 moves to t (one
O(N) pass every 20·h reports) so B stays far from overflow. With α ≠ 1 the decomposition
does not hold; α ≠ 1 therefore requires β = 0 and stores priority^α in one channel.

Importance-sampling loss weights (optional, as in prioritized replay): w = (N P(x))^-β_IS
normalised by the batch maximum, with P(x) the single-draw probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.strategies.base import (
    STATE_OVERHEAD,
    Proposal,
    ProposeContext,
    Sampler,
    UpdateContext,
)
from paceline_server.strategies.params import require
from paceline_server.strategies.posteriors import PassRateState, PosteriorConfig, posterior_mean
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.sumtree import (
    SumTreeState,
    build_tree,
    leaf_weights,
    sample_filtered,
    set_leaves,
    total_weight,
    tree_bytes,
)

UNSEEN_PRIORITY = 0.25
REBASE_AFTER = 20.0  # rebase t0 when (t - t0) / h exceeds this


@dataclass(frozen=True)
class PrioritizedParams:
    beta: float = 0.1
    h: float = 1000.0
    alpha: float = 1.0
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    gamma: float = 0.99
    is_correction: bool = False
    is_beta: float = 0.4

    def __post_init__(self) -> None:
        require(self.beta >= 0, "beta must be >= 0", "beta")
        require(self.h > 0, "h must be > 0", "h")
        require(0 < self.alpha <= 10, "alpha must be in (0, 10]", "alpha")
        require(self.alpha == 1.0 or self.beta == 0.0,
                "alpha != 1 needs beta = 0 (the staleness decomposition is linear)", "alpha")
        require(self.prior_alpha > 0 and self.prior_beta > 0, "priors must be > 0",
                "prior_alpha")
        require(0 < self.gamma <= 1, "gamma must be in (0, 1]", "gamma")
        require(0 <= self.is_beta <= 1, "is_beta must be in [0, 1]", "is_beta")


@dataclass
class PrioritizedState:
    tree: SumTreeState  # channels (A, B) when alpha == 1, else (priority^alpha,)
    t0: int  # reference clock of the B channel
    mass: np.ndarray  # float64 [D, C] per-distribution channel sums (for probabilities)


class PrioritizedSampler(Sampler[PrioritizedState, PrioritizedParams]):
    name = "prioritized"
    params_type = PrioritizedParams
    state_type = PrioritizedState
    uses_posteriors = True

    @property
    def _linear(self) -> bool:
        return self.params.alpha == 1.0

    def posterior_config(self) -> PosteriorConfig:
        return PosteriorConfig(self.params.prior_alpha, self.params.prior_beta,
                               self.params.gamma)

    def state_bytes(self) -> int:
        """The sum tree over N priorities (two channels in linear mode, else one) and the
        per-distribution channel sums."""
        channels = 2 if self._linear else 1
        return (STATE_OVERHEAD + tree_bytes(self.layout.num_samples, channels)
                + 8 * channels * self.layout.num_distributions)

    def init_state(self, rng: np.random.Generator) -> PrioritizedState:
        n = self.layout.num_samples
        if self._linear:
            values = np.zeros((n, 2), dtype=np.float32)
            values[:, 0] = UNSEEN_PRIORITY
        else:
            values = np.full((n, 1), UNSEEN_PRIORITY ** self.params.alpha, dtype=np.float32)
        tree = build_tree(values)
        return PrioritizedState(tree=tree, t0=0, mass=self._distribution_mass(tree))

    def _distribution_mass(self, tree: SumTreeState) -> np.ndarray:
        """Exact per-distribution channel sums (O(N); at init and rebase only)."""
        leaves = tree.leaves[:, : self.layout.num_samples].astype(np.float64)
        labels = self.layout.distribution_of(np.arange(self.layout.num_samples))
        return np.stack([np.bincount(labels, weights=plane,
                                     minlength=self.layout.num_distributions)
                         for plane in leaves], axis=1)

    def coefficients(self, state: PrioritizedState, clock: int) -> np.ndarray:
        if not self._linear:
            return np.ones(1)
        return np.array([1.0, -math.exp(-(clock - state.t0) / self.params.h)])

    def priorities(self, state: PrioritizedState, indices: np.ndarray,
                   clock: int) -> np.ndarray:
        """Current sampling weights of `indices` (priority^α)."""
        return leaf_weights(state.tree, indices, self.coefficients(state, clock))

    def _leaf_values(self, posteriors: PassRateState, indices: np.ndarray,
                     state: PrioritizedState) -> np.ndarray:
        p = posterior_mean(posteriors, indices)
        variance = p * (1.0 - p)
        beta = self.params.beta
        if not self._linear:
            return (variance ** self.params.alpha)[:, None]
        last = posteriors.last_seen[indices].astype(np.float64)
        b = beta * np.exp((last - state.t0) / self.params.h)
        return np.stack([variance + beta, b], axis=1)

    def update(self, state: PrioritizedState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        if ctx.posteriors is None:
            raise RuntimeError("prioritized needs the engine's pass-rate table")
        if self._linear and (ctx.clock - state.t0) / self.params.h > REBASE_AFTER:
            self._rebase(state, ctx.clock)
        indices = np.unique(signals.indices)
        old = state.tree.leaves[:, indices].T.astype(np.float64)
        new = self._leaf_values(ctx.posteriors, indices, state)
        set_leaves(state.tree, indices, new)
        stored = state.tree.leaves[:, indices].T.astype(np.float64)  # float32-rounded
        labels = self.layout.distribution_of(indices)
        for c in range(stored.shape[1]):
            state.mass[:, c] += np.bincount(labels, weights=stored[:, c] - old[:, c],
                                            minlength=self.layout.num_distributions)

    def _rebase(self, state: PrioritizedState, clock: int) -> None:
        """Move t0 to `clock`: B_x scales by exp(-(clock - t0)/h); O(N), rare."""
        factor = math.exp(-(clock - state.t0) / self.params.h)
        values = state.tree.leaves[:, : self.layout.num_samples].T.astype(np.float64)
        values[:, 1] *= factor
        state.tree = build_tree(values)
        state.t0 = clock
        state.mass = self._distribution_mass(state.tree)

    def probabilities(self, state: PrioritizedState, ctx: ProposeContext) -> np.ndarray:
        mass = np.maximum(state.mass @ self.coefficients(state, ctx.clock), 0.0)
        total = mass.sum()
        if total <= 0:
            sizes = self.layout.sizes.astype(np.float64)
            return sizes / sizes.sum()
        return mass / total

    def propose(self, state: PrioritizedState, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        coef = self.coefficients(state, ctx.clock)
        indices, skipped = sample_filtered(state.tree, size, rng, coef, ctx.accept,
                                           ctx.max_redraws)
        loss_weights = None
        if self.params.is_correction:
            total = total_weight(state.tree, coef)
            p = leaf_weights(state.tree, indices, coef) / total if total > 0 else None
            if p is not None and np.all(p > 0):
                w = (self.layout.num_samples * p) ** (-self.params.is_beta)
                loss_weights = w / w.max()
            else:
                loss_weights = np.ones(indices.size)
        return Proposal(indices=indices, probabilities=self.probabilities(state, ctx),
                        loss_weights=loss_weights, skipped=skipped)

    def describe(self, state: PrioritizedState) -> dict[str, Any]:
        return {"t0": state.t0, "channels": int(state.tree.leaves.shape[0])}

    def explain(self, state: PrioritizedState, ctx: ProposeContext) -> list[Reason]:
        """The distribution's share of the sum-tree's priority mass, and the mean
        priority per index behind it (O(D): the per-distribution sums are kept)."""
        mass = np.maximum(state.mass @ self.coefficients(state, ctx.clock), 0.0)
        total = float(mass.sum())
        reasons = []
        for d, size in enumerate(self.layout.sizes):
            mean = float(mass[d]) / float(size)
            share = float(mass[d]) / total if total > 0 else None
            terms: dict[str, float | None] = {"priority_mass": float(mass[d]),
                                              "mass_share": share, "mean_priority": mean,
                                              "beta": self.params.beta}
            rule = ("p̂(1-p̂) + β·staleness" if self._linear
                    else f"(p̂(1-p̂))^{number(self.params.alpha)}")
            clause = (f"its {int(size)} indices hold {number(share)} of the priority mass "
                      f"(mean priority {rule} = {number(mean)} per index; 0.25 for an "
                      f"unseen index)")
            reasons.append(Reason(clause, terms))
        return reasons
