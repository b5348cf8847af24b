"""Client-side views of the service's answers.

They are deliberately separate from the server's models (the client installs without the
server) and ignore unknown fields, so an older client keeps working against a newer
service that adds fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from paceline.scalarize import Objective, objectives_from_spec, scalarize

__all__ = [
    "Batch",
    "CurriculumInfo",
    "DistributionStats",
    "Health",
    "HypervolumeRecord",
    "ReportAck",
    "RunInfo",
    "State",
    "StrategyCatalog",
    "StrategyInfo",
    "StrategyParam",
    "WeightRecord",
]


def minimized_objectives(spec: Mapping[str, Any]) -> list[str]:
    """The names of a curriculum spec's objectives whose direction is "minimize"."""
    return [o["name"] for o in spec.get("objectives", [])
            if isinstance(o, Mapping) and o.get("direction") == "minimize"]


def objective_bounds(spec: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Bounds [low, high] of each objective of a curriculum spec, by name."""
    return {o.name: (o.low, o.high) for o in objectives_from_spec(spec)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CurriculumInfo(_Model):
    """A stored curriculum: its canonical spec and where its event log stands."""

    name: str
    spec: dict[str, Any]
    created_at: datetime
    seq: int = Field(description="sequence number of the last report folded in")
    num_samples: int
    distributions: list[str]
    objectives: list[str]


class RunInfo(_Model):
    """A run attached to a curriculum (a trainer process, usually)."""

    run_id: str
    curriculum: str
    created_at: datetime
    last_heartbeat: datetime
    stale: bool
    metadata: dict[str, Any] = Field(default_factory=dict)


class Batch(_Model):
    """What to train on at one step. The same (run, step) always returns the same batch,
    so a restarted trainer can ask again."""

    run_id: str
    step: int
    indices: list[int]
    reward_weights: dict[str, float]
    reward_scale: float = 1.0
    loss_weights: list[float] | None = None
    probabilities: dict[str, float] = Field(default_factory=dict)
    skipped_zero_variance: int = 0
    #: Rollouts that predicted zero-variance skipping saved (skipped prompts x group size).
    rollouts_saved: int = 0
    seq: int = 0
    #: 0, or the refill part of the step this is (`Run.refill`, dynamic sampling).
    part: int = 0
    #: Objectives whose direction is "minimize" (filled in from the curriculum's spec by
    #: `Run.next_batch`): `scalarize` counts them negatively.
    minimize: list[str] = Field(default_factory=list)
    #: Declared bounds [low, high] per objective (filled in from the curriculum's spec):
    #: `scalarize` maps each objective to [0, 1] by them; absent ones use [0, 1].
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @property
    def objectives(self) -> list[str]:
        """Objective names in the curriculum's order (the order of `reward_weights`)."""
        return list(self.reward_weights)

    @property
    def weight_vector(self) -> list[float]:
        """The reward weights as a list in objective order."""
        return list(self.reward_weights.values())

    def objective_specs(self) -> list[Objective]:
        """Direction and bounds of each objective, in order (for `paceline.scalarize`)."""
        minimize = set(self.minimize)
        return [Objective(name, name in minimize, *self.bounds.get(name, (0.0, 1.0)))
                for name in self.reward_weights]

    def scalarize(self, rewards: Any) -> Any:
        """The scalar reward to train on, `reward_scale * sum_k w_k u_k`, where u_k is
        objective k mapped to [0, 1] by its bounds, larger is better (an objective to
        minimize — a length, a cost — counts negatively); see `paceline.scalarize`.

        `rewards` is a mapping {objective: value or nested list/array} or a nested
        sequence / array whose last axis holds the k objectives in order. Returns a float
        or nested lists of floats of the same leading shape (a numpy array in, a numpy
        array out)."""
        return scalarize(rewards, self.reward_weights, self.objective_specs(),
                         self.reward_scale)


def weights_view(weights: Mapping[str, float], scale: float, spec: Mapping[str, Any],
                 run_id: str = "") -> Batch:
    """A batch-shaped view of reward weights that were not served with a batch (a
    curriculum's current weights): what `scalarize` needs, with the spec's directions
    and bounds, for the integrations that score before or without a batch."""
    return Batch(run_id=run_id, step=-1, indices=[], reward_weights=dict(weights),
                 reward_scale=scale, minimize=minimized_objectives(spec),
                 bounds=objective_bounds(spec))


class ReportAck(_Model):
    """The acknowledgement of a report: durable once received. `batch` is the next batch
    when the report asked for it (`Run.report(..., next_step=...)`)."""

    seq: int
    replayed: bool = Field(description="true when a retry of an already applied report")
    batch: Batch | None = None
    #: Dynamic sampling (a report that named its `dropped` groups): every rollout of the
    #: report was generated and folded; `rollouts_trained` leaves out the dropped groups.
    rollouts_generated: int | None = None
    rollouts_trained: int | None = None
    groups_dropped: int | None = None


class Health(_Model):
    stalled: bool
    saturated: bool
    hopeless: bool


class DistributionStats(_Model):
    """Per-distribution learning statistics and the current sampling probability."""

    name: str
    size: int
    probability: float
    success: float | None = None
    mean_abs_advantage: float | None = None
    learning_progress: float = 0.0
    zero_variance_fraction: float | None = None
    reports: int = 0
    sampled: int = 0
    rollouts: int = 0
    health: Health


class WeightRecord(_Model):
    seq: int
    weights: dict[str, float]
    scale: float


class HypervolumeRecord(_Model):
    seq: int
    hypervolume: float
    point: list[float]


class Explanation(_Model):
    """Why a distribution gets its probability: the strategy's numbers and a sentence."""

    name: str
    probability: float
    terms: dict[str, float | None] = Field(default_factory=dict)
    sentence: str
    flags: list[str] = Field(default_factory=list)


class State(_Model):
    """A curriculum's current state: per-distribution stats, weights, their history."""

    name: str
    seq: int
    objectives: list[str]
    reward_weights: dict[str, float]
    reward_scale: float
    distributions: list[DistributionStats]
    weight_history: list[WeightRecord] = Field(default_factory=list)
    hypervolume_history: list[HypervolumeRecord] = Field(default_factory=list)
    sampler: dict[str, Any] = Field(default_factory=dict)
    weighting: dict[str, Any] = Field(default_factory=dict)
    explanations: list[Explanation] = Field(default_factory=list)

    def distribution(self, name: str) -> DistributionStats:
        """The stats of one distribution by name."""
        for stats in self.distributions:
            if stats.name == name:
                return stats
        raise KeyError(name)

    @property
    def probabilities(self) -> dict[str, float]:
        return {d.name: d.probability for d in self.distributions}


class StrategyParam(_Model):
    """One parameter of a strategy: its type (Python spelling), default and choices."""

    name: str
    type: str
    default: Any = None
    required: bool = False
    choices: list[Any] | None = None


class StrategyInfo(_Model):
    """A registered sampler or weighting (`origin`: builtin, registered or plugin)."""

    name: str
    origin: str
    default: bool = False
    description: str = ""
    params: list[StrategyParam] = Field(default_factory=list)
    error: str | None = None


class StrategyCatalog(_Model):
    """What the service can run: every sampler and weighting, and the configuration a
    curriculum that names none gets."""

    samplers: list[StrategyInfo]
    weightings: list[StrategyInfo]
    default_sampler: dict[str, Any]
    default_weighting: dict[str, Any]

    def sampler(self, name: str) -> StrategyInfo:
        return _named(self.samplers, name)

    def weighting(self, name: str) -> StrategyInfo:
        return _named(self.weightings, name)


def _named(items: list[StrategyInfo], name: str) -> StrategyInfo:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)
