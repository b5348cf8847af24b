"""`hypervolume`: hypervolume-guided reward adaptation (Lu et al., 2025; checked against
`ray_trainer_vanilla.py` and `hypervolumn_contribution.py` of the authors' code).

As in the reference, the user's preference w stays fixed and the policy's objective point
f_t is scored after every step against a buffer holding the reference point and every
point that expanded the front (see `pareto`). Its contribution
ΔHV_t = HV(B ∪ {f_t}) − HV(B), clipped at 0, gives the meta-reward
m_t = 0.5 + 1.5 tanh(ΔHV_t), served as `reward_scale` (m = 1 until the first point is
scored); f_t joins the buffer when ΔHV_t > 0. Objectives are normalised to [0, 1] by their
bounds and turned into maximisation first, so HV lives in the unit cube.

Note: the trainer multiplies the scalarised reward by m. Under GRPO's per-group std
normalisation a global reward scale cancels out, so `mode: scale` changes nothing there;
m matters for REINFORCE/RLOO and for unnormalised (Dr.GRPO-style) advantages. That is
why the default mode is `steer` (ours), which also moves the weights and so acts under
every advantage estimator; `scale` is the reference's method, for trainers whose
advantages keep the reward's scale.

Choices marked (ours):
- Points: the report's `eval_objectives` (the trainer's validation means), else the mean
  reward per objective over the report's rollouts, optionally smoothed by an EMA
  (`ema`: weight of the previous value, 0 = none). `points: eval` uses only evaluated
  reports (others leave the state untouched), `points: rollouts` never uses
  `eval_objectives`. Use `eval` when the trainer evaluates only every few steps: rollout
  means and validation means are different quantities and should not share a front.
- Reference: per objective, the declared `ObjectiveSpec.reference` when given, else the
  first point's value. When every objective declares one, the first point is scored like
  any other; otherwise it only fixes the reference (as the reference code's evaluation
  before training) and m stays 1.
- `mode: steer` also moves w toward the objectives whose improvement would expand the
  front most: g_i = HV(B ∪ {f + h e_i}) − HV(B ∪ {f}) (f + h e_i clipped to the bounds, so
  an objective at its upper bound gains nothing), w ← (1 − η) w + η g / Σg, no move when
  Σg = 0. This changes the direction of learning even under GRPO.
- History: the last `HISTORY` (clock, HV of the buffer after the update, normalised point)
  records, in a ring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from paceline_server.domain.inspection import HypervolumeRecord
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.base import UpdateContext, WeightDecision, Weighting
from paceline_server.strategies.kernels import preference_vector
from paceline_server.strategies.params import require
from paceline_server.strategies.pareto import ParetoBuffer, hypervolume, normalize
from paceline_server.strategies.signals import ReportSignals

HISTORY = 1024  # hypervolume records kept for inspection
MAX_CAPACITY = 4096  # HV cost grows with the front size (steeply beyond 3 objectives)


@dataclass(frozen=True)
class HypervolumeParams:
    """`weights`: the preference (equal when None); `mode`: "steer" (default, ours: the
    meta-reward and a move of w) or "scale" (the reference's meta-reward only);
    `points`: where f_t comes from; `ema`: smoothing of rollout-mean points; `h`,
    `eta`: the steer step and rate; `capacity`: most front points kept."""

    weights: tuple[float, ...] | None = None
    mode: Literal["scale", "steer"] = "steer"
    points: Literal["auto", "eval", "rollouts"] = "auto"
    ema: float = 0.0
    h: float = 0.01
    eta: float = 0.1
    capacity: int = 256

    def __post_init__(self) -> None:
        if self.weights is not None:
            require(all(w >= 0 for w in self.weights), "weights must be non-negative",
                    "weights")
            require(sum(self.weights) > 0, "weights must not all be zero", "weights")
        require(0 <= self.ema < 1, f"ema must be in [0, 1); got {self.ema}", "ema")
        require(0 < self.h <= 1, f"h must be in (0, 1]; got {self.h}", "h")
        require(0 <= self.eta <= 1, f"eta must be in [0, 1]; got {self.eta}", "eta")
        require(1 <= self.capacity <= MAX_CAPACITY,
                f"capacity must be in [1, {MAX_CAPACITY}]; got {self.capacity}", "capacity")


@dataclass
class HypervolumeState:
    weights: np.ndarray  # float64 [k] on the simplex
    scale: float  # m_t
    contribution: float  # last ΔHV (for inspection)
    buffer: ParetoBuffer
    smoothed: np.ndarray  # float64 [k]: EMA of rollout-mean points (raw units)
    has_smoothed: bool
    history_clock: np.ndarray  # int64 [HISTORY]
    history_hv: np.ndarray  # float64 [HISTORY]
    history_point: np.ndarray  # float64 [HISTORY, k], normalised
    history_count: int  # records ever written


def meta_reward(contribution: float) -> float:
    """m = 0.5 + 1.5 tanh(ΔHV): 0.5 for no progress, approaching 2 for large progress."""
    return 0.5 + 1.5 * math.tanh(max(0.0, contribution))


class HypervolumeWeighting(Weighting[HypervolumeState, HypervolumeParams]):
    name = "hypervolume"
    params_type = HypervolumeParams
    state_type = HypervolumeState

    def __init__(self, objectives: tuple[ObjectiveSpec, ...],
                 params: HypervolumeParams) -> None:
        super().__init__(objectives, params)
        self.preference = preference_vector(params.weights, self.num_objectives,
                                            "hypervolume")
        declared = np.array([np.nan if o.reference is None else o.reference
                             for o in objectives], dtype=np.float64)
        self.declared = ~np.isnan(declared)
        self.declared_reference = normalize(declared, objectives)

    def state_bytes(self) -> int:
        """The default's vectors and history, plus the front buffer: `capacity` points of
        k numbers and their insertion order (up to 2 MiB at `MAX_CAPACITY` and 64
        objectives, which the default left out)."""
        return super().state_bytes() + 8 * self.params.capacity * (self.num_objectives + 1)

    def init_state(self, rng: np.random.Generator) -> HypervolumeState:
        k = self.num_objectives
        buffer = ParetoBuffer.empty(self.params.capacity, k)
        if self.declared.all():
            buffer.set_reference(self.declared_reference)
        return HypervolumeState(
            weights=self.preference.copy(), scale=1.0, contribution=0.0, buffer=buffer,
            smoothed=np.zeros(k), has_smoothed=False,
            history_clock=np.zeros(HISTORY, dtype=np.int64), history_hv=np.zeros(HISTORY),
            history_point=np.zeros((HISTORY, k)), history_count=0)

    def _point(self, state: HypervolumeState, signals: ReportSignals) -> np.ndarray | None:
        """f_t, normalised; None when this report carries no usable point."""
        evals = signals.report.eval_objectives
        if evals is not None and self.params.points != "rollouts":
            return normalize(evals, self.objectives)
        if self.params.points == "eval":
            return None
        raw = np.asarray(signals.objective_means, dtype=np.float64)
        if self.params.ema > 0:
            if state.has_smoothed:
                raw = self.params.ema * state.smoothed + (1 - self.params.ema) * raw
            state.smoothed = raw.copy()
            state.has_smoothed = True
        return normalize(raw, self.objectives)

    def update(self, state: HypervolumeState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        point = self._point(state, signals)
        if point is None:
            return
        buffer = state.buffer
        if not buffer.has_reference:
            buffer.set_reference(np.where(self.declared, self.declared_reference, point))
            self._record(state, ctx.clock, point)
            return
        front = buffer.front.copy()
        base = hypervolume(front, buffer.reference)
        with_point = hypervolume(np.vstack([front, point]), buffer.reference)
        state.contribution = max(0.0, with_point - base)
        state.scale = meta_reward(state.contribution)
        if self.params.mode == "steer":
            self._steer(state, front, point, with_point)
        if state.contribution > 0:
            buffer.add(point)
        self._record(state, ctx.clock, point)

    def _steer(self, state: HypervolumeState, front: np.ndarray, point: np.ndarray,
               with_point: float) -> None:
        reference = state.buffer.reference
        steps = np.minimum(point[None, :] + self.params.h * np.eye(self.num_objectives), 1.0)
        gains = np.array([max(0.0, hypervolume(np.vstack([front, moved]), reference)
                              - with_point) for moved in steps])
        total = float(gains.sum())
        if total > 0:
            eta = self.params.eta
            weights = (1 - eta) * state.weights + eta * gains / total
            state.weights = weights / weights.sum()

    def _record(self, state: HypervolumeState, clock: int, point: np.ndarray) -> None:
        slot = state.history_count % HISTORY
        state.history_clock[slot] = clock
        state.history_hv[slot] = state.buffer.hypervolume()
        state.history_point[slot] = point
        state.history_count += 1

    def current(self, state: HypervolumeState) -> WeightDecision:
        return WeightDecision(weights=state.weights.copy(), scale=state.scale)

    def hypervolume_history(self, state: HypervolumeState) -> tuple[HypervolumeRecord, ...]:
        count = min(state.history_count, HISTORY)
        start = state.history_count - count
        return tuple(
            HypervolumeRecord(clock=int(state.history_clock[s]),
                              hypervolume=float(state.history_hv[s]),
                              point=tuple(float(v) for v in state.history_point[s]))
            for s in ((start + i) % HISTORY for i in range(count)))

    def latest_hypervolume(self, state: HypervolumeState) -> float | None:
        if state.history_count == 0:
            return None
        return float(state.history_hv[(state.history_count - 1) % HISTORY])

    def describe(self, state: HypervolumeState) -> dict[str, Any]:
        buffer = state.buffer
        return {"mode": self.params.mode, "points": self.params.points,
                "front_size": buffer.count,
                "reference": buffer.reference.tolist() if buffer.has_reference else None,
                "hypervolume": buffer.hypervolume(), "contribution": state.contribution}
