"""Client-side views of the service's answers.

They are deliberately separate from the server's models (the client installs without the
server) and ignore unknown fields, so an older client keeps working against a newer
service that adds fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
    seq: int = 0
    #: Objectives whose direction is "minimize" (filled in from the curriculum's spec by
    #: `Run.next_batch`): `scalarize` counts them negatively.
    minimize: list[str] = Field(default_factory=list)

    @property
    def objectives(self) -> list[str]:
        """Objective names in the curriculum's order (the order of `reward_weights`)."""
        return list(self.reward_weights)

    @property
    def weight_vector(self) -> list[float]:
        """The reward weights as a list in objective order."""
        return list(self.reward_weights.values())

    def scalarize(self, rewards: Any) -> Any:
        """`reward_scale * sum_k w_k s_k r_k`: the scalar reward to train on, where s_k is
        -1 for an objective to minimize (a length, a cost) and +1 otherwise.

        `rewards` is a mapping {objective: value or nested list/array} or a nested
        sequence / array whose last axis holds the k objectives in order. Returns a float
        or nested lists of floats of the same leading shape (a numpy array in, a numpy
        array out)."""
        minimize = set(self.minimize)
        weights = [-w if o in minimize else w for o, w in self.reward_weights.items()]
        scale = self.reward_scale
        if isinstance(rewards, Mapping):
            missing = [o for o in self.reward_weights if o not in rewards]
            if missing:
                raise ValueError(f"rewards lack objectives {missing}")
            parts = [rewards[o] for o in self.reward_weights]
            if all(hasattr(p, "__array__") for p in parts):
                total = sum(w * p for w, p in zip(weights, parts, strict=True))
                return total * scale
            return _combine([_plain(p) for p in parts], weights, scale)
        if hasattr(rewards, "__array__") and hasattr(rewards, "shape"):
            if rewards.shape[-1] != len(weights):
                raise ValueError(f"the last axis of rewards has {rewards.shape[-1]} entries; "
                                 f"expected {len(weights)} objectives")
            # Indexing and broadcasting only: works alike for numpy arrays and torch tensors.
            return sum(w * rewards[..., k] for k, w in enumerate(weights)) * scale
        return _dot_last(_plain(rewards), weights, scale)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _dot_last(value: Any, weights: list[float], scale: float) -> Any:
    if isinstance(value, Sequence) and value and isinstance(value[0], Sequence):
        return [_dot_last(v, weights, scale) for v in value]
    if not isinstance(value, Sequence) or len(value) != len(weights):
        raise ValueError(f"expected {len(weights)} rewards (one per objective); got {value!r}")
    return scale * sum(w * float(r) for w, r in zip(weights, value, strict=True))


def _combine(parts: list[Any], weights: list[float], scale: float) -> Any:
    first = parts[0]
    if isinstance(first, Sequence):
        if any(not isinstance(p, Sequence) or len(p) != len(first) for p in parts):
            raise ValueError("the rewards of every objective must have the same shape")
        return [_combine(list(column), weights, scale) for column in zip(*parts, strict=True)]
    return scale * sum(w * float(p) for w, p in zip(weights, parts, strict=True))


class ReportAck(_Model):
    """The acknowledgement of a report: durable once received. `batch` is the next batch
    when the report asked for it (`Run.report(..., next_step=...)`)."""

    seq: int
    replayed: bool = Field(description="true when a retry of an already applied report")
    batch: Batch | None = None


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
