"""Numeric pieces several strategies share, written once so that samplers and weightings
never import each other: a strategy module imports only the contract (`base`), its
helpers (`params`, `signals`, `posteriors`, ...) and these kernels."""

from __future__ import annotations

import math

import numpy as np

from paceline_server.strategies.params import require


def softmax(scores: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """exp(score / tau) normalised to sum 1, with the maximum subtracted first so large
    scores cannot overflow (the result is the same: softmax is shift-invariant)."""
    z = np.exp((scores - scores.max()) / tau)
    return np.asarray(z / z.sum())


def preference_vector(weights: tuple[float, ...] | None, k: int, owner: str) -> np.ndarray:
    """The user's preference on the simplex: equal weights when None; shared by every
    weighting that starts from a preference."""
    if weights is None:
        return np.full(k, 1.0 / k)
    require(len(weights) == k,
            f"{owner}: weights needs one entry per objective ({k}); got {len(weights)}",
            "weights")
    vector = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore"):
        total = float(vector.sum())
    require(bool(np.isfinite(vector).all()) and math.isfinite(total),
            f"{owner}: weights must be finite (and sum to a finite number)", "weights")
    return np.asarray(vector / total)
