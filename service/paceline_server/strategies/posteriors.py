"""Per-index pass-rate posteriors: Beta(a, b) with exponential forgetting.

Shared by the per-sample `prioritized` sampler and by predicted zero-variance skipping,
so a curriculum that uses both keeps one table (12 bytes per sample: two float32 and
an int32 "last seen" clock).

Forgetting (ours, documented): each visit shrinks the *evidence* toward the prior,
a <- a0 + γ (a - a0) + successes, b <- b0 + γ (b - b0) + failures, so old evidence fades as
the policy changes while the posterior never becomes sharper than the prior allows.

The table also keeps each index's all-equal streak (int8, 1 byte per sample): +z after z
consecutive groups whose primary reward was all 1 (every rollout a full success), -z
after z all-0 groups, 0 after a mixed one. GRESO's observation is that a prompt without
variance in its last visits most likely stays so; zero-variance skipping reads it.

The engine keeps only what is read (`table_bytes`): the rates (alpha, beta, last seen;
12 bytes) when the sampler reads them or zero-variance skipping predicts from them, the
streak (1 byte) when skipping is on. A part not kept is an empty array (rates) or None
(streak); a table written before streaks existed decodes with `streak = None`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from paceline_server.strategies.base import Sampler

NEVER = -1
MAX_STREAK = 127  # int8
STREAK_TOLERANCE = 1e-6  # fractional successes within this of 0 or G count as all-equal


@dataclass(frozen=True)
class PosteriorConfig:
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    gamma: float = 0.99


@dataclass
class PassRateState:
    alpha: np.ndarray  # float32 [N]
    beta: np.ndarray  # float32 [N]
    last_seen: np.ndarray  # int32 [N]: curriculum clock of the last visit, NEVER if unseen
    streak: np.ndarray | None = None  # int8 [N]: signed all-equal streak (see above)


def init_posteriors(num_samples: int, config: PosteriorConfig, rates: bool = True,
                    streak: bool = True) -> PassRateState:
    kept = num_samples if rates else 0
    return PassRateState(
        alpha=np.full(kept, config.prior_alpha, dtype=np.float32),
        beta=np.full(kept, config.prior_beta, dtype=np.float32),
        last_seen=np.full(kept, NEVER, dtype=np.int32),
        streak=np.zeros(num_samples, dtype=np.int8) if streak else None,
    )


def table_bytes(num_samples: int, rates: bool, streak: bool) -> int:
    """Bytes of a table keeping the given parts (see the module docstring)."""
    return num_samples * (12 * int(rates) + int(streak))


def occurrence_rounds(indices: np.ndarray) -> list[np.ndarray]:
    """Split positions of `indices` into rounds in which every index occurs once, in
    order of occurrence, so repeated indices in one report are applied one after the
    other (almost always a single round)."""
    order = np.argsort(indices, kind="stable")
    sorted_idx = indices[order]
    new_run = np.r_[True, sorted_idx[1:] != sorted_idx[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(indices.size), 0))
    rank = np.empty(indices.size, dtype=np.int64)
    rank[order] = np.arange(indices.size) - run_start
    if indices.size == 0 or rank.max() == 0:
        return [np.arange(indices.size)]
    return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)]


def update_posteriors(state: PassRateState, config: PosteriorConfig, indices: np.ndarray,
                      successes: np.ndarray, trials: np.ndarray, clock: int) -> None:
    """Fold one report's groups (successes out of trials per index) into the table."""
    gamma = np.float32(config.gamma)
    a0 = np.float32(config.prior_alpha)
    b0 = np.float32(config.prior_beta)
    succ = successes.astype(np.float32)
    fail = (trials - successes).astype(np.float32)
    rates = state.alpha.size > 0
    all_pass = np.asarray(successes) >= np.asarray(trials) - STREAK_TOLERANCE
    all_fail = np.asarray(successes) <= STREAK_TOLERANCE
    for positions in occurrence_rounds(indices):
        idx = indices[positions]
        if rates:
            state.alpha[idx] = a0 + gamma * (state.alpha[idx] - a0) + succ[positions]
            state.beta[idx] = b0 + gamma * (state.beta[idx] - b0) + fail[positions]
            state.last_seen[idx] = clock
        if state.streak is None:
            continue
        old = state.streak[idx].astype(np.int16)
        state.streak[idx] = np.where(
            all_pass[positions], np.minimum(np.maximum(old, 0) + 1, MAX_STREAK),
            np.where(all_fail[positions], np.maximum(np.minimum(old, 0) - 1, -MAX_STREAK),
                     0)).astype(np.int8)


def posterior_mean(state: PassRateState, indices: np.ndarray) -> np.ndarray:
    a = state.alpha[indices].astype(np.float64)
    b = state.beta[indices].astype(np.float64)
    return a / (a + b)


def table_keeps_rates(sampler: Sampler[Any, Any]) -> bool:
    """Whether the engine's table keeps pass rates for this sampler: it reads them, or
    zero-variance skipping predicts from them (the sampler has no predictor of its own)."""
    return sampler.uses_posteriors or not sampler.predicts_agreement
