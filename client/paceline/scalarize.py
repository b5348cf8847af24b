"""Scalarisation on the trainer's side: the one definition of the scalar reward, as the
service defines it (`paceline_server.domain.scalarize`; a property test keeps the two
equal). The client installs without the server, so it carries this small copy.

Each objective has a direction and bounds [lo, hi] (default [0, 1]); a raw reward r_i
becomes its unit reward, larger is better and 0..1 across the bounds:

    u_i = (r_i − lo_i) / (hi_i − lo_i)      maximised
    u_i = (hi_i − r_i) / (hi_i − lo_i)      minimised

and the reward to train on is R = reward_scale · Σ_i w_i u_i. Values outside the bounds
are not clipped (they keep their order and their gradient). With the default bounds a
maximised objective is used as is and a minimised one as 1 − r.

Every path that turns a reward vector into a scalar — `Batch.scalarize`, the TRL reward
function, verl's `ServedWeights.score`, the torch helpers — goes through `scalarize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Objective", "linear_form", "objectives_from_spec", "scalarize", "unit_rewards"]


@dataclass(frozen=True)
class Objective:
    """What scalarisation needs of an objective: its name, direction and bounds."""

    name: str
    minimize: bool = False
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"objective {self.name!r}: bounds must satisfy low < high")

    @property
    def gain(self) -> float:
        return (-1.0 if self.minimize else 1.0) / (self.high - self.low)

    @property
    def offset(self) -> float:
        return (self.high if self.minimize else -self.low) / (self.high - self.low)

    def unit(self, value: float) -> float:
        """The unit reward of one raw value."""
        return float(value) * self.gain + self.offset


def objectives_from_spec(spec: Mapping[str, Any]) -> list[Objective]:
    """The objectives of a curriculum spec (canonical or as written: names or mappings)."""
    result = []
    for item in spec.get("objectives", []):
        if isinstance(item, str):
            result.append(Objective(item))
            continue
        low, high = item.get("bounds") or (0.0, 1.0)
        result.append(Objective(str(item["name"]), item.get("direction") == "minimize",
                                float(low), float(high)))
    return result


def unit_rewards(rewards: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    """One reward vector (objectives in order) -> its unit rewards."""
    if len(rewards) != len(objectives):
        raise ValueError(f"expected {len(objectives)} rewards (one per objective); "
                         f"got {len(rewards)}")
    return [o.unit(r) for o, r in zip(objectives, rewards, strict=True)]


def linear_form(weights: Sequence[float], objectives: Sequence[Objective],
                scale: float = 1.0) -> tuple[list[float], float]:
    """(coefficients, constant) with R = Σ_i coefficients_i r_i + constant."""
    coefficients = [scale * w * o.gain for w, o in zip(weights, objectives, strict=True)]
    constant = scale * sum(w * o.offset for w, o in zip(weights, objectives, strict=True))
    return coefficients, constant


def scalarize(rewards: Any, weights: Mapping[str, float],
              objectives: Sequence[Objective], scale: float = 1.0) -> Any:
    """R = scale · Σ_i w_i u_i.

    `weights` maps objective names to weights in the curriculum's order; `objectives`
    describes each of them (same names; any order). `rewards` is a mapping {objective:
    value or nested list/array}, or a nested sequence / numpy array / torch tensor whose
    last axis holds the objectives in the order of `weights`. Returns a float, nested
    lists of floats of the same leading shape, or an array / tensor for one in."""
    by_name = {o.name: o for o in objectives}
    missing = [name for name in weights if name not in by_name]
    if missing:
        raise ValueError(f"no direction/bounds known for objectives {missing}")
    ordered = [by_name[name] for name in weights]
    coefficients, constant = linear_form(list(weights.values()), ordered, scale)
    if isinstance(rewards, Mapping):
        absent = [name for name in weights if name not in rewards]
        if absent:
            raise ValueError(f"rewards lack objectives {absent}")
        parts = [rewards[name] for name in weights]
        if all(hasattr(p, "__array__") for p in parts):
            return sum(c * p for c, p in zip(coefficients, parts, strict=True)) + constant
        return _combine([_plain(p) for p in parts], coefficients, constant)
    if hasattr(rewards, "__array__") and hasattr(rewards, "shape"):
        if rewards.shape[-1] != len(coefficients):
            raise ValueError(f"the last axis of rewards has {rewards.shape[-1]} entries; "
                             f"expected {len(coefficients)} objectives")
        # Indexing and broadcasting only: works alike for numpy arrays and torch tensors.
        return sum(c * rewards[..., k] for k, c in enumerate(coefficients)) + constant
    return _dot_last(_plain(rewards), coefficients, constant)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _dot_last(value: Any, coefficients: list[float], constant: float) -> Any:
    if isinstance(value, Sequence) and value and isinstance(value[0], Sequence):
        return [_dot_last(v, coefficients, constant) for v in value]
    if not isinstance(value, Sequence) or len(value) != len(coefficients):
        raise ValueError(f"expected {len(coefficients)} rewards (one per objective); "
                         f"got {value!r}")
    return sum(c * float(r) for c, r in zip(coefficients, value, strict=True)) + constant


def _combine(parts: list[Any], coefficients: list[float], constant: float) -> Any:
    first = parts[0]
    if isinstance(first, Sequence):
        if any(not isinstance(p, Sequence) or len(p) != len(first) for p in parts):
            raise ValueError("the rewards of every objective must have the same shape")
        return [_combine(list(column), coefficients, constant)
                for column in zip(*parts, strict=True)]
    return sum(c * float(p) for c, p in zip(coefficients, parts, strict=True)) + constant
