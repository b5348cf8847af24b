"""`temperature`: temperature sampling with a Cooldown schedule (ALGORITHMS.md,
"temperature"; "Upsample or Upweight? Balanced Training on Heavily Imbalanced
Datasets", 2024).

P_d(T) = n_d^(1/T) / Σ_e n_e^(1/T), computed as a softmax of log(n_d)/T so huge sizes
and tiny temperatures cannot overflow (n^(1/T) itself would). T = 1 is proportional to
size, T → ∞ uniform over distributions. A high T early (T0 = 5) lets the small distributions
be learned fast; cooling to T1 = 1 later stops them from being over-fitted.

Schedule (the temperature follows the *asking run's* step t, `ctx.step`), with S the
planned steps and `start` the step where the change begins:
- `constant`: T = T0 at every step (T1 is unused).
- `step`: T = T0 for t < start, T1 from t = start on.
- `linear`: T = T0 up to `start`, then T moves linearly to T1, reached at t = S.
- `cosine`: like `linear` with a half-cosine: T = T1 + (T0 - T1)·(1 + cos(π·u))/2,
  u = (t - start)/(S - start).
Past S the temperature stays at T1. The schedule interpolates T itself, not 1/T.
**(ours)** `start` defaults to 50 % of S (S // 2) for every schedule: the paper's recipe
is a high-temperature phase followed by a cooldown, so `linear` and `cosine` smooth the
switch over the second half instead of starting to cool at step 0. When start = S the
smooth schedules switch at S like `step`.

Mode `upsample` samples with P(T). Mode `upweight` samples proportionally (P(1)) and
gives every index of distribution d the loss weight w_d = P_d(T)/P_d(1), the importance
weight: its expectation under P(1) is 1 and the expected gradient equals the upsampled
one, with higher variance under SGD (the paper's point). A batch's mean weight is 1 only
on average (not divided by each batch's mean: that self-normalisation biased small
batches toward P(1)).

State: only the step of the latest report, so `describe` can say which temperature is
current **(ours)**; `probabilities` always follows the step of the run that asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.base import ProposeContext, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals

Schedule = Literal["constant", "step", "linear", "cosine"]
Mode = Literal["upsample", "upweight"]
#: Smallest temperature: keeps every log-probability finite (|log n_d - log n_e| <= 22 for
#: N < 2^31), so neither P nor the loss weights can become NaN.
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class TemperatureParams(DistributionParams):
    """`t0`/`t1`: start and end temperatures (>= 1e-6); `steps`: planned steps S (>= 1);
    `start`: step where the schedule begins to change (in [0, S]; None = S // 2)."""

    t0: float = 5.0
    t1: float = 1.0
    schedule: Schedule = "step"
    steps: int = 1000
    start: int | None = None
    mode: Mode = "upsample"

    def __post_init__(self) -> None:
        require(self.t0 >= MIN_TEMPERATURE,
                f"t0 must be at least {MIN_TEMPERATURE:g}; got {self.t0!r}", "t0")
        require(self.t1 >= MIN_TEMPERATURE,
                f"t1 must be at least {MIN_TEMPERATURE:g}; got {self.t1!r}", "t1")
        require(self.steps >= 1, f"steps must be at least 1; got {self.steps!r}", "steps")
        if self.start is not None:
            require(0 <= self.start <= self.steps,
                    f"start must be in [0, steps={self.steps}]; got {self.start!r}", "start")

    @property
    def switch_step(self) -> int:
        return self.steps // 2 if self.start is None else self.start


@dataclass
class TemperatureState:
    last_step: int  # step of the latest report (0 before any)


def temperature_at(params: TemperatureParams, step: int) -> float:
    """The scheduled temperature at `step`."""
    if params.schedule == "constant":
        return params.t0
    start = params.switch_step
    if step < start:
        return params.t0
    if params.schedule == "step" or step >= params.steps:
        return params.t1
    u = (step - start) / (params.steps - start)  # start < steps here, u in [0, 1)
    if params.schedule == "linear":
        return params.t0 + (params.t1 - params.t0) * u
    return params.t1 + (params.t0 - params.t1) * 0.5 * (1.0 + math.cos(math.pi * u))


def log_temperature_probabilities(log_sizes: np.ndarray, temperature: float) -> np.ndarray:
    """log P_d(T) = log(n_d)/T - logsumexp(log(n)/T), shifted by the largest size before
    dividing so nothing overflows."""
    scaled = (log_sizes - log_sizes.max()) / temperature
    return np.asarray(scaled - math.log(float(np.exp(scaled).sum())))


class TemperatureSampler(DistributionSampler[TemperatureState, TemperatureParams]):
    name = "temperature"
    params_type = TemperatureParams
    state_type = TemperatureState

    def __init__(self, layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                 params: TemperatureParams) -> None:
        super().__init__(layout, objectives, params)
        self.log_sizes = np.log(layout.sizes.astype(np.float64))
        self.log_proportional = log_temperature_probabilities(self.log_sizes, 1.0)

    def resolved_params(self) -> dict[str, Any]:
        """`start: null` as the step it stands for (steps // 2)."""
        return {**super().resolved_params(), "start": self.params.switch_step}

    def init_state(self, rng: np.random.Generator) -> TemperatureState:
        return TemperatureState(last_step=0)

    def update(self, state: TemperatureState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        state.last_step = int(signals.report.step)

    def log_target(self, step: int) -> np.ndarray:
        """log P(T) at the scheduled temperature of `step`."""
        return log_temperature_probabilities(self.log_sizes, temperature_at(self.params, step))

    def probabilities(self, state: TemperatureState, ctx: ProposeContext) -> np.ndarray:
        if self.params.mode == "upweight":
            return np.exp(self.log_proportional)
        return np.exp(self.log_target(ctx.step))

    def loss_weights(self, state: TemperatureState, distributions: np.ndarray,
                     ctx: ProposeContext) -> np.ndarray | None:
        if self.params.mode == "upsample":
            return None
        # The importance weight itself, not divided by the batch's mean: under P(1) its
        # expectation is 1 and the weighted loss's is the upsampled one, whatever the
        # batch size. Dividing by each batch's mean (as before) biased it toward P(1):
        # with sizes 1000 : 10, T = 5 and batches of 8, the small distribution carried
        # 6 % of the gradient instead of 29 %. Taken from log space: it lies in
        # [0, 1 / P_d(1)], so it cannot overflow; where P_d(T) underflows it is 0.
        return np.exp((self.log_target(ctx.step) - self.log_proportional)[distributions])

    def describe(self, state: TemperatureState) -> dict[str, Any]:
        step = state.last_step
        return {
            "step": step,
            "temperature": temperature_at(self.params, step),
            "mode": self.params.mode,
            "target_probabilities": np.exp(self.log_target(step)).tolist(),
        }

    def explain(self, state: TemperatureState, ctx: ProposeContext) -> list[Reason]:
        """The size-based share at the scheduled temperature (upsample), or the
        proportional share with the temperature carried by a loss weight (upweight)."""
        temperature = temperature_at(self.params, ctx.step)
        target = np.exp(self.log_target(ctx.step))
        proportional = np.exp(self.log_proportional)
        reasons = []
        for d, size in enumerate(self.layout.sizes):
            terms: dict[str, float | None] = {
                "temperature": temperature, "size": float(size),
                "proportional_share": float(proportional[d]),
                "target_share": float(target[d])}
            if self.params.mode == "upweight":
                weight = float(target[d] / proportional[d])
                terms["loss_weight"] = weight
                clause = (f"it is sampled in proportion to its {int(size)} indices and its "
                          f"loss weight {number(weight)} carries the temperature-"
                          f"{number(temperature)} share {number(target[d])} (step "
                          f"{ctx.step}, {self.params.schedule} schedule)")
            else:
                clause = (f"its {int(size)} indices give n^(1/T) / Σ n^(1/T) = "
                          f"{number(target[d])} at temperature T = {number(temperature)} "
                          f"(step {ctx.step}, {self.params.schedule} schedule; proportional "
                          f"would be {number(proportional[d])})")
            reasons.append(Reason(clause, terms))
        return reasons
