"""The strategy contract: samplers choose batch composition, weightings choose the
reward-weight vector.

A strategy object is built once per curriculum from (layout, objectives, params) and holds
no mutable data. All learning-progress state lives in a separate *state* dataclass of
numpy arrays and scalars (serialised by `state_codec`, never pickled). The methods are
functions of (state, input) only: no clock, no global RNG, no I/O, so the engine is
deterministic given the seed and the ordered reports.

`update` mutates the state it is given in place: per-sample strategies hold arrays of
10^7 entries and must update O(batch) entries, not copy O(N). `propose` and `current`
never mutate state (a sampler may modify and then exactly restore temporary values).

Contract for implementers:
- `init_state(rng)` returns a fresh state; it may draw from `rng` (seeded per curriculum).
- `update(state, signals, ctx)` folds one report in.
- `propose(state, size, rng, ctx)` returns `size` indices in [0, N), unique unless the
  sampler documents otherwise, and the per-distribution probabilities it used.
- State dataclasses round-trip exactly through `encode_state`/`decode_state`.
- A state class that changes shape (a field added, renamed or retyped) raises its
  `state_version: ClassVar[int]` (1 when absent) and, where the old bytes still carry what
  the new state needs, overrides `migrate_state`; without a migration the app rebuilds
  the curriculum by replaying its event log (see `state_codec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from paceline_server.domain.explanation import Reason, number
from paceline_server.domain.inspection import HypervolumeRecord
from paceline_server.domain.layout import DatasetLayout
from paceline_server.domain.spec import ObjectiveSpec
from paceline_server.strategies.params import params_to_dict
from paceline_server.strategies.posteriors import PassRateState, PosteriorConfig
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import StateVersionError, state_version

S = TypeVar("S")
P = TypeVar("P")
#: Fixed bytes counted per state (scalars, array headers), on top of its arrays.
STATE_OVERHEAD = 4096
#: Records of history a weighting may keep (hypervolume's front history, for instance).
WEIGHTING_HISTORY = 1024


@dataclass(frozen=True)
class UpdateContext:
    """What the engine knows beyond the report: `clock` is the number of reports folded
    before this one; `reward_weights` the weights after the weighting's update;
    `posteriors` the per-index pass-rate table (already updated) when the curriculum
    keeps one."""

    clock: int
    reward_weights: np.ndarray
    posteriors: PassRateState | None = None


@dataclass(frozen=True)
class ProposeContext:
    """`step` is the asking run's step (schedules follow it), `clock` the curriculum's
    report count; `accept` is the zero-variance predicate when skipping is on (samplers
    redraw rejected indices up to `max_redraws` times)."""

    step: int
    clock: int
    reward_weights: np.ndarray
    posteriors: PassRateState | None = None
    accept: Callable[[np.ndarray], np.ndarray] | None = None
    max_redraws: int = 0


@dataclass(frozen=True)
class Proposal:
    indices: np.ndarray  # int64 [B]
    probabilities: np.ndarray  # float64 [D]
    loss_weights: np.ndarray | None = None  # float64 [B], positive (normalised per sampler)
    skipped: int = 0  # indices rejected as predicted zero-variance


@dataclass(frozen=True)
class WeightDecision:
    weights: np.ndarray  # float64 [k] on the simplex
    scale: float = 1.0


@dataclass
class StatelessState:
    """A strategy without learning-progress state still has a (empty) state."""


def no_migration(state_type: type[Any], old_version: int) -> dict[str, np.ndarray]:
    """What `migrate_state` does by default: refuse, so the curriculum is replayed."""
    raise StateVersionError(
        f"{state_type.__name__} has no migration from version {old_version} to "
        f"{state_version(state_type)}",
        {"state": state_type.__name__, "stored_version": old_version,
         "version": state_version(state_type)})


class Sampler(ABC, Generic[S, P]):
    """Chooses which indices go into the next batch."""

    name: ClassVar[str]
    params_type: ClassVar[type[Any]]
    state_type: ClassVar[type[Any]]
    #: True when the sampler reads `ctx.posteriors` (the engine then keeps the table).
    uses_posteriors: ClassVar[bool] = False
    #: True when `agreement_predictor` answers for zero-variance skipping, so the engine's
    #: table need not keep pass rates for it (only the all-equal streaks).
    predicts_agreement: ClassVar[bool] = False

    def __init__(self, layout: DatasetLayout, objectives: tuple[ObjectiveSpec, ...],
                 params: P) -> None:
        self.layout = layout
        self.objectives = objectives
        self.params = params

    @classmethod
    def spelled_params(cls, params: P) -> dict[str, Any]:
        """`params` as a curriculum stores them (its canonical spec): every parameter
        spelled out, defaults filled, so that a later release's change of a default
        leaves a stored curriculum as it was created. A sampler with nested parameters
        (an allocation's) spells those out too."""
        return params_to_dict(params)

    def resolved_params(self) -> dict[str, Any]:
        """The parameters as they take effect, for telling two specs apart (`exist_ok`, an
        import's merge): a parameter whose default stands for a value it could also be
        given (`start: null` for steps // 2) is spelled as that value, so both spellings
        compare equal. Never stored: the stored spec keeps what was asked."""
        return params_to_dict(self.params)

    def posterior_config(self) -> PosteriorConfig:
        """Prior and forgetting of the pass-rate table (samplers may expose them as
        parameters)."""
        return PosteriorConfig()

    def agreement_predictor(self, state: S, group_size: int
                            ) -> Callable[[np.ndarray], np.ndarray] | None:
        """P(all `group_size` rollouts agree) per index from the sampler's own posterior,
        for zero-variance skipping; None (the default) uses the engine's table."""
        return None

    def state_bytes(self) -> int:
        """Estimated bytes of `init_state`'s arrays for this layout and these parameters,
        computed without building them: create refuses a curriculum whose estimate is
        over the memory budget (`PACELINE_MAX_STATE_BYTES`), and the engine cache counts
        it. The default fits per-distribution samplers (a few float64 per distribution);
        samplers keeping per-sample or windowed arrays override it."""
        return STATE_OVERHEAD + 16 * 8 * self.layout.num_distributions

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """The flattened arrays (dotted keys, as `state_codec` writes them) of a state
        written as `old_version`, turned into those of `state_type`'s current version.
        The default knows no migration: the app then replays the curriculum's event log."""
        return no_migration(self.state_type, old_version)

    @abstractmethod
    def init_state(self, rng: np.random.Generator) -> S: ...

    @abstractmethod
    def update(self, state: S, signals: ReportSignals, ctx: UpdateContext) -> None: ...

    @abstractmethod
    def propose(self, state: S, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal: ...

    @abstractmethod
    def probabilities(self, state: S, ctx: ProposeContext) -> np.ndarray:
        """Per-distribution probabilities the next batch would use (for inspection)."""

    def describe(self, state: S) -> dict[str, Any]:
        """Strategy-specific, JSON-able details for the state endpoint."""
        return {}

    def explain(self, state: S, ctx: ProposeContext) -> list[Reason]:
        """Why each distribution gets its probability: one `Reason` per distribution, in
        layout order. The default reads the per-distribution lists of `describe` as the
        terms, so a plug-in sampler is explained without writing this; the built-ins
        override it with their own formula in words."""
        num = self.layout.num_distributions
        details = self.describe(state)
        columns = {key: value for key, value in details.items()
                   if isinstance(value, list) and len(value) == num
                   and all(v is None or (isinstance(v, int | float)
                                         and not isinstance(v, bool)) for v in value)}
        reasons = []
        for d in range(num):
            terms: dict[str, float | None] = {
                key: None if value[d] is None else float(value[d])
                for key, value in columns.items()}
            shown = ", ".join(f"{key} {number(v)}" for key, v in terms.items())
            clause = f"the {self.name} sampler sets it" + (f" from {shown}" if shown else "")
            reasons.append(Reason(clause, terms))
        return reasons


class Weighting(ABC, Generic[S, P]):
    """Chooses the reward-weight vector (and reward scale) served with every batch."""

    name: ClassVar[str]
    params_type: ClassVar[type[Any]]
    state_type: ClassVar[type[Any]]

    def __init__(self, objectives: tuple[ObjectiveSpec, ...], params: P) -> None:
        self.objectives = objectives
        self.params = params

    @classmethod
    def spelled_params(cls, params: P) -> dict[str, Any]:
        """`params` as a curriculum stores them (see `Sampler.spelled_params`)."""
        return params_to_dict(params)

    def resolved_params(self) -> dict[str, Any]:
        """The parameters as they take effect (see `Sampler.resolved_params`)."""
        return params_to_dict(self.params)

    @property
    def num_objectives(self) -> int:
        return len(self.objectives)

    def state_bytes(self) -> int:
        """Estimated bytes of `init_state`'s arrays (see `Sampler.state_bytes`). The
        default covers vectors and k x k matrices over the objectives and a history of
        `WEIGHTING_HISTORY` records of k + 2 numbers."""
        k = self.num_objectives
        return STATE_OVERHEAD + 8 * (WEIGHTING_HISTORY * (k + 2) + 16 * k * k)

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """The flattened arrays (dotted keys, as `state_codec` writes them) of a state
        written as `old_version`, turned into those of `state_type`'s current version.
        The default knows no migration: the app then replays the curriculum's event log."""
        return no_migration(self.state_type, old_version)

    @abstractmethod
    def init_state(self, rng: np.random.Generator) -> S: ...

    @abstractmethod
    def update(self, state: S, signals: ReportSignals, ctx: UpdateContext) -> None: ...

    @abstractmethod
    def current(self, state: S) -> WeightDecision: ...

    def describe(self, state: S) -> dict[str, Any]:
        return {}

    def hypervolume_history(self, state: S) -> tuple[HypervolumeRecord, ...]:
        """(clock, hypervolume, point) records when the weighting tracks a Pareto front."""
        return ()

    def latest_hypervolume(self, state: S) -> float | None:
        """The hypervolume of the front now (None when the weighting keeps none); read once
        per report by the history, so weightings that track a front make it O(1)."""
        records = self.hypervolume_history(state)
        return records[-1].hypervolume if records else None
