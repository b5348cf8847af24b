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


#: Pass rates are clipped this far from 0 and 1 before a logit: pooled means never reach
#: either, and a float32 logit stays exact enough at this distance.
LOGIT_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), p clipped to [LOGIT_EPS, 1 - LOGIT_EPS]."""
    q = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.asarray(np.log(q / (1.0 - q)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)); exp overflows to inf for x < -709, which gives the right 0."""
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))))
