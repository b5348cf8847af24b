"""`prioritized`: per-sample sampling from each sample's own history (ours, built on
prioritized experience replay and PLR).

The earlier per-sample sampler. `learnability` (strategies/samplers/learnability.py) does its job
better for new curricula: its posterior pools each distribution's evidence, so a prompt
seen once already moves, where a flat Beta(1, 1) here barely does. `prioritized` stays
for the curricula that use it and for its two features `learnability` lacks: the
staleness bonus in reports and importance-sampling loss weights.

Distribution-level allocation (`allocation`, default `dump_ucb`, as in `learnability`):
per-sample priority mass alone follows the distribution sizes, so on the learner suite
the small distributions of a 30-60:1 dataset stayed untrained (final minimum accuracy
0.07-0.37, the same as uniform). With an allocation, that sampler (its code and state
reused as is) decides how many of the batch each distribution gets, and the priorities
pick the samples inside it: draws restricted to the distribution's range of leaves
(O(log N) each, `prefix_sums` + `descend`). `allocation: none` is the earlier behaviour.
Leaves follow the layout's member order, so a distribution is one contiguous range for
label layouts too (for contiguous layouts that is the index order). State version 2 adds
the allocator's state; version-1 states migrate (a fresh allocator; label layouts get
their leaves reordered once).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.allocation import (
    AllocatingSampler,
    Allocation,
    Allocator,
    DumpUcbState,
    LeafOrder,
    LearningProgressState,
    allocator_state,
    build_allocator,
    initial_allocator_states,
)
from paceline_server.strategies.base import (
    STATE_OVERHEAD,
    Proposal,
    ProposeContext,
    UpdateContext,
)
from paceline_server.strategies.distribution import allocate
from paceline_server.strategies.params import require
from paceline_server.strategies.posteriors import PassRateState, PosteriorConfig, posterior_mean
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import state_arrays
from paceline_server.strategies.sumtree import (
    SumTreeState,
    build_tree,
    descend,
    leaf_weights,
    prefix_sums,
    sample_filtered,
    set_leaves,
    total_weight,
    tree_bytes,
    uniform_excluding,
)

UNSEEN_PRIORITY = 0.25
REBASE_AFTER = 20.0  # rebase t0 when (t - t0) / h exceeds this
ALLOCATED_ROUNDS = 16  # tree rounds of per-distribution draws before the uniform fill


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
    allocation: Allocation = "dump_ucb"
    allocation_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.beta >= 0, "beta must be >= 0", "beta")
        require(self.h > 0, "h must be > 0", "h")
        require(0 < self.alpha <= 10, "alpha must be in (0, 10]", "alpha")
        require(self.alpha == 1.0 or self.beta == 0.0,
                "alpha != 1 needs beta = 0 (the staleness decomposition is linear)", "alpha")
        require(self.prior_alpha > 0, f"prior_alpha must be > 0; got {self.prior_alpha!r}",
                "prior_alpha")
        require(self.prior_beta > 0, f"prior_beta must be > 0; got {self.prior_beta!r}",
                "prior_beta")
        require(0 < self.gamma <= 1, "gamma must be in (0, 1]", "gamma")
        require(0 <= self.is_beta <= 1, "is_beta must be in [0, 1]", "is_beta")
        require(self.allocation in ("none", "dump_ucb", "learning_progress"),
                f"allocation must be none, dump_ucb or learning_progress; got "
                f"{self.allocation!r}", "allocation")
        require(self.allocation != "none" or not self.allocation_params,
                "allocation_params need an allocation (dump_ucb or learning_progress)",
                "allocation_params")


@dataclass
class PrioritizedState:
    state_version: ClassVar[int] = 2  # 2: leaves in layout order, allocator state
    tree: SumTreeState  # channels (A, B) when alpha == 1, else (priority^alpha,)
    t0: int  # reference clock of the B channel
    mass: np.ndarray  # float64 [D, C] per-distribution channel sums (for probabilities)
    dump: DumpUcbState | None  # allocator state (allocation = dump_ucb)
    progress: LearningProgressState | None  # allocator state (learning_progress)


class PrioritizedSampler(AllocatingSampler[PrioritizedState, PrioritizedParams]):
    name = "prioritized"
    params_type = PrioritizedParams
    state_type = PrioritizedState
    uses_posteriors = True

    def __init__(self, layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                 params: PrioritizedParams) -> None:
        super().__init__(layout, objectives, params)
        self.allocator: Allocator | None = build_allocator(
            layout, objectives, params.allocation, params.allocation_params)
        self._offsets = np.r_[0, np.cumsum(layout.sizes)].astype(np.int64)
        self._leaves = LeafOrder(layout)

    def _to_global(self, leaves: np.ndarray) -> np.ndarray:
        """Leaf position -> dataset index (leaves follow the layout's member order)."""
        return self._leaves.to_global(leaves)

    def _to_leaf(self, indices: np.ndarray) -> np.ndarray:
        return self._leaves.to_leaf(indices)

    def _allocator_state(self, state: PrioritizedState) -> Any:
        return allocator_state(self.params.allocation, state)

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
        allocator = 0 if self.allocator is None else self.allocator.state_bytes()
        return (STATE_OVERHEAD + tree_bytes(self.layout.num_samples, channels)
                + 8 * channels * self.layout.num_distributions + allocator)

    def init_state(self, rng: np.random.Generator) -> PrioritizedState:
        n = self.layout.num_samples
        if self._linear:
            values = np.zeros((n, 2), dtype=np.float32)
            values[:, 0] = UNSEEN_PRIORITY
        else:
            values = np.full((n, 1), UNSEEN_PRIORITY ** self.params.alpha, dtype=np.float32)
        tree = build_tree(values)
        dump, progress = initial_allocator_states(self.allocator, self.params.allocation, rng)
        return PrioritizedState(tree=tree, t0=0, mass=self._distribution_mass(tree),
                                dump=dump, progress=progress)

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Version 1 (leaves in index order, no allocator) -> 2: the tree, clock and
        masses are kept (leaves reordered for label layouts, O(N) once), the allocator
        starts fresh. Other versions: replay (the default)."""
        if old_version != 1:
            return super().migrate_state(old_version, arrays)
        try:
            tree = SumTreeState(size=int(arrays["tree.size"]), leaves=arrays["tree.leaves"],
                                nodes=arrays["tree.nodes"])
            t0, mass = int(arrays["t0"]), arrays["mass"]
        except KeyError:
            return super().migrate_state(old_version, arrays)
        if not self.layout.is_contiguous:
            n = self.layout.num_samples
            by_index = tree.leaves[:, :n].T.astype(np.float64)
            tree = build_tree(by_index[self._to_global(np.arange(n))])
        fresh = self.init_state(np.random.default_rng(0))
        fresh.tree, fresh.t0, fresh.mass = tree, t0, mass
        return state_arrays(fresh)

    def _distribution_mass(self, tree: SumTreeState) -> np.ndarray:
        """Exact per-distribution channel sums (O(N); at init and rebase only)."""
        leaves = tree.leaves[:, : self.layout.num_samples].astype(np.float64)
        labels = self.layout.distribution_of(self._to_global(
            np.arange(self.layout.num_samples)))
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
        return leaf_weights(state.tree, self._to_leaf(np.asarray(indices)),
                            self.coefficients(state, clock))

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
        leaves = self._to_leaf(indices)
        old = state.tree.leaves[:, leaves].T.astype(np.float64)
        new = self._leaf_values(ctx.posteriors, indices, state)
        set_leaves(state.tree, leaves, new)
        stored = state.tree.leaves[:, leaves].T.astype(np.float64)  # float32-rounded
        labels = self.layout.distribution_of(indices)
        for c in range(stored.shape[1]):
            state.mass[:, c] += np.bincount(labels, weights=stored[:, c] - old[:, c],
                                            minlength=self.layout.num_distributions)
        if self.allocator is not None:
            self.allocator.update(self._allocator_state(state), signals, ctx)

    def _rebase(self, state: PrioritizedState, clock: int) -> None:
        """Move t0 to `clock`: B_x scales by exp(-(clock - t0)/h); O(N), rare."""
        factor = math.exp(-(clock - state.t0) / self.params.h)
        values = state.tree.leaves[:, : self.layout.num_samples].T.astype(np.float64)
        values[:, 1] *= factor
        state.tree = build_tree(values)
        state.t0 = clock
        state.mass = self._distribution_mass(state.tree)

    def probabilities(self, state: PrioritizedState, ctx: ProposeContext) -> np.ndarray:
        if self.allocator is not None:
            return self.allocator.probabilities(self._allocator_state(state), ctx)
        mass = np.maximum(state.mass @ self.coefficients(state, ctx.clock), 0.0)
        total = mass.sum()
        if total <= 0:
            sizes = self.layout.sizes.astype(np.float64)
            return sizes / sizes.sum()
        return mass / total

    def propose(self, state: PrioritizedState, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        coef = self.coefficients(state, ctx.clock)
        accept = ctx.accept
        leaf_accept = (None if accept is None
                       else lambda leaves: accept(self._to_global(leaves)))
        probabilities = self.probabilities(state, ctx)
        prefix = None  # each distribution's prefix sum of priority mass (allocated draws)
        if self.allocator is None:
            leaves, skipped = sample_filtered(state.tree, size, rng, coef, leaf_accept,
                                              ctx.max_redraws)
        else:
            slots = _fit(allocate(probabilities, min(size, self.layout.num_samples), rng,
                                  self.allocator.params.allocation),
                         self.layout.sizes, probabilities)
            prefix = prefix_sums(state.tree, self._offsets, coef)
            leaves, skipped = self._sample_allocated(state.tree, slots, rng, coef, prefix,
                                                     leaf_accept, ctx.max_redraws)
        indices = self._to_global(leaves)
        loss_weights = None
        if self.params.is_correction:
            p = self._draw_probability(state.tree, leaves, coef, probabilities, prefix)
            if p is not None and np.all(p > 0):
                w = (self.layout.num_samples * p) ** (-self.params.is_beta)
                loss_weights = w / w.max()
            else:
                loss_weights = np.ones(indices.size)
        return Proposal(indices=indices, probabilities=probabilities,
                        loss_weights=loss_weights, skipped=skipped)

    def _draw_probability(self, tree: SumTreeState, leaves: np.ndarray, coef: np.ndarray,
                          probabilities: np.ndarray, prefix: np.ndarray | None
                          ) -> np.ndarray | None:
        """P(x), the probability of drawing each leaf in one draw, for the importance
        weights: its share of the whole tree's priority mass, or, with an allocation, its
        distribution's share P_d times its share of that distribution's mass (uniform
        inside a distribution whose mass is 0, as its fill is). Reading the whole tree
        under an allocation ignored the allocation, which is most of the non-uniformity:
        a 10-prompt distribution given half the batch got the weights of the 1 000-prompt
        one. `prefix`: the distributions' prefix sums the allocated draw used (None
        without an allocation). None when the tree holds no mass."""
        weights = leaf_weights(tree, leaves, coef)
        if prefix is None:
            total = total_weight(tree, coef)
            return weights / total if total > 0 else None
        mass = np.maximum(np.diff(prefix), 0.0)
        owner = self.layout.distribution_of(self._to_global(leaves))
        held = mass[owner]
        inside = np.where(held > 0, weights / np.where(held > 0, held, 1.0),
                          1.0 / self.layout.sizes[owner])
        return np.asarray(probabilities[owner] * inside)

    def _sample_allocated(self, tree: SumTreeState, slots: np.ndarray,
                          rng: np.random.Generator, coef: np.ndarray, prefix: np.ndarray,
                          accept: Callable[[np.ndarray], np.ndarray] | None,
                          max_redraws: int) -> tuple[np.ndarray, int]:
        """slots[d] distinct leaves of each distribution d, ∝ priority inside its range
        of leaves, and how many were rejected by `accept`. Rounds of draws (the missing
        number, the new distinct ones kept), at most `max_redraws` rounds
        of rejection, then per distribution the rejected leaves back and a uniform fill
        (with replacement only where a distribution is smaller than its slots), so a
        batch is never short and no loop is unbounded. `prefix`: each distribution's
        prefix sum of priority mass (`prefix_sums` over the distributions' ranges)."""
        offsets = self._offsets
        num = slots.size
        mass = np.maximum(np.diff(prefix), 0.0)
        room = np.minimum(slots, self.layout.sizes).astype(np.int64)
        have = np.zeros(num, dtype=np.int64)
        chosen: list[np.ndarray] = []
        excluded = np.zeros(0, dtype=np.int64)
        rejected = np.zeros(0, dtype=np.int64)
        skipped = rejection_rounds = 0
        for _ in range(ALLOCATED_ROUNDS):
            need = np.where(mass > 0, room - have, 0)
            if not need.any():
                break
            owner = np.repeat(np.arange(num), need)
            u = prefix[owner] + rng.random(owner.size) * mass[owner]
            drawn = np.clip(descend(tree, u, coef), offsets[owner], offsets[owner + 1] - 1)
            _, first = np.unique(drawn, return_index=True)
            first.sort()
            fresh, fresh_owner = drawn[first], owner[first]
            keep = ~np.isin(fresh, excluded) & (leaf_weights(tree, fresh, coef) > 0)
            fresh, fresh_owner = fresh[keep], fresh_owner[keep]
            rank = np.arange(fresh.size) - np.searchsorted(fresh_owner, fresh_owner)
            keep = rank < need[fresh_owner]  # owner is sorted: draws were grouped by d
            fresh, fresh_owner = fresh[keep], fresh_owner[keep]
            if accept is not None and rejection_rounds < max_redraws and fresh.size:
                ok = np.asarray(accept(fresh), dtype=bool)
                if not ok.all():
                    rejection_rounds += 1
                    skipped += int((~ok).sum())
                    excluded = np.concatenate([excluded, fresh[~ok]])
                    rejected = np.concatenate([rejected, fresh[~ok]])
                    fresh, fresh_owner = fresh[ok], fresh_owner[ok]
            chosen.append(fresh)
            excluded = np.concatenate([excluded, fresh])
            have += np.bincount(fresh_owner, minlength=num)
        batch = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        if not (have < slots).any():
            return batch.astype(np.int64), skipped
        parts = [batch]
        rejected_owner = np.searchsorted(offsets, rejected, side="right") - 1
        for d in np.flatnonzero(have < slots):
            short = int(slots[d] - have[d])
            n_d, start = int(self.layout.sizes[d]), int(offsets[d])
            taken = batch[(batch >= start) & (batch < start + n_d)] - start
            refused = rejected[rejected_owner == d] - start
            # Uniform candidates never drawn, screened while rejection rounds remain;
            # then the rejected ones back; with replacement only when d is too small.
            free = n_d - taken.size - refused.size
            if free > 0:
                cand = uniform_excluding(n_d, min(2 * short, free),
                                         np.concatenate([taken, refused]), rng)
                ok = np.ones(cand.size, dtype=bool)
                if accept is not None and rejection_rounds < max_redraws:
                    ok = np.asarray(accept(start + cand), dtype=bool)
                    skipped += int((~ok).sum())
                    refused = np.concatenate([refused, cand[~ok]])
                fill = cand[ok][:short]
                parts.append(start + fill)
                taken = np.concatenate([taken, fill])
                short -= int(fill.size)
            back = refused[:short]
            skipped -= int(back.size)
            short -= int(back.size)
            parts.append(start + back)
            if short > 0:  # smaller than its slots: with replacement
                parts.append(start + rng.integers(0, n_d, size=short))
        batch = np.concatenate(parts)
        return batch.astype(np.int64), skipped

    def describe(self, state: PrioritizedState) -> dict[str, Any]:
        details: dict[str, Any] = {"t0": state.t0,
                                   "channels": int(state.tree.leaves.shape[0])}
        if self.allocator is not None:
            details["allocation"] = self.allocator.describe(self._allocator_state(state))
        return details

    def explain(self, state: PrioritizedState, ctx: ProposeContext) -> list[Reason]:
        """The distribution's share of the sum-tree's priority mass, and the mean
        priority per index behind it (O(D): the per-distribution sums are kept)."""
        mass = np.maximum(state.mass @ self.coefficients(state, ctx.clock), 0.0)
        total = float(mass.sum())
        base = (self.allocator.explain(self._allocator_state(state), ctx)
                if self.allocator is not None else None)
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
            if base is not None:
                clause = (f"{base[d].clause}; inside it, samples are drawn ∝ priority "
                          f"{rule} (mean {number(mean)} per index; 0.25 for an unseen "
                          f"index)")
                terms = {**base[d].terms, **terms}
            reasons.append(Reason(clause, terms))
        return reasons


def _fit(slots: np.ndarray, sizes: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Slots capped at each distribution's size, the excess moved to the most probable
    distributions with room, so a batch no larger than the dataset stays distinct."""
    sizes = np.asarray(sizes, dtype=np.int64)
    fitted = np.minimum(slots, sizes).astype(np.int64)
    excess = int(slots.sum() - fitted.sum())
    for d in np.argsort(-np.asarray(probabilities), kind="stable"):
        if excess <= 0:
            break
        give = min(excess, int(sizes[d] - fitted[d]))
        fitted[d] += give
        excess -= give
    return fitted
