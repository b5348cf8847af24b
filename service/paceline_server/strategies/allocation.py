"""What the per-sample samplers (`learnability`, `prioritized`) share: a distribution-level
sampler that decides each distribution's share of the batch, and the leaf order of their
sum-trees.

A per-sample priority alone lets the large distributions take the batch (the learner
suite's imbalanced learners showed it); letting `dump_ucb` or `learning_progress` allocate
the slots and the per-sample scores pick prompts inside each distribution keeps both
signals. The leaves of a per-sample tree follow the layout's member order, distribution by
distribution, so one distribution is one contiguous range of leaves.

The allocator is looked up by name among the built-in samplers (samplers never import one
another); its state classes live here rather than in the sampler modules because the
per-sample samplers nest them in their own states, whose type hints the state codec reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.base import P, S, Sampler
from paceline_server.strategies.params import params_to_dict, parse_params
from paceline_server.strategies.registry import SAMPLERS

Allocation = Literal["none", "dump_ucb", "learning_progress"]
Allocator = Sampler[Any, Any]


@dataclass
class DumpUcbState:
    """`dump_ucb`'s per-distribution state (strategies/samplers/dump_ucb.py)."""

    advantages: np.ndarray  # float64 [D, window] ring of recent per-rollout advantages
    filled: np.ndarray  # int64 [D]: valid entries in the ring (<= window)
    cursor: np.ndarray  # int64 [D]: next ring slot to write
    learnability: np.ndarray  # float64 [D]: mean |A| over the ring (0 when empty)
    rollouts: np.ndarray  # int64 [D]: n_d, rollouts reported in total
    alpha: np.ndarray  # float64 [D]: Beta posterior (logging only)
    beta: np.ndarray  # float64 [D]


@dataclass
class LearningProgressState:
    """`learning_progress`'s per-distribution state
    (strategies/samplers/learning_progress.py)."""

    ema_fast: np.ndarray  # float64 [D]
    ema_slow: np.ndarray  # float64 [D]
    reports: np.ndarray  # int64 [D]: reports that touched d (0 = unseen)


def build_allocator(layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                    allocation: Allocation,
                    params: Mapping[str, Any]) -> Allocator | None:
    """The built-in distribution-level sampler named by `allocation` (None for "none")
    with `params` (its own defaults otherwise: `dump_ucb` reads the primary objective's
    advantages when there are several), its parameter errors prefixed with
    "allocation_params (<name>)", the field a user fixes. A sampler registered at run
    time under the same name never replaces it: the stored state must stay its own."""
    if allocation == "none":
        return None
    cls = SAMPLERS.builtin(allocation)
    return cls(layout, objectives, _parsed(cls, allocation, params))


def _parsed(cls: type[Allocator], allocation: Allocation, params: Mapping[str, Any]) -> Any:
    return parse_params(cls.params_type, params, f"allocation_params ({allocation})")


class AllocatingSampler(Sampler[S, P]):
    """A per-sample sampler whose parameters name an allocation (`allocation`,
    `allocation_params`), built as `self.allocator` (`learnability`, `prioritized`): the
    allocation's parameters are stored and compared spelled out, as its own are."""

    allocator: Allocator | None

    @classmethod
    def spelled_params(cls, params: P) -> dict[str, Any]:
        """`allocation_params` spelled out too, the allocation's defaults filled ({}
        without one): a later release that changes an allocation default leaves a stored
        curriculum as it was created."""
        given: Any = params
        allocation = given.allocation
        spelled = ({} if allocation == "none" else params_to_dict(_parsed(
            SAMPLERS.builtin(allocation), allocation, given.allocation_params)))
        return {**super().spelled_params(params), "allocation_params": spelled}

    def resolved_params(self) -> dict[str, Any]:
        """`allocation_params` as they take effect, the allocation's defaults filled in
        ({} without one), so a spec that names a default explicitly compares equal to
        one that leaves it out."""
        resolved = {} if self.allocator is None else self.allocator.resolved_params()
        return {**super().resolved_params(), "allocation_params": resolved}


def initial_allocator_states(allocator: Allocator | None, allocation: Allocation,
                             rng: np.random.Generator) -> tuple[Any, Any]:
    """The (dump, progress) fields of a fresh per-sample state: the allocator's initial
    state in the field of `allocation`, None in the other (and in both without one)."""
    if allocator is None:
        return None, None
    state = allocator.init_state(rng)
    return (state, None) if allocation == "dump_ucb" else (None, state)


class HoldsAllocatorStates(Protocol):
    """A per-sample state that nests both allocators' state fields (one of them used)."""

    dump: DumpUcbState | None
    progress: LearningProgressState | None


def allocator_state(allocation: Allocation, state: HoldsAllocatorStates) -> Any:
    """The nested state of the allocator `allocation` names."""
    return state.dump if allocation == "dump_ucb" else state.progress


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
