"""`learning_progress`: sample where success is changing fastest (ALGORITHMS.md,
"learning_progress"; Kanitscheider et al. 2021, as in Syllabus).

Per distribution d, every report that touches d gives one observation s̄_d, the mean
success of d's reported indices (each index counts once, whatever its group size). A fast
and a slow exponential moving average of s̄_d (α_fast = 0.2, α_slow = 0.05) are
updated; learning progress LP_d = |r(EMA_fast) − r(EMA_slow)| is large while success
moves in either direction (learning, or forgetting) and fades once it settles.

Reweighting r (Kanitscheider et al. 2021, as Syllabus applies it; `p_theta` θ = 0.1):
r(p) = p(1 − θ) / (p + θ(1 − 2p)) maps [0, 1] onto itself with slope (1 − θ)/θ = 9 at 0,
so progress on a distribution that is just leaving zero success counts several times
what the same change counts near the top: hard distributions that start to move are
found early. θ = 0.5 is the identity (no reweighting).

**(ours)** Defaults chosen on the learner suite as a whole (`benchmarks/suite.py`, four
structurally different simulated GRPO learners; docs/benchmarks.md, "Learner suite"),
not on one learner. The first defaults (α 0.1 / 0.01, temperature 0.25, from the
project's first simulator) failed the target on two of the four: with α_slow = 0.01 the
slow EMA hardly moves in a few hundred reports, so LP measures the total gain since
the start and keeps favouring distributions that are already learned, and a softmax at
0.25 on ranks puts most of the batch on one or two distributions picked from noisy
per-report success. α 0.2 / 0.05 gives time constants of 5 and 20 reports; temperature
1.0 keeps every distribution within a factor e of the best before mixing; the
reweighting (θ = 0.1) made the remaining learner (many distributions, most prompts
zero-variance, hard ones that move late) reach the target in every seed.

**(ours)** Both EMAs start at the first observation of d (not at 0), so a distribution's
first report does not look like progress from 0 to its success rate; LP needs a second
report to become non-zero. Both EMAs follow the raw observation (Syllabus smooths the
slow one from the fast one; the doc and our health signals do not).

From LP to P:
1. normalise to [0, 1]. `rank` **(ours, default)**: r_d = (average rank of LP_d) / (D − 1).
   It is scale-free and robust: early LPs are tiny and noisy, one outlier would squash
   every other distribution to ~0 under min-max, and with ranks the temperature keeps
   one meaning however the scale of LP drifts. `minmax`: (LP − min)/(max − min)
   keeps how much larger one LP is than another, for users who want that.
2. sharpen: softmax(score / temperature); temperature = 1.0 **(ours)** gives the best
   distribution e ≈ 2.7 times the worst before mixing: LP from per-report success is
   noisy, and a sharper softmax (0.25: e^4 ≈ 55) bets the batch on that noise.
3. mix with ε = 0.1 uniform over distributions: P = (1 − ε)·softmax + ε/D, so every
   distribution keeps at least ε/D and its LP estimate stays fresh.

**(ours)** A distribution never reported has no LP estimate; it is treated optimistically:
it ranks above every reported one under `rank` and scores 1 (the maximum) under
`minmax`, so it is tried early, as DUMP's exploration bonus does. When all reported LPs
are equal (e.g. after one report) they get score 0 under min-max and share the average
rank under `rank`; in both cases P over them is uniform. Before any report every
distribution is unseen and P is uniform over distributions (not over indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.strategies.allocation import LearningProgressState
from paceline_server.strategies.base import ProposeContext, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.kernels import softmax
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals

Normalization = Literal["rank", "minmax"]


@dataclass(frozen=True)
class LearningProgressParams(DistributionParams):
    """`alpha_fast` > `alpha_slow`, both in (0, 1]; `temperature` > 0; `epsilon` in
    [0, 1]; `p_theta` in (0, 0.5] (0.5: no reweighting)."""

    alpha_fast: float = 0.2
    alpha_slow: float = 0.05
    normalization: Normalization = "rank"
    temperature: float = 1.0
    epsilon: float = 0.1
    p_theta: float = 0.1

    def __post_init__(self) -> None:
        require(0.0 < self.alpha_fast <= 1.0,
                f"alpha_fast must be in (0, 1]; got {self.alpha_fast!r}", "alpha_fast")
        require(0.0 < self.alpha_slow <= 1.0,
                f"alpha_slow must be in (0, 1]; got {self.alpha_slow!r}", "alpha_slow")
        require(self.alpha_slow < self.alpha_fast,
                f"alpha_slow ({self.alpha_slow!r}) must be smaller than alpha_fast "
                f"({self.alpha_fast!r}), else learning progress is always 0", "alpha_slow")
        require(self.temperature > 0.0,
                f"temperature must be positive; got {self.temperature!r}", "temperature")
        require(0.0 <= self.epsilon <= 1.0,
                f"epsilon must be in [0, 1]; got {self.epsilon!r}", "epsilon")
        require(0.0 < self.p_theta <= 0.5,
                f"p_theta must be in (0, 0.5]; got {self.p_theta!r}", "p_theta")


def rank_scores(values: np.ndarray) -> np.ndarray:
    """Average rank (ties share the mean of their positions) scaled to [0, 1]."""
    n = values.size
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    average = first + (counts - 1) / 2.0
    return np.asarray(average[inverse] / (n - 1), dtype=np.float64)


def reweight(p: np.ndarray, theta: float) -> np.ndarray:
    """r(p) = p(1 − θ) / (p + θ(1 − 2p)): steep near 0, identity at θ = 0.5."""
    return np.asarray(p * (1.0 - theta) / (p + theta * (1.0 - 2.0 * p)))


def normalized_scores(progress: np.ndarray, seen: np.ndarray,
                      normalization: Normalization) -> np.ndarray:
    """LP mapped to [0, 1]; unseen distributions score 1 (optimism)."""
    if normalization == "rank":
        return rank_scores(np.where(seen, progress, np.inf))
    scores = np.ones(progress.size, dtype=np.float64)
    if seen.any():
        observed = progress[seen]
        low, high = float(observed.min()), float(observed.max())
        scores[seen] = (observed - low) / (high - low) if high > low else 0.0
    return scores


class LearningProgressSampler(DistributionSampler[LearningProgressState,
                                                  LearningProgressParams]):
    name = "learning_progress"
    params_type = LearningProgressParams
    state_type = LearningProgressState

    def init_state(self, rng: np.random.Generator) -> LearningProgressState:
        d = self.layout.num_distributions
        return LearningProgressState(ema_fast=np.zeros(d), ema_slow=np.zeros(d),
                                     reports=np.zeros(d, dtype=np.int64))

    def update(self, state: LearningProgressState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        num = self.layout.num_distributions
        count = np.bincount(signals.distribution, minlength=num)
        touched = np.flatnonzero(count)
        total = np.bincount(signals.distribution, weights=signals.success, minlength=num)
        observed = total[touched] / count[touched]
        first = state.reports[touched] == 0
        fast = state.ema_fast[touched]
        slow = state.ema_slow[touched]
        a_fast, a_slow = self.params.alpha_fast, self.params.alpha_slow
        state.ema_fast[touched] = np.where(first, observed, fast + a_fast * (observed - fast))
        state.ema_slow[touched] = np.where(first, observed, slow + a_slow * (observed - slow))
        state.reports[touched] += 1

    def progress(self, state: LearningProgressState) -> np.ndarray:
        theta = self.params.p_theta
        return np.abs(reweight(state.ema_fast, theta) - reweight(state.ema_slow, theta))

    def probabilities(self, state: LearningProgressState, ctx: ProposeContext) -> np.ndarray:
        params = self.params
        scores = normalized_scores(self.progress(state), state.reports > 0,
                                   params.normalization)
        sharpened = softmax(scores, params.temperature)
        return np.asarray((1.0 - params.epsilon) * sharpened + params.epsilon / scores.size)

    def describe(self, state: LearningProgressState) -> dict[str, Any]:
        return {
            "ema_fast": state.ema_fast.tolist(),
            "ema_slow": state.ema_slow.tolist(),
            "learning_progress": self.progress(state).tolist(),
            "reports": state.reports.tolist(),
        }

    def explain(self, state: LearningProgressState, ctx: ProposeContext) -> list[Reason]:
        """Learning progress, its normalised score, and the ε share every one gets."""
        params = self.params
        progress = self.progress(state)
        scores = normalized_scores(progress, state.reports > 0, params.normalization)
        eps = params.epsilon
        floor = eps / scores.size
        reasons = []
        for d in range(self.layout.num_distributions):
            terms: dict[str, float | None] = {
                "learning_progress": float(progress[d]), "score": float(scores[d]),
                "ema_fast": float(state.ema_fast[d]), "ema_slow": float(state.ema_slow[d]),
                "epsilon_share": floor, "temperature": params.temperature}
            if state.reports[d] == 0:
                clause = (f"it was never reported: score {number(scores[d])}, plus its "
                          f"exploration share ε/D = {number(floor)}")
            elif params.p_theta == 0.5:  # r is the identity: no reweighting
                clause = (f"its learning progress |fast - slow EMA of success| is "
                          f"{number(progress[d])} (fast {number(state.ema_fast[d])}, slow "
                          f"{number(state.ema_slow[d])}), score {number(scores[d])} after "
                          f"{params.normalization} normalisation, plus ε/D = {number(floor)}")
            else:  # the progress is taken between the reweighted EMAs, as the code does
                fast = float(reweight(state.ema_fast[d:d + 1], params.p_theta)[0])
                slow = float(reweight(state.ema_slow[d:d + 1], params.p_theta)[0])
                terms.update(reweighted_fast=fast, reweighted_slow=slow)
                clause = (f"its learning progress |ρ(fast) - ρ(slow)| is "
                          f"{number(progress[d])}, with the EMAs of success fast "
                          f"{number(state.ema_fast[d])} and slow "
                          f"{number(state.ema_slow[d])} reweighted by ρ (θ = "
                          f"{number(params.p_theta)}) to {number(fast)} and {number(slow)}; "
                          f"score {number(scores[d])} after {params.normalization} "
                          f"normalisation, plus ε/D = {number(floor)}")
            reasons.append(Reason(clause, terms))
        return reasons
