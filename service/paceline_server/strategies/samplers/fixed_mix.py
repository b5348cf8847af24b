"""`fixed_mix`: a user-given mixture over distributions (ALGORITHMS.md, "uniform,
fixed_mix"). Useful as a hand-tuned baseline and to pin the mixture of a published recipe.

The mixture is given either as a list in layout order or as a mapping from distribution
name to probability. It must cover every distribution exactly once, be non-negative and
sum to 1 within 1e-6; it is then renormalised exactly so the served probabilities sum to
1 to machine precision. The layout is needed for the per-distribution checks, so they run
when the sampler is built (still raising `InvalidParams`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.base import ProposeContext, StatelessState, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.params import require
from paceline_server.strategies.signals import ReportSignals

SUM_TOLERANCE = 1e-6
_OWNER = "sampler fixed_mix"


@dataclass(frozen=True)
class FixedMixParams(DistributionParams):
    """`probabilities`: one number per distribution, as a list in layout order or as a
    mapping name -> probability (required)."""

    probabilities: tuple[float, ...] | dict[str, float] | None = None

    def __post_init__(self) -> None:
        require(self.probabilities is not None,
                "probabilities is required: a list in layout order or a mapping "
                "name -> probability", "probabilities")
        values = _values(self.probabilities)
        require(len(values) > 0, "probabilities must not be empty", "probabilities")
        require(all(v >= 0.0 for v in values), "probabilities must be non-negative",
                "probabilities")
        total = sum(values)
        require(abs(total - 1.0) <= SUM_TOLERANCE,
                f"probabilities must sum to 1 (within {SUM_TOLERANCE:g}); got {total!r}",
                "probabilities")


def _values(given: tuple[float, ...] | dict[str, float] | None) -> list[float]:
    if given is None:
        return []
    if isinstance(given, dict):
        return [float(v) for v in given.values()]
    return [float(v) for v in given]


def mixture_vector(given: tuple[float, ...] | dict[str, float] | None,
                   layout: DatasetLayout) -> np.ndarray:
    """The mixture in layout order, checked against the layout and renormalised."""
    names = layout.names
    if isinstance(given, dict):
        missing = [n for n in names if n not in given]
        unknown = sorted(set(given) - set(names))
        require(not missing and not unknown,
                f"{_OWNER}: probabilities must name every distribution exactly once; "
                f"missing {missing}, unknown {unknown}", "probabilities")
        raw = [given[n] for n in names]
    else:
        raw = list(given or ())
        require(len(raw) == len(names),
                f"{_OWNER}: probabilities needs one entry per distribution "
                f"({len(names)}, in layout order {list(names)}); got {len(raw)}",
                "probabilities")
    vector = np.asarray(raw, dtype=np.float64)
    return np.asarray(vector / vector.sum())


class FixedMixSampler(DistributionSampler[StatelessState, FixedMixParams]):
    """Samples with the given mixture; ignores reports."""

    name = "fixed_mix"
    params_type = FixedMixParams
    state_type = StatelessState

    def __init__(self, layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                 params: FixedMixParams) -> None:
        super().__init__(layout, objectives, params)
        self.mixture = mixture_vector(params.probabilities, layout)

    def init_state(self, rng: np.random.Generator) -> StatelessState:
        return StatelessState()

    def update(self, state: StatelessState, signals: ReportSignals,
               ctx: UpdateContext) -> None:
        return None

    def probabilities(self, state: StatelessState, ctx: ProposeContext) -> np.ndarray:
        return self.mixture.copy()

    def describe(self, state: StatelessState) -> dict[str, Any]:
        return {"probabilities": {n: float(p) for n, p in zip(self.layout.names,
                                                               self.mixture, strict=True)}}

    def explain(self, state: StatelessState, ctx: ProposeContext) -> list[Reason]:
        """A fixed mixture: the share is the one the spec gives."""
        return [Reason(f"the curriculum's fixed mixture gives it {number(p)}",
                       {"mixture": float(p)}) for p in self.mixture]
