"""What the per-sample samplers (`learnability`, `prioritized`) share: a distribution-level
sampler that decides each distribution's share of the batch, and the leaf order of their
sum-trees.

A per-sample priority alone lets the large distributions take the batch (the learner
suite's imbalanced learners showed it); letting `dump_ucb` or `learning_progress` allocate
the slots and the per-sample scores pick prompts inside each distribution keeps both
signals. The leaves of a per-sample tree follow the layout's member order, distribution by
distribution, so one distribution is one contiguous range of leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.dump_ucb import DumpUcbParams, DumpUcbSampler
from paceline_server.strategies.learning_progress import (
    LearningProgressParams,
    LearningProgressSampler,
)
from paceline_server.strategies.params import parse_params

Allocation = Literal["none", "dump_ucb", "learning_progress"]
Allocator = DumpUcbSampler | LearningProgressSampler


def build_allocator(layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                    allocation: Allocation,
                    params: Mapping[str, Any]) -> Allocator | None:
    """The distribution-level sampler named by `allocation` (None for "none"), its
    parameter errors prefixed with "allocation <name>"."""
    owner = f"allocation {allocation}"
    if allocation == "dump_ucb":
        return DumpUcbSampler(layout, objectives, parse_params(DumpUcbParams, params, owner))
    if allocation == "learning_progress":
        return LearningProgressSampler(
            layout, objectives, parse_params(LearningProgressParams, params, owner))
    return None


class LeafOrder:
    """Leaf position <-> dataset index. Contiguous layouts map one to one; label layouts
    map through the layout's member order (`members(0, p)` is its p-th entry), the
    inverse built once per sampler object in O(N) (derived, never state)."""

    def __init__(self, layout: DatasetLayout) -> None:
        self.layout = layout
        self._leaf_of: np.ndarray | None = None

    def to_global(self, leaves: np.ndarray) -> np.ndarray:
        leaves = np.asarray(leaves, dtype=np.int64)
        if self.layout.is_contiguous:
            return leaves
        return self.layout.members(0, leaves)

    def to_leaf(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if self.layout.is_contiguous:
            return indices
        if self._leaf_of is None:
            n = self.layout.num_samples
            leaf_of = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
            leaf_of[self.layout.members(0, np.arange(n))] = np.arange(n)
            self._leaf_of = leaf_of
        return self._leaf_of[indices].astype(np.int64)
