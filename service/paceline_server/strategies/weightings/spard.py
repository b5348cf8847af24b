"""`spard` weighting: SPARD's progress-aware weight adaptation, PAWA (ALGORITHMS.md,
"spard"; SPARD, 2026).

SPARD's public material says only that reward weights follow the *reliability* of each
objective's performance gains: objectives being learned now gain weight, saturated ones
stop being over-optimised. The algorithm's code is not public, so the concrete rule below
is **ours** (consistent with that description):

Reports are folded into fixed windows of `every_steps` (4) reports, as the released
launch script updates every 4 steps; "steps" are reports folded, i.e. the curriculum
clock, so every run feeding the curriculum advances it. When a window closes, for every
objective i:

    Δ_i  = mean of this window − mean of the previous window      (unit rewards u_i)
    se_i = sqrt(var_cur / n_cur + var_prev / n_prev)       (Welch's standard error)
    z_i  = clip(Δ_i / (se_i + eps), −3, 3)
    s_i  = mean over this window of u_i clipped to [0, 1]   (saturation)
    log w_i ← log w_i + η · (|z_i| / 3) · (1 − s_i)
    w = (1 − ε_w) · softmax(log w) + ε_w / k

with η = 0.5, ε_w = 0.05. An unsaturated objective whose score moves reliably gains
weight; noise (small |z|) or saturation (s → 1) leaves it, so it loses weight relative
to the others.

Why |z| and not z (ours, changed after the simulator showed a runaway): with a signed z
a regressing objective loses weight, which under conflicting objectives makes it regress
faster, so its z stays negative and its weight ends at the ε_w floor (the simulator's
accuracy fell to 0.54 while brevity took the weights). The *reliability* of a change is
what PAWA is after: a reliable gain says the objective is being learned now, a reliable
loss says the current updates act on it by trading it away; both mean the objective is
sensitive to the weights, so both earn weight. Under a pure trade-off the two moves
balance and the weights stay near the preference; an objective that has stopped moving
(noisy or saturated) still hands its weight to those that move. max(z, 0) was
considered: it stops the acceleration but not the drift (the progressing objective still
gains, the regressing one loses relatively, window after window).

Choices that are ours:
- *Gains on evaluation points* (`gains: auto`, the default): once the trainer sends
  `eval_objectives`, the windows hold those points instead (one observation per point,
  a window closes after `every_steps` points, reports without a point add nothing, and
  the rollout windows collected before are dropped). A training batch's mean mixes
  whichever prompts the sampler drew, so an objective learned across easy and hard
  prompts looks noisy there (small |z|) next to one learned as a global rate; held-out
  evaluation measures both on the same prompts every time. `gains: rollouts` never uses
  the points, `gains: eval` only them.
- *Observations* are per reported index: each index's group-mean reward is one sample
  of the window mean. Rollouts of one prompt are correlated and windows differ mostly in
  which prompts were drawn, so treating rollouts as independent would understate se_i
  and call noise "reliable". Variances are unbiased (ddof = 1) and se_i is the standard
  error of the difference of two independent window means.
- *Direction and scale*: windows hold the unit rewards of domain.scalarize (bounds and
  direction applied), so Δ > 0 always means progress and s_i uses the same numbers.
- *Windows* are kept as (count, mean, M2) per objective and merged per report with Chan
  et al.'s parallel update: the same information as sums and sums of squares, without
  their cancellation when rewards are large relative to their spread. The state has a
  fixed size: two windows, never a history.
- The first window only fills the "previous" slot; a window with fewer than 2
  observations gives no variance, and then z_i = 0 (no evidence, no move).
- The served weights are always (1 − ε_w)·softmax(log w) + ε_w/k, so every objective
  keeps at least ε_w/k and a window with z = 0 changes nothing. The initial log-weights
  invert that mixture at the user's preference `weights`, so it is served exactly
  when every entry is at least ε_w/k (smaller entries start at the floor ε_w/k).
- After each update the log-weights are shifted so their maximum is 0 (softmax is
  shift-invariant; this keeps them bounded) and clipped below at log(1e-12), far under
  what the ε_w mixture can show, so a long-neglected objective can still come back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from paceline_server.domain.scalarize import unit_rewards
from paceline_server.strategies.base import UpdateContext, WeightDecision, Weighting
from paceline_server.strategies.kernels import preference_vector, softmax
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import state_arrays

Z_CLIP = 3.0
LOG_FLOOR = math.log(1e-12)


#: Evaluation points per window at least: a gain's standard error needs two observations
#: in each window, so `every_steps: 1` with evaluation points closed windows of one
#: point that never moved the weights.
MIN_EVAL_WINDOW = 2


@dataclass(frozen=True)
class SpardWeightingParams:
    """`weights`: initial preference (None = equal); `every_steps`: reports per window
    (>= 1); `eta`: step size (>= 0); `epsilon_w`: uniform mixture in [0, 1); `eps`: added
    to the standard error (> 0) so identical windows give z = 0, not 0/0; `gains`: what
    the windows average — "auto" (the trainer's evaluation points once a report carries
    `eval_objectives`, the rollouts before), "rollouts" or "eval"."""

    weights: tuple[float, ...] | None = None
    every_steps: int = 4
    eta: float = 0.5
    epsilon_w: float = 0.05
    eps: float = 1e-8
    gains: Literal["auto", "rollouts", "eval"] = "auto"

    def __post_init__(self) -> None:
        if self.weights is not None:
            require(all(w >= 0 for w in self.weights), "weights must be non-negative",
                    "weights")
            require(sum(self.weights) > 0, "weights must not all be zero", "weights")
        require(self.every_steps >= 1,
                f"every_steps must be at least 1; got {self.every_steps!r}", "every_steps")
        require(self.eta >= 0.0, f"eta must be non-negative; got {self.eta!r}", "eta")
        require(0.0 <= self.epsilon_w < 1.0,
                f"epsilon_w must be in [0, 1); got {self.epsilon_w!r}", "epsilon_w")
        require(self.eps > 0.0, f"eps must be positive; got {self.eps!r}", "eps")


@dataclass
class SpardWeightingState:
    #: 2: windows hold unit rewards (or evaluation points), PAWA moves by |z|, `on_eval`.
    state_version: ClassVar[int] = 2

    log_weights: np.ndarray  # float64 [k], max 0 after every update
    cur_count: int  # observations (reported indices) in the open window
    cur_mean: np.ndarray  # float64 [k] group-mean unit reward, open window
    cur_m2: np.ndarray  # float64 [k] sum of squared deviations, open window
    cur_norm_sum: np.ndarray  # float64 [k] sum of normalised group means, open window
    prev_count: int  # the last closed window
    prev_mean: np.ndarray  # float64 [k]
    prev_m2: np.ndarray  # float64 [k]
    updates: int  # windows that moved the weights
    last_gain: np.ndarray  # float64 [k] Δ of the last update (for inspection)
    last_se: np.ndarray  # float64 [k]
    last_z: np.ndarray  # float64 [k]
    last_saturation: np.ndarray  # float64 [k]
    on_eval: bool  # the windows hold evaluation points (one observation per point)


def mix(log_weights: np.ndarray, epsilon_w: float) -> np.ndarray:
    """(1 − ε_w)·softmax(log w) + ε_w/k: the served weights."""
    return np.asarray((1.0 - epsilon_w) * softmax(log_weights) + epsilon_w / log_weights.size)


def initial_log_weights(preference: np.ndarray, epsilon_w: float) -> np.ndarray:
    """Log-weights whose mixture is the preference (entries below ε_w/k are raised to it)."""
    k = preference.size
    inner = np.maximum(preference - epsilon_w / k, 0.0)
    inner = inner / inner.sum() if inner.sum() > 0 else np.full(k, 1.0 / k)
    logs = np.log(np.maximum(inner, 1e-300))
    logs -= logs.max()
    return np.asarray(np.maximum(logs, LOG_FLOOR))


def merge_window(count: int, mean: np.ndarray, m2: np.ndarray,
                 values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s merge of the rows of `values` [n, k] into (count, mean, M2)."""
    n_b = values.shape[0]
    if n_b == 0:
        return count, mean, m2
    mean_b = values.mean(axis=0)
    m2_b = ((values - mean_b) ** 2).sum(axis=0)
    total = count + n_b
    delta = mean_b - mean
    new_mean = mean + delta * (n_b / total)
    new_m2 = m2 + m2_b + delta * delta * (count * n_b / total)
    return total, np.asarray(new_mean), np.asarray(new_m2)


class SpardWeighting(Weighting[SpardWeightingState, SpardWeightingParams]):
    name = "spard"
    params_type = SpardWeightingParams
    state_type = SpardWeightingState

    def __init__(self, objectives: Any, params: SpardWeightingParams) -> None:
        super().__init__(objectives, params)
        self.preference = preference_vector(params.weights, self.num_objectives, "spard")

    def init_state(self, rng: np.random.Generator) -> SpardWeightingState:
        k = self.num_objectives

        def zeros() -> np.ndarray:
            return np.zeros(k, dtype=np.float64)

        return SpardWeightingState(
            log_weights=initial_log_weights(self.preference, self.params.epsilon_w),
            cur_count=0, cur_mean=zeros(), cur_m2=zeros(), cur_norm_sum=zeros(),
            prev_count=0, prev_mean=zeros(), prev_m2=zeros(), updates=0,
            last_gain=zeros(), last_se=zeros(), last_z=zeros(), last_saturation=zeros(),
            on_eval=False,
        )

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """Version 1 (windows of raw rewards, the weights moved by the signed z) -> 2:
        the log-weights, the update count and the last update's figures are kept; the
        windows, which hold raw means the new rule cannot compare with unit rewards,
        start empty (the next move comes two windows later). Without it a curriculum of
        that release whose log was pruned could not load."""
        if old_version != 1:
            return super().migrate_state(old_version, arrays)
        state = self.init_state(np.random.default_rng(0))
        try:
            state.log_weights = np.asarray(arrays["log_weights"], dtype=np.float64)
            state.updates = int(arrays["updates"])
            for name in ("last_gain", "last_se", "last_z", "last_saturation"):
                setattr(state, name, np.asarray(arrays[name], dtype=np.float64))
        except (KeyError, TypeError, ValueError):
            return super().migrate_state(old_version, arrays)
        return state_arrays(state)

    def update(self, state: SpardWeightingState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        """Fold the report into the open window (O(report)); close it, and move the
        weights, when this report completes `every_steps` reports of the clock (rollout
        windows) or the window holds `every_steps` evaluation points (eval windows)."""
        evals = signals.report.eval_objectives
        if self.params.gains != "rollouts" and evals is not None:
            if not state.on_eval:  # rollout means and evaluation points do not compare
                self._reset_windows(state)
                state.on_eval = True
            point = unit_rewards(evals[None, :], self.objectives)
            state.cur_count, state.cur_mean, state.cur_m2 = merge_window(
                state.cur_count, state.cur_mean, state.cur_m2, point)
            state.cur_norm_sum = state.cur_norm_sum + np.clip(point[0], 0.0, 1.0)
            if state.cur_count >= max(self.params.every_steps, MIN_EVAL_WINDOW):
                self._close_window(state)
            return
        if state.on_eval or self.params.gains == "eval":
            return  # eval windows: a report without a point adds nothing
        unit = signals.group_mean(signals.unit_rewards)
        state.cur_count, state.cur_mean, state.cur_m2 = merge_window(
            state.cur_count, state.cur_mean, state.cur_m2, unit)
        normalized = np.clip(unit, 0.0, 1.0)
        state.cur_norm_sum = state.cur_norm_sum + normalized.sum(axis=0)
        if (ctx.clock + 1) % self.params.every_steps == 0:
            self._close_window(state)

    def _close_window(self, state: SpardWeightingState) -> None:
        params = self.params
        n_cur, n_prev = state.cur_count, state.prev_count
        if n_cur >= 2 and n_prev >= 2:
            var_cur = state.cur_m2 / (n_cur - 1)
            var_prev = state.prev_m2 / (n_prev - 1)
            gain = state.cur_mean - state.prev_mean
            se = np.sqrt(var_cur / n_cur + var_prev / n_prev)
            z = np.clip(gain / (se + params.eps), -Z_CLIP, Z_CLIP)
            saturation = np.clip(state.cur_norm_sum / n_cur, 0.0, 1.0)
            logs = state.log_weights + params.eta * (np.abs(z) / Z_CLIP) * (1.0 - saturation)
            logs -= logs.max()
            state.log_weights = np.maximum(logs, LOG_FLOOR)
            state.updates += 1
            state.last_gain, state.last_se = gain, se
            state.last_z, state.last_saturation = z, saturation
        state.prev_count, state.prev_mean, state.prev_m2 = n_cur, state.cur_mean, state.cur_m2
        k = self.num_objectives
        state.cur_count = 0
        state.cur_mean, state.cur_m2 = np.zeros(k), np.zeros(k)
        state.cur_norm_sum = np.zeros(k)

    def _reset_windows(self, state: SpardWeightingState) -> None:
        k = self.num_objectives
        state.cur_count = state.prev_count = 0
        state.cur_mean, state.cur_m2 = np.zeros(k), np.zeros(k)
        state.prev_mean, state.prev_m2 = np.zeros(k), np.zeros(k)
        state.cur_norm_sum = np.zeros(k)

    def current(self, state: SpardWeightingState) -> WeightDecision:
        return WeightDecision(weights=mix(state.log_weights, self.params.epsilon_w))

    def describe(self, state: SpardWeightingState) -> dict[str, Any]:
        return {
            "weights": mix(state.log_weights, self.params.epsilon_w).tolist(),
            "log_weights": state.log_weights.tolist(),
            "updates": state.updates,
            "window_count": state.cur_count,
            "previous_window_count": state.prev_count,
            "last_gain": state.last_gain.tolist(),
            "last_standard_error": state.last_se.tolist(),
            "last_z": state.last_z.tolist(),
            "last_saturation": state.last_saturation.tolist(),
            "gains_from": "eval" if state.on_eval else "rollouts",
        }
