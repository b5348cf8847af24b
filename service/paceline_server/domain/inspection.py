"""A read-only view of a curriculum's learning-progress state, for humans and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from paceline_server.domain.explanation import Explanation


@dataclass(frozen=True)
class HealthFlags:
    """Per-distribution alarms (ALGORITHMS.md, "Health signals")."""

    stalled: bool
    saturated: bool
    hopeless: bool


@dataclass(frozen=True)
class DistributionStats:
    name: str
    size: int
    probability: float  # the sampler's current probability for this distribution
    success: float | None  # mean success over the health window; None before any report
    mean_abs_advantage: float | None
    learning_progress: float  # |fast EMA - slow EMA| of success
    zero_variance_fraction: float | None
    reports: int  # reports that touched this distribution
    sampled: int  # indices reported in total
    rollouts: int  # rollouts reported in total
    health: HealthFlags


@dataclass(frozen=True)
class WeightRecord:
    clock: int
    weights: tuple[float, ...]
    scale: float


@dataclass(frozen=True)
class HypervolumeRecord:
    clock: int
    hypervolume: float
    point: tuple[float, ...]


@dataclass(frozen=True)
class CurriculumInspection:
    clock: int
    objectives: tuple[str, ...]
    distributions: tuple[DistributionStats, ...]
    reward_weights: tuple[float, ...]
    reward_scale: float
    weight_history: tuple[WeightRecord, ...]
    hypervolume_history: tuple[HypervolumeRecord, ...]
    sampler: dict[str, Any] = field(default_factory=dict)  # strategy-specific details
    weighting: dict[str, Any] = field(default_factory=dict)
    #: why each distribution gets its probability (layout order; see domain/explanation)
    explanations: tuple[Explanation, ...] = ()
