"""`learnability`: per-prompt sampling toward the informative middle of the pass rate,
from a hierarchical posterior (after MoPPS, LILO, Online Difficulty Filtering, GRESO;
docs/algorithms.md, "learnability").

Why: with 10^4-10^7 prompts each prompt is seen once or twice, so a Beta(1, 1) per prompt
learns almost nothing from a visit. Here every prompt x of distribution d has the
posterior

    Beta(κ μ_d + s_x, κ (1 - μ_d) + f_x)

with μ_d the distribution's pooled pass rate (Beta(1, 1) over the distribution's
forgetful success/trial sums, decay `pool_gamma` per report for every distribution,
reported on or not), κ_d the prior strength in pseudo-rollouts and s_x, f_x the
prompt's own forgetful successes and failures (`gamma` per visit: s <- γ s +
successes). An unseen prompt is its distribution's prior.

The pooled sums count *first visits* only (ours): an unseen prompt is drawn uniformly
from its distribution, so its first group is an unbiased sample of what an unseen prompt
is worth; revisits are the ones the sampler chose for being informative, and counting
them made unseen prompts look better than they are (on the learner suite the default's
unseen picks had E[p(1-p)] 0.08-0.13 against 0.15-0.21 for its revisits). Once a
distribution has no unseen prompt left, every group counts (the prior then only shrinks
revisits).

Estimates that move (ours): a prompt's counts were gathered when its distribution stood
at some level, and training has moved it since. With `level_shift` (default) the counts
sit on the prior of their last report and the mean moves, on the logit scale, by what
logit(μ_d) moved since; with `revisit_drift` (default) it also moves up by δ_d, how far
d's revisits have been passing above their prediction (training on a prompt can make
it easier than its distribution: memorisation). On the learner suite the two took the
default from 26.8 / 27.0 / 43.0 / 80.1 / 26.7 k rollouts to 26.1 / 26.0 / 42.7 / 79.9 /
22.0 k (16 seeds; docs/benchmarks.md).

Revisits (ours, `revisit_discount` ρ, default 0.8): a seen prompt's score (its tree
leaf and its ranking score) is multiplied by ρ^v, v the reports that included it; an
unseen prompt's is not, so a revisit needs ρ^-v times an unseen prompt's expected signal
to win its slot. Without it the default revisited without limit (59-92 % of its picks;
one prompt 33 times in 80 steps on the example trainer, 108 times in 200 on the suite's
`tight_budget`): free where a revisit teaches the distribution as much as a fresh
prompt, as on most simulated learners, but on the example trainer, a real policy, the
default ended below uniform sampling; with ρ = 0.8 it ends level with `dump_ucb`
drawing uniformly inside each distribution (12 seeds: 0.551 against 0.505 before,
uniform 0.528; docs/benchmarks.md, "Revisits"). ρ = 1 restores the old behaviour.

Gap share (ours, `gap_share` ε, default 0: off): with an allocation, a share ε of the
batch goes to the distributions in proportion to their estimated failure rate 1 - μ_d
(the pooled first-visit pass rate: what held-out accuracy on d is likely to be), the
rest as the allocator says: P = (1 - ε) P_alloc + ε (1 - μ) / Σ (1 - μ). Why: the
allocator measures a distribution by what the per-prompt sampler picked there, so a
big hard distribution given one or two slots a step is read from unseen prompts at its
low prior, looks unpromising, and is given fewer slots still; where distributions
interfere (training one pulls the others back), it then falls to nothing (the learner
suite's `interference`: final accuracy 0.02). With ε = 0.5 it holds (0.83) and the
target costs 22 k rollouts instead of 28 k; the price is paid where a distribution
cannot be learned yet, since its failure rate is the highest (`prerequisite`: 36 k
instead of 31 k), and a distribution nobody can solve keeps between ε / D and ε of the
batch (the more, the more the others are solved). Hence off by default
(docs/benchmarks.md, "Gap share").

κ_d (ours, empirical Bayes): `prior_strength`, or by default the method-of-moments value
for which the prior's E[p(1-p)] = μ(1-μ) κ/(κ+1) equals V_d, the distribution's pooled
mean of s(G-s)/(G(G-1)) (an unbiased per-group estimate of p(1-p)). A distribution mixing
solved and hopeless prompts has V_d far below μ(1-μ), so its prior is weak and a prompt's
first visit decides; a homogeneous one has a strong prior. On the learner suite this
took the tight-budget learner from 133 k to 104 k rollouts against a fixed κ = 4.

Score (what "informative" means): p(1 - p), the Bernoulli reward variance that a GRPO
group turns into signal (LILO), or with `band = [lo, hi]` 1 inside the band plus
`band_floor` · 4 p(1 - p) (Online Difficulty Filtering; verl #2791).

Sampling in O(B log N) (ours): Thompson draws for all N prompts are O(N), so
1. a sum-tree over the *seen* prompts holds each one's expected score under its
   posterior (E[p(1-p)] = ab / ((a+b)(a+b+1)) exactly; the band mass by a moment-matched
   Gaussian), refreshed when the prompt is reported (with μ_d of that moment); unseen
   prompts are not in the tree: each distribution adds (unseen count) × (its prior's
   expected score), so a change of μ_d costs O(1), not O(n_d);
2. candidates are drawn per distribution: with the default `allocation` = `dump_ucb`
   (or `learning_progress`) d gets slots_d of the batch, decided by that sampler, whose
   code and state are reused as is; with `none`, the c · B draws go to distributions ∝
   their mass. Inside d, c · slots_d candidates come from the tree's range of d (∝
   expected score; `candidates` c = 4) and slots_d more uniformly from its unseen
   prompts: every unseen prompt has the same value (its prior's expected score), so
   slots_d of them are all the batch could take (ours; drawing the two sources in
   proportion to their masses made most candidates unseen, since unseen prompts are
   many). The allocation is the default because per-prompt mass alone follows the
   distribution sizes: on the learner suite `none` left the smallest distributions
   untrained (final minimum accuracy 0.2-0.5) and needed about twice the rollouts.
   Each tree descent gives four candidates (the leaf reached and three more ∝ weight
   from its block of 16; `sumtree.descend`), a quarter of the tree work (two per
   descent saved ~4 % of the suite's rollouts for ~1.3x the proposal time at 10^7);
3. candidates are ranked by their expected score under the posterior now (level shift
   and drift included; `ranking: expected`, the default) or by a Thompson draw p̃ from it
   (`ranking: thompson`, as MoPPS: a moment-matched Gaussian clipped to [0, 1], ten
   times cheaper than a Beta draw; ours), and the B best are kept (per distribution
   with an allocation): a revisit is taken when its posterior promises more signal than
   an unseen prompt of its distribution, else an unseen one. On the learner suite
   ranking by the expectation needed fewer rollouts than Thompson on every learner
   (docs/benchmarks.md, "Learner suite"): for the top B of many candidates a random
   draw favours the uncertain (unseen, once-seen) ones, which is optimism, not
   information, when most prompts are visited once or twice. The default c = 4 needs
   6-9 % fewer rollouts on the suite than c = 2 (the gain stops around c = 6-8) and
   proposes in ~1.7 ms at N = 10^7, B = 1 024 (c = 2: ~1.1 ms; c = 6 would exceed the
   2 ms budget there): docs/benchmarks.md, "Learner suite".
Tree leaves are ordered by distribution (the layout's member order), so each
distribution is one contiguous range of leaves for label layouts too.

Continuous rewards: a rollout succeeds when its primary objective, mapped to [0, 1] by
the objective's bounds (signals.py), reaches `success_threshold` (0.5 by default, the
middle of the bounds; binary rewards are unchanged by it). The posterior models pass
or fail; a reward model's score or a partial credit read as a fractional success
compresses every prompt toward the middle, where noise in the score outranks the
difference between a prompt the policy never solves and one it solves half the time
(on the suite's two continuous-reward learners the fractional reading needed 4-16 %
more rollouts: docs/benchmarks.md). `success_threshold: null` keeps it.

Zero-variance skipping (the curriculum's `zero_variance` option) predicts agreement from
this posterior (`agreement`), not from the engine's flat table: candidates it rejects go
to the back of the ranking, so a batch is never short, and `skipped` counts the prompts
that would have been in the batch without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
from paceline_server.strategies.kernels import logit, sigmoid
from paceline_server.strategies.params import require
from paceline_server.strategies.posteriors import occurrence_rounds
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.sumtree import (
    SumTreeState,
    build_tree,
    descend,
    prefix_sums,
    set_leaves,
    tree_bytes,
    uniform_excluding,
)

PRIOR_SIGNAL = 1.0 / 6.0  # E[p(1-p)] under Beta(1, 1): one pseudo-group before any data
MIN_KAPPA, MAX_KAPPA = 0.25, 100.0  # bounds of the estimated prior strength
#: Pseudo-information behind the revisit drift before any revisit (in units of
#: G p(1-p): 4 is sixteen rollouts at p = 0.5): a few revisits do not move it far.
DRIFT_PRIOR_INFORMATION = 4.0
MAX_DRIFT = 3.0  # upper bound of the revisit drift, in logits (the lower bound is 0)
MAX_VISITS = 255  # `visits` saturates here (uint8)
UNSEEN_FILL_TRIES = 4  # uniform draws per wanted unseen candidate (rejection of seen ones)
TREE_DRAWS_PER_DESCENT = 4  # candidates per tree descent (see `_candidates`)
Ranking = Literal["expected", "thompson"]


@dataclass(frozen=True)
class LearnabilityParams:
    """See the module docstring; every value is checked here (InvalidParams on error)."""

    prior_strength: float | None = None
    gamma: float = 0.5
    pool_gamma: float = 0.9
    band: tuple[float, ...] | None = None
    band_floor: float = 0.05
    candidates: float = 4.0
    ranking: Ranking = "expected"
    success_threshold: float | None = 0.5
    allocation: Allocation = "dump_ucb"
    allocation_params: dict[str, Any] = field(default_factory=dict)
    level_shift: bool = True
    revisit_drift: bool = True
    revisit_discount: float = 0.8
    gap_share: float = 0.0

    def __post_init__(self) -> None:
        require(self.prior_strength is None or 0.0 < self.prior_strength <= 1e6,
                f"prior_strength must be in (0, 1e6] or null; got {self.prior_strength!r}",
                "prior_strength")
        require(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1]; got {self.gamma!r}",
                "gamma")
        require(0.0 <= self.pool_gamma <= 1.0,
                f"pool_gamma must be in [0, 1]; got {self.pool_gamma!r}", "pool_gamma")
        if self.band is not None:
            require(len(self.band) == 2, f"band must be [lo, hi]; got {list(self.band)!r}",
                    "band")
            lo, hi = self.band
            require(0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0,
                    f"band bounds must lie in [0, 1]; got {list(self.band)!r}", "band")
            require(lo < hi, f"band needs lo < hi; got {list(self.band)!r}", "band")
        require(0.0 <= self.band_floor <= 1.0,
                f"band_floor must be in [0, 1]; got {self.band_floor!r}", "band_floor")
        require(1.0 <= self.candidates <= 64.0,
                f"candidates must be in [1, 64]; got {self.candidates!r}", "candidates")
        if self.success_threshold is not None:
            require(0.0 <= self.success_threshold <= 1.0,
                    f"success_threshold must be in [0, 1]; got {self.success_threshold!r}",
                    "success_threshold")
        require(self.allocation != "none" or not self.allocation_params,
                "allocation_params need an allocation (dump_ucb or learning_progress)",
                "allocation_params")
        require(0.0 < self.revisit_discount <= 1.0,
                f"revisit_discount must be in (0, 1]; got {self.revisit_discount!r}",
                "revisit_discount")
        require(0.0 <= self.gap_share <= 1.0,
                f"gap_share must be in [0, 1]; got {self.gap_share!r}", "gap_share")
        require(self.allocation != "none" or self.gap_share == 0.0,
                "gap_share mixes into an allocation's shares (dump_ucb or "
                "learning_progress); `allocation: none` takes none", "gap_share")


@dataclass
class LearnabilityState:
    #: 2: `anchor`, `drift_residual`, `drift_information`; 3: `visits`
    state_version: ClassVar[int] = 3
    tree: SumTreeState  # one channel: expected score of seen prompts, leaves in layout order
    successes: np.ndarray  # float32 [N]: forgetful own successes s_x
    failures: np.ndarray  # float32 [N]: forgetful own failures f_x
    unseen: np.ndarray  # int64 [D]: prompts never reported
    pool_successes: np.ndarray  # float64 [D]: forgetful pooled successes
    pool_trials: np.ndarray  # float64 [D]: forgetful pooled trials
    pool_signal: np.ndarray  # float64 [D]: forgetful sum of per-group p(1-p) estimates
    pool_groups: np.ndarray  # float64 [D]: forgetful count of groups behind pool_signal
    anchor: np.ndarray  # float32 [N]: logit(μ_d) when the prompt was last reported
    drift_residual: np.ndarray  # float64 [D]: forgetful Σ (s - G p̂) over revisits
    drift_information: np.ndarray  # float64 [D]: forgetful Σ G p̂ (1 - p̂) over revisits
    visits: np.ndarray  # uint8 [N]: reports that included the prompt (saturates at 255)
    dump: DumpUcbState | None  # allocator state (allocation = dump_ucb)
    progress: LearningProgressState | None  # allocator state (learning_progress)


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and the server
    does not depend on scipy."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-x * x)))


def beta_moments(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = a + b
    return a / total, np.sqrt(a * b / (total * total * (total + 1.0)))


def _never_reported(state: LearnabilityState, positions: np.ndarray) -> np.ndarray:
    """Whether each prompt is unseen: no report has included it (a visit adds its group's
    rollouts to s_x + f_x, and forgetting scales them only at a later visit, which adds
    a group again, so they stay above 0). Its tree leaf cannot tell: a seen prompt's
    score can be exactly 0."""
    return np.asarray((state.successes[positions] + state.failures[positions]) == 0)


class LearnabilitySampler(AllocatingSampler[LearnabilityState, LearnabilityParams]):
    name = "learnability"
    params_type = LearnabilityParams
    state_type = LearnabilityState
    predicts_agreement = True

    def __init__(self, layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                 params: LearnabilityParams) -> None:
        super().__init__(layout, objectives, params)
        self.allocator: Allocator | None = build_allocator(
            layout, objectives, params.allocation, params.allocation_params)
        self._offsets = np.r_[0, np.cumsum(layout.sizes)].astype(np.int64)
        self._leaves = LeafOrder(layout)

    # ----------------------------------------------------------------- leaf order
    def _to_global(self, leaves: np.ndarray) -> np.ndarray:
        """Leaf position -> dataset index. Leaves follow the layout's member order
        (distribution by distribution), and `members(0, p)` is that order's p-th entry."""
        return self._leaves.to_global(leaves)

    def _to_leaf(self, indices: np.ndarray) -> np.ndarray:
        return self._leaves.to_leaf(indices)

    # ----------------------------------------------------------------- posterior
    def pooled_mean(self, state: LearnabilityState) -> np.ndarray:
        """μ_d: the posterior mean of each distribution's pooled pass rate."""
        return _pooled_mean(state.pool_successes, state.pool_trials)

    def prior_strength(self, state: LearnabilityState) -> np.ndarray:
        """κ_d per distribution: the parameter, or (null, the default) the method-of-
        moments value that makes the prior's E[p(1-p)] = μ(1-μ) κ/(κ+1) equal the
        distribution's observed signal V_d (empirical Bayes): a distribution whose
        prompts differ a lot (many solved and many hopeless ones) gets a weak prior, so
        a prompt's own first visit decides; a homogeneous one a strong prior."""
        d = self.layout.num_distributions
        if self.params.prior_strength is not None:
            return np.full(d, self.params.prior_strength)
        mu = self.pooled_mean(state)
        signal = (state.pool_signal + PRIOR_SIGNAL) / (state.pool_groups + 1.0)
        ratio = np.clip(signal / np.maximum(mu * (1.0 - mu), 1e-12), 0.0, 1.0)
        ratio = np.minimum(ratio, MAX_KAPPA / (MAX_KAPPA + 1.0))
        return np.asarray(np.maximum(ratio / (1.0 - ratio), MIN_KAPPA))

    def posterior(self, state: LearnabilityState, indices: np.ndarray,
                  owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) of each index's Beta posterior (`owner`: the indices' distributions,
        when the caller knows them). Without `level_shift`, the prompt's forgetful
        counts on the current pooled prior. With it (the default), the counts on the
        prior of their last report, whose mean is then moved on the logit scale by what
        the distribution's level logit(μ_d) moved since (the total a + b is kept): a
        prompt seen at 2/4 when its distribution stood at 0.3 is expected to pass more
        often once the distribution stands at 0.6. With `revisit_drift` (the default) a
        seen prompt's logit also moves by its distribution's revisit drift (`drift`). An
        unseen prompt is the current prior either way."""
        if owner is None:
            owner = self.layout.distribution_of(indices)
        return self._posterior(state, indices, owner, self.pooled_mean(state),
                               self.prior_strength(state))

    def _posterior(self, state: LearnabilityState, indices: np.ndarray, owner: np.ndarray,
                   mu: np.ndarray, kappa_d: np.ndarray, *, drift: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
        """`posterior` with μ_d and κ_d [D] computed by the caller (the ranking's hot
        path computes them once); `drift=False` leaves the revisit drift out (what the
        drift is measured against)."""
        params = self.params
        kappa = kappa_d[owner]
        successes = state.successes[indices].astype(np.float64)
        failures = state.failures[indices].astype(np.float64)
        drift = drift and params.revisit_drift
        if not params.level_shift and not drift:
            return kappa * mu[owner] + successes, kappa * (1.0 - mu[owner]) + failures
        if params.level_shift:
            anchor = state.anchor[indices].astype(np.float64)
            then = sigmoid(anchor)
            a = kappa * then + successes
            b = kappa * (1.0 - then) + failures
            shift = logit(mu)[owner] - anchor
        else:
            a = kappa * mu[owner] + successes
            b = kappa * (1.0 - mu[owner]) + failures
            shift = np.zeros(a.size)
        if drift:
            shift = shift + np.where(successes + failures > 0, self.drift(state)[owner], 0.0)
        total = a + b
        # a, b > 0 (κ >= MIN_KAPPA, 0 < then < 1, counts >= 0): log(a / b) is the logit.
        mean = sigmoid(np.log(a / b) + shift)
        a = mean * total
        return a, total - a

    def drift(self, state: LearnabilityState) -> np.ndarray:
        """δ_d: how far, in logits, a revisited prompt of d passed more often than its
        posterior predicted (level shift included), over the forgetful sums of the
        revisits: one Newton step of the logit offset from 0, Σ (s - G p̂) /
        (Σ G p̂ (1 - p̂) + DRIFT_PRIOR_INFORMATION), bounded to [0, MAX_DRIFT]. Near zero
        where prompts keep their place relative to their distribution; positive where
        training on a prompt makes that prompt easier than its distribution
        (memorisation). Only upward: that is the way training moves the prompts it
        trains on, while a revisit that fails more than predicted is forgetting or
        reward noise, which the level already follows (two-sided, the downward half made
        `allocation: none` miss a target of the learner suite and helped nowhere)."""
        ratio = state.drift_residual / (state.drift_information + DRIFT_PRIOR_INFORMATION)
        return np.asarray(np.clip(ratio, 0.0, MAX_DRIFT))

    def _learn_drift(self, state: LearnabilityState, signals: ReportSignals,
                     successes: np.ndarray, first_visit: np.ndarray) -> None:
        """Fold this report's revisits into the drift sums, before their counts change:
        the prediction is the posterior just before this report (with a single run,
        what it said when the batch was chosen). The sums fade by `pool_gamma` at every
        report, as the pooled prior does."""
        num = self.layout.num_distributions
        decay = self.params.pool_gamma
        residual: np.ndarray = np.zeros(num)
        information: np.ndarray = np.zeros(num)
        revisit = np.flatnonzero(~first_visit)
        if revisit.size:
            owner = signals.distribution[revisit]
            a, b = self._posterior(state, signals.indices[revisit], owner,
                                   self.pooled_mean(state), self.prior_strength(state),
                                   drift=False)
            predicted = a / (a + b)
            size = signals.group_size[revisit].astype(np.float64)
            residual = np.bincount(owner, weights=successes[revisit] - size * predicted,
                                   minlength=num)
            information = np.bincount(owner, weights=size * predicted * (1.0 - predicted),
                                      minlength=num)
        state.drift_residual = decay * state.drift_residual + residual
        state.drift_information = decay * state.drift_information + information

    def expected_score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """E[score(p)] under Beta(a, b): the tree's deterministic priority."""
        total = a + b
        variance_score = a * b / (total * (total + 1.0))  # E[p(1-p)], exact
        if self.params.band is None:
            return np.asarray(variance_score)
        lo, hi = self.params.band
        mean, sd = beta_moments(a, b)
        scale = np.maximum(sd, 1e-12) * math.sqrt(2.0)
        mass = 0.5 * (_erf((hi - mean) / scale) - _erf((lo - mean) / scale))
        return np.asarray(mass + self.params.band_floor * 4.0 * variance_score)

    def thompson_score(self, a: np.ndarray, b: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
        mean, sd = beta_moments(a, b)
        p = np.clip(mean + sd * rng.standard_normal(a.size), 0.0, 1.0)
        variance = p * (1.0 - p)
        if self.params.band is None:
            return np.asarray(variance)
        lo, hi = self.params.band
        inside = (p >= lo) & (p <= hi)
        return np.asarray(inside + self.params.band_floor * 4.0 * variance)

    def agreement(self, state: LearnabilityState, indices: np.ndarray,
                  group_size: int) -> np.ndarray:
        """P(all G rollouts agree) under the hierarchical posterior (Beta-Binomial), for
        predicted zero-variance skipping."""
        a, b = self.posterior(state, indices)
        all_pass = np.ones_like(a)
        all_fail = np.ones_like(a)
        for j in range(group_size):
            all_pass *= (a + j) / (a + b + j)
            all_fail *= (b + j) / (a + b + j)
        return np.asarray(all_pass + all_fail)

    def agreement_predictor(self, state: LearnabilityState, group_size: int
                            ) -> Callable[[np.ndarray], np.ndarray]:
        return lambda indices: self.agreement(state, indices, group_size)

    # ----------------------------------------------------------------- state
    def state_bytes(self) -> int:
        """A sum tree over N learnabilities, N float32 successes, failures and anchors,
        N uint8 visit counts, pooled vectors over D, and the allocator's own state."""
        n, d = self.layout.num_samples, self.layout.num_distributions
        allocator = 0 if self.allocator is None else self.allocator.state_bytes()
        return STATE_OVERHEAD + tree_bytes(n) + 13 * n + 56 * d + allocator

    def init_state(self, rng: np.random.Generator) -> LearnabilityState:
        n, d = self.layout.num_samples, self.layout.num_distributions
        dump, progress = initial_allocator_states(self.allocator, self.params.allocation, rng)
        return LearnabilityState(
            tree=build_tree(np.zeros(n, dtype=np.float32)),
            successes=np.zeros(n, dtype=np.float32), failures=np.zeros(n, dtype=np.float32),
            unseen=self.layout.sizes.astype(np.int64).copy(),
            pool_successes=np.zeros(d), pool_trials=np.zeros(d),
            pool_signal=np.zeros(d), pool_groups=np.zeros(d),
            anchor=np.zeros(n, dtype=np.float32),
            drift_residual=np.zeros(d), drift_information=np.zeros(d),
            visits=np.zeros(n, dtype=np.uint8),
            dump=dump, progress=progress,
        )

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Version 1 (no `anchor`, no drift sums) -> 2: every prompt's evidence is taken
        to stand at its distribution's current level, so nothing moves until the prompt
        is reported again (the estimates it had before the upgrade), and the drift
        starts at zero. Version 2 (no `visits`) -> 3: a prompt with evidence counts one
        visit (how many it had is not stored: it is discounted as a prompt seen once, the
        least a revisit is), an unseen one none; the tree's leaves keep their values until
        the prompt is reported again (they only weight candidate draws). O(N) once. Other
        versions: replay (the default)."""
        needed = {"pool_successes", "pool_trials", "successes", "failures"}
        if old_version not in (1, 2) or not needed <= arrays.keys():
            return super().migrate_state(old_version, arrays)
        migrated = dict(arrays)
        if old_version == 1:
            mu = _pooled_mean(arrays["pool_successes"], arrays["pool_trials"])
            labels = self.layout.distribution_of(np.arange(self.layout.num_samples))
            migrated["anchor"] = logit(mu)[labels].astype(np.float32)
            migrated["drift_residual"] = np.zeros(mu.size)
            migrated["drift_information"] = np.zeros(mu.size)
        seen = (arrays["successes"] + arrays["failures"]) > 0
        migrated["visits"] = seen.astype(np.uint8)
        return migrated

    def _allocator_state(self, state: LearnabilityState) -> Any:
        return allocator_state(self.params.allocation, state)

    def update(self, state: LearnabilityState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        rewards = signals.primary_rewards
        if self.params.success_threshold is not None:
            rewards = (rewards >= self.params.success_threshold).astype(np.float64)
        succ = signals.group_sum(rewards)
        fail = signals.group_size - succ
        indices = signals.indices
        num = self.layout.num_distributions
        gamma = np.float32(self.params.gamma)
        first_visit = _never_reported(state, indices)
        if self.params.revisit_drift:
            self._learn_drift(state, signals, succ, first_visit)
        fresh = np.unique(indices[first_visit])
        # Pooled sums from first visits (see the module docstring); every group of a
        # distribution that had no unseen prompt before this report.
        exhausted = (state.unseen == 0)[signals.distribution]
        weight = (first_visit | exhausted).astype(np.float64)
        for positions in occurrence_rounds(indices):
            idx = indices[positions]
            state.successes[idx] = gamma * state.successes[idx] + succ[positions]
            state.failures[idx] = gamma * state.failures[idx] + fail[positions]
        state.unseen -= np.bincount(self.layout.distribution_of(fresh),
                                    minlength=num).astype(np.int64)
        # Every distribution's pooled evidence fades at every report, reported on or not:
        # it describes the policy as it was, and a distribution left alone (judged
        # hopeless, or crowded out) drifts back toward the Beta(1, 1) prior, whose
        # expected score (1/6) gets it tried again. Fading only the distributions a
        # report added to froze a hopeless verdict: on the prerequisite learner
        # `allocation: none` never came back to the distributions that opened later.
        decay = self.params.pool_gamma
        state.pool_successes = decay * state.pool_successes + np.bincount(
            signals.distribution, weights=succ * weight, minlength=num)
        state.pool_trials = decay * state.pool_trials + np.bincount(
            signals.distribution, weights=signals.group_size * weight, minlength=num)
        # s (G - s) / (G (G - 1)) is an unbiased estimate of a prompt's p(1 - p) from one
        # group of G >= 2 Bernoulli rollouts (fractional s: an approximation). One group
        # may exceed 0.25 (4/8 gives 2/7); clipping it would bias V_d down.
        size = signals.group_size.astype(np.float64)
        usable = size >= 2
        estimate = np.where(usable, np.clip(succ * (size - succ), 0.0, None)
                            / np.maximum(size * (size - 1.0), 1.0), 0.0)
        state.pool_signal = decay * state.pool_signal + np.bincount(
            signals.distribution, weights=estimate * weight, minlength=num)
        state.pool_groups = decay * state.pool_groups + np.bincount(
            signals.distribution, weights=usable * weight, minlength=num)
        unique, times = np.unique(indices, return_counts=True)
        state.visits[unique] = np.minimum(state.visits[unique].astype(np.int64) + times,
                                          MAX_VISITS).astype(np.uint8)
        owner = self.layout.distribution_of(unique)
        mu = self.pooled_mean(state)
        state.anchor[unique] = logit(mu)[owner]
        a, b = self._posterior(state, unique, owner, mu, self.prior_strength(state))
        set_leaves(state.tree, self._to_leaf(unique),
                   self.expected_score(a, b) * self.novelty(state, unique))
        if self.allocator is not None:
            self.allocator.update(self._allocator_state(state), signals, ctx)

    # ----------------------------------------------------------------- propose
    def _masses(self, state: LearnabilityState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prefix sums at distribution boundaries, seen mass, unseen mass) per
        distribution: O(D log N)."""
        prefix = prefix_sums(state.tree, self._offsets)
        seen = np.maximum(np.diff(prefix), 0.0)
        mu = self.pooled_mean(state)
        kappa = self.prior_strength(state)
        prior = self.expected_score(kappa * mu, kappa * (1.0 - mu))
        return prefix, seen, state.unseen * prior

    def probabilities(self, state: LearnabilityState, ctx: ProposeContext) -> np.ndarray:
        return self._shares(state, ctx)

    def gap_shares(self, state: LearnabilityState) -> np.ndarray:
        """(1 - μ_d) / Σ (1 - μ): each distribution's estimated failure rate, normalised.
        μ_d is the Beta(1, 1) posterior mean of the pooled first visits, strictly inside
        (0, 1), so the sum is positive."""
        gap = 1.0 - self.pooled_mean(state)
        return np.asarray(gap / gap.sum())

    def _shares(self, state: LearnabilityState, ctx: ProposeContext,
                mass: np.ndarray | None = None) -> np.ndarray:
        """Each distribution's share: of the batch with an allocation (the allocator's
        probabilities, `gap_share` of them replaced by the gap shares), of the
        candidates without one (the score mass: `mass` when the caller has it, else
        read from the tree; an allocation does not need it, which keeps the tree out of
        `progress`, run at every report)."""
        if self.allocator is None:
            if mass is None:
                _, seen, unseen = self._masses(state)
                mass = seen + unseen
            return _shares(mass, self.layout.sizes)
        base = self.allocator.probabilities(self._allocator_state(state), ctx)
        share = self.params.gap_share
        if share == 0.0:
            return np.asarray(base)
        mixed = (1.0 - share) * base + share * self.gap_shares(state)
        return np.asarray(mixed / mixed.sum())

    def _candidates(self, state: LearnabilityState, counts: np.ndarray, prefix: np.ndarray,
                    seen: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct candidate indices, their distributions and whether each was seen:
        counts[d] draws from the seen prompts of d (the tree's range of d, ∝ expected
        score) and counts[d] / c uniform ones among its unseen prompts (never reported:
        a seen prompt's leaf can be exactly 0, e.g. confidently outside a band with
        `band_floor` 0, and reading that as unseen ranked it at its prior)."""
        from_tree = np.where(seen > 0, counts, 0)
        from_unseen = np.where(state.unseen > 0,
                               np.ceil(counts / self.params.candidates), 0).astype(np.int64)
        # One descent per TREE_DRAWS_PER_DESCENT candidates: the extra ones come from the
        # block of 16 leaves the descent reached (still ∝ weight each, see `descend`).
        descents = -(-from_tree // TREE_DRAWS_PER_DESCENT)
        owner = np.repeat(np.arange(counts.size), descents)
        u = prefix[owner] + rng.random(owner.size) * seen[owner]
        siblings = rng.random((owner.size, TREE_DRAWS_PER_DESCENT - 1))
        leaves = descend(state.tree, u, siblings=siblings).ravel()
        owner = np.repeat(owner, TREE_DRAWS_PER_DESCENT)
        leaves = np.clip(leaves, self._offsets[owner], self._offsets[owner + 1] - 1)
        # Enough uniform draws that about 1.25x the wanted number are unseen (at most
        # UNSEEN_FILL_TRIES per wanted one): one draw each while nearly all is unseen.
        fraction = np.maximum(state.unseen, 0) / self.layout.sizes
        tries = np.where(from_unseen > 0, np.minimum(
            from_unseen * UNSEEN_FILL_TRIES,
            np.ceil(1.25 * from_unseen / np.maximum(fraction, 1e-12)) + 2), 0)
        want = np.repeat(np.arange(counts.size), tries.astype(np.int64))
        sizes = self.layout.sizes[want]
        positions = self._offsets[want] + (rng.random(want.size) * sizes).astype(np.int64)
        # Leaf positions; the per-prompt counts are kept by dataset index (they differ
        # under a label layout, where reading the counts at the position called seen
        # prompts unseen and ranked them at their distribution's prior).
        is_unseen = _never_reported(state, self._to_global(positions))
        # The first from_unseen[d] unseen draws of each distribution.
        picks = positions[is_unseen]
        picks_owner = want[is_unseen]
        rank = np.arange(picks.size) - np.searchsorted(picks_owner, picks_owner)
        keep = rank < from_unseen[picks_owner]
        pool = np.concatenate([leaves, picks[keep]])
        owners = np.concatenate([owner, picks_owner[keep]])
        was_seen = np.arange(pool.size) < leaves.size
        _, first = np.unique(pool, return_index=True)
        first.sort()
        return self._to_global(pool[first]), owners[first], was_seen[first]

    def propose(self, state: LearnabilityState, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        params = self.params
        prefix, seen, unseen = self._masses(state)
        probabilities = self._shares(state, ctx, seen + unseen)
        if self.allocator is not None:
            slots = allocate(probabilities, size, rng, self.allocator.params.allocation)
            counts = np.ceil(slots * params.candidates).astype(np.int64)
        else:
            slots = None
            counts = rng.multinomial(math.ceil(size * params.candidates), probabilities)
        candidates, owners, was_seen = self._candidates(state, counts, prefix, seen, rng)
        score = self._scores(state, candidates, owners, was_seen, rng)
        # Best first; ties (unseen prompts, band mode) broken at random by a jitter far
        # below any gap.
        order = np.argsort(-(score + 1e-9 * rng.random(candidates.size)), kind="stable")
        # Uniform extras rank after every scored candidate: they only matter when the
        # tree's draws repeat (few prompts hold the mass) or skipping rejects many.
        spare = 1.5 if ctx.accept is not None else 1.0  # room for rejected candidates
        extras = self._extras(candidates, owners, size, spare, slots, rng)
        unfiltered = np.concatenate([candidates[order], extras])
        unfiltered_owners = (None if slots is None else np.concatenate(
            [owners[order], self.layout.distribution_of(extras)]))
        chosen = plain = self._select(unfiltered, unfiltered_owners, size, slots)
        skipped = 0
        if ctx.accept is not None and ctx.max_redraws > 0 and unfiltered.size:
            ok = self._screen(unfiltered, unfiltered_owners, size, slots, ctx)
            if not ok.all():
                # Rejected candidates go after all the others (stable: best first).
                order = np.r_[np.flatnonzero(ok), np.flatnonzero(~ok)]
                chosen = self._select(
                    unfiltered[order],
                    None if unfiltered_owners is None else unfiltered_owners[order],
                    size, slots)
                skipped = int(np.count_nonzero(~np.isin(plain, chosen)))
        chosen = self._fill(chosen, size, slots, rng)
        return Proposal(indices=chosen[rng.permutation(chosen.size)],
                        probabilities=probabilities, skipped=skipped)

    def _scores(self, state: LearnabilityState, candidates: np.ndarray, owners: np.ndarray,
                was_seen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each candidate's ranking score. Expected ranking: an unseen prompt is worth
        its distribution's current prior expectation, a seen one its posterior's
        expected score now (level shift and revisit drift included) times ρ^visits; with
        the shift and the drift off, what its tree leaf holds (the discounted expected
        score when it was last reported: the leaf the descent just reached, no random
        reads in the N-sized arrays)."""
        seen = np.flatnonzero(was_seen)
        if self.params.ranking == "thompson":
            a, b = self.posterior(state, candidates, owners)
            score = self.thompson_score(a, b, rng)
            score[seen] *= self.novelty(state, candidates[seen])
            return score
        mu = self.pooled_mean(state)
        kappa = self.prior_strength(state)
        score = self.expected_score(kappa * mu, kappa * (1.0 - mu))[owners]
        if self.params.level_shift or self.params.revisit_drift:  # the leaf is stale
            a, b = self._posterior(state, candidates[seen], owners[seen], mu, kappa)
            score[seen] = self.expected_score(a, b) * self.novelty(state, candidates[seen])
        else:  # the leaf holds the discounted score of the prompt's last report
            score[seen] = state.tree.leaves[0, self._to_leaf(candidates[seen])]
        return np.asarray(score)

    def novelty(self, state: LearnabilityState, indices: np.ndarray) -> np.ndarray:
        """ρ^v: the factor on the score of prompts reported v times (1 for an unseen
        prompt, and for every prompt with `revisit_discount` 1)."""
        rho = self.params.revisit_discount
        if rho == 1.0:
            return np.ones(np.shape(indices))
        return np.asarray(rho ** state.visits[indices].astype(np.float64))

    @staticmethod
    def _screen(ranked: np.ndarray, owners: np.ndarray | None, size: int,
                slots: np.ndarray | None, ctx: ProposeContext) -> np.ndarray:
        """Zero-variance verdicts, asked only where they can matter: first for the
        candidates the batch would take, then for as many more as were rejected, at most
        `max_redraws` more rounds. Candidates never asked count as accepted: they rank
        after every asked one, so they enter only once those are exhausted."""
        assert ctx.accept is not None
        ok = np.ones(ranked.size, dtype=bool)
        asked = np.zeros(ranked.size, dtype=bool)
        if slots is None or owners is None:
            rank = np.arange(ranked.size)
            group = np.zeros(ranked.size, dtype=np.int64)
            window = np.array([size], dtype=np.int64)
        else:
            order = np.argsort(owners, kind="stable")
            rank = np.empty(ranked.size, dtype=np.int64)
            sorted_owner = owners[order]
            rank[order] = np.arange(order.size) - np.searchsorted(sorted_owner, sorted_owner)
            group = owners
            window = slots.astype(np.int64).copy()
        for _ in range(ctx.max_redraws + 1):
            new = np.flatnonzero(~asked & (rank < window[group]))
            if new.size == 0:
                break
            asked[new] = True
            verdict = np.asarray(ctx.accept(ranked[new]), dtype=bool)
            ok[new] = verdict
            rejected = np.bincount(group[new[~verdict]], minlength=window.size)
            if not rejected.any():
                break
            window += rejected
        return ok

    def _select(self, ranked: np.ndarray, owners: np.ndarray | None, size: int,
                slots: np.ndarray | None) -> np.ndarray:
        """The batch from ranked candidates: the first `size`, or per distribution."""
        if slots is None or owners is None:
            return ranked[:size]
        return self._per_distribution(ranked, owners, slots)

    def _extras(self, candidates: np.ndarray, owners: np.ndarray, size: int, spare: float,
                slots: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Distinct uniform indices (not among the candidates) topping the candidate
        set up to `spare` times the batch (or each distribution's slots), when the
        tree's draws repeated so much that fewer candidates than that are left."""
        if slots is None:
            want = min(math.ceil(spare * size), self.layout.num_samples)
            if candidates.size >= want:
                return np.zeros(0, dtype=np.int64)
            return uniform_excluding(self.layout.num_samples, want - candidates.size,
                                     candidates, rng)
        have = np.bincount(owners, minlength=slots.size)
        short = np.minimum(np.ceil(spare * slots).astype(np.int64), self.layout.sizes) - have
        parts = [np.zeros(0, dtype=np.int64)]
        for d in np.flatnonzero(short > 0):
            local = self._to_leaf(candidates[owners == d]) - self._offsets[d]
            extra = uniform_excluding(int(self.layout.sizes[d]), int(short[d]), local, rng)
            parts.append(self._to_global(self._offsets[d] + extra))
        return np.concatenate(parts)

    @staticmethod
    def _per_distribution(ranked: np.ndarray, owners: np.ndarray,
                          slots: np.ndarray) -> np.ndarray:
        """The first slots[d] of each distribution's ranked candidates."""
        order = np.argsort(owners, kind="stable")
        sorted_owner = owners[order]
        rank = np.arange(order.size) - np.searchsorted(sorted_owner, sorted_owner)
        keep = np.zeros(ranked.size, dtype=bool)
        keep[order] = rank < slots[sorted_owner]
        return ranked[keep]

    def _fill(self, chosen: np.ndarray, size: int, slots: np.ndarray | None,
              rng: np.random.Generator) -> np.ndarray:
        """Top the batch up uniformly when the candidates ran short (tiny datasets or
        distributions): inside each distribution short of its slots, or over all
        indices. Distinct unless a distribution is smaller than its slots."""
        if chosen.size >= size:
            return chosen
        parts = [chosen]
        if slots is None:
            parts.append(uniform_excluding(self.layout.num_samples, size - chosen.size,
                                           chosen, rng))
        else:
            have = np.bincount(self.layout.distribution_of(chosen),
                               minlength=slots.size)
            for d in np.flatnonzero(have < slots):
                n_d = int(self.layout.sizes[d])
                need = int(slots[d] - have[d])
                mine = self._to_leaf(chosen[self.layout.distribution_of(chosen) == d])
                local = mine - self._offsets[d]
                if need + local.size > n_d:  # smaller than its slots: with replacement
                    extra = rng.integers(0, n_d, size=need)
                else:
                    extra = uniform_excluding(n_d, need, local, rng)
                parts.append(self._to_global(self._offsets[d] + extra))
        return np.concatenate(parts).astype(np.int64)

    def explain(self, state: LearnabilityState, ctx: ProposeContext) -> list[Reason]:
        """With an allocation, the allocator's reasons (it sets the shares) plus what the
        posterior says inside; without, the distribution's share of the score mass."""
        _, seen, unseen = self._masses(state)
        mu = self.pooled_mean(state)
        kappa = self.prior_strength(state)
        total = float((seen + unseen).sum())
        base = (self.allocator.explain(self._allocator_state(state), ctx)
                if self.allocator is not None else None)
        score = "p(1-p)" if self.params.band is None else "the band score"
        how = (f"a Thompson draw of {score}" if self.params.ranking == "thompson"
               else f"the expected {score}")
        drift = self.drift(state)
        share = self.params.gap_share
        gaps = self.gap_shares(state)
        reasons = []
        for d in range(self.layout.num_distributions):
            mass = float(seen[d] + unseen[d])
            terms: dict[str, float | None] = {
                "pooled_pass_rate": float(mu[d]), "prior_strength": float(kappa[d]),
                "unseen": float(state.unseen[d]), "score_mass": mass,
                "mass_share": mass / total if total > 0 else None}
            gap = ""
            if share > 0:
                terms.update(gap_share=share, gap_weight=float(gaps[d]))
                gap = (f"; {number(share)} of the shares follow the estimated failure "
                       f"rates 1 - pooled pass rate, of which it gets {number(float(gaps[d]))}")
            moved = ""
            if self.params.revisit_drift:
                terms["revisit_drift"] = float(drift[d])
                if drift[d] > 0:  # say it only when it moves something
                    moved = (f"; revisits pass more often than predicted, so seen "
                             f"prompts are read {number(float(drift[d]))} logits easier")
            inside = (f"inside it, prompts are picked by {how} from each prompt's "
                      f"posterior (pooled pass rate {number(float(mu[d]))}, prior "
                      f"strength {number(float(kappa[d]))}, {int(state.unseen[d])} prompts "
                      f"unseen{moved})")
            if base is not None:
                reason = base[d]
                reasons.append(Reason(f"{reason.clause}{gap}; {inside}",
                                      {**reason.terms, **terms}))
            else:
                held = number(mass / total) if total > 0 else "none"
                reasons.append(Reason(f"it holds {held} of the expected-score mass; "
                                      f"{inside}", terms))
        return reasons

    def describe(self, state: LearnabilityState) -> dict[str, Any]:
        _, seen, unseen = self._masses(state)
        details: dict[str, Any] = {
            "pooled_pass_rate": self.pooled_mean(state).tolist(),
            "prior_strength": self.prior_strength(state).tolist(),
            "unseen": state.unseen.tolist(),
            "seen_mass": seen.tolist(),
            "unseen_mass": unseen.tolist(),
            "revisit_drift": self.drift(state).tolist(),
            "gap_shares": self.gap_shares(state).tolist(),
        }
        if self.allocator is not None:
            details["allocation"] = self.allocator.describe(self._allocator_state(state))
        return details



def _pooled_mean(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """μ_d: the posterior mean of Beta(1, 1) over a distribution's pooled sums."""
    return np.asarray((successes + 1.0) / (trials + 2.0))


def _shares(mass: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mass normalised to probabilities (proportional to size while there is none)."""
    total = float(mass.sum())
    if total <= 0:
        return np.asarray(sizes / sizes.sum(), dtype=np.float64)
    return np.asarray(mass / total)
