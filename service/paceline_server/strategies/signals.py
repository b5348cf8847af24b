"""Signals computed once per report and shared by every strategy (ALGORITHMS.md,
"Signals computed from a report").

Group statistics use `np.add.reduceat` over the report's sorted `group_of`, so ragged
groups cost the same as dense ones and nothing is padded.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.report import Report
from paceline_server.domain.scalarize import linear_form, unit_rewards, unit_transform
from paceline_server.domain.spec import ObjectiveSpec

ZERO_SPREAD = 1e-12  # a group whose scalarised rewards spread less than this gives A = 0
GRPO_EPS = 1e-6


class ReportSignals:
    """Per-index and per-rollout quantities derived from one report.

    `reward_weights` are the weights in force when the report is folded in: the spread of
    the scalarised reward (and so the zero-variance flag) is measured with them.
    """

    def __init__(self, report: Report, layout: DatasetLayout,
                 objectives: tuple[ObjectiveSpec, ...], primary: int,
                 reward_weights: np.ndarray) -> None:
        self.report = report
        self.layout = layout
        self.objectives = objectives
        self.primary = primary
        self.reward_weights = reward_weights
        self.indices = report.indices
        self.group_of = report.group_of
        self.rewards = report.rewards
        group_of = report.group_of
        self.starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])
        self.group_size = np.diff(np.r_[self.starts, group_of.shape[0]]).astype(np.int64)

    # --------------------------------------------------------------- group helpers
    def group_sum(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts, axis=0)

    def group_mean(self, values: np.ndarray) -> np.ndarray:
        sums = self.group_sum(values)
        sizes = self.group_size if values.ndim == 1 else self.group_size[:, None]
        return sums / sizes

    def group_std(self, values: np.ndarray) -> np.ndarray:
        """Population std (ddof=0) within each group."""
        deviation = values - self.group_mean(values)[self.group_of]
        return np.sqrt(np.maximum(self.group_mean(deviation * deviation), 0.0))

    # --------------------------------------------------------------- shared signals
    @cached_property
    def distribution(self) -> np.ndarray:
        """Distribution position of every reported index."""
        return self.layout.distribution_of(self.indices)

    @cached_property
    def unit_rewards(self) -> np.ndarray:
        """[m, k] rewards mapped by each objective's bounds and direction, larger is
        better, not clipped (domain.scalarize: what the scalar reward is made of)."""
        return unit_rewards(self.rewards, self.objectives)

    @cached_property
    def normalized_rewards(self) -> np.ndarray:
        """Unit rewards clipped to [0, 1] (success, saturation, hypervolume points)."""
        return np.clip(self.unit_rewards, 0.0, 1.0)

    @cached_property
    def primary_rewards(self) -> np.ndarray:
        """The primary objective's column of `normalized_rewards`, computed alone: every
        fold needs it, while only some weightings need the other columns (same values,
        elementwise, for a third of the work with three objectives)."""
        objective = self.objectives[self.primary]
        column = unit_rewards(self.rewards[:, self.primary], (objective,))
        return np.clip(column, 0.0, 1.0)

    @cached_property
    def success(self) -> np.ndarray:
        """s_x: mean over the group of the primary objective in [0, 1]."""
        return self.group_mean(self.primary_rewards)

    @cached_property
    def successes(self) -> np.ndarray:
        """Fractional count of successful rollouts per group (for Beta posteriors)."""
        return self.group_sum(self.primary_rewards)

    @cached_property
    def scalarized(self) -> np.ndarray:
        """Σ_i w_i u_i per rollout with the weights in force: the reward the trainer
        optimises (domain.scalarize, the same definition as the client's
        `Batch.scalarize`; the served reward scale is left out, it does not change
        which groups are constant)."""
        coefficients, constant = linear_form(self.reward_weights, self.objectives)
        return self.rewards @ coefficients + constant

    @cached_property
    def spread(self) -> np.ndarray:
        """σ_x: std over the group of the scalarised reward."""
        return self.group_std(self.scalarized)

    @cached_property
    def zero_variance(self) -> np.ndarray:
        """Groups whose rollouts all scored the same (no GRPO gradient)."""
        return self.spread <= ZERO_SPREAD

    @cached_property
    def advantages(self) -> np.ndarray:
        """The trainer's advantages, or GRPO's (r - mean) / (std + 1e-6) of the scalarised
        reward when the report carries none (ours)."""
        if self.report.advantages is not None:
            return self.report.advantages
        centred = self.scalarized - self.group_mean(self.scalarized)[self.group_of]
        return centred / (self.spread[self.group_of] + GRPO_EPS)

    @cached_property
    def abs_advantage(self) -> np.ndarray:
        """|A|_x: mean |advantage| over the group."""
        return self.group_mean(np.abs(self.advantages))

    @cached_property
    def group_means(self) -> np.ndarray:
        """[n, k] mean raw reward per group and objective."""
        return self.group_mean(self.rewards)

    @cached_property
    def dispersion(self) -> np.ndarray:
        """D_{x,i}: [n, k] std over the group of each objective's raw reward."""
        return self.group_std(self.rewards)

    @cached_property
    def objective_means(self) -> np.ndarray:
        """[k] mean raw reward per objective over all rollouts."""
        return np.asarray(self.rewards.mean(axis=0))

    @cached_property
    def objective_advantages(self) -> np.ndarray:
        """A^i: [m, k] group-normalised unit rewards per objective (mean 0, std 1 within
        the group; 0 where the group is constant) — ours, used when the trainer sends no
        per-objective gradients. Built from the unit rewards, so A^i > 0 always means
        "better on objective i": a minimised objective's advantage is the negated
        advantage of its raw value, as in the reward the trainer optimises."""
        gain, _ = unit_transform(self.objectives)
        centred = (self.rewards - self.group_means[self.group_of]) * gain
        std = self.dispersion[self.group_of] * np.abs(gain)
        safe = np.where(std > ZERO_SPREAD, std, 1.0)
        return np.where(std > ZERO_SPREAD, centred / safe, 0.0)

    @cached_property
    def group_size_typical(self) -> int:
        """The median group size, used to predict zero-variance groups."""
        smallest, largest = int(self.group_size.min()), int(self.group_size.max())
        if smallest == largest:  # the usual report: no sort needed
            return smallest
        return int(np.median(self.group_size))
