"""The engine: determinism, exact state round trips, untouched state on bad input,
request validation, weight history and health signals."""

from __future__ import annotations

import numpy as np
import pytest

from paceline_server.domain import CurriculumSpec, InvalidReport, InvalidRequest, StateCorrupt
from paceline_server.engine import CurriculumEngine, run_stream
from paceline_server.engine.health import WINDOW
from support import report, spec


def drive(engine: CurriculumEngine, steps: int, seed: int = 0, run: str = "run") -> list:
    """Run a toy trainer: ask for a batch, score it with Bernoulli rewards, report."""
    rng = np.random.default_rng(seed)
    batches = []
    for step in range(steps):
        batch = engine.next_batch(run, step)
        batches.append(batch)
        k = len(engine.spec.objectives)
        rewards = rng.integers(0, 2, (batch.indices.size, 4, k)).astype(float)
        engine.apply(report(engine.spec, batch.indices, rewards, run_id=run, step=step))
    return batches


def test_same_seed_and_reports_give_identical_batches() -> None:
    first = drive(CurriculumEngine(spec(seed=3)), 5)
    second = drive(CurriculumEngine(spec(seed=3)), 5)
    assert all(a.same_as(b) for a, b in zip(first, second, strict=True))


def test_different_seeds_or_runs_give_different_batches() -> None:
    engine = CurriculumEngine(spec(seed=3))
    other = CurriculumEngine(spec(seed=4))
    assert not engine.next_batch("r", 0).same_as(other.next_batch("r", 0))
    a, b = engine.next_batch("a", 0), engine.next_batch("b", 0)
    assert not np.array_equal(a.indices, b.indices)
    assert not np.array_equal(engine.next_batch("a", 1).indices, a.indices)


def test_next_batch_is_a_pure_read() -> None:
    engine = CurriculumEngine(spec())
    before = engine.to_bytes()
    first = engine.next_batch("r", 2)
    assert engine.next_batch("r", 2).same_as(first)
    assert engine.to_bytes() == before


def test_batch_contents() -> None:
    engine = CurriculumEngine(spec((30, 70), ("acc", "len"), batch_size=20))
    batch = engine.next_batch("r", 0)
    assert batch.indices.dtype == np.int64 and batch.indices.shape == (20,)
    assert np.unique(batch.indices).size == 20
    assert batch.indices.min() >= 0 and batch.indices.max() < 100
    assert batch.reward_weights.tolist() == [0.5, 0.5]
    np.testing.assert_allclose(batch.probabilities, [0.3, 0.7])
    assert batch.loss_weights is None and batch.skipped_zero_variance == 0
    assert batch.clock == 0
    assert engine.next_batch("r", 0, size=5).indices.size == 5


def test_state_round_trips_bit_for_bit() -> None:
    engine = CurriculumEngine(spec(seed=9, zero_variance=True))
    drive(engine, 4)
    data = engine.to_bytes()
    resumed = CurriculumEngine.from_bytes(engine.spec, data)
    assert resumed.to_bytes() == data
    assert resumed.clock == 4
    assert resumed.next_batch("r", 4).same_as(engine.next_batch("r", 4))
    # Both keep evolving identically.
    drive(engine, 2, seed=5)
    drive(resumed, 2, seed=5)
    assert resumed.to_bytes() == engine.to_bytes()


def test_state_bytes_are_not_pickle() -> None:
    data = CurriculumEngine(spec()).to_bytes()
    assert data[:2] == b"PK"  # a zip (npz) archive
    assert b"pickle" not in data


@pytest.mark.parametrize(
    "damage",
    [lambda d: d[:100], lambda d: b"not a state", lambda d: b""],
)
def test_corrupt_state_is_rejected(damage) -> None:  # type: ignore[no-untyped-def]
    engine = CurriculumEngine(spec())
    with pytest.raises(StateCorrupt):
        CurriculumEngine.from_bytes(engine.spec, damage(engine.to_bytes()))


def test_state_of_another_spec_is_rejected() -> None:
    data = CurriculumEngine(spec((100, 1000))).to_bytes()
    with pytest.raises(StateCorrupt, match="num_samples"):
        CurriculumEngine.from_bytes(spec((100, 999)), data)
    with pytest.raises(StateCorrupt, match="pass-rate table"):
        CurriculumEngine.from_bytes(spec((100, 1000), zero_variance=True), data)
    with pytest.raises(StateCorrupt, match="shapes"):
        CurriculumEngine.from_bytes(spec((100, 1000), ("a", "b")), data)


def test_rejected_report_leaves_state_untouched() -> None:
    engine = CurriculumEngine(spec(zero_variance=True))
    drive(engine, 2)
    before = engine.to_bytes()
    bad = report(engine.spec, [0, 1], np.ones((2, 4)))
    object.__setattr__(bad, "indices", np.array([0, 5000]))
    with pytest.raises(InvalidReport):
        engine.apply(bad)
    nan = report(engine.spec, [0], np.ones((1, 4)))
    nan.rewards[0, 0] = np.nan
    with pytest.raises(InvalidReport, match="NaN"):
        engine.apply(nan)
    assert engine.to_bytes() == before


@pytest.mark.parametrize(
    ("run_id", "step", "size", "field"),
    [("", 0, 4, "run_id"), ("x" * 129, 0, 4, "run_id"), ("r", -1, 4, "step"),
     ("r", True, 4, "step"), ("r", 0, 0, "size"), ("r", 0, 1101, "size"),
     ("r", 0, 2.5, "size")],
)
def test_bad_requests(run_id: str, step: int, size: int, field: str) -> None:
    engine = CurriculumEngine(spec())
    with pytest.raises(InvalidRequest) as info:
        engine.next_batch(run_id, step, size)
    assert info.value.details["field"] == field


def test_run_stream_is_stable_across_processes() -> None:
    # blake2b of the run id, not Python's salted hash: a fixed value pins it.
    assert run_stream(0, "run", 0).integers(0, 2**31, 3).tolist() == \
        run_stream(0, "run", 0).integers(0, 2**31, 3).tolist()
    assert run_stream(0, "run", 0).random() != run_stream(0, "run", 1).random()


def test_canonical_spec_fills_defaults() -> None:
    engine = CurriculumEngine(spec())
    assert engine.spec.sampler.params == {"allocation": "multinomial"}
    assert engine.spec.weighting.params == {"weights": None}


def test_weight_history_records_changes_only() -> None:
    engine = CurriculumEngine(spec(weighting={"kind": "fixed", "weights": [3, 1]},
                                   objective_names=("a", "b")))
    drive(engine, 3)
    history = engine.inspect().weight_history
    assert len(history) == 1
    assert history[0].clock == 0 and history[0].weights == (0.75, 0.25)


def test_inspection_counts_and_success() -> None:
    engine = CurriculumEngine(spec((10, 10), batch_size=4))
    rewards = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0.0]])
    engine.apply(report(engine.spec, [0, 1, 15], rewards))
    view = engine.inspect()
    d0, d1 = view.distributions
    assert (d0.reports, d0.sampled, d0.rollouts) == (1, 2, 8)
    assert (d1.reports, d1.sampled, d1.rollouts) == (1, 1, 4)
    assert d0.success == pytest.approx(0.75)
    assert d0.zero_variance_fraction == pytest.approx(0.5)
    assert d1.success == 0.0 and d1.zero_variance_fraction == 1.0
    assert d1.mean_abs_advantage == 0.0
    assert view.clock == 1


def test_health_flags() -> None:
    engine = CurriculumEngine(spec((300, 300, 300), batch_size=4))
    solved = np.ones((10, 4))
    failed = np.zeros((10, 4))
    half = np.tile([1.0, 0.0, 1.0, 0.0], (10, 1))
    for step in range(WINDOW):
        base = (step * 10) % 300
        idx = np.arange(base, base + 10)
        engine.apply(report(engine.spec, idx, solved, step=step))
        engine.apply(report(engine.spec, idx + 300, failed, step=step))
        engine.apply(report(engine.spec, idx + 600, half, step=step))
    d0, d1, d2 = engine.inspect().distributions
    assert d0.health.saturated and not d0.health.hopeless and not d0.health.stalled
    assert d1.health.hopeless and not d1.health.saturated  # 500 samples at success 0
    assert d2.health.stalled  # success 0.5 with no progress for a full window
    assert not d2.health.saturated and not d2.health.hopeless


def test_hopeless_needs_enough_samples() -> None:
    engine = CurriculumEngine(spec((300, 300), batch_size=4))
    engine.apply(report(engine.spec, np.arange(10), np.zeros((10, 4))))
    assert not engine.inspect().distributions[0].health.hopeless


def test_state_bytes_per_sample_is_small_for_uniform() -> None:
    engine = CurriculumEngine(spec((500_000, 500_000)))
    assert engine.state_bytes_per_sample() < 1.0


@pytest.mark.parametrize(("sampler", "param", "old", "new"), [
    ("learnability", "success_threshold", None, 0.5),
    ("dump_ucb", "advantage_source", "scalarized", "auto"),
])
def test_a_stored_spec_keeps_its_values_when_a_default_changes(
        sampler: str, param: str, old: object, new: object) -> None:
    """The stored (canonical) spec spells out every parameter, so a curriculum created
    before a default changed keeps the value it was created with; only a parameter its
    stored spec lacks (one a later release added) takes the running default
    (docs/algorithms.md, "Defaults and upgrades")."""
    stored = CurriculumEngine(spec(objective_names=("a", "b"), sampler=sampler)).spec.to_dict()
    assert stored["sampler"]["params"][param] == new  # spelled out at creation
    stored["sampler"]["params"][param] = old  # as an older release stored it
    again = CurriculumEngine(CurriculumSpec.from_dict(stored))
    assert getattr(again.sampler.params, param) == old
    del stored["sampler"]["params"][param]  # a release before the parameter existed
    assert getattr(CurriculumEngine(CurriculumSpec.from_dict(stored)).sampler.params,
                   param) == new
