"""`uniform`: every index equally likely (P_d = n_d / N); the baseline every adaptive
sampler must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paceline_server.domain.explanation import Reason
from paceline_server.strategies.base import ProposeContext, StatelessState, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.signals import ReportSignals


@dataclass(frozen=True)
class UniformParams(DistributionParams):
    pass


class UniformSampler(DistributionSampler[StatelessState, UniformParams]):
    name = "uniform"
    params_type = UniformParams
    state_type = StatelessState

    def init_state(self, rng: np.random.Generator) -> StatelessState:
        return StatelessState()

    def update(self, state: StatelessState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        return None

    def probabilities(self, state: StatelessState, ctx: ProposeContext) -> np.ndarray:
        sizes = self.layout.sizes.astype(np.float64)
        return np.asarray(sizes / sizes.sum())

    def explain(self, state: StatelessState, ctx: ProposeContext) -> list[Reason]:
        """Uniform over indices: the share is the distribution's share of the data."""
        total = int(self.layout.sizes.sum())
        return [Reason(f"sampling is uniform over indices and it holds {int(size)} of the "
                       f"{total} indices", {"size": float(size),
                                            "data_share": float(size) / total})
                for size in self.layout.sizes]
