"""Strategy state versions: old snapshots still load, a state that gains a field is
migrated by its strategy or rebuilt by replaying the event log."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from paceline_server.app.codec import encode_report
from paceline_server.app.engines import EngineCache
from paceline_server.domain import CurriculumSpec, StateCorrupt
from paceline_server.domain.npz import load_npz, save_npz
from paceline_server.engine import CurriculumEngine
from paceline_server.store import open_store
from paceline_server.strategies import registry
from paceline_server.strategies.base import ProposeContext, UpdateContext
from paceline_server.strategies.distribution import DistributionParams, DistributionSampler
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.state_codec import (
    VERSION_KEY,
    StateVersionError,
    decode_state,
    encode_state,
    state_version,
)
from support import report, spec

FIXTURES = Path(__file__).parent / "fixtures" / "snapshots_v1"


# ---------------------------------------------------------------- the codec
@dataclass
class Inner:
    values: np.ndarray


@dataclass
class InnerV2:
    state_version: ClassVar[int] = 2
    values: np.ndarray


@dataclass
class Outer:
    count: int
    inner: Inner


@dataclass
class OuterV3:
    state_version: ClassVar[int] = 3
    count: int
    total: float  # added in version 3
    inner: Inner


@dataclass
class OuterNestingV2:
    count: int
    inner: InnerV2


def outer() -> Outer:
    return Outer(count=5, inner=Inner(np.arange(3.0)))


def test_every_dataclass_in_the_tree_writes_its_version() -> None:
    arrays = load_npz(encode_state(OuterV3(1, 2.0, Inner(np.zeros(2)))))
    assert int(arrays[VERSION_KEY]) == 3
    assert int(arrays["inner." + VERSION_KEY]) == 1
    assert state_version(Outer) == 1 and state_version(OuterV3) == 3


def test_bytes_without_a_version_read_as_version_one() -> None:
    arrays = {k: v for k, v in load_npz(encode_state(outer())).items()
              if not k.endswith(VERSION_KEY)}
    back = decode_state(Outer, save_npz(arrays))
    assert back.count == 5 and back.inner.values.tolist() == [0.0, 1.0, 2.0]


def test_older_bytes_without_a_migration_raise_the_typed_error() -> None:
    with pytest.raises(StateVersionError, match="version 1; this code has version 3") as info:
        decode_state(OuterV3, encode_state(outer()))
    assert isinstance(info.value, StateCorrupt)  # callers that do not fall back refuse
    assert info.value.details == {"state": "OuterV3", "stored_version": 1, "version": 3}


def test_newer_bytes_are_refused_even_with_a_migration() -> None:
    data = encode_state(OuterV3(1, 2.0, Inner(np.zeros(2))))
    with pytest.raises(StateVersionError, match="newer than this code"):
        decode_state(Outer, data, migrate=lambda version, arrays: arrays)


def test_older_bytes_go_through_the_migration() -> None:
    calls: list[tuple[int, list[str]]] = []

    def migrate(version: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((version, sorted(arrays)))
        arrays["total"] = np.asarray(float(arrays["inner.values"].sum()))
        return arrays

    back = decode_state(OuterV3, encode_state(outer()), migrate)
    assert calls == [(1, [VERSION_KEY, "count", "inner." + VERSION_KEY, "inner.values"])]
    assert back.count == 5 and back.total == 3.0 and back.inner.values.size == 3
    assert decode_state(OuterV3, encode_state(back)).total == 3.0  # written as version 3


def test_a_nested_state_of_another_version_raises() -> None:
    with pytest.raises(StateVersionError, match="state field 'inner'"):
        decode_state(OuterNestingV2, encode_state(outer()),
                     migrate=lambda version, arrays: arrays)


def test_a_malformed_version_key_is_corrupt_state() -> None:
    arrays = load_npz(encode_state(outer()))
    arrays[VERSION_KEY] = np.asarray([1, 2])
    with pytest.raises(StateCorrupt, match="not a version number"):
        decode_state(Outer, save_npz(arrays))
    arrays[VERSION_KEY] = np.asarray(0)
    with pytest.raises(StateCorrupt, match="not a version number"):
        decode_state(Outer, save_npz(arrays))


def test_a_bad_declared_version_is_a_programming_error() -> None:
    @dataclass
    class Bad:
        state_version: ClassVar[int] = 0

    with pytest.raises(TypeError, match="state_version"):
        encode_state(Bad())


# ---------------------------------------------------------------- the previous release
MIGRATION_ADDS = {"prioritized": ("dump.", "progress.")}


@pytest.mark.parametrize("name", ["dump_ucb", "prioritized", "learning_progress",
                                  "hypervolume"])
def test_snapshots_of_the_previous_release_load(name: str) -> None:
    data = (FIXTURES / f"{name}.npz").read_bytes()
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    old_sections = load_npz(data)
    assert all(VERSION_KEY not in load_npz(section.tobytes())
               for key, section in old_sections.items() if section.dtype == np.uint8)
    engine = CurriculumEngine.from_bytes(CurriculumSpec.from_dict(meta["spec"]), data)
    assert engine.clock == meta["clock"]
    # Every array of every part decodes to what the old release wrote, bit for bit; the
    # new bytes only add the version keys (and what a migration adds: prioritized's
    # version 2 gains its allocator's state).
    added = MIGRATION_ADDS.get(name, ())
    new_sections = load_npz(engine.to_bytes())
    assert new_sections.keys() == old_sections.keys()
    for key, section in old_sections.items():
        if section.dtype != np.uint8:
            assert new_sections[key].item() == section.item()
            continue
        old, new = load_npz(section.tobytes()), load_npz(new_sections[key].tobytes())
        assert {k for k in new if not k.endswith(VERSION_KEY)
                and not (key == "sampler" and k.startswith(added))} == old.keys()
        for field, array in old.items():
            assert new[field].dtype == array.dtype and new[field].tobytes() == array.tobytes()
    # And the curriculum goes on.
    batch = engine.next_batch("run", meta["clock"])
    rewards = np.ones((batch.indices.size, 4, len(engine.spec.objectives)))
    engine.apply(report(engine.spec, batch.indices, rewards, step=meta["clock"]))
    assert engine.clock == meta["clock"] + 1


@pytest.mark.parametrize(("name", "kept", "reset"), [
    ("gradient", ("weights", "updates", "last_influence"), {"pending": 0}),
    ("spard_weighting", ("log_weights", "updates", "last_gain", "last_se", "last_z",
                         "last_saturation"), {"cur_count": 0, "prev_count": 0}),
])
def test_weighting_snapshots_of_an_older_release_migrate(
        name: str, kept: tuple[str, ...], reset: dict[str, int]) -> None:
    """`gradient` and `spard` moved to state version 2 (unit rewards) with no migration:
    a curriculum of that release whose log was pruned could not load at all (500
    STATE_CORRUPT on every call). The weights and counts carry over bit for bit; what
    was summed under the old rule starts again."""
    folder = FIXTURES.parent / "snapshots_weightings_v1"
    data = (folder / f"{name}.npz").read_bytes()
    meta = json.loads((folder / f"{name}.json").read_text())
    old = load_npz(load_npz(data)["weighting"].tobytes())
    assert VERSION_KEY not in old
    engine = CurriculumEngine.from_bytes(CurriculumSpec.from_dict(meta["spec"]), data)
    new = load_npz(load_npz(engine.to_bytes())["weighting"].tobytes())
    assert int(new[VERSION_KEY]) == 2
    for field in kept:
        assert new[field].tobytes() == old[field].tobytes(), field
    assert {field: int(new[field]) for field in reset} == reset
    assert int(old["pending" if name == "gradient" else "prev_count"]) > 0  # it was reset
    batch = engine.next_batch("run", meta["clock"])  # and the curriculum goes on
    rewards = np.stack([np.ones((batch.indices.size, 4)),
                        np.full((batch.indices.size, 4), 50.0)], axis=-1)
    engine.apply(report(engine.spec, batch.indices, rewards, step=meta["clock"]))
    assert engine.clock == meta["clock"] + 1


def load_old_learnability(folder_name: str) -> tuple[dict[str, Any], CurriculumEngine,
                                                      dict[str, np.ndarray],
                                                      dict[str, np.ndarray]]:
    """(meta, engine, old sampler arrays, migrated sampler arrays) of a fixture written
    by an earlier release: the engine loads its bytes through the migration."""
    folder = FIXTURES.parent / folder_name
    data = (folder / "learnability.npz").read_bytes()
    meta = json.loads((folder / "learnability.json").read_text())
    old = load_npz(load_npz(data)["sampler"].tobytes())
    engine = CurriculumEngine.from_bytes(CurriculumSpec.from_dict(meta["spec"]), data)
    new = load_npz(load_npz(engine.to_bytes())["sampler"].tobytes())
    for field, array in old.items():  # every array the old release wrote, bit for bit
        if field != VERSION_KEY:
            assert new[field].dtype == array.dtype and new[field].tobytes() == array.tobytes()
    return meta, engine, old, new


def test_a_learnability_snapshot_of_an_older_release_migrates() -> None:
    """Version 1 (no `anchor`, no drift sums, no visits) -> 3: every array the old release
    wrote is kept bit for bit, each prompt's anchor is its distribution's level as stored
    and the drift starts at zero (so no estimate moves until the prompt is reported
    again), a seen prompt counts one visit, and the curriculum goes on."""
    meta, engine, old, new = load_old_learnability("snapshots_learnability_v1")
    curriculum = engine.spec
    assert int(old[VERSION_KEY]) == 1 and "anchor" not in old
    assert int(new[VERSION_KEY]) == 3
    assert new.keys() - old.keys() == {"anchor", "drift_residual", "drift_information",
                                       "visits"}
    assert not new["drift_residual"].any() and not new["drift_information"].any()
    assert np.array_equal(new["visits"], (old["successes"] + old["failures"] > 0))
    sampler = engine.sampler
    state = engine.state.sampler
    level = np.log(sampler.pooled_mean(state) / (1 - sampler.pooled_mean(state)))
    labels = curriculum.layout.distribution_of(np.arange(curriculum.layout.num_samples))
    np.testing.assert_allclose(state.anchor, level[labels], rtol=1e-6)
    # What the old release ranked by: the counts on the current prior.
    seen = np.flatnonzero(state.successes + state.failures)
    a, b = sampler.posterior(state, seen)
    mu, kappa = sampler.pooled_mean(state)[labels[seen]], sampler.prior_strength(state)[
        labels[seen]]
    np.testing.assert_allclose(a / (a + b), (kappa * mu + state.successes[seen])
                               / (kappa + state.successes[seen] + state.failures[seen]),
                               rtol=1e-5)
    batch = engine.next_batch("run", meta["clock"])
    rewards = np.ones((batch.indices.size, 4, 1))
    engine.apply(report(engine.spec, batch.indices, rewards, step=meta["clock"]))
    assert engine.clock == meta["clock"] + 1


def test_a_learnability_snapshot_of_the_previous_release_migrates() -> None:
    """Version 2 (no `visits`) -> 3: every array the previous release wrote is kept bit
    for bit, a prompt with evidence counts one visit (how many it had was not stored) and
    an unseen one none, and the curriculum goes on: its next batch discounts the seen
    prompts by one visit."""
    meta, engine, old, new = load_old_learnability("snapshots_learnability_v2")
    assert int(old[VERSION_KEY]) == 2 and "visits" not in old
    assert int(new[VERSION_KEY]) == 3 and new.keys() - old.keys() == {"visits"}
    seen = old["successes"] + old["failures"] > 0
    assert 0 < seen.sum() < seen.size
    assert new["visits"].dtype == np.uint8 and np.array_equal(new["visits"], seen)
    sampler, state = engine.sampler, engine.state.sampler
    rho = sampler.params.revisit_discount
    np.testing.assert_allclose(sampler.novelty(state, np.flatnonzero(seen)), rho)
    batch = engine.next_batch("run", meta["clock"])
    rewards = np.ones((batch.indices.size, 4, 1))
    engine.apply(report(engine.spec, batch.indices, rewards, step=meta["clock"]))
    assert engine.clock == meta["clock"] + 1
    assert np.all(engine.state.sampler.visits[batch.indices] >= 1)


# ---------------------------------------------------------------- a state that gains a field
@dataclass(frozen=True)
class EvolvingParams(DistributionParams):
    pass


@dataclass
class CountsV1:
    reports: np.ndarray  # float64 [D]: groups reported per distribution


@dataclass
class CountsV2:
    state_version: ClassVar[int] = 2
    reports: np.ndarray  # float64 [D]
    rollouts: np.ndarray  # float64 [D]: added in version 2


class EvolvingV1(DistributionSampler[Any, EvolvingParams]):
    """A plug-in sampler as released first: favours distributions reported least."""

    name = "evolving"
    params_type = EvolvingParams
    state_type: ClassVar[type[Any]] = CountsV1

    def init_state(self, rng: np.random.Generator) -> Any:
        return self.state_type(**{f.name: np.zeros(self.layout.num_distributions)
                                  for f in dataclasses.fields(self.state_type)})

    def update(self, state: Any, signals: ReportSignals, ctx: UpdateContext) -> None:
        np.add.at(state.reports, signals.distribution, 1.0)
        if hasattr(state, "rollouts"):
            np.add.at(state.rollouts, signals.distribution, signals.group_size)

    def probabilities(self, state: Any, ctx: ProposeContext) -> np.ndarray:
        score = 1.0 / (1.0 + state.reports)
        return np.asarray(score / score.sum())


class EvolvingV2Unmigrated(EvolvingV1):
    """The next release: the state gained `rollouts`, and no migration was written."""

    state_type = CountsV2


class EvolvingV2(EvolvingV2Unmigrated):
    """The next release with a migration: rollouts start counting at the upgrade."""

    def migrate_state(self, old_version: int, arrays: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        assert old_version == 1
        arrays["rollouts"] = np.zeros_like(arrays["reports"])
        return arrays


@pytest.fixture
def evolving() -> Iterator[None]:
    registry.register_sampler(EvolvingV1)
    try:
        yield
    finally:
        registry._registered_samplers.pop("evolving", None)


def drive(engine: CurriculumEngine, steps: int) -> list[Any]:
    reports = []
    rng = np.random.default_rng(1)
    for step in range(steps):
        batch = engine.next_batch("run", step)
        rewards = rng.integers(0, 2, (batch.indices.size, 4)).astype(float)
        reports.append(report(engine.spec, batch.indices, rewards, step=step))
        engine.apply(reports[-1])
    return reports


def true_rollouts(engine: CurriculumEngine, reports: list[Any]) -> np.ndarray:
    total = np.zeros(engine.layout.num_distributions)
    for item in reports:
        np.add.at(total, engine.layout.distribution_of(item.indices), 1.0)
    return total * 4  # every group has four rollouts


def test_the_strategy_migrates_an_old_state(evolving: None) -> None:
    old = CurriculumEngine(spec((20, 30, 10), sampler="evolving", batch_size=6))
    drive(old, 5)
    data = old.to_bytes()
    registry.register_sampler(EvolvingV2)
    engine = CurriculumEngine.from_bytes(old.spec, data)
    assert isinstance(engine.state.sampler, CountsV2)
    assert engine.state.sampler.reports.tolist() == old.state.sampler.reports.tolist()
    assert engine.state.sampler.rollouts.tolist() == [0.0, 0.0, 0.0]
    assert engine.next_batch("run", 5).same_as(old.next_batch("run", 5))


def test_without_a_migration_the_engine_raises_the_typed_error(evolving: None) -> None:
    old = CurriculumEngine(spec((20, 30, 10), sampler="evolving", batch_size=6))
    drive(old, 2)
    registry.register_sampler(EvolvingV2Unmigrated)
    with pytest.raises(StateVersionError, match="CountsV2 has no migration from version 1"):
        CurriculumEngine.from_bytes(old.spec, old.to_bytes())


def test_an_older_engine_format_is_a_version_error() -> None:
    engine = CurriculumEngine(spec())
    sections = load_npz(engine.to_bytes())
    sections["format"] = np.asarray(0)
    with pytest.raises(StateVersionError, match="format"):
        CurriculumEngine.from_bytes(engine.spec, save_npz(sections))


def stored_curriculum(tmp_path: Path, steps: int, snapshot_at: int) -> tuple[Any, Any, list[Any]]:
    """A SQLite store holding a curriculum of the V1 sampler: `steps` reports in the log
    and a snapshot written by the V1 code after `snapshot_at` of them."""
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}", auto_migrate=True)
    engine = CurriculumEngine(spec((20, 30, 10), sampler="evolving", batch_size=6))
    store.create_curriculum("c", engine.spec.to_dict())
    reports = drive(engine, steps)
    replayed = CurriculumEngine(engine.spec)
    with store.writer("c") as writer:
        for item in reports:
            seq = writer.append("report", item.run_id, item.step, None, encode_report(item))
            replayed.apply(item)
            if seq == snapshot_at:
                writer.put_snapshot(seq, replayed.to_bytes())
    return store, engine, reports


def test_the_cache_rebuilds_from_the_log_when_no_migration_exists(
        evolving: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, old, reports = stored_curriculum(tmp_path, steps=6, snapshot_at=4)
    registry.register_sampler(EvolvingV2Unmigrated)
    with caplog.at_level(logging.WARNING, logger="paceline_server.app.engines"):
        cached = EngineCache(store, capacity=4).entry(store.head("c"))
    assert cached.seq == 4  # where the snapshot stood, so catch-up folds the rest
    assert "rebuilding from the event log" in caplog.text
    assert "rebuilt from 4 events" in caplog.text
    sampler = cached.engine.state.sampler
    assert isinstance(sampler, CountsV2)
    np.testing.assert_array_equal(sampler.rollouts, true_rollouts(old, reports[:4]))
    EngineCache(store, capacity=4).catch_up(cached, "c", 6)
    assert cached.engine.state.sampler.reports.tolist() == old.state.sampler.reports.tolist()
    np.testing.assert_array_equal(cached.engine.state.sampler.rollouts,
                                  true_rollouts(old, reports))
    store.close()


def test_the_migration_is_preferred_to_the_replay(
        evolving: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, _, _ = stored_curriculum(tmp_path, steps=4, snapshot_at=4)
    registry.register_sampler(EvolvingV2)
    with caplog.at_level(logging.WARNING, logger="paceline_server.app.engines"):
        cached = EngineCache(store, capacity=4).entry(store.head("c"))
    assert "rebuilding" not in caplog.text
    assert cached.engine.state.sampler.rollouts.tolist() == [0.0, 0.0, 0.0]
    store.close()


def test_a_pruned_log_cannot_be_replayed(evolving: None, tmp_path: Path) -> None:
    store, _, _ = stored_curriculum(tmp_path, steps=6, snapshot_at=4)
    assert store.prune_events("c", 4) == 4
    registry.register_sampler(EvolvingV2Unmigrated)
    with pytest.raises(StateVersionError, match="cannot be rebuilt by replay") as info:
        EngineCache(store, capacity=4).entry(store.head("c"))
    assert info.value.details["replayed_to"] == 0 and info.value.details["snapshot_seq"] == 4
    store.close()
