"""`gradient`: gradient-based reward-weight optimisation (Lu et al., 2025; checked against
`ray_trainer_optimization.py` of the authors' code).

Each objective's influence is the row sum of the Gram matrix of per-objective policy
gradients, I_i = Σ_j ⟨g_i, g_j⟩: how much a step along g_i also helps every objective,
itself included. η·I is summed over `accumulation_steps` reports and averaged (the
reference sums influences and divides by the step count before multiplying by
lr / regularization), then

    log w ← log w + η Ī,   w ← softmax(log w),   w ← floor(w, w_min).

- When the report carries `grad_products` (the k×k Gram matrix the trainer computed, e.g.
  on the last layers or LoRA parameters) it is used as is, with `eta` (0.1: the
  reference's lr 1e-6 / regularization 1e-5 on raw Gram entries). Sign convention:
  g_i is the ascent direction of objective i, the policy gradient computed with that
  objective's advantages of its *unit* reward (domain.scalarize), so a minimised
  objective's g_i points toward smaller raw values; G_ij > 0 means a step on i also
  helps j. The example trainer and the TRL callback send it this way.
- Otherwise (ours) the Gram matrix is estimated from the rollouts: with group-normalised
  per-objective advantages A^i, G_ij = mean over rollouts of A^i A^j. A^i is built from
  the unit rewards (domain.scalarize), so for a minimised objective it is the advantage
  of −r_i: g_i is then the gradient of the reward the trainer optimises, and two
  objectives conflict (G_ij < 0) when the rollouts that are better on one are worse on
  the other, whatever their directions. This equals
  ⟨g_i, g_j⟩ up to a common factor if the score functions ∇log π of different rollouts
  are uncorrelated with equal norms (isotropy): then cross terms between rollouts vanish
  and each rollout contributes A^i A^j ‖∇log π‖². Real gradients are neither, so the proxy
  only tracks whether objectives agree or conflict on the same rollouts. The estimate is
  scaled so its largest |entry| is 1 (a Gram matrix's largest entry is on its diagonal,
  so this is also its largest entry) and used with `eta_proxy`.
- A report whose proxy is all zero (every group constant on every objective) carries no
  estimate: it moves nothing and does not count toward `accumulation_steps` (ours).
- Floor (ours; the reference has none): after the softmax, entries below w_min are set to
  w_min and the others are rescaled in proportion to share 1 − (#floored)·w_min, repeated
  until no rescaled entry falls below w_min. The result is on the simplex, every entry is
  ≥ w_min, and the ratios among unfloored entries are the softmax's. The floored vector is
  what the state keeps, so an objective at the floor climbs back from w_min as soon as its
  influence turns positive instead of from an ever smaller logit; the initial preference
  is floored the same way.
- Reports count as steps: the reference accumulates per trainer step, and a trainer sends
  one report per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.base import UpdateContext, WeightDecision, Weighting
from paceline_server.strategies.kernels import preference_vector, softmax
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import state_arrays

_HUGE = 1e300  # overflowing influences saturate instead of turning into NaN
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class GradientParams:
    """`weights`: the initial preference (equal when None); `eta` / `eta_proxy`: step
    sizes on the trainer's Gram matrix / on the rollout proxy; `accumulation_steps`:
    reports averaged per update; `w_min`: floor on every weight."""

    weights: tuple[float, ...] | None = None
    eta: float = 0.1
    eta_proxy: float = 0.5
    accumulation_steps: int = 1
    w_min: float = 0.01

    def __post_init__(self) -> None:
        if self.weights is not None:
            require(all(w >= 0 for w in self.weights), "weights must be non-negative",
                    "weights")
            require(sum(self.weights) > 0, "weights must not all be zero", "weights")
            require(self.w_min > 0 or all(w > 0 for w in self.weights),
                    "a zero weight needs w_min > 0 (log 0 would switch the objective off "
                    "for good)", "weights")
        require(self.eta >= 0, f"eta must be >= 0; got {self.eta}", "eta")
        require(self.eta_proxy >= 0, f"eta_proxy must be >= 0; got {self.eta_proxy}",
                "eta_proxy")
        require(1 <= self.accumulation_steps <= 100_000,
                f"accumulation_steps must be in [1, 100000]; got {self.accumulation_steps}",
                "accumulation_steps")
        require(0 <= self.w_min < 1, f"w_min must be in [0, 1); got {self.w_min}", "w_min")


@dataclass
class GradientState:
    #: 2: the proxy is built from unit rewards (a minimised objective counts negatively).
    state_version: ClassVar[int] = 2

    weights: np.ndarray  # float64 [k]: on the simplex, each >= w_min
    accumulated: np.ndarray  # float64 [k]: Σ η·I over the pending reports
    pending: int  # reports accumulated since the last update
    updates: int  # weight updates made
    last_influence: np.ndarray  # float64 [k]: I of the last counted report (inspection)


def apply_floor(weights: np.ndarray, w_min: float) -> np.ndarray:
    """Weights on the simplex with every entry >= w_min (needs k·w_min < 1): floored
    entries sit at w_min, the rest keep their ratios (see the module docstring)."""
    weights = np.asarray(weights, dtype=np.float64)
    if w_min <= 0:
        return weights / weights.sum()
    floored = np.zeros(weights.shape[0], dtype=bool)
    while True:  # at most k rounds: each adds at least one floored entry
        free = ~floored
        share = weights[free] * ((1.0 - w_min * floored.sum()) / weights[free].sum())
        low = share < w_min
        if not low.any():
            result = np.full(weights.shape[0], w_min)
            result[free] = share
            return result
        floored[np.flatnonzero(free)[low]] = True


def proxy_gram(signals: ReportSignals) -> np.ndarray:
    """G_ij = mean over rollouts of A^i A^j, scaled to max |entry| = 1 (all zeros when
    every group is constant)."""
    advantages = signals.objective_advantages
    gram = advantages.T @ advantages / advantages.shape[0]
    largest = float(np.abs(gram).max())
    return gram / largest if largest > 0 else np.zeros_like(gram)


class GradientWeighting(Weighting[GradientState, GradientParams]):
    name = "gradient"
    params_type = GradientParams
    state_type = GradientState

    def __init__(self, objectives: tuple[ObjectiveSpec, ...], params: GradientParams) -> None:
        super().__init__(objectives, params)
        k = self.num_objectives
        require(k * params.w_min < 1,
                f"w_min {params.w_min} leaves no room to move {k} objectives "
                f"(needs w_min < 1/{k})", "w_min")
        self.initial = apply_floor(preference_vector(params.weights, k, "gradient"),
                                   params.w_min)

    def init_state(self, rng: np.random.Generator) -> GradientState:
        k = self.num_objectives
        return GradientState(weights=self.initial.copy(), accumulated=np.zeros(k),
                             pending=0, updates=0, last_influence=np.zeros(k))

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Version 1 (the proxy built from raw rewards, so a minimised objective counted
        the wrong way) -> 2: the weights, the update count and the last influence are
        kept; the influence accumulated since the last update, summed under the old
        rule, is dropped (the next update comes `accumulation_steps` reports later).
        Without it a curriculum of that release whose log was pruned could not load."""
        if old_version != 1:
            return super().migrate_state(old_version, arrays)
        try:
            weights, updates = arrays["weights"], int(arrays["updates"])
            last = arrays["last_influence"]
        except (KeyError, TypeError, ValueError):
            return super().migrate_state(old_version, arrays)
        state = self.init_state(np.random.default_rng(0))
        state.weights = np.asarray(weights, dtype=np.float64)
        state.updates, state.last_influence = updates, np.asarray(last, dtype=np.float64)
        return state_arrays(state)

    def update(self, state: GradientState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        if signals.report.grad_products is not None:
            gram, eta = signals.report.grad_products, self.params.eta
        else:
            gram, eta = proxy_gram(signals), self.params.eta_proxy
            if not gram.any():
                return  # no estimate from this report
        with np.errstate(over="ignore", invalid="ignore"):
            influence = gram.sum(axis=1)
            state.accumulated = _finite(state.accumulated + eta * _finite(influence))
        state.last_influence = _finite(influence)
        state.pending += 1
        if state.pending < self.params.accumulation_steps:
            return
        step = state.accumulated / state.pending
        state.accumulated = np.zeros(self.num_objectives)
        state.pending = 0
        state.updates += 1
        if step.any():
            logits = np.log(np.maximum(state.weights, _TINY)) + step
            state.weights = apply_floor(softmax(logits), self.params.w_min)

    def current(self, state: GradientState) -> WeightDecision:
        return WeightDecision(weights=state.weights.copy())

    def describe(self, state: GradientState) -> dict[str, Any]:
        return {"influence": state.last_influence.tolist(), "pending": state.pending,
                "updates": state.updates}


def _finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values, nan=0.0, posinf=_HUGE, neginf=-_HUGE)
