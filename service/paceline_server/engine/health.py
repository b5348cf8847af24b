"""Per-distribution health signals (ALGORITHMS.md, "Health signals"): the alarms no peer
curriculum library raises.

Over the last W reports that touched a distribution: *stalled* when learning progress
|EMA_fast - EMA_slow| < 0.005 while success is between 0.05 and 0.95 (and the window is
full, so a new distribution is not called stalled); *saturated* when success >= 0.95;
*hopeless* when success <= 0.02 after >= 200 sampled indices. The zero-variance fraction
is the share of reported groups whose rollouts all scored the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paceline_server.domain.inspection import HealthFlags

WINDOW = 50
FAST = 0.1
SLOW = 0.01
STALL_LP = 0.005
SATURATED = 0.95
HOPELESS = 0.02
HOPELESS_MIN_SAMPLES = 200


@dataclass
class HealthState:
    success: np.ndarray  # float64 [D, W] ring of per-report mean success
    zero_variance: np.ndarray  # float64 [D, W] ring of per-report zero-variance fraction
    abs_advantage: np.ndarray  # float64 [D, W] ring of per-report mean |A|
    filled: np.ndarray  # int64 [D]: entries in the ring (<= W)
    cursor: np.ndarray  # int64 [D]: next ring slot
    ema_fast: np.ndarray  # float64 [D]
    ema_slow: np.ndarray  # float64 [D]
    reports: np.ndarray  # int64 [D]: reports that touched d
    sampled: np.ndarray  # int64 [D]: indices reported
    rollouts: np.ndarray  # int64 [D]


def init_health(num_distributions: int) -> HealthState:
    d = num_distributions
    return HealthState(
        success=np.zeros((d, WINDOW)), zero_variance=np.zeros((d, WINDOW)),
        abs_advantage=np.zeros((d, WINDOW)),
        filled=np.zeros(d, dtype=np.int64), cursor=np.zeros(d, dtype=np.int64),
        ema_fast=np.zeros(d), ema_slow=np.zeros(d),
        reports=np.zeros(d, dtype=np.int64), sampled=np.zeros(d, dtype=np.int64),
        rollouts=np.zeros(d, dtype=np.int64),
    )


def update_health(state: HealthState, distribution: np.ndarray, success: np.ndarray,
                  zero_variance: np.ndarray, abs_advantage: np.ndarray,
                  group_size: np.ndarray) -> None:
    """Fold one report's per-index signals (O(n + D))."""
    num = state.filled.size
    count = np.bincount(distribution, minlength=num)
    touched = np.flatnonzero(count)
    per = count[touched].astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(distribution, weights=values, minlength=num)[touched] / per

    mean_success = mean(success)
    slot = state.cursor[touched]
    state.success[touched, slot] = mean_success
    state.zero_variance[touched, slot] = mean(zero_variance.astype(np.float64))
    state.abs_advantage[touched, slot] = mean(abs_advantage)
    state.cursor[touched] = (slot + 1) % WINDOW
    state.filled[touched] = np.minimum(state.filled[touched] + 1, WINDOW)
    first = state.reports[touched] == 0
    fast = state.ema_fast[touched]
    slow = state.ema_slow[touched]
    state.ema_fast[touched] = np.where(first, mean_success, fast + FAST * (mean_success - fast))
    state.ema_slow[touched] = np.where(first, mean_success, slow + SLOW * (mean_success - slow))
    state.reports[touched] += 1
    state.sampled += count
    state.rollouts += np.bincount(distribution, weights=group_size,
                                  minlength=num).astype(np.int64)


def window_mean(state: HealthState, values: np.ndarray) -> np.ndarray:
    """Mean of a [D, W] ring over its filled entries (NaN where empty)."""
    return window_means(state, values)[0]


def window_means(state: HealthState, *rings: np.ndarray) -> list[np.ndarray]:
    """`window_mean` of several rings with one mask: the history takes three after every
    report, so the mask and the divisor are built once."""
    filled = state.filled
    mask = np.arange(WINDOW)[None, :] < filled[:, None]
    empty = filled == 0
    divisor = np.maximum(filled, 1)
    out = []
    for values in rings:
        mean = np.where(mask, values, 0.0).sum(axis=1) / divisor
        mean[empty] = np.nan
        out.append(mean)
    return out


def learning_progress(state: HealthState) -> np.ndarray:
    return np.abs(state.ema_fast - state.ema_slow)


def flag_arrays(state: HealthState, success: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stalled, saturated, hopeless) as bool arrays [D]: the flags of every distribution
    at once (the history computes them after every report). `success` is the window mean
    of `state.success` when the caller has it already."""
    if success is None:
        success = window_mean(state, state.success)
    progress = learning_progress(state)
    seen = state.filled > 0
    with np.errstate(invalid="ignore"):
        stalled = ((state.filled >= WINDOW) & (progress < STALL_LP)
                   & (success > 0.05) & (success < SATURATED))
        saturated = seen & (success >= SATURATED)
        hopeless = seen & (success <= HOPELESS) & (state.sampled >= HOPELESS_MIN_SAMPLES)
    return stalled, saturated, hopeless


def health_flags(state: HealthState) -> list[HealthFlags]:
    stalled, saturated, hopeless = flag_arrays(state)
    return [HealthFlags(stalled=bool(a), saturated=bool(b), hopeless=bool(c))
            for a, b, c in zip(stalled, saturated, hopeless, strict=True)]
