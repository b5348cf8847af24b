"""`spard` sampler: SPARD's reward-attributed data rebalancing, RADR, with a self-paced
floor (ALGORITHMS.md, "spard"; SPARD, 2026).

SPARD's public material says data weights aggregate the reward weights through a
reward-attribute matrix built from score dispersion; its code is not public. The
concrete design below is **ours** (consistent with that description):

Utility. For a reported index x and objective i, D_{x,i} is the std over x's group of
r_i: the spread GRPO turns into advantage for that objective. Each column is divided by
its running mean m_i (the mean of D_{·,i} over every index-visit so far, this report
included), so objectives on different scales compare; a column that never spread stays
0. The observation o_x = Σ_i w_i D̃_{x,i} uses the reward weights *after* this report's
weighting update (`ctx.reward_weights`), so data importance follows the objectives the
weighting currently favours. Per visit, u_x ← decay·u_x + (1 − decay)·o_x (decay 0.5).

- **(ours)** Every index starts at u0 = `initial_utility` = 1.0, and the first visit
  blends with it like any other. 1.0 is the average of the normalised utility (each
  column of D̃ averages 1 and w sums to 1), so an unseen index ranks with an average seen
  one and above every index that stopped producing spread: unseen data gets explored.
  Blending also needs no per-index "seen" flag (memory) and one noisy group cannot zero
  an index in a single visit.
- u is float32 [N] (4 bytes per sample); repeated indices in one report are folded one
  after the other.

Distribution level (default). Each distribution keeps a fixed ring of its `window` most
recently reported indices (int32) with their success s_x (the primary objective mapped
to [0, 1], averaged over the group). U_d is the mean of the current
u over that ring and succ_d the mean success over it (**ours**: the same window for both
so "useful" and "easy" refer to the same recent data). Since u_x only changes when x is
reported, which touches d(x), both are recomputed for touched distributions only and are
exact. A distribution never reported has U_d = u0 (**ours**, same optimism as unseen
indices). Raw probabilities are softmax(U_d / τ), τ = 0.2.

Self-paced floor. The pace λ_t = pace_start + (pace_end − pace_start)·min(1, t /
pace_steps) with t the clock (reports folded). **(ours)** λ is read as the *admitted
difficulty*: distribution d is capped when its difficulty 1 − succ_d exceeds λ_t. The
doc's "success below the pace" cannot be read literally with λ rising to 1.0 (every
distribution would end up capped, hard-to-easy); with this reading distributions with
succ ≥ 1 − pace_start are admitted at first and all of them by the end, which is the
doc's easy-to-hard pacing.

**(ours)** pace_start = 0.8 by default (ALGORITHMS.md says 0.2), chosen on the learner
suite as a whole (`benchmarks/suite.py`; docs/benchmarks.md, "Learner suite"). At 0.2
only distributions with succ ≥ 0.8 are admitted early, and under GRPO near-solved data
is zero-variance data: the first part of a run learned almost nothing (docs/benchmarks.md,
simulator problem 2) and spard missed the target on learners where uniform reached it.
At 0.8 the pace starts by holding back only distributions whose success is below 0.2
(mostly all-wrong groups, no gradient either) and still opens everything by
`pace_steps`. **(ours)** pace_steps = 100 by default (it was 1 000): the pace is a
schedule over reports, and a trainer that names only the sampler does not say how long
its run is. On the learner suite a pace still closed at the end of a 200-375 step run
kept cold distributions at the floor until it was over (at 1 000, `cold_start` missed
its target in 2 of 3 seeds where uniform sampling reached it in all 3, and at half the
suite's learning rate `cold_start` and `forgetting` in every seed), while a ramp of 0,
100 or 250 reports reached every target that uniform or Syllabus reached, within each
other's noise elsewhere (docs/benchmarks.md, "spard's pace at its defaults").
Distributions never reported are admitted: they must be
sampled to be measured. A capped distribution gets min(P_d, floor); the mass taken away
goes to the admitted ones in proportion to their P, so admitted distributions never
lose. **(ours)** When every distribution is capped (all too hard for the pace), the
easiest ones (highest succ, ties all) are admitted instead: a self-paced learner
starts with the easiest data it has rather than none.

Cadence. **(ours)** Utilities, rings and the column scale are folded on every report (they
are per-visit statistics; skipping reports would lose data), but the probabilities (U_d,
succ_d, λ → P, and the admitted set) are refreshed only when a report completes
`every_steps` (4) reports of the clock, and are kept in the state between refreshes, as
SPARD updates weights and data importance together every 4 steps. Before the first
refresh every distribution is unseen and P is uniform over distributions.

Per sample (`per_sample: true`). Indices are drawn ∝ u_x from the shared sum-tree
(`strategies.sumtree`); u lives only in its float32 leaves (no second copy), never
below `MIN_UTILITY` so every index stays reachable and the tree's mass positive.
**(ours)** The self-paced floor still applies. Per-distribution raw probabilities are
the u-masses mass_d / Σ mass (the marginal of one draw ∝ u), kept incrementally in
O(report) (each change is a difference of float32 leaves added in float64, so drift is
negligible), and capped as above with the admitted set of the last refresh; P itself
follows the live tree. The tree holds one channel over all N leaves and cannot draw
inside one distribution, so the floor is enforced by passing over candidates: capped
distributions get slot quotas drawn from P (the `allocation` rule), and candidates
beyond a quota are skipped. Candidates come from one `sample_unique` pool, in draw
order (so the first B kept are a sequential draw ∝ u from what may be kept), sized for
the expected pass rate with a 25 % margin, at most `MAX_POOL_FACTOR`·B; if the pool
still runs out, the batch is completed with passed-over candidates (predicted-useful
first) so it always has its full size. Predicted zero-variance indices (`ctx.accept`)
are passed over the same way, the pool holding (1 + `ctx.max_redraws`) candidates per
slot, and are reported as skipped. With nothing to pass over, the pool is the batch.

Spent indices (`pass_spent`, default on; **ours**). In distribution mode an index is
drawn uniformly inside its distribution, and u_x, kept for every index anyway, would
otherwise only feed U_d. With `pass_spent` an index whose visits so far gave no spread
(u_x ≤ u0 · decay, the blend of u0 with one zero observation) is passed over for another
candidate of the same distribution, at least `SPENT_REDRAWS` rounds (as the
curriculum's zero-variance skipping does, and together with it when that is on; the
batch keeps its size). Why: on the learner suite's tight-budget learner (each prompt
seen about twice, a third solved and a fifth hopeless) spard reached the target in 1 of
3 seeds; a revisit of a spent prompt is a wasted group. With it, 3 of 3 and fewer
rollouts on every suite learner (docs/benchmarks.md, "Learner suite").

Loss weights (`loss_weights: true`). u_x of the batch divided by the batch mean, so the
mean is 1: the data importance applied as a weight. With `per_sample` the importance is
then counted twice (sampled ∝ u and weighted by u); this is allowed but rarely wanted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.strategies.base import (
    STATE_OVERHEAD,
    Proposal,
    ProposeContext,
    UpdateContext,
)
from paceline_server.strategies.distribution import (
    DistributionParams,
    DistributionSampler,
    allocate,
)
from paceline_server.strategies.kernels import softmax
from paceline_server.strategies.params import require
from paceline_server.strategies.posteriors import occurrence_rounds
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.sumtree import (
    SumTreeState,
    build_tree,
    leaf_weights,
    sample_unique,
    set_leaves,
    tree_bytes,
)

MAX_WINDOW = 4096  # bounds the [D, window] rings
MIN_UTILITY = 1e-6  # per-sample leaves stay positive (ours)
SPENT_REDRAWS = 2  # rounds of passing over spent indices (distribution mode)
MAX_POOL_FACTOR = 64  # per-sample candidate pool is at most this many times the batch
POOL_MARGIN = 1.25  # per-sample pool over its expected need


@dataclass(frozen=True)
class SpardSamplerParams(DistributionParams):
    """`tau` > 0: softmax temperature over U_d; `floor` in [0, 1]: most a capped
    distribution gets; pace from `pace_start` to `pace_end` (0 <= start <= end <= 1) over
    `pace_steps` reports (0 = at `pace_end` at once); `utility_decay` in [0, 1): weight
    of the old u per visit; `initial_utility` >= 0: u0; `every_steps` >= 1: reports
    between refreshes of P; `window` in [1, 4096]: recent indices per distribution;
    `per_sample`: draw indices ∝ u_x; `loss_weights`: serve u_x / batch mean."""

    tau: float = 0.2
    floor: float = 0.02
    pace_start: float = 0.8
    pace_end: float = 1.0
    pace_steps: int = 100
    utility_decay: float = 0.5
    initial_utility: float = 1.0
    every_steps: int = 4
    window: int = 64
    per_sample: bool = False
    loss_weights: bool = False
    pass_spent: bool = True

    def __post_init__(self) -> None:
        require(self.tau > 0.0, f"tau must be positive; got {self.tau!r}", "tau")
        require(0.0 <= self.floor <= 1.0, f"floor must be in [0, 1]; got {self.floor!r}",
                "floor")
        require(0.0 <= self.pace_start <= 1.0,
                f"pace_start must be in [0, 1]; got {self.pace_start!r}", "pace_start")
        require(0.0 <= self.pace_end <= 1.0,
                f"pace_end must be in [0, 1]; got {self.pace_end!r}", "pace_end")
        require(self.pace_start <= self.pace_end,
                f"pace_start ({self.pace_start!r}) must not exceed pace_end "
                f"({self.pace_end!r}): the pace admits harder data over time", "pace_start")
        require(self.pace_steps >= 0,
                f"pace_steps must be non-negative; got {self.pace_steps!r}", "pace_steps")
        require(0.0 <= self.utility_decay < 1.0,
                f"utility_decay must be in [0, 1); got {self.utility_decay!r}",
                "utility_decay")
        require(self.initial_utility >= 0.0,
                f"initial_utility must be non-negative; got {self.initial_utility!r}",
                "initial_utility")
        require(self.every_steps >= 1,
                f"every_steps must be at least 1; got {self.every_steps!r}", "every_steps")
        require(1 <= self.window <= MAX_WINDOW,
                f"window must be in [1, {MAX_WINDOW}]; got {self.window!r}", "window")


@dataclass
class SpardSamplerState:
    utility: np.ndarray  # float32 [N] u_x (distribution mode); [0] in per-sample mode
    column_sum: np.ndarray  # float64 [k] Σ D_{x,i} over every index-visit
    column_count: int  # index-visits folded into column_sum
    ring_index: np.ndarray  # int32 [D, window] recently reported indices
    ring_success: np.ndarray  # float64 [D, window] their success
    filled: np.ndarray  # int64 [D] valid ring entries
    cursor: np.ndarray  # int64 [D] next ring slot
    dist_utility: np.ndarray  # float64 [D] U_d (u0 while unseen)
    dist_success: np.ndarray  # float64 [D] mean success over the ring (0 while unseen)
    probabilities: np.ndarray  # float64 [D] P at the last refresh (served as is in
    #                            distribution mode; per sample, P follows the tree)
    admitted: np.ndarray  # bool [D] admitted set at the last refresh
    pace: float  # λ at the last refresh
    refreshes: int
    mass: np.ndarray  # float64 [D] Σ u over each distribution (per-sample mode; [0] else)
    tree: SumTreeState | None  # leaves = u_x (per-sample mode; None else)


def pace_at(clock: int, start: float, end: float, steps: int) -> float:
    """λ_t: linear from `start` to `end` over `steps` reports, then constant."""
    if steps <= 0:
        return end
    return start + (end - start) * min(1.0, clock / steps)


def admitted_set(success: np.ndarray, seen: np.ndarray, pace: float) -> np.ndarray:
    """Admitted distributions: unseen, or difficulty 1 − success within the pace; when
    none qualifies, the easiest seen ones (ties all) — ours."""
    admitted = ~seen | (1.0 - success <= pace)
    if not admitted.any():
        best = success[seen].max()
        admitted = seen & (success == best)
    return np.asarray(admitted)


def apply_floor(raw: np.ndarray, admitted: np.ndarray, floor: float) -> np.ndarray:
    """Capped distributions get min(P, floor); the freed mass goes to the admitted ones in
    proportion to their P (uniformly if all their P is 0). Sums to 1."""
    capped = ~admitted
    if not capped.any() or not admitted.any():
        return np.asarray(raw, dtype=np.float64)
    result = np.asarray(raw, dtype=np.float64).copy()
    result[capped] = np.minimum(raw[capped], floor)
    rest = 1.0 - float(result[capped].sum())
    share = float(raw[admitted].sum())
    if share > 0.0:
        result[admitted] = raw[admitted] * (rest / share)
    else:
        result[admitted] = rest / int(admitted.sum())
    return result


def within_group_rank(groups: np.ndarray, num: int) -> np.ndarray:
    """Position of each entry among the entries of its group, in order of appearance."""
    count = np.bincount(groups, minlength=num)
    order = np.argsort(groups, kind="stable")
    first = np.zeros(num, dtype=np.int64)
    np.cumsum(count[:-1], out=first[1:])
    rank = np.empty(groups.size, dtype=np.int64)
    rank[order] = np.arange(groups.size, dtype=np.int64) - first[groups[order]]
    return rank


class SpardSampler(DistributionSampler[SpardSamplerState, SpardSamplerParams]):
    name = "spard"
    params_type = SpardSamplerParams
    state_type = SpardSamplerState

    # ------------------------------------------------------------------ state
    def state_bytes(self) -> int:
        """Per-sample mode: a sum tree over N utilities; distribution mode: N float32
        utilities. Both: the success rings (int32 + float64 per slot) and vectors over D."""
        n, num = self.layout.num_samples, self.layout.num_distributions
        samples = tree_bytes(n) + 8 * num if self.params.per_sample else 4 * n
        return (STATE_OVERHEAD + samples + 12 * num * self.params.window + 48 * num
                + 8 * len(self.objectives))

    def init_state(self, rng: np.random.Generator) -> SpardSamplerState:
        params = self.params
        num = self.layout.num_distributions
        n = self.layout.num_samples
        k = len(self.objectives)
        u0 = params.initial_utility
        tree = mass = None
        if params.per_sample:
            tree = build_tree(np.full(n, max(u0, MIN_UTILITY), dtype=np.float64))
            stored = float(leaf_weights(tree, np.zeros(1, dtype=np.int64))[0])
            mass = self.layout.sizes.astype(np.float64) * stored
        return SpardSamplerState(
            utility=np.full(0 if params.per_sample else n, u0, dtype=np.float32),
            column_sum=np.zeros(k, dtype=np.float64), column_count=0,
            ring_index=np.zeros((num, params.window), dtype=np.int32),
            ring_success=np.zeros((num, params.window), dtype=np.float64),
            filled=np.zeros(num, dtype=np.int64), cursor=np.zeros(num, dtype=np.int64),
            dist_utility=np.full(num, u0, dtype=np.float64),
            dist_success=np.zeros(num, dtype=np.float64),
            probabilities=np.full(num, 1.0 / num, dtype=np.float64),
            admitted=np.ones(num, dtype=bool),
            pace=pace_at(0, params.pace_start, params.pace_end, params.pace_steps),
            refreshes=0,
            mass=np.zeros(0, dtype=np.float64) if mass is None else mass,
            tree=tree,
        )

    # ------------------------------------------------------------------ update
    def observations(self, state: SpardSamplerState, signals: ReportSignals,
                     weights: np.ndarray) -> np.ndarray:
        """o_x = Σ_i w_i D_{x,i} / m_i after folding the report into the running column
        means m (mutates the column sums: call once per report)."""
        dispersion = signals.dispersion
        state.column_sum = state.column_sum + dispersion.sum(axis=0)
        state.column_count += dispersion.shape[0]
        mean = state.column_sum / max(state.column_count, 1)
        safe = np.where(mean > 0.0, mean, 1.0)
        normalized = np.where(mean > 0.0, dispersion / safe, 0.0)
        return np.asarray(normalized @ np.asarray(weights, dtype=np.float64))

    def update(self, state: SpardSamplerState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        """O(report + touched·window), plus O(D) on refresh reports; never O(N)."""
        observed = self.observations(state, signals, ctx.reward_weights)
        self._fold_utilities(state, signals.indices, observed)
        self._push_rings(state, signals)
        if (ctx.clock + 1) % self.params.every_steps == 0:
            self._refresh(state, ctx.clock + 1)

    def _fold_utilities(self, state: SpardSamplerState, indices: np.ndarray,
                        observed: np.ndarray) -> None:
        decay = self.params.utility_decay
        for positions in occurrence_rounds(indices):
            idx = indices[positions]
            old = self._utilities_of(state, idx)
            new = decay * old + (1.0 - decay) * observed[positions]
            if state.tree is None:
                state.utility[idx] = new.astype(np.float32)
                continue
            set_leaves(state.tree, idx, np.maximum(new, MIN_UTILITY))
            stored = self._utilities_of(state, idx)  # as the tree keeps it
            np.add.at(state.mass, self.layout.distribution_of(idx), stored - old)

    def _utilities_of(self, state: SpardSamplerState, indices: np.ndarray) -> np.ndarray:
        if state.tree is None:
            return state.utility[indices].astype(np.float64)
        return np.asarray(leaf_weights(state.tree, indices), dtype=np.float64)

    def _push_rings(self, state: SpardSamplerState, signals: ReportSignals) -> None:
        """Append the report's indices (in report order) to their distributions' rings,
        keeping each ring's last `window` entries; recompute U_d and succ_d of touched
        distributions."""
        num = self.layout.num_distributions
        window = self.params.window
        owner = signals.distribution
        count = np.bincount(owner, minlength=num).astype(np.int64)
        rank = within_group_rank(owner, num)
        skip = np.maximum(count - window, 0)
        keep = rank >= skip[owner]
        kept_owner = owner[keep]
        slot = (state.cursor[kept_owner] + rank[keep] - skip[kept_owner]) % window
        state.ring_index[kept_owner, slot] = signals.indices[keep].astype(np.int32)
        state.ring_success[kept_owner, slot] = signals.success[keep]
        kept = count - skip
        touched = np.flatnonzero(count)
        state.cursor[touched] = (state.cursor[touched] + kept[touched]) % window
        state.filled[touched] = np.minimum(state.filled[touched] + kept[touched], window)
        valid = np.arange(window)[None, :] < state.filled[touched, None]
        members = state.ring_index[touched].astype(np.int64)
        values = self._utilities_of(state, np.where(valid, members, 0).ravel())
        values = np.where(valid, values.reshape(members.shape), 0.0)
        filled = state.filled[touched].astype(np.float64)
        state.dist_utility[touched] = values.sum(axis=1) / filled
        success = np.where(valid, state.ring_success[touched], 0.0)
        state.dist_success[touched] = success.sum(axis=1) / filled

    def _refresh(self, state: SpardSamplerState, clock: int) -> None:
        params = self.params
        state.pace = pace_at(clock, params.pace_start, params.pace_end, params.pace_steps)
        state.admitted = admitted_set(state.dist_success, state.filled > 0, state.pace)
        state.probabilities = apply_floor(self._raw(state), state.admitted, params.floor)
        state.refreshes += 1

    def _raw(self, state: SpardSamplerState) -> np.ndarray:
        """Unpaced P: softmax(U_d / τ), or in per-sample mode the u-mass shares (the
        marginal of one draw ∝ u)."""
        if state.tree is None:
            return softmax(state.dist_utility, self.params.tau)
        mass = np.maximum(state.mass, 0.0)  # incremental sums may drift a few ulps below 0
        return np.asarray(mass / mass.sum())

    # ------------------------------------------------------------------ propose
    def probabilities(self, state: SpardSamplerState, ctx: ProposeContext) -> np.ndarray:
        """The refreshed P (distribution mode); per sample, the live u-masses under the
        admitted set of the last refresh."""
        if state.tree is None:
            return np.asarray(state.probabilities.copy())
        return apply_floor(self._raw(state), state.admitted, self.params.floor)

    def propose(self, state: SpardSamplerState, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        if state.tree is None:
            proposal = super().propose(state, size, rng, self._spent_context(state, ctx))
        else:
            proposal = self._propose_per_sample(state, state.tree, size, rng, ctx)
        if not self.params.loss_weights:
            return proposal
        return dataclasses.replace(
            proposal, loss_weights=self.batch_loss_weights(state, proposal.indices))

    def _spent_context(self, state: SpardSamplerState, ctx: ProposeContext) -> ProposeContext:
        """With `pass_spent` (distribution mode): also pass over indices whose utility
        says every visit so far gave no spread (u_x ≤ u0 · decay: at most the blend of u0
        with one zero observation), at least SPENT_REDRAWS rounds, together with the
        curriculum's zero-variance predicate when skipping is on."""
        if not self.params.pass_spent:
            return ctx
        cutoff = np.float32(self.params.initial_utility * self.params.utility_decay)
        utility = state.utility
        outer = ctx.accept

        def accept(indices: np.ndarray) -> np.ndarray:
            fresh = utility[indices] > cutoff * np.float32(1.0 + 1e-6)
            return fresh if outer is None else fresh & np.asarray(outer(indices), dtype=bool)

        return dataclasses.replace(ctx, accept=accept,
                                   max_redraws=max(ctx.max_redraws, SPENT_REDRAWS))

    def _propose_per_sample(self, state: SpardSamplerState, tree: SumTreeState, size: int,
                            rng: np.random.Generator, ctx: ProposeContext) -> Proposal:
        """Draw ∝ u from the tree, passing over candidates beyond a capped distribution's
        quota or predicted zero-variance; O(pool · log N), the pool at most
        MAX_POOL_FACTOR·B (never O(N))."""
        probabilities = self.probabilities(state, ctx)
        capped = ~state.admitted
        accept = ctx.accept if ctx.max_redraws > 0 else None
        redraws = ctx.max_redraws if accept is not None else 0
        quota: np.ndarray | None = None
        usable = 1.0  # expected share of pool candidates that can be kept
        if capped.any():
            quota = allocate(probabilities, size, rng, self.params.allocation)
            raw = self._raw(state)
            usable = float(raw[~capped].sum() + probabilities[capped].sum())
        # Enough candidates for the expected pass rate with a margin (25 % + 16), so the
        # pool rarely runs out; bounded by MAX_POOL_FACTOR·B and by N. With nothing to
        # pass over, the pool is the batch.
        wanted = POOL_MARGIN * size * (1 + redraws) / max(usable, 1e-12) + 16
        pool_size = (size if quota is None and accept is None else
                     min(self.layout.num_samples, MAX_POOL_FACTOR * size, math.ceil(wanted)))
        pool = np.asarray(sample_unique(tree, pool_size, rng), dtype=np.int64)
        ok = (np.ones(pool.size, dtype=bool) if accept is None
              else np.asarray(accept(pool), dtype=bool))
        keep = ok.copy()
        if quota is not None:
            owner = self.layout.distribution_of(pool)
            limited = ok & capped[owner]
            rank = within_group_rank(owner[limited], self.layout.num_distributions)
            keep[limited] = rank < quota[owner[limited]]
        chosen = np.flatnonzero(keep)[:size]
        if chosen.size == size:
            cutoff = int(chosen[-1]) + 1
        else:  # pool exhausted: complete the batch in pool order, predicted-useful first
            cutoff = pool.size
            rest = np.flatnonzero(~keep)
            rest = rest[np.argsort(~ok[rest], kind="stable")]
            chosen = np.sort(np.concatenate([chosen, rest[:size - chosen.size]]))
        passed = np.ones(cutoff, dtype=bool)
        passed[chosen[chosen < cutoff]] = False
        skipped = int(np.count_nonzero(passed & ~ok[:cutoff]))
        indices = pool[chosen][rng.permutation(size)]
        return Proposal(indices=indices, probabilities=probabilities, skipped=skipped)

    def batch_loss_weights(self, state: SpardSamplerState, indices: np.ndarray) -> np.ndarray:
        """u_x / mean u over the batch (all ones when the batch has no utility)."""
        values = self._utilities_of(state, indices)
        mean = float(values.mean())
        if not mean > 0.0 or not math.isfinite(mean):
            return np.ones(indices.size, dtype=np.float64)
        return np.asarray(values / mean)

    def describe(self, state: SpardSamplerState) -> dict[str, Any]:
        return {
            "mode": "per_sample" if self.params.per_sample else "distribution",
            "pace": state.pace,
            "admitted": state.admitted.tolist(),
            "utility": state.dist_utility.tolist(),
            "success": [float(s) if f else None
                        for s, f in zip(state.dist_success, state.filled > 0, strict=True)],
            "column_scale": (state.column_sum / max(state.column_count, 1)).tolist(),
            "refreshes": state.refreshes,
        }

    def explain(self, state: SpardSamplerState, ctx: ProposeContext) -> list[Reason]:
        """Utility under the softmax, or the pace cap for a distribution too hard for
        the pace λ. The pace, the admitted set and the share served are those of the
        last refresh (every `every_steps` reports); utility and success move at every
        report, so the sentence says which values are current (mixing the two read as
        "difficulty 0.56 is beyond λ = 0.80")."""
        params = self.params
        raw = self._raw(state)
        refresh = f"the last refresh (every {params.every_steps} reports)"
        reasons = []
        for d in range(self.layout.num_distributions):
            seen = bool(state.filled[d] > 0)
            success = float(state.dist_success[d]) if seen else None
            terms: dict[str, float | None] = {
                "utility": float(state.dist_utility[d]), "unpaced_share": float(raw[d]),
                "pace": float(state.pace), "paced_success": success,
                "admitted": 1.0 if state.admitted[d] else 0.0, "floor": params.floor,
                "served_share": float(state.probabilities[d])}
            difficulty = 1.0 - (success or 0.0)
            if not state.admitted[d]:
                clause = (f"at {refresh} its difficulty 1 - success was beyond the pace "
                          f"λ = {number(state.pace)}, so SPARD caps it at the floor "
                          f"{number(params.floor)} until a refresh admits it (now: "
                          f"difficulty {number(difficulty)}; its utility now would give it "
                          f"{number(raw[d])} uncapped)")
            elif not seen:
                clause = (f"it is not reported yet, so it keeps the initial utility "
                          f"{number(state.dist_utility[d])} (softmax τ = {number(params.tau)})")
            else:
                clause = (f"its utility U (reward spread weighted by the reward weights) "
                          f"under a softmax with τ = {number(params.tau)} set its share at "
                          f"{refresh}, which admitted it at the pace λ = "
                          f"{number(state.pace)} (now: utility "
                          f"{number(state.dist_utility[d])}, difficulty {number(difficulty)})")
            reasons.append(Reason(clause, terms))
        return reasons
