"""A strategy that misbehaves (a plug-in, as a rule) never has what it returned served
or stored: the engine checks every answer (engine/contract.py) and a failure is 500
STRATEGY_ERROR naming it, with the curriculum's log and other requests unaffected. A
state the codec cannot write skips its snapshot instead of failing every report, and
one it cannot read back is rebuilt from the log. The strategy listing survives a
malformed plug-in, and the service says at start which plug-ins it cannot use."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paceline_server.app.service import PacelineService
from paceline_server.app.strategies import strategy_catalog
from paceline_server.domain.errors import StrategyError
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.strategies import registry
from paceline_server.strategies.base import Proposal, ProposeContext, UpdateContext
from paceline_server.strategies.samplers.uniform import UniformSampler
from paceline_server.strategies.signals import ReportSignals
from paceline_server.strategies.weightings.fixed import FixedWeighting

BODY = {"layout": {"distributions": [{"name": "a", "size": 12}, {"name": "b", "size": 8}]},
        "objectives": ["acc", "len"], "batch_size": 4, "seed": 3}
#: how the test sampler misbehaves next (set by each test)
MODE: dict[str, str] = {"sampler": "", "weighting": ""}


class Wayward(UniformSampler):
    """A sampler that breaks its contract as `MODE` says."""

    name = "wayward"

    def propose(self, state: Any, size: int, rng: np.random.Generator,
                ctx: ProposeContext) -> Proposal:
        good = super().propose(state, size, rng, ctx)
        mode = MODE["sampler"]
        if mode == "outside":
            return Proposal(np.arange(20, 20 + size), good.probabilities)
        if mode == "negative":
            return Proposal(-np.arange(1, size + 1), good.probabilities)
        if mode == "short":
            return Proposal(good.indices[:-1], good.probabilities)
        if mode == "nan":
            return Proposal(good.indices, np.array([np.nan, 1.0]))
        if mode == "raise":
            raise KeyError("bug in propose")
        if mode == "lists":  # plain lists, not arrays: read as arrays
            return Proposal(good.indices.tolist(), good.probabilities.tolist(),
                            loss_weights=[1.0] * size)  # type: ignore[arg-type]
        if mode == "skipped":
            return Proposal(good.indices, good.probabilities, skipped="x")  # type: ignore[arg-type]
        return good

    def init_state(self, rng: np.random.Generator) -> Any:
        if MODE["sampler"] == "raise_init":
            raise RuntimeError("bug in init_state")
        return super().init_state(rng)

    def describe(self, state: Any) -> dict[str, Any]:
        if MODE["sampler"] == "raise_describe":
            raise RuntimeError("bug in describe")
        return super().describe(state)

    def explain(self, state: Any, ctx: ProposeContext) -> Any:
        if MODE["sampler"] == "short_explain":
            return []
        return super().explain(state, ctx)

    def probabilities(self, state: Any, ctx: ProposeContext) -> np.ndarray:
        if MODE["sampler"] == "length":
            return np.array([0.5, 0.25, 0.25])
        return super().probabilities(state, ctx)

    def update(self, state: Any, signals: ReportSignals, ctx: UpdateContext) -> None:
        if MODE["sampler"] == "raise_update":
            raise ZeroDivisionError("bug in update")
        super().update(state, signals, ctx)


class Slanted(FixedWeighting):
    """A weighting whose weights leave the simplex when `MODE` says so."""

    name = "slanted"

    def current(self, state: Any) -> Any:
        decision = super().current(state)
        if MODE["weighting"] == "negative":
            return type(decision)(np.array([-1.0, 2.0]), decision.scale)
        if MODE["weighting"] == "text_scale":
            return type(decision)(decision.weights, "large")  # type: ignore[arg-type]
        if MODE["weighting"] == "long":
            return type(decision)(np.array([0.5, 0.25, 0.25]), decision.scale)
        return decision


@dataclass
class DictState:
    extra: dict[str, int] = field(default_factory=dict)  # the codec has no dicts


class Unwritable(UniformSampler):
    name = "unwritable"
    state_type = DictState

    def init_state(self, rng: np.random.Generator) -> Any:
        return DictState({"a": 1})

    def update(self, state: Any, signals: ReportSignals, ctx: UpdateContext) -> None:
        pass

    def probabilities(self, state: Any, ctx: ProposeContext) -> np.ndarray:
        return np.array([0.5, 0.5])


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PacelineService]:
    registry.register_sampler(Wayward)
    registry.register_sampler(Unwritable)
    registry.register_weighting(Slanted)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    found = PacelineService(open_store(url, auto_migrate=True),
                            Settings(database_url=url, snapshot_every=2))
    try:
        yield found
    finally:
        MODE.update(sampler="", weighting="")
        found.close()
        found.store.close()
        for name in ("wayward", "unwritable"):
            registry._registered_samplers.pop(name, None)
        registry._registered_weightings.pop("slanted", None)


def report(service: PacelineService, name: str, step: int, run: str = "r") -> Any:
    batch = service.next_batch(name, run, step)
    return service.report(name, {"run_id": run, "step": step,
                                 "indices": batch.indices.tolist(),
                                 "rewards": np.ones((batch.indices.size, 2, 2)).tolist()})


@pytest.mark.parametrize(("mode", "says"), [
    ("outside", "indices outside the dataset [0, 20)"),
    ("negative", "indices outside the dataset"),
    ("short", "for a batch of 4"),
    ("nan", "probabilities"),
    ("raise", "KeyError: 'bug in propose'"),
    ("skipped", "a skipped count of 'x'"),
    ("raise_init", "RuntimeError: bug in init_state"),
])
def test_a_bad_proposal_is_not_served_or_stored(service: PacelineService, mode: str,
                                                says: str) -> None:
    service.create_curriculum({**BODY, "name": "w", "sampler": "wayward"})
    service.attach_run("w", run_id="r")
    MODE["sampler"] = mode
    with pytest.raises(StrategyError, match="sampler 'wayward'") as info:
        service.next_batch("w", "r", 0)
    assert says in info.value.message and info.value.code == "STRATEGY_ERROR"
    assert service.store.get_batch("w", "r", 0) is None  # nothing stored
    MODE["sampler"] = ""
    assert service.next_batch("w", "r", 0).indices.size == 4  # served once it behaves


def test_wrong_length_probabilities_fail_the_state_not_the_log(
        service: PacelineService) -> None:
    service.create_curriculum({**BODY, "name": "w", "sampler": "wayward"})
    service.attach_run("w", run_id="r")
    report(service, "w", 0)
    MODE["sampler"] = "length"
    with pytest.raises(StrategyError, match="probabilities"):
        service.state("w")
    assert service.store.get_curriculum("w").head_seq == 1


def test_a_raising_update_folds_nothing(service: PacelineService) -> None:
    service.create_curriculum({**BODY, "name": "w", "sampler": "wayward"})
    service.attach_run("w", run_id="r")
    MODE["sampler"] = "raise_update"
    with pytest.raises(StrategyError, match="ZeroDivisionError: bug in update"):
        report(service, "w", 0)
    assert service.store.get_curriculum("w").head_seq == 0
    MODE["sampler"] = ""
    assert report(service, "w", 0).seq == 1


def test_weights_off_the_simplex_are_not_served(service: PacelineService) -> None:
    service.create_curriculum({**BODY, "name": "s", "weighting": {"kind": "slanted"}})
    service.attach_run("s", run_id="r")
    MODE["weighting"] = "negative"
    with pytest.raises(StrategyError, match="weighting 'slanted' returned reward weights"):
        service.next_batch("s", "r", 0)


def test_a_state_the_codec_cannot_write_skips_its_snapshots(
        service: PacelineService, caplog: pytest.LogCaptureFixture) -> None:
    """Every report from the first snapshot on failed (TypeError: dict), for good."""
    service.create_curriculum({**BODY, "name": "u", "sampler": "unwritable"})
    service.attach_run("u", run_id="r")
    with caplog.at_level(logging.ERROR):
        assert [report(service, "u", step).seq for step in range(5)] == [1, 2, 3, 4, 5]
    assert "its state cannot be written" in caplog.text
    assert service.store.latest_snapshot("u") is None
    service.engines.forget("u")  # a restart: the engine is rebuilt from the log
    assert service.state("u").clock == 5


def test_an_unreadable_snapshot_is_rebuilt_from_the_log(service: PacelineService) -> None:
    service.create_curriculum({**BODY, "name": "c", "sampler": "learnability"})
    service.attach_run("c", run_id="r")
    for step in range(4):
        report(service, "c", step)
    before = service.next_batch("c", "r", 4).indices.tolist()
    snapshot = service.store.latest_snapshot("c")
    assert snapshot is not None
    with service.store.writer("c") as writer:  # bytes no release can read
        writer.put_snapshot(snapshot.seq, b"PK\x03\x04 not a snapshot")
    service.engines.forget("c")
    assert service.state("c").clock == 4
    assert service.next_batch("c", "r", 5).indices.size == 4
    assert service.next_batch("c", "r", 4).indices.tolist() == before


class NoParams:
    """Not a sampler at all: what a plug-in author's mistake registers."""

    name = "no_params"


def test_the_listing_survives_a_malformed_strategy() -> None:
    registry._registered_samplers["no_params"] = NoParams  # type: ignore[assignment]
    try:
        catalog = strategy_catalog()
    finally:
        registry._registered_samplers.pop("no_params")
    broken = next(s for s in catalog.samplers if s.name == "no_params")
    assert broken.error is not None and "AttributeError" in broken.error
    assert any(s.name == "learnability" and s.error is None for s in catalog.samplers)


def test_plug_ins_that_cannot_be_used_are_named_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    entries = {"uniform": EntryPoint("uniform", "elsewhere:Uniform", "paceline.samplers"),
               "ghost": EntryPoint("ghost", "no_such_module_x:Ghost", "paceline.samplers"),
               "odd": EntryPoint("odd", "json:dumps", "paceline.samplers")}
    monkeypatch.setattr(registry.SAMPLERS, "_plugins", lambda: entries)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with caplog.at_level(logging.WARNING):
        service = PacelineService(open_store(url, auto_migrate=True),
                                  Settings(database_url=url))
    service.close()
    service.store.close()
    text = caplog.text
    assert "sampler plug-in 'uniform' (elsewhere:Uniform) is shadowed by the built-in" in text
    assert "sampler 'ghost' is registered by a plug-in that failed to load" in text
    assert "'json:dumps' is not a sampler class" in text


def test_a_proposal_of_plain_lists_is_served_as_arrays(service: PacelineService) -> None:
    """`.astype` on a list failed outside the checks: 500 INTERNAL, not naming it."""
    service.create_curriculum({**BODY, "name": "w", "sampler": "wayward"})
    service.attach_run("w", run_id="r")
    MODE["sampler"] = "lists"
    batch = service.next_batch("w", "r", 0)
    assert batch.indices.dtype == np.int64 and batch.indices.size == 4
    assert batch.loss_weights is not None and batch.loss_weights.dtype == np.float64


@pytest.mark.parametrize(("mode", "says"), [
    ("raise_describe", "sampler 'wayward' failed: RuntimeError: bug in describe"),
    ("short_explain", "sampler 'wayward' explained 0 distributions of 2"),
])
def test_a_failing_describe_or_explain_names_the_sampler(service: PacelineService, mode: str,
                                                        says: str) -> None:
    """They ran outside `blame`: a RuntimeError or zip's ValueError was 500 INTERNAL."""
    service.create_curriculum({**BODY, "name": "w", "sampler": "wayward"})
    service.attach_run("w", run_id="r")
    report(service, "w", 0)
    MODE["sampler"] = mode
    with pytest.raises(StrategyError, match=says):
        service.state("w")
    MODE["sampler"] = ""
    assert service.state("w").clock == 1


@pytest.mark.parametrize(("mode", "says"), [
    ("text_scale", "returned the reward scale 'large'"),  # float('large'): ValueError
    ("long", "that are not 2 non-negative numbers"),  # a fresh engine recorded it unchecked
])
def test_a_weighting_answer_that_is_not_numbers_names_it(service: PacelineService, mode: str,
                                                         says: str) -> None:
    service.create_curriculum({**BODY, "name": "s", "weighting": {"kind": "slanted"}})
    service.attach_run("s", run_id="r")
    MODE["weighting"] = mode
    with pytest.raises(StrategyError, match="weighting 'slanted'") as info:
        service.next_batch("s", "r", 0)
    assert says in info.value.message
    MODE["weighting"] = ""
    assert service.next_batch("s", "r", 0).indices.size == 4


@dataclass
class ScalarState:
    total: np.float64  # written as a 0-d array, but the codec reads no numpy scalar type


class Unreadable(UniformSampler):
    """Its state writes but does not read back."""

    name = "unreadable"
    state_type = ScalarState

    def init_state(self, rng: np.random.Generator) -> Any:
        return ScalarState(np.float64(0.0))

    def update(self, state: Any, signals: ReportSignals, ctx: UpdateContext) -> None:
        state.total += 1.0

    def probabilities(self, state: Any, ctx: ProposeContext) -> np.ndarray:
        return np.array([0.5, 0.5])


@dataclass
class CountState:
    count: int = 0


class Mislabelled(UniformSampler):
    """Keeps a CountState but leaves `state_type` as UniformSampler's StatelessState."""

    name = "mislabelled"

    def init_state(self, rng: np.random.Generator) -> Any:
        return CountState()

    def update(self, state: Any, signals: ReportSignals, ctx: UpdateContext) -> None:
        state.count += 1

    def describe(self, state: Any) -> dict[str, Any]:
        return {"count": state.count}


@pytest.mark.parametrize("sampler", [Unreadable, Mislabelled])
def test_a_snapshot_that_would_not_read_back_is_not_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, sampler: Any) -> None:
    """Such a snapshot was written, and pruning then deleted the log it covers: once the
    engine left the cache (a restart), the curriculum could be neither loaded
    (StateCorrupt) nor replayed, for good, or (a state of another class than
    `state_type`) loaded as an empty state that failed every request."""
    registry.register_sampler(sampler)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = PacelineService(open_store(url, auto_migrate=True),
                              Settings(database_url=url, snapshot_every=2,
                                       prune_events=True))
    try:
        service.create_curriculum({**BODY, "name": "u", "sampler": sampler.name})
        service.attach_run("u", run_id="r")
        with caplog.at_level(logging.ERROR):
            assert [report(service, "u", step).seq for step in range(4)] == [1, 2, 3, 4]
        assert "its state cannot be written" in caplog.text
        service.engines.forget("u")  # a restart
        state = service.state("u")
        assert state.clock == 4
        if sampler is Mislabelled:
            assert state.sampler == {"count": 4}
        assert service.next_batch("u", "r", 4).indices.size == 4
    finally:
        service.close()
        service.store.close()
        registry._registered_samplers.pop(sampler.name, None)
