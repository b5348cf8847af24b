"""`dump_ucb`: DUMP's distribution-level UCB over advantage magnitudes (ALGORITHMS.md,
"dump_ucb"; checked against ZhentingWang/DUMP, `verl/utils/curriculum_learning.py`).

Per distribution, a window of the last `window` (300) per-rollout advantages, as the
reference feeds them (one value per response). Learnability L_d is the mean of |A| over
the window (abs taken before the mean, as the reference does): large advantages mean the
policy still learns there. With n_d the rollouts reported for d and N = Σ n_d,

    UCB_d = L_d + c · sqrt(2 ln(N + 1) / (n_d + 1)),   P = softmax(UCB / τ)

(c = 1, τ = 0.1, softmax with the maximum subtracted). A distribution never reported has
L_d = 0 and the largest bonus, so it is explored first. The reference clamps N to at
least 1 inside the log; that only differs before any report, where every bonus is equal
and P is uniform either way, so we keep the formula as written.

Window: a fixed [D, window] ring per distribution (fill count + cursor), updated in one
vectorised scatter: a report is folded in report order, and when it holds more than
`window` rollouts of one distribution only its last `window` are kept, exactly as the
reference's "extend, then keep the tail". L_d is recomputed only for the distributions a
report touches and kept in the state, so `probabilities` is O(D).

Several objectives **(ours)**: with one objective the advantages fed to the window
are the trainer's (or GRPO's), exactly as the paper. With several, the paper's rule
(`advantage_source: "scalarized"`: the advantages of the scalarised reward) lets a
secondary objective such as length steer the allocation: a group whose primary reward
is all 0 still has advantages from the length term, so a hopeless distribution keeps a
large L_d, and where every group is all wrong (a policy that starts cold) L_d is the
length term's noise. `advantage_source: "primary"` feeds the primary objective's
group-normalised advantages instead ((r - mean) / std within the group, 0 for a
constant group; signals.objective_advantages): L_d then measures what the curriculum is
about, and a distribution the policy cannot solve gets L_d = 0. The default, `auto`, is
the paper's rule with one objective and `primary` with several (on the learner suite
with a length term the paper's rule never reached the target of the cold-start learner,
which uniform sampling reaches, and needed up to 1.5x the rollouts elsewhere:
docs/benchmarks.md, "dump_ucb with several objectives").

Beta(α, β) per distribution is kept for logging only (the reference does the same; it
does not enter P). **(ours)** The reference counts a rollout as a success when its raw
reward passes a hard-coded threshold; we add the fractional success of each rollout (the
primary objective mapped to [0, 1]) to α and its complement to β, from a Beta(1, 1)
prior, so it works for any reward scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.strategies.allocation import DumpUcbState
from paceline_server.strategies.base import STATE_OVERHEAD, ProposeContext, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.kernels import softmax
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals

MAX_WINDOW = 100_000  # bounds the [D, window] ring


@dataclass(frozen=True)
class DumpUcbParams(DistributionParams):
    """`window`: recent rollout advantages kept per distribution; `c`: exploration
    weight (>= 0); `tau`: softmax temperature (> 0); `advantage_source`: the
    scalarised reward's advantages (the paper), the primary objective's, or `auto` (the
    default: the paper's with one objective, the primary objective's with several)."""

    window: int = 300
    c: float = 1.0
    tau: float = 0.1
    advantage_source: Literal["scalarized", "primary", "auto"] = "auto"

    def __post_init__(self) -> None:
        require(1 <= self.window <= MAX_WINDOW,
                f"window must be in [1, {MAX_WINDOW}]; got {self.window!r}", "window")
        require(self.c >= 0.0, f"c must be non-negative; got {self.c!r}", "c")
        require(self.tau > 0.0, f"tau must be positive; got {self.tau!r}", "tau")


def ucb_scores(state: DumpUcbState, c: float) -> np.ndarray:
    n = state.rollouts.astype(np.float64)
    total = float(n.sum())
    return np.asarray(state.learnability + c * np.sqrt(2.0 * math.log(total + 1.0) / (n + 1.0)))


class DumpUcbSampler(DistributionSampler[DumpUcbState, DumpUcbParams]):
    name = "dump_ucb"
    params_type = DumpUcbParams
    state_type = DumpUcbState

    @property
    def _source(self) -> Literal["scalarized", "primary"]:
        """The advantages that fill the ring, `auto` resolved by the objective count."""
        source = self.params.advantage_source
        if source == "auto":
            return "primary" if len(self.objectives) > 1 else "scalarized"
        return source

    def resolved_params(self) -> dict[str, Any]:
        """`advantage_source: auto` as what it selects for this curriculum's objectives."""
        return {**super().resolved_params(), "advantage_source": self._source}

    def state_bytes(self) -> int:
        """The advantage ring (window float64 per distribution) and six vectors over D."""
        return STATE_OVERHEAD + 8 * self.layout.num_distributions * (self.params.window + 6)

    def init_state(self, rng: np.random.Generator) -> DumpUcbState:
        d = self.layout.num_distributions
        return DumpUcbState(
            advantages=np.zeros((d, self.params.window), dtype=np.float64),
            filled=np.zeros(d, dtype=np.int64), cursor=np.zeros(d, dtype=np.int64),
            learnability=np.zeros(d, dtype=np.float64),
            rollouts=np.zeros(d, dtype=np.int64),
            alpha=np.ones(d, dtype=np.float64), beta=np.ones(d, dtype=np.float64),
        )

    def update(self, state: DumpUcbState, signals: ReportSignals, ctx: UpdateContext) -> None:
        num = self.layout.num_distributions
        window = self.params.window
        owner = signals.distribution[signals.group_of]  # distribution of every rollout
        if self._source == "primary":
            values = np.asarray(signals.objective_advantages[:, signals.primary],
                                dtype=np.float64)
        else:
            values = np.asarray(signals.advantages, dtype=np.float64)
        count = np.bincount(owner, minlength=num).astype(np.int64)
        # Rank of each rollout among its distribution's rollouts, in report order.
        order = np.argsort(owner, kind="stable")
        first = np.zeros(num, dtype=np.int64)
        np.cumsum(count[:-1], out=first[1:])
        rank = np.empty(owner.size, dtype=np.int64)
        rank[order] = np.arange(owner.size, dtype=np.int64) - first[owner[order]]
        # Keep only the last `window` rollouts of each distribution.
        skip = np.maximum(count - window, 0)
        keep = rank >= skip[owner]
        kept_owner = owner[keep]
        slot = (state.cursor[kept_owner] + rank[keep] - skip[kept_owner]) % window
        state.advantages[kept_owner, slot] = values[keep]
        kept = count - skip
        touched = np.flatnonzero(count)
        state.cursor[touched] = (state.cursor[touched] + kept[touched]) % window
        state.filled[touched] = np.minimum(state.filled[touched] + kept[touched], window)
        valid = np.arange(window)[None, :] < state.filled[touched, None]
        magnitude = np.where(valid, np.abs(state.advantages[touched]), 0.0)
        state.learnability[touched] = magnitude.sum(axis=1) / state.filled[touched]
        state.rollouts += count
        successes = np.bincount(signals.distribution, weights=signals.successes,
                                minlength=num)
        trials = np.bincount(signals.distribution, weights=signals.group_size, minlength=num)
        state.alpha += successes
        state.beta += trials - successes

    def probabilities(self, state: DumpUcbState, ctx: ProposeContext) -> np.ndarray:
        return softmax(ucb_scores(state, self.params.c), self.params.tau)

    def describe(self, state: DumpUcbState) -> dict[str, Any]:
        return {
            "learnability": state.learnability.tolist(),
            "ucb": ucb_scores(state, self.params.c).tolist(),
            "rollouts": state.rollouts.tolist(),
            "window_filled": state.filled.tolist(),
            "beta_alpha": state.alpha.tolist(),
            "beta_beta": state.beta.tolist(),
            "beta_mean": (state.alpha / (state.alpha + state.beta)).tolist(),
        }

    def explain(self, state: DumpUcbState, ctx: ProposeContext) -> list[Reason]:
        """Learnability plus exploration bonus, against the best UCB under the softmax."""
        scores = ucb_scores(state, self.params.c)
        best = float(scores.max())
        tau = self.params.tau
        reasons = []
        for d in range(self.layout.num_distributions):
            learn = float(state.learnability[d])
            bonus = float(scores[d]) - learn
            terms: dict[str, float | None] = {
                "learnability": learn, "exploration_bonus": bonus, "ucb": float(scores[d]),
                "best_ucb": best, "tau": tau, "rollouts": float(state.rollouts[d]),
                "window_filled": float(state.filled[d]),
                "beta_mean": float(state.alpha[d] / (state.alpha[d] + state.beta[d]))}
            if state.rollouts[d] == 0:
                clause = (f"it was never reported, so its exploration bonus "
                          f"{number(bonus)} is all of its UCB (best UCB {number(best)}, "
                          f"softmax τ = {number(tau)})")
            else:
                clause = (f"its learnability (mean |A| over its last "
                          f"{int(state.filled[d])} rollouts) is {number(learn)} plus an "
                          f"exploration bonus of {number(bonus)} = UCB {number(scores[d])}, "
                          f"against the best UCB {number(best)} (softmax τ = {number(tau)})")
            reasons.append(Reason(clause, terms))
        return reasons
