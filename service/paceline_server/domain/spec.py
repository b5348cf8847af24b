"""The curriculum spec: everything a user declares when creating a curriculum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from paceline_server.domain.errors import InvalidSpec
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.validation import (
    check_finite_float,
    check_int,
    check_name,
    check_unique,
)

Direction = Literal["maximize", "minimize"]
MAX_BATCH_SIZE = 1_000_000
MAX_OBJECTIVES = 64
#: The least width of an objective's bounds. A unit reward is (r - lo) / (hi - lo); with
#: rewards and bounds up to 1e6 in magnitude, narrower bounds give unit rewards whose
#: squares (group variances, spard's windows) overflow to inf and then NaN, or, a
#: subnormal apart, an infinite gain: the first report made the curriculum's batches
#: fail for good. 1e-100 keeps every figure finite with a wide margin.
MIN_BOUNDS_WIDTH = 1e-100


@dataclass(frozen=True)
class ObjectiveSpec:
    """A named reward dimension.

    `bounds` maps raw rewards to [0, 1] wherever a strategy needs a normalised value
    (success of the primary objective, saturation, hypervolume); `reference` is the
    hypervolume reference point in raw units (the first evaluation is used when absent).
    """

    name: str
    direction: Direction = "maximize"
    reference: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_name(self.name, "objective name", InvalidSpec)
        if self.direction not in ("maximize", "minimize"):
            raise InvalidSpec(
                f"objective {self.name!r}: direction must be 'maximize' or 'minimize'; "
                f"got {self.direction!r}",
                {"field": "direction"},
            )
        low = check_finite_float(self.bounds[0], f"objective {self.name!r} lower bound",
                                 InvalidSpec)
        high = check_finite_float(self.bounds[1], f"objective {self.name!r} upper bound",
                                  InvalidSpec)
        if not high > low:
            raise InvalidSpec(f"objective {self.name!r}: bounds must satisfy low < high",
                              {"field": "bounds"})
        if not high - low >= MIN_BOUNDS_WIDTH:
            raise InvalidSpec(f"objective {self.name!r}: bounds must be at least "
                              f"{MIN_BOUNDS_WIDTH:g} apart; got [{low!r}, {high!r}]",
                              {"field": "bounds"})
        object.__setattr__(self, "bounds", (low, high))
        if self.reference is not None:
            object.__setattr__(self, "reference",
                               check_finite_float(self.reference, "reference", InvalidSpec))

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | ObjectiveSpec) -> ObjectiveSpec:
        if isinstance(value, ObjectiveSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if not isinstance(value, Mapping):
            raise InvalidSpec(f"an objective is a name or a mapping; got {value!r}")
        unknown = set(value) - {"name", "direction", "reference", "bounds"}
        if unknown:
            raise InvalidSpec(f"unknown objective fields: {sorted(unknown)}",
                              {"field": "objectives"})
        bounds = value.get("bounds", (0.0, 1.0))
        if not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise InvalidSpec("objective bounds must be [low, high]", {"field": "bounds"})
        return cls(
            name=value.get("name"),  # type: ignore[arg-type]  # checked in __post_init__
            direction=value.get("direction", "maximize"),
            reference=value.get("reference"),
            bounds=(bounds[0], bounds[1]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "reference": self.reference,
                "bounds": list(self.bounds)}


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy name and its parameters (defaults filled by the registry)."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | StrategySpec, what: str) -> StrategySpec:
        """Accept "name", {"kind": name, "params": {...}} or {"kind": name, **params}."""
        if isinstance(value, StrategySpec):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
            raise InvalidSpec(f"{what} must be a name or a mapping with a 'kind'",
                              {"field": what})
        rest = {k: v for k, v in value.items() if k != "kind"}
        if "params" in rest:
            if len(rest) != 1 or not isinstance(rest["params"], Mapping):
                raise InvalidSpec(f"{what}: give parameters either inline or under 'params'",
                                  {"field": what})
            return cls(kind=value["kind"], params=dict(rest["params"]))
        return cls(kind=value["kind"], params=rest)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": _jsonable(dict(self.params))}


#: The sampler of a curriculum whose spec names none: the configuration that measured
#: best across the learner suite (docs/benchmarks.md), not `uniform`. Defined here once;
#: REST, gRPC, the client and `GET /v1/strategies` all follow it.
DEFAULT_SAMPLER = StrategySpec("learnability", {"allocation": "dump_ucb"})
#: The weighting of a curriculum whose spec names none.
DEFAULT_WEIGHTING = StrategySpec("fixed")


@dataclass(frozen=True)
class ZeroVarianceSpec:
    """Predicted zero-variance skipping: drop indices whose group would all agree.

    q = p^G + (1-p)^G from each index's pass-rate posterior (`exact` uses the
    Beta-Binomial probability instead of the posterior mean; a sampler with its own
    posterior, e.g. `learnability`, predicts q itself); indices with q > threshold are
    redrawn up to `max_redraws` times. GRESO-style, an index whose last z groups were
    all-equal is also skipped unless a per-(index, step) coin keeps it with probability
    explore^z (`explore` = 1 turns this off). `group_size` defaults to the last report's.
    """

    threshold: float = 0.9
    max_redraws: int = 3
    exact: bool = False
    group_size: int | None = None
    explore: float = 0.5

    def __post_init__(self) -> None:
        threshold = check_finite_float(self.threshold, "zero_variance.threshold", InvalidSpec)
        if not 0.0 < threshold <= 1.0:
            raise InvalidSpec("zero_variance.threshold must be in (0, 1]",
                              {"field": "zero_variance.threshold"})
        check_int(self.max_redraws, "zero_variance.max_redraws", InvalidSpec, maximum=100)
        if self.group_size is not None:
            check_int(self.group_size, "zero_variance.group_size", InvalidSpec, minimum=1,
                      maximum=4096)
        if not isinstance(self.exact, bool):
            raise InvalidSpec("zero_variance.exact must be a boolean")
        explore = check_finite_float(self.explore, "zero_variance.explore", InvalidSpec)
        if not 0.0 <= explore <= 1.0:
            raise InvalidSpec("zero_variance.explore must be in [0, 1]",
                              {"field": "zero_variance.explore"})

    @classmethod
    def parse(cls, value: Mapping[str, Any] | bool | None) -> ZeroVarianceSpec | None:
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise InvalidSpec("zero_variance must be a mapping, true or null")
        unknown = set(value) - {"threshold", "max_redraws", "exact", "group_size", "explore"}
        if unknown:
            raise InvalidSpec(f"unknown zero_variance fields: {sorted(unknown)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_redraws": self.max_redraws,
                "exact": self.exact, "group_size": self.group_size, "explore": self.explore}


@dataclass(frozen=True)
class CurriculumSpec:
    """A named curriculum: layout, objectives, one sampler, one weighting, batch, seed."""

    name: str
    layout: DatasetLayout
    objectives: tuple[ObjectiveSpec, ...]
    sampler: StrategySpec = field(default_factory=lambda: DEFAULT_SAMPLER)
    weighting: StrategySpec = field(default_factory=lambda: DEFAULT_WEIGHTING)
    batch_size: int = 64
    seed: int = 0
    primary_objective: str | None = None
    zero_variance: ZeroVarianceSpec | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "curriculum name", InvalidSpec)
        if not self.objectives:
            raise InvalidSpec("a curriculum needs at least one objective",
                              {"field": "objectives"})
        if len(self.objectives) > MAX_OBJECTIVES:
            raise InvalidSpec(f"at most {MAX_OBJECTIVES} objectives", {"field": "objectives"})
        check_unique([o.name for o in self.objectives], "objective", InvalidSpec)
        check_int(self.batch_size, "batch_size", InvalidSpec, minimum=1, maximum=MAX_BATCH_SIZE)
        check_int(self.seed, "seed", InvalidSpec, minimum=0, maximum=2**63 - 1)
        if self.batch_size > self.layout.num_samples:
            raise InvalidSpec(
                f"batch_size {self.batch_size} exceeds the dataset size "
                f"{self.layout.num_samples}",
                {"field": "batch_size"},
            )
        primary = self.primary_objective
        if primary is not None and primary not in self.objective_names:
            raise InvalidSpec(f"primary_objective {self.primary_objective!r} is not an objective",
                              {"field": "primary_objective"})

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def primary_index(self) -> int:
        if self.primary_objective is None:
            return 0
        return self.objective_names.index(self.primary_objective)

    def resolved(self) -> CurriculumSpec:
        """This spec with every spec-level default that an explicit value also spells
        written as that value: `primary_objective` null is the first objective. For
        comparing two specs only (`exist_ok`, an import's merge; the strategies' own
        defaults are their `resolved_params`): a stored spec keeps what was asked."""
        return replace(self, primary_objective=self.objective_names[self.primary_index])

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurriculumSpec:
        """Build from plain JSON-like data, raising InvalidSpec with a clear message."""
        if not isinstance(data, Mapping):
            raise InvalidSpec("a curriculum spec is a mapping")
        known = {"name", "layout", "distributions", "labels", "objectives", "sampler",
                 "weighting", "batch_size", "seed", "primary_objective", "zero_variance"}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpec(f"unknown curriculum fields: {sorted(unknown)}",
                              {"unknown": sorted(unknown)})
        layout = parse_layout(data["layout"] if "layout" in data else
                              {k: v for k, v in data.items() if k in _LAYOUT_FIELDS})
        objectives = data.get("objectives")
        if not isinstance(objectives, Sequence) or isinstance(objectives, str):
            raise InvalidSpec("objectives must be a list of names or mappings",
                              {"field": "objectives"})
        return cls(
            name=data.get("name"),  # type: ignore[arg-type]  # checked in __post_init__
            layout=layout,
            objectives=tuple(ObjectiveSpec.parse(o) for o in objectives),
            sampler=_strategy(data.get("sampler"), "sampler", DEFAULT_SAMPLER),
            weighting=_strategy(data.get("weighting"), "weighting", DEFAULT_WEIGHTING),
            batch_size=data.get("batch_size", 64),
            seed=data.get("seed", 0),
            primary_objective=data.get("primary_objective"),
            zero_variance=ZeroVarianceSpec.parse(data.get("zero_variance")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout.to_dict(),
            "objectives": [o.to_dict() for o in self.objectives],
            "sampler": self.sampler.to_dict(),
            "weighting": self.weighting.to_dict(),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "primary_objective": self.primary_objective,
            "zero_variance": None if self.zero_variance is None else self.zero_variance.to_dict(),
        }


def _strategy(value: Any, what: str, default: StrategySpec) -> StrategySpec:
    """A spec's sampler or weighting; absent (or null) means the domain's default."""
    return default if value is None else StrategySpec.parse(value, what)


#: A layout's fields: `distributions` ({name, size} each), or `labels` with `names`.
_LAYOUT_FIELDS = frozenset({"distributions", "labels", "names"})


def parse_layout(value: Any) -> DatasetLayout:
    """Accept {"distributions": [{"name", "size"}, ...]} or {"names": [...], "labels": [...]}."""
    if isinstance(value, DatasetLayout):
        return value
    if not isinstance(value, Mapping):
        raise InvalidSpec("layout must be a mapping", {"field": "layout"})
    unknown = sorted(set(value) - _LAYOUT_FIELDS, key=str)
    if unknown:
        raise InvalidSpec(f"unknown layout fields: {unknown}", {"field": "layout",
                                                                "unknown": unknown})
    if "labels" in value:
        names = value.get("names", value.get("distributions"))
        if not isinstance(names, Sequence) or isinstance(names, str):
            raise InvalidSpec("a label layout needs 'names': the distribution names",
                              {"field": "layout"})
        return DatasetLayout.from_labels(value["labels"], list(names))
    distributions = value.get("distributions")
    if not isinstance(distributions, Sequence) or isinstance(distributions, str):
        raise InvalidSpec("layout needs 'distributions': a list of {name, size}",
                          {"field": "layout"})
    pairs: list[tuple[str, int]] = []
    for item in distributions:
        if not isinstance(item, Mapping) or set(item) != {"name", "size"}:
            raise InvalidSpec("each distribution is a mapping with exactly 'name' and 'size'",
                              {"field": "distributions"})
        pairs.append((item["name"], item["size"]))
    return DatasetLayout.from_sizes(pairs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
