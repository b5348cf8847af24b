"""`fixed`: a static preference vector over objectives (normalised to sum 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paceline_server.strategies.base import (
    StatelessState,
    UpdateContext,
    WeightDecision,
    Weighting,
)
from paceline_server.strategies.kernels import preference_vector
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals


@dataclass(frozen=True)
class FixedParams:
    """`weights`: one non-negative number per objective (not all zero), or None for equal
    weights. Given weights are normalised to the simplex."""

    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.weights is not None:
            require(all(w >= 0 for w in self.weights), "weights must be non-negative",
                    "weights")
            require(sum(self.weights) > 0, "weights must not all be zero", "weights")


class FixedWeighting(Weighting[StatelessState, FixedParams]):
    name = "fixed"
    params_type = FixedParams
    state_type = StatelessState

    def __init__(self, objectives: Any, params: FixedParams) -> None:
        super().__init__(objectives, params)
        self.weights = preference_vector(params.weights, self.num_objectives, "fixed")

    def init_state(self, rng: np.random.Generator) -> StatelessState:
        return StatelessState()

    def update(self, state: StatelessState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        return None

    def current(self, state: StatelessState) -> WeightDecision:
        return WeightDecision(weights=self.weights.copy())
