"""The curriculum engine: folds reports into learning-progress state and proposes
batches. Pure and deterministic: no clock, no I/O, no global RNG; the same spec and the
same ordered reports give the same state and the same batches, bit for bit.

`apply` validates the whole report before it touches state, so a rejected report leaves
the engine exactly as it was. State serialises to bytes (`to_bytes`, an `.npz` of `.npz`
parts, never pickle) and round-trips exactly.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from paceline_server.domain.array_stream import (
    MAGIC,
    decode_arrays,
    encode_arrays,
    is_array_stream,
)
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import InvalidRequest, StateCorrupt, StrategyError
from paceline_server.domain.explanation import Explanation, percent
from paceline_server.domain.history import ProgressPoint
from paceline_server.domain.inspection import (
    CurriculumInspection,
    DistributionStats,
    HealthFlags,
    WeightRecord,
)
from paceline_server.domain.npz import load_npz, save_npz
from paceline_server.domain.numerics import with_numpy_defaults
from paceline_server.domain.report import Report
from paceline_server.domain.spec import CurriculumSpec, StrategySpec
from paceline_server.domain.validation import check_identifier
from paceline_server.engine.contract import (
    blame,
    checked_decision,
    checked_probabilities,
    checked_proposal,
)
from paceline_server.engine.health import (
    WINDOW,
    HealthState,
    flag_arrays,
    health_flags,
    init_health,
    learning_progress,
    update_health,
    window_mean,
    window_means,
)
from paceline_server.strategies.base import (
    ProposeContext,
    Sampler,
    UpdateContext,
    WeightDecision,
    Weighting,
)
from paceline_server.strategies.posteriors import (
    PassRateState,
    init_posteriors,
    table_keeps_rates,
    update_posteriors,
)
from paceline_server.strategies.registry import (
    build_sampler,
    build_weighting,
)
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import (
    StateVersionError,
    encode_state,
    state_arrays,
    state_from_arrays,
    state_nbytes,
    unreadable,
)
from paceline_server.strategies.zero_variance import ZeroVarianceFilter, filter_salt

FORMAT_VERSION = 1
HISTORY = 1024  # weight changes kept for inspection
_INIT_STREAM = 0x5EED  # separates the strategies' init stream from batch streams


@dataclass
class EngineState:
    """Everything the engine knows besides the spec. `clock` counts folded reports."""

    clock: int
    group_size: int  # typical group size of the last report (0 before any)
    last_step: int  # largest trainer step reported (schedules shown by `inspect` follow it)
    history_clock: np.ndarray  # int64 [HISTORY] ring of weight changes
    history_weights: np.ndarray  # float64 [HISTORY, k]
    history_scale: np.ndarray  # float64 [HISTORY]
    history_count: int  # records ever written


@dataclass
class _Parts:
    engine: EngineState
    sampler: Any
    weighting: Any
    posteriors: PassRateState | None
    health: HealthState


def run_stream(seed: int, run_id: str, step: int, part: int = 0) -> np.random.Generator:
    """The RNG of one (run, step) batch: independent streams per run and step, stable
    across processes (blake2b, not Python's salted hash). Refill part p >= 1 of a step
    (dynamic sampling) has a stream of its own; part 0 is the step's batch."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=16).digest()
    words = np.frombuffer(digest, dtype=np.uint32).tolist()
    entropy = [seed, *words, step] if part == 0 else [seed, *words, step, part]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


class CurriculumEngine:
    """One curriculum's strategies and state.

    Build with `CurriculumEngine(spec)` for fresh state or `from_bytes(spec, data)` to
    resume; `spec` is stored canonically (every strategy parameter spelled out).
    """

    @with_numpy_defaults
    def __init__(self, spec: CurriculumSpec,
                 state: bytes | Iterable[bytes | memoryview] | None = None) -> None:
        self.sampler, self.weighting = _strategies(spec)
        self.spec = _spelled_out(spec, self.sampler, self.weighting)
        self.layout = spec.layout
        self.keeps_posteriors = self.sampler.uses_posteriors or spec.zero_variance is not None
        if state is None:
            self._parts = self._fresh()
            self._record_weights(self.decision())
        elif isinstance(state, bytes):
            self._parts = self._decode(state)
        else:
            self._parts = self._decode_chunks(state)

    @staticmethod
    def canonical_spec(spec: CurriculumSpec) -> CurriculumSpec:
        """`spec` as an engine runs it, every strategy parameter spelled out (defaults
        filled in), without building any state: what a spec stored by an earlier
        release means to this one, whose strategies may have parameters it lacks."""
        return _spelled_out(spec, *_strategies(spec))

    @staticmethod
    def resolved_spec(spec: CurriculumSpec) -> dict[str, Any]:
        """What `spec` means to this release, as the document two specs are compared by
        (`exist_ok`, an import's merge): `canonical_spec`'s, with every default that an
        explicit value also spells written as that value (`CurriculumSpec.resolved`, the
        strategies' `resolved_params`), so that two spellings of one curriculum compare
        equal and a real difference still shows. Never stored."""
        sampler, weighting = _strategies(spec)
        with blame("sampler", spec.sampler.kind):
            sampler_params = sampler.resolved_params()
        with blame("weighting", spec.weighting.kind):
            weighting_params = weighting.resolved_params()
        return replace(spec.resolved(),
                       sampler=StrategySpec(spec.sampler.kind, sampler_params),
                       weighting=StrategySpec(spec.weighting.kind, weighting_params)).to_dict()

    @classmethod
    def from_bytes(cls, spec: CurriculumSpec, data: bytes) -> CurriculumEngine:
        """Resume from `to_bytes` output; raises StateCorrupt when the bytes are not a
        state of this spec's strategies, and its subclass StateVersionError when they are
        but of a state version the strategies cannot migrate (replay the log instead)."""
        return cls(spec, data)

    def _fresh(self) -> _Parts:
        spec = self.spec
        rng = np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([spec.seed, _INIT_STREAM])))
        with blame("sampler", spec.sampler.kind):
            sampler_state = self.sampler.init_state(rng)
        with blame("weighting", spec.weighting.kind):
            weighting_state = self.weighting.init_state(rng)
        engine = EngineState(
            clock=0, group_size=0, last_step=0,
            history_clock=np.zeros(HISTORY, dtype=np.int64),
            history_weights=np.zeros((HISTORY, len(spec.objectives))),
            history_scale=np.zeros(HISTORY),
            history_count=0,
        )
        with blame("sampler", spec.sampler.kind):
            config = self.sampler.posterior_config()
        posteriors = (init_posteriors(self.layout.num_samples, config,
                                      rates=table_keeps_rates(self.sampler),
                                      streak=spec.zero_variance is not None)
                      if self.keeps_posteriors else None)
        return _Parts(engine, sampler_state, weighting_state, posteriors,
                      init_health(self.layout.num_distributions))

    # ------------------------------------------------------------------ properties
    @property
    def clock(self) -> int:
        return self._parts.engine.clock

    @property
    def state(self) -> _Parts:
        """The live state (read-only by convention; for tests and benchmarks)."""
        return self._parts

    @with_numpy_defaults
    def weights(self) -> WeightDecision:
        return self.decision()

    def decision(self) -> WeightDecision:
        """The weighting's current reward weights and scale, checked
        (engine/contract.py)."""
        kind = self.spec.weighting.kind
        with blame("weighting", kind):
            found = self.weighting.current(self._parts.weighting)
        return checked_decision(found, len(self.spec.objectives), kind)

    # ------------------------------------------------------------------ apply
    @with_numpy_defaults
    def apply(self, report: Report, *, validated: bool = False) -> None:
        """Fold one report into state. Raises InvalidReport (state untouched) when the
        report does not fit the curriculum. `validated`: the caller built `report`
        against this engine's spec (`Report.dense` / `Report.flat` validate what they
        build), so the check is not run a second time on the report path."""
        if not validated:
            report.validate(self.layout, len(self.spec.objectives))
        parts = self._parts
        engine = parts.engine
        in_force = self.decision().weights
        signals = ReportSignals(report, self.layout, self.spec.objectives,
                                self.spec.primary_index, in_force)
        if parts.posteriors is not None:
            with blame("sampler", self.spec.sampler.kind):
                config = self.sampler.posterior_config()
            update_posteriors(parts.posteriors, config,
                              signals.indices, signals.successes, signals.group_size,
                              engine.clock)
        with blame("weighting", self.spec.weighting.kind):
            self.weighting.update(parts.weighting, signals,
                                  UpdateContext(engine.clock, in_force, parts.posteriors))
        decision = self.decision()
        with blame("sampler", self.spec.sampler.kind):
            self.sampler.update(parts.sampler, signals,
                                UpdateContext(engine.clock, decision.weights,
                                              parts.posteriors))
        update_health(parts.health, signals.distribution, signals.success,
                      signals.zero_variance, signals.abs_advantage, signals.group_size)
        engine.group_size = signals.group_size_typical
        engine.last_step = max(engine.last_step, int(report.step))
        engine.clock += 1
        self._record_weights(decision)

    def _probabilities(self, ctx: ProposeContext) -> np.ndarray:
        """The sampler's probabilities, checked (engine/contract.py)."""
        kind = self.spec.sampler.kind
        with blame("sampler", kind):
            found = self.sampler.probabilities(self._parts.sampler, ctx)
        return checked_probabilities(found, self.layout.num_distributions, kind)

    def _record_weights(self, decision: WeightDecision) -> None:
        engine = self._parts.engine
        if engine.history_count:
            last = (engine.history_count - 1) % HISTORY
            if (np.array_equal(engine.history_weights[last], decision.weights)
                    and engine.history_scale[last] == decision.scale):
                return
        slot = engine.history_count % HISTORY
        engine.history_clock[slot] = engine.clock
        engine.history_weights[slot] = decision.weights
        engine.history_scale[slot] = decision.scale
        engine.history_count += 1

    # ------------------------------------------------------------------ propose
    @with_numpy_defaults
    def next_batch(self, run_id: str, step: int, size: int | None = None,
                   part: int = 0) -> Batch:
        """The batch run `run_id` should train on at `step` (does not change state);
        `part` >= 1 draws from that refill part's own stream (see `app/refill.py`)."""
        size = self.check_batch_request(run_id, step, size)
        parts = self._parts
        decision = self.decision()
        ctx = self._propose_context(step, decision.weights)
        kind = self.spec.sampler.kind
        with blame("sampler", kind):
            proposal = self.sampler.propose(parts.sampler, size,
                                            run_stream(self.spec.seed, run_id, step, part),
                                            ctx)
        proposal = checked_proposal(proposal, size, self.layout.num_samples,
                                    self.layout.num_distributions, kind)
        return Batch(
            run_id=run_id, step=step, indices=proposal.indices.astype(np.int64),
            reward_weights=np.asarray(decision.weights, dtype=np.float64),
            reward_scale=float(decision.scale),
            loss_weights=(None if proposal.loss_weights is None
                          else proposal.loss_weights.astype(np.float64)),
            probabilities=np.asarray(proposal.probabilities, dtype=np.float64),
            skipped_zero_variance=int(proposal.skipped), clock=parts.engine.clock,
            rollouts_saved=int(proposal.skipped) * self._skip_group_size(),
        )

    def _skip_group_size(self) -> int:
        """The group size zero-variance skipping predicts for (0 while it is off or no
        report has said it): a skipped prompt saves that many rollouts."""
        zv = self.spec.zero_variance
        if zv is None or self._parts.posteriors is None:
            return 0
        return int(zv.group_size or self._parts.engine.group_size)

    def _propose_context(self, step: int, weights: np.ndarray) -> ProposeContext:
        parts = self._parts
        zv = self.spec.zero_variance
        accept = None
        max_redraws = 0
        if zv is not None and parts.posteriors is not None:
            group = self._skip_group_size()
            if group > 0:
                accept = ZeroVarianceFilter(
                    parts.posteriors, group, zv.threshold, zv.max_redraws, zv.exact,
                    explore=zv.explore,
                    salt=filter_salt(self.spec.seed, parts.engine.clock, step),
                    predict=self._agreement_predictor(group)).accept
                max_redraws = zv.max_redraws
        return ProposeContext(step=step, clock=parts.engine.clock, reward_weights=weights,
                              posteriors=parts.posteriors, accept=accept,
                              max_redraws=max_redraws)

    def _agreement_predictor(self, group: int) -> Callable[[np.ndarray], np.ndarray] | None:
        with blame("sampler", self.spec.sampler.kind):
            return self.sampler.agreement_predictor(self._parts.sampler, group)

    def check_batch_request(self, run_id: str, step: int, size: int | None = None) -> int:
        """Validate a batch request without proposing; returns the size (the curriculum's
        batch size when None). Lets a report that asks for its next batch be refused
        before it is applied."""
        size = self.spec.batch_size if size is None else size
        check_identifier(run_id, "run_id", InvalidRequest)
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise InvalidRequest(f"step must be a non-negative integer; got {step!r}",
                                 {"field": "step"})
        n = self.layout.num_samples
        if isinstance(size, bool) or not isinstance(size, int | np.integer) \
                or not 1 <= size <= n:
            raise InvalidRequest(f"batch size must be an integer in [1, {n}]; got {size!r}",
                                 {"field": "size", "maximum": n})
        return int(size)

    # ------------------------------------------------------------------ inspect
    @with_numpy_defaults
    def inspect(self) -> CurriculumInspection:
        parts = self._parts
        health = parts.health
        decision = self.decision()
        ctx = self._propose_context(parts.engine.last_step, decision.weights)
        probabilities = self._probabilities(ctx)
        success, advantage, zero_variance = window_means(
            health, health.success, health.abs_advantage, health.zero_variance)
        progress = learning_progress(health)
        flags = health_flags(health)

        def opt(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        distributions = tuple(
            DistributionStats(
                name=name, size=int(self.layout.sizes[d]),
                probability=float(probabilities[d]), success=opt(success[d]),
                mean_abs_advantage=opt(advantage[d]),
                learning_progress=float(progress[d]),
                zero_variance_fraction=opt(zero_variance[d]),
                reports=int(health.reports[d]), sampled=int(health.sampled[d]),
                rollouts=int(health.rollouts[d]), health=flags[d],
            )
            for d, name in enumerate(self.layout.names)
        )
        with blame("weighting", self.spec.weighting.kind):
            hypervolumes = self.weighting.hypervolume_history(parts.weighting)
            weighting = self.weighting.describe(parts.weighting)
        with blame("sampler", self.spec.sampler.kind):
            sampler = self.sampler.describe(parts.sampler)
        return CurriculumInspection(
            clock=parts.engine.clock, objectives=self.spec.objective_names,
            distributions=distributions,
            reward_weights=tuple(float(w) for w in decision.weights),
            reward_scale=float(decision.scale),
            weight_history=self._weight_history(),
            hypervolume_history=hypervolumes, sampler=sampler, weighting=weighting,
            explanations=self._explain(ctx, probabilities, success, flags),
        )

    @with_numpy_defaults
    def progress(self) -> ProgressPoint:
        """The numbers the history keeps after each report: `inspect` without the
        per-distribution objects, weight history or strategy details (O(D + k))."""
        parts = self._parts
        health = parts.health
        decision = self.decision()
        ctx = self._propose_context(parts.engine.last_step, decision.weights)
        success, advantage, zero_variance = window_means(
            health, health.success, health.abs_advantage, health.zero_variance)
        stalled, saturated, hopeless = flag_arrays(health, success)
        with blame("weighting", self.spec.weighting.kind):
            hypervolume = self.weighting.latest_hypervolume(parts.weighting)
            hypervolume = np.nan if hypervolume is None else float(hypervolume)
        return ProgressPoint(
            probabilities=self._probabilities(ctx),
            success=success,
            mean_abs_advantage=advantage,
            zero_variance=zero_variance,
            stalled=stalled, saturated=saturated, hopeless=hopeless,
            reward_weights=np.asarray(decision.weights, dtype=np.float64),
            reward_scale=float(decision.scale),
            hypervolume=hypervolume)

    def learning_progress(self) -> np.ndarray:
        """|fast - slow| EMA of success per distribution [D], as `inspect` gives it: with
        `progress`, what the Prometheus gauges read at a scrape, in O(D) array work."""
        return learning_progress(self._parts.health)

    @with_numpy_defaults
    def explain(self) -> tuple[Explanation, ...]:
        """Why each distribution gets its current probability (as in `inspect`)."""
        parts = self._parts
        decision = self.decision()
        ctx = self._propose_context(parts.engine.last_step, decision.weights)
        return self._explain(ctx, self._probabilities(ctx),
                             window_mean(parts.health, parts.health.success),
                             health_flags(parts.health))

    def _explain(self, ctx: ProposeContext, probabilities: np.ndarray, success: np.ndarray,
                 flags: list[HealthFlags]) -> tuple[Explanation, ...]:
        """The sampler's reasons, with the share and what the health signals say."""
        health = self._parts.health
        kind = self.spec.sampler.kind
        with blame("sampler", kind):
            reasons = list(self.sampler.explain(self._parts.sampler, ctx))
        if len(reasons) != self.layout.num_distributions:
            raise StrategyError(
                f"sampler {kind!r} explained {len(reasons)} distributions of "
                f"{self.layout.num_distributions}; nothing was served",
                {"role": "sampler", "kind": kind})
        out = []
        for d, (name, reason) in enumerate(zip(self.layout.names, reasons, strict=True)):
            raised = tuple(f for f in ("hopeless", "saturated", "stalled")
                           if getattr(flags[d], f))
            terms = dict(reason.terms)
            sentence = f"`{name}` gets {percent(float(probabilities[d]))} because {reason.clause}"
            if not np.isnan(success[d]):
                terms.setdefault("success", float(success[d]))
                reports = int(min(health.reports[d], WINDOW))
                sentence += (f"; its success is {float(success[d]):.2f} over its last "
                             f"{reports} report{'s' if reports != 1 else ''} "
                             f"({int(health.rollouts[d])} rollouts in all)")
            if raised:
                sentence += ": flagged " + " and ".join(raised)
            out.append(Explanation(name=name, probability=float(probabilities[d]),
                                   terms=terms, sentence=sentence + ".", flags=raised))
        return tuple(out)

    def _weight_history(self) -> tuple[WeightRecord, ...]:
        engine = self._parts.engine
        count = min(engine.history_count, HISTORY)
        start = engine.history_count - count
        slots = [(start + i) % HISTORY for i in range(count)]
        return tuple(
            WeightRecord(clock=int(engine.history_clock[s]),
                         weights=tuple(float(w) for w in engine.history_weights[s]),
                         scale=float(engine.history_scale[s]))
            for s in slots
        )

    # ------------------------------------------------------------------ bytes
    def state_bytes_per_sample(self) -> float:
        """In-memory state per dataset index (the ≤ 32 B/sample budget)."""
        parts = self._parts
        total = (state_nbytes(parts.sampler) + state_nbytes(parts.weighting)
                 + state_nbytes(parts.health) + state_nbytes(parts.engine)
                 + self.layout.state_bytes())
        if parts.posteriors is not None:
            total += state_nbytes(parts.posteriors)
        return total / self.layout.num_samples

    def _header(self) -> dict[str, np.ndarray]:
        return {
            "format": np.asarray(FORMAT_VERSION),
            "sampler_kind": np.asarray(self.spec.sampler.kind),
            "weighting_kind": np.asarray(self.spec.weighting.kind),
            "num_samples": np.asarray(self.layout.num_samples),
        }

    def snapshot_pieces(self) -> Iterator[memoryview]:
        """The state as an array stream (`domain/array_stream`): views of the live arrays,
        so a snapshot written piece by piece never holds a second copy of the state.
        `from_bytes` reads it back (joined), `from_chunks` without joining."""
        parts = self._parts
        self._check_readable()
        arrays = self._header()
        sections = {"engine": parts.engine, "sampler": parts.sampler,
                    "weighting": parts.weighting, "health": parts.health,
                    "posteriors": parts.posteriors}
        for section, state in sections.items():
            if state is not None:
                for key, array in state_arrays(state).items():
                    arrays[f"{section}/{key}"] = array
        return encode_arrays(arrays)

    @classmethod
    def from_chunks(cls, spec: CurriculumSpec,
                    chunks: Iterable[bytes | memoryview]) -> CurriculumEngine:
        """Resume from a snapshot read in chunks: an array stream is decoded chunk by
        chunk into the state's arrays; `to_bytes` output (older snapshots) is joined
        first. Errors as `from_bytes`."""
        return cls(spec, chunks)

    def _check_readable(self) -> None:
        """TypeError when the strategies' states would be written but not read back (a
        plug-in's): its snapshot is then not written, and the log is not pruned."""
        for role, strategy, state in (("sampler", self.sampler, self._parts.sampler),
                                      ("weighting", self.weighting, self._parts.weighting)):
            if type(state) is not strategy.state_type:
                raise TypeError(f"{role} {getattr(self.spec, role).kind!r} keeps a "
                                f"{type(state).__name__} but declares state_type "
                                f"{strategy.state_type.__name__}")
            problem = unreadable(strategy.state_type)
            if problem is not None:
                raise TypeError(f"{role} {getattr(self.spec, role).kind!r}: {problem}")

    def to_bytes(self) -> bytes:
        parts = self._parts
        self._check_readable()
        sections = {
            **self._header(),
            "engine": _blob(encode_state(parts.engine)),
            "sampler": _blob(encode_state(parts.sampler)),
            "weighting": _blob(encode_state(parts.weighting)),
            "health": _blob(encode_state(parts.health)),
        }
        if parts.posteriors is not None:
            sections["posteriors"] = _blob(encode_state(parts.posteriors))
        return save_npz(sections)

    def _decode(self, data: bytes) -> _Parts:
        if is_array_stream(data):
            return self._decode_stream([data])
        sections = load_npz(data, "engine state")
        return self._parts_from(sections, lambda key: load_npz(_unblob(sections, key),
                                                               "state bytes"))

    def _decode_chunks(self, chunks: Iterable[bytes | memoryview]) -> _Parts:
        stream = iter(chunks)
        head: list[bytes | memoryview] = []
        seen = b""
        while len(seen) < len(MAGIC):  # enough bytes to tell the format
            piece = next(stream, None)
            if piece is None:
                break
            head.append(piece)
            seen += bytes(piece[:len(MAGIC) - len(seen)])
        if is_array_stream(seen):
            return self._decode_stream(itertools.chain(head, stream))
        return self._decode(b"".join([*map(bytes, head), *map(bytes, stream)]))

    def _decode_stream(self, chunks: Iterable[bytes | memoryview]) -> _Parts:
        arrays = decode_arrays(chunks, "engine state")
        states: dict[str, dict[str, np.ndarray]] = {}
        for key in list(arrays):
            section, slash, field = key.partition("/")
            if slash:
                states.setdefault(section, {})[field] = arrays.pop(key)

        def state(key: str) -> dict[str, np.ndarray]:
            if key not in states:
                raise StateCorrupt(f"state is missing section {key!r}", {"field": key})
            return states[key]

        if "posteriors" in states:
            arrays["posteriors"] = np.zeros(0, dtype=np.uint8)  # presence, as in to_bytes
        return self._parts_from(arrays, state)

    def _parts_from(self, sections: dict[str, np.ndarray],
                    state: Callable[[str], dict[str, np.ndarray]]) -> _Parts:
        expected = {"format": FORMAT_VERSION, "sampler_kind": self.spec.sampler.kind,
                    "weighting_kind": self.spec.weighting.kind,
                    "num_samples": self.layout.num_samples}
        for key, value in expected.items():
            got = sections[key].item() if key in sections else None
            if got != value:
                error = StateVersionError if key == "format" else StateCorrupt
                raise error(f"state {key} is {got!r}; this curriculum needs {value!r}",
                            {"field": key})
        if self.keeps_posteriors != ("posteriors" in sections):
            raise StateCorrupt("state and spec disagree on keeping the pass-rate table")
        parts = _Parts(
            engine=state_from_arrays(EngineState, state("engine")),
            sampler=state_from_arrays(self.sampler.state_type, state("sampler"),
                                      self.sampler.migrate_state),
            weighting=state_from_arrays(self.weighting.state_type, state("weighting"),
                                        self.weighting.migrate_state),
            posteriors=(state_from_arrays(PassRateState, state("posteriors"))
                        if self.keeps_posteriors else None),
            health=state_from_arrays(HealthState, state("health")),
        )
        if (parts.posteriors is not None and parts.posteriors.streak is None
                and self.spec.zero_variance is not None):  # written before streaks existed
            parts.posteriors.streak = np.zeros(self.layout.num_samples, dtype=np.int8)
        if parts.engine.history_weights.shape != (HISTORY, len(self.spec.objectives)) \
                or parts.health.filled.shape != (self.layout.num_distributions,):
            raise StateCorrupt("state shapes do not match this curriculum's spec")
        return parts


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _unblob(sections: dict[str, np.ndarray], key: str) -> bytes:
    if key not in sections:
        raise StateCorrupt(f"state is missing section {key!r}", {"field": key})
    return sections[key].tobytes()


def _strategies(spec: CurriculumSpec) -> tuple[Sampler[Any, Any], Weighting[Any, Any]]:
    """The spec's sampler and weighting, built (no state), each one's errors blamed on
    it."""
    with blame("sampler", spec.sampler.kind):
        sampler: Sampler[Any, Any] = build_sampler(spec.sampler, spec.layout, spec.objectives)
    with blame("weighting", spec.weighting.kind):
        weighting: Weighting[Any, Any] = build_weighting(spec.weighting, spec.objectives)
    return sampler, weighting


def _spelled_out(spec: CurriculumSpec, sampler: Sampler[Any, Any],
                 weighting: Weighting[Any, Any]) -> CurriculumSpec:
    return CurriculumSpec(
        name=spec.name, layout=spec.layout, objectives=spec.objectives,
        sampler=StrategySpec(spec.sampler.kind, type(sampler).spelled_params(sampler.params)),
        weighting=StrategySpec(spec.weighting.kind,
                               type(weighting).spelled_params(weighting.params)),
        batch_size=spec.batch_size, seed=spec.seed,
        primary_objective=spec.primary_objective, zero_variance=spec.zero_variance,
    )
