"""Pareto-front bookkeeping over normalised, maximised objective vectors.

The hypervolume itself comes from `moocore`; normalisation and the buffer are ours.

Normalisation: each objective is mapped to [0, 1] by its declared `bounds` (clipped) and
flipped when it is minimised (the unit rewards of domain.scalarize), so every coordinate
is "higher is better" on the same scale. The reference code works on raw validation
scores of similar scale; we cannot assume that, and a finite-difference step h (the
`steer` mode) must mean the same on every objective.

`ParetoBuffer` is the reference code's buffer ("the reference point followed by every
point that expanded the front") in fixed-size numpy arrays, so it can live in strategy
state and round-trip through `state_codec`. Two differences, both hypervolume-neutral or
bounded (ours):
- a point that enters removes the points it weakly dominates (they add no volume, and the
  hypervolume of the buffer is unchanged), so the buffer is always a mutually
  non-dominated front;
- when the front outgrows `capacity`, the point with the smallest exclusive contribution
  goes (ties: the oldest), which loses the least hypervolume (the SMS-EMOA archive
  rule). The reference point is kept apart and never evicted.

Benchmarks use `normalize` and `hypervolume` to score final points the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np

from paceline_server.domain.scalarize import unit_rewards
from paceline_server.domain.spec import ObjectiveSpec


def normalize(points: np.ndarray | Sequence[float],
              objectives: Sequence[ObjectiveSpec]) -> np.ndarray:
    """Raw objective values [..., k] -> maximised values in [0, 1] (NaN stays NaN): the
    clipped unit rewards of domain.scalarize."""
    return unit_rewards(points, objectives, clip=True)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `points` [n, k] above `reference` [k] (maximisation).

    Points that do not strictly dominate the reference add nothing (moocore ignores them;
    we filter first so an empty or all-worse set is plainly 0)."""
    reference = np.asarray(reference, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, reference.size)
    points = points[np.all(points > reference, axis=1)]
    if points.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=reference, maximise=True))


def contribution(front: np.ndarray, point: np.ndarray, reference: np.ndarray) -> float:
    """ΔHV = HV(front ∪ {point}) − HV(front), clipped at 0 (rounding can make a dominated
    point's difference a hair below zero)."""
    base = hypervolume(front, reference)
    extended = hypervolume(np.vstack([np.asarray(front).reshape(-1, reference.size),
                                      np.asarray(point, dtype=np.float64)[None, :]]),
                           reference)
    return max(0.0, extended - base)


def exclusive_contributions(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Volume each point of a front dominates alone (what removing it would lose)."""
    points = np.asarray(points, dtype=np.float64)
    n, k = points.shape
    if n == 0:
        return np.zeros(0)
    if k == 1:  # moocore needs >= 2 columns; in 1-D only the best point counts
        best = points[:, 0].max()
        second = np.sort(points[:, 0])[-2] if n > 1 else reference[0]
        gain = np.where(points[:, 0] == best, best - max(second, reference[0]), 0.0)
        return np.asarray(np.maximum(gain, 0.0))
    above = np.all(points > reference, axis=1)
    result = np.zeros(n)
    if np.any(above):
        result[above] = moocore.hv_contributions(points[above], ref=reference, maximise=True)
    return result


@dataclass
class ParetoBuffer:
    """Reference point plus a bounded, mutually non-dominated front (numpy state).

    `points[:count]` is the front; `order` holds each slot's insertion number (for the
    oldest-first tie break); `inserted` counts points ever admitted."""

    reference: np.ndarray  # float64 [k], normalised
    has_reference: bool
    points: np.ndarray  # float64 [capacity, k]
    order: np.ndarray  # int64 [capacity]
    count: int
    inserted: int

    @classmethod
    def empty(cls, capacity: int, k: int) -> ParetoBuffer:
        if capacity < 1 or k < 1:
            raise ValueError("a Pareto buffer needs capacity >= 1 and k >= 1")
        return cls(reference=np.zeros(k), has_reference=False,
                   points=np.zeros((capacity, k)), order=np.zeros(capacity, dtype=np.int64),
                   count=0, inserted=0)

    @property
    def capacity(self) -> int:
        return int(self.points.shape[0])

    @property
    def front(self) -> np.ndarray:
        """The front points, [count, k] (a view: do not modify)."""
        return self.points[: self.count]

    def set_reference(self, reference: np.ndarray) -> None:
        self.reference = np.asarray(reference, dtype=np.float64).copy()
        self.has_reference = True

    def hypervolume(self) -> float:
        """HV of the front above the reference (0 before a reference is set)."""
        return hypervolume(self.front, self.reference) if self.has_reference else 0.0

    def contribution(self, point: np.ndarray) -> float:
        """ΔHV of `point` against the current front (clipped at 0)."""
        if not self.has_reference:
            return 0.0
        return contribution(self.front, point, self.reference)

    def add(self, point: np.ndarray) -> bool:
        """Admit `point` unless an existing point weakly dominates it; drop the points it
        dominates, then evict the smallest contributor when over capacity. Returns
        whether `point` is in the front afterwards."""
        point = np.asarray(point, dtype=np.float64)
        front = self.front
        if np.any(np.all(front >= point, axis=1)):
            return False
        keep = ~np.all(point >= front, axis=1)
        kept = int(keep.sum())
        self.points[:kept] = front[keep]
        self.order[:kept] = self.order[: self.count][keep]
        self.count = kept
        if self.count < self.capacity:
            self._put(self.count, point)
            self.count += 1
            return True
        # Full: the new point competes with the front for the capacity slots.
        candidates = np.vstack([self.front, point[None, :]])
        order = np.append(self.order[: self.count], self.inserted)
        gains = exclusive_contributions(candidates, self.reference)
        smallest = np.flatnonzero(gains == gains.min())
        victim = int(smallest[np.argmin(order[smallest])])
        if victim == self.count:  # the newcomer adds the least: front unchanged
            return False
        self._put(victim, point)
        return True

    def _put(self, slot: int, point: np.ndarray) -> None:
        self.points[slot] = point
        self.order[slot] = self.inserted
        self.inserted += 1
