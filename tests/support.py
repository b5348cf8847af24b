"""Small builders shared by the tests: specs, reports and report signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paceline_server.domain import CurriculumSpec, DatasetLayout, ObjectiveSpec, Report
from paceline_server.strategies.signals import ReportSignals


def layout(*sizes: int) -> DatasetLayout:
    """Distributions d0, d1, ... of the given sizes, contiguous."""
    return DatasetLayout.from_sizes([(f"d{i}", s) for i, s in enumerate(sizes)])


def objectives(*names: str) -> tuple[ObjectiveSpec, ...]:
    return tuple(ObjectiveSpec(name) for name in (names or ("acc",)))


def spec(sizes: Sequence[int] = (100, 1000), objective_names: Sequence[str] = ("acc",),
         sampler: Any = "uniform", weighting: Any = "fixed", batch_size: int | None = None,
         seed: int = 0, **extra: Any) -> CurriculumSpec:
    return CurriculumSpec.from_dict({
        "name": "test",
        "layout": {"distributions": [{"name": f"d{i}", "size": s} for i, s in enumerate(sizes)]},
        "objectives": list(objective_names),
        "sampler": sampler, "weighting": weighting,
        "batch_size": min(16, sum(sizes)) if batch_size is None else batch_size,
        "seed": seed, **extra,
    })


def report(curriculum: CurriculumSpec, indices: Sequence[int] | np.ndarray,
           rewards: Any, advantages: Any = None, run_id: str = "run", step: int = 0,
           **extra: Any) -> Report:
    """A dense report: rewards [n, g, k] (or [n, g] with one objective)."""
    return Report.dense(run_id=run_id, step=step, indices=indices, rewards=rewards,
                        advantages=advantages, layout=curriculum.layout,
                        num_objectives=len(curriculum.objectives), **extra)


def signals(curriculum: CurriculumSpec, indices: Sequence[int] | np.ndarray, rewards: Any,
            weights: Sequence[float] | None = None, advantages: Any = None,
            **extra: Any) -> ReportSignals:
    """ReportSignals for a dense report, with equal reward weights unless given."""
    k = len(curriculum.objectives)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    return ReportSignals(report(curriculum, indices, rewards, advantages, **extra),
                         curriculum.layout, curriculum.objectives, curriculum.primary_index, w)
