"""Scalarisation: the one definition of "the reward a trainer optimises" from a reward
vector, its objectives and the served weights.

Every objective has a direction and bounds [lo, hi] (default [0, 1]). Each raw reward
r_i is first mapped to its *unit reward*, larger is better and 0..1 across the bounds:

    u_i = (r_i − lo_i) / (hi_i − lo_i)      for an objective to maximise
    u_i = (hi_i − r_i) / (hi_i − lo_i)      for an objective to minimise

and the scalar reward is

    R = scale · Σ_i w_i u_i

with w the served reward weights (on the simplex) and `scale` the served reward scale.

Why this form (and not Σ w_i s_i r_i on raw values):
- *Signs*: a minimised objective counts negatively, whichever path computes R (engine
  signals, strategies, the client's `Batch.scalarize`, each integration).
- *Scales*: a weight only means "this share of the reward" when the objectives live on
  comparable scales. A length in tokens (50..900) next to a 0/1 correctness drowns the
  correctness whatever the weights; the bounds put both on [0, 1].
- *No clipping*: u is affine in r, so a reward outside the declared bounds still ranks
  correctly and still has a gradient; the clipped unit rewards (`unit_rewards(...,
  clip=True)`) are only for quantities that must lie in [0, 1] (success, saturation,
  hypervolume points).
- With the default bounds [0, 1], a maximised objective is used as is and a minimised
  one as 1 − r: −r plus the constant w_i, which any baseline (GRPO, RLOO, a critic)
  removes.

Per-objective group normalisation (GDPO-style: normalise each objective within its
group before weighting) was considered and not adopted: it needs the whole group, while
several paths score one rollout at a time (verl's reward workers), so it could not be
one definition for every path. Bounds are declared once per curriculum and known to all.

The client carries its own copy of this module (`paceline.scalarize`, no server
dependency); a property test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paceline_server.domain.spec import ObjectiveSpec


def unit_transform(objectives: Sequence[ObjectiveSpec]) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) [k] each, such that u = r · gain + offset (see the module doc)."""
    low = np.array([o.bounds[0] for o in objectives], dtype=np.float64)
    high = np.array([o.bounds[1] for o in objectives], dtype=np.float64)
    minimize = np.array([o.direction == "minimize" for o in objectives])
    width = high - low
    gain = np.where(minimize, -1.0, 1.0) / width
    offset = np.where(minimize, high, -low) / width
    return gain, offset


def unit_rewards(rewards: np.ndarray | Sequence[float], objectives: Sequence[ObjectiveSpec],
                 clip: bool = False) -> np.ndarray:
    """Raw rewards [..., k] -> unit rewards [..., k], larger is better (clipped to [0, 1]
    when `clip`; NaN stays NaN)."""
    gain, offset = unit_transform(objectives)
    unit = np.asarray(rewards, dtype=np.float64) * gain + offset
    return np.clip(unit, 0.0, 1.0) if clip else unit


def linear_form(weights: np.ndarray | Sequence[float], objectives: Sequence[ObjectiveSpec],
                scale: float = 1.0) -> tuple[np.ndarray, float]:
    """(coefficients [k], constant) with R = r · coefficients + constant: the scalar
    reward as one affine map of the raw reward vector."""
    gain, offset = unit_transform(objectives)
    w = np.asarray(weights, dtype=np.float64)
    return scale * w * gain, float(scale * np.dot(w, offset))


def scalarize(rewards: np.ndarray | Sequence[float], weights: np.ndarray | Sequence[float],
              objectives: Sequence[ObjectiveSpec], scale: float = 1.0) -> np.ndarray:
    """R = scale · Σ_i w_i u_i for raw rewards [..., k] -> [...]."""
    coefficients, constant = linear_form(weights, objectives, scale)
    return np.asarray(np.asarray(rewards, dtype=np.float64) @ coefficients + constant)
