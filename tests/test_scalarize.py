"""Scalarisation is one definition (domain/scalarize.py): every path that turns a reward
vector into the reward a trainer optimises gives the same number for the same rewards,
weights and objectives, with any mix of maximised and minimised objectives, with and
without declared bounds.

Paths: the domain function, the engine's report signals, the client's own module,
`Batch.scalarize` on a batch built from the stored spec (lists, arrays, mappings), the
batch-shaped view of current weights (TRL's rows scored before the first batch), verl's
`ServedWeights.score`, TRL's `ScalarizedReward` and the torch loop's `Step.scalarize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline import _api
from paceline import scalarize as client_scalarize
from paceline.integrations._ledger import BatchLedger
from paceline.models import Batch, weights_view
from paceline_server.domain import CurriculumSpec
from paceline_server.domain.scalarize import linear_form, scalarize, unit_rewards
from support import signals

N, G = 3, 4


@dataclass(frozen=True)
class Case:
    spec: CurriculumSpec
    weights: np.ndarray
    scale: float
    rewards: np.ndarray  # [N, G, k]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.spec.objectives]

    @property
    def weight_map(self) -> dict[str, float]:
        return dict(zip(self.names, self.weights.tolist(), strict=True))

    @property
    def stored_spec(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def expected(self) -> np.ndarray:
        return scalarize(self.rewards, self.weights, self.spec.objectives, self.scale)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    k = draw(st.integers(1, 4))
    objectives: list[Any] = []
    for i in range(k):
        direction = draw(st.sampled_from(["maximize", "minimize"]))
        if draw(st.booleans()):
            low = draw(st.floats(-1000, 1000))
            width = draw(st.floats(0.01, 5000))
            objectives.append({"name": f"o{i}", "direction": direction,
                               "bounds": [low, low + width]})
        elif direction == "minimize":
            objectives.append({"name": f"o{i}", "direction": "minimize"})
        else:
            objectives.append(f"o{i}")
    raw = draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k))
    weights = np.asarray(raw) / sum(raw)
    scale = draw(st.floats(0.25, 2.0))
    values = draw(st.lists(st.floats(-2000, 2000), min_size=N * G * k, max_size=N * G * k))
    spec = CurriculumSpec.from_dict({
        "name": "s", "layout": {"distributions": [{"name": "d", "size": 10}]},
        "objectives": objectives, "weighting": {"kind": "fixed", "weights": weights.tolist()},
        "batch_size": 2})
    return Case(spec, weights, scale, np.asarray(values, dtype=np.float64).reshape(N, G, k))


def close(actual: Any, expected: np.ndarray, rtol: float = 1e-9) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               rtol=0, atol=rtol * scale * 10)


def served_batch(case: Case) -> Batch:
    served = {"run_id": "r", "step": 0, "indices": list(range(N)),
              "reward_weights": case.weight_map, "reward_scale": case.scale}
    return _api.batch(served, case.stored_spec)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_domain_engine_and_client_agree(case: Case) -> None:
    expected = case.expected()
    # The definition: scale * sum_i w_i u_i with u_i by bounds, larger is better.
    unit = unit_rewards(case.rewards, case.spec.objectives)
    close(case.scale * (unit @ case.weights), expected)
    coefficients, constant = linear_form(case.weights, case.spec.objectives, case.scale)
    close(case.rewards @ coefficients + constant, expected)
    # The engine's signals (no scale: it does not change which groups are constant).
    sig = signals(case.spec, list(range(N)), case.rewards, weights=case.weights.tolist())
    close(case.scale * sig.scalarized.reshape(N, G), expected)
    # The client's own module, from the stored spec and from the spec as written.
    for spec in (case.stored_spec, {"objectives": [
            o.name if o.bounds == (0.0, 1.0) and o.direction == "maximize" else
            {"name": o.name, "direction": o.direction, "bounds": list(o.bounds)}
            for o in case.spec.objectives]}):
        objectives = client_scalarize.objectives_from_spec(spec)
        close(client_scalarize.scalarize(case.rewards, case.weight_map, objectives,
                                         case.scale), expected)
    # Batch.scalarize on a served batch: nested lists, arrays, mappings of arrays/lists.
    batch = served_batch(case)
    close(batch.scalarize(case.rewards), expected)
    close(batch.scalarize(case.rewards.tolist()), expected)
    by_name = {name: case.rewards[..., i] for i, name in enumerate(case.names)}
    close(batch.scalarize(by_name), expected)
    close(batch.scalarize({n: v.tolist() for n, v in by_name.items()}), expected)
    one = {name: float(case.rewards[0, 0, i]) for i, name in enumerate(case.names)}
    close(batch.scalarize(one), expected[0, 0])


class StubCurriculum:
    """What the integrations read of a curriculum: its stored spec, names, state."""

    def __init__(self, case: Case) -> None:
        self.spec = case.stored_spec
        self.objectives = case.names
        self._case = case

    def state(self) -> Any:
        case = self._case

        @dataclass
        class State:
            reward_weights: dict[str, float]
            reward_scale: float

        return State(case.weight_map, case.scale)


@dataclass
class StubRun:
    curriculum: StubCurriculum
    run_id: str = "run"


@settings(max_examples=60, deadline=None)
@given(cases())
def test_ledger_weights_before_the_first_batch(case: Case) -> None:
    # TRL scores evaluation rows (and rows before the first batch) with these.
    view = BatchLedger(StubRun(StubCurriculum(case))).weights()  # type: ignore[arg-type]
    close(view.scalarize(case.rewards), case.expected())
    close(weights_view(case.weight_map, case.scale, case.stored_spec).scalarize(
        case.rewards), case.expected())


@settings(max_examples=40, deadline=None)
@given(cases())
def test_verl_served_weights_score(case: Case) -> None:
    verl = pytest.importorskip("paceline.integrations.verl")
    served = verl.ServedWeights(StubCurriculum(case))  # type: ignore[arg-type]
    expected = case.expected()
    for n in range(N):
        rewards = {name: float(case.rewards[n, 0, i]) for i, name in enumerate(case.names)}
        result = served.score(rewards)
        close(result["score"], expected[n, 0])
        assert {k: result[k] for k in case.names} == rewards


@settings(max_examples=25, deadline=None)
@given(cases())
def test_trl_reward_function(case: Case) -> None:
    trl = pytest.importorskip("paceline.integrations.trl")
    ledger = BatchLedger(StubRun(StubCurriculum(case)))  # type: ignore[arg-type]
    flat = case.rewards.reshape(-1, len(case.names))

    def column(i: int) -> Any:
        return lambda prompts, completions, **kwargs: flat[:, i].tolist()

    reward = trl.ScalarizedReward({name: column(i) for i, name in enumerate(case.names)},
                                  ledger)
    rows = len(flat)
    close(reward(prompts=[""] * rows, completions=[""] * rows), case.expected().reshape(-1))


@settings(max_examples=25, deadline=None)
@given(cases())
def test_torch_step_scalarize(case: Case) -> None:
    torch_integration = pytest.importorskip("paceline.integrations.torch")
    import torch

    step = torch_integration.Step(run=None, step=0, batch=served_batch(case))  # type: ignore[arg-type]
    expected = case.expected()
    # float64 in (an array, a tensor, Python floats, a mapping): the same numbers, mapped in
    # float64 (the step once rounded every input to float32 first)
    for rewards in (case.rewards, torch.from_numpy(case.rewards)):
        got = step.scalarize(rewards)
        assert got.dtype == torch.float64
        close(got.numpy(), expected)
    close(step.scalarize(case.rewards.tolist()).double().numpy(), expected, rtol=1e-6)
    by_name = {name: case.rewards[..., k] for k, name in enumerate(case.names)}
    close(step.scalarize(by_name).numpy(), expected)
    if len(case.names) == 1:  # [n, g] with one objective: raw rewards, like [n, g, 1]
        close(step.scalarize(case.rewards[..., 0]).numpy(), expected)


def test_issue_examples() -> None:
    """The issue's numbers: weights 0.5/0.5 on {correctness: 1, length: 80} with length
    minimised gave +40.5 in verl (direction ignored) against -39.5 in Batch.scalarize;
    now every path gives the same value, and with bounds [0, 1000] it is on one scale."""
    spec = CurriculumSpec.from_dict({
        "name": "s", "layout": {"distributions": [{"name": "d", "size": 10}]},
        "objectives": ["correctness", {"name": "length", "direction": "minimize",
                                       "bounds": [0, 1000]}], "batch_size": 2})
    case = Case(spec, np.array([0.5, 0.5]), 1.0, np.array([[[1.0, 80.0]]]))
    assert case.expected()[0, 0] == pytest.approx(0.5 + 0.5 * 0.92)
    assert served_batch(case).scalarize([1.0, 80.0]) == pytest.approx(0.96)
    view = BatchLedger(StubRun(StubCurriculum(case))).weights()  # type: ignore[arg-type]
    assert view.scalarize({"correctness": 1.0, "length": 80.0}) == pytest.approx(0.96)
    # Longer is worse on every path.
    assert view.scalarize([1.0, 900.0]) < view.scalarize([1.0, 80.0])


class MovingCurriculum(StubCurriculum):
    """A curriculum whose weights move on every `state()` call (a report folded between
    two fetches): what a cache refreshed in the middle of a reward call meets."""

    def __init__(self, case: Case) -> None:
        super().__init__(case)
        self.fetches = 0

    def state(self) -> Any:
        self.fetches += 1

        @dataclass
        class State:
            reward_weights: dict[str, float]
            reward_scale: float

        first = 0.9 if self.fetches % 2 else 0.1
        return State({"correctness": first, "length": 1.0 - first}, 1.0)


def test_openrlhf_reward_call_scores_every_row_with_one_weight_vector() -> None:
    """OpenRLHF's reward function scores a whole batch (whole groups) in one call; every
    row of it must take the same weights, or a group's advantages compare rewards
    scalarised two ways. With the cache expiring during the call (ttl 0 here, a 10 s ttl
    running out mid-batch in practice) each row fetched the weights again."""
    openrlhf = pytest.importorskip("paceline.integrations.openrlhf")
    spec = CurriculumSpec.from_dict({
        "name": "s", "layout": {"distributions": [{"name": "d", "size": 10}]},
        "objectives": ["correctness", {"name": "length", "direction": "minimize"}],
        "batch_size": 2})
    curriculum = MovingCurriculum(Case(spec, np.array([0.5, 0.5]), 1.0,
                                       np.zeros((1, 1, 2))))
    weights = openrlhf.ServedWeights(curriculum, ttl=0.0)  # type: ignore[arg-type]
    reward = openrlhf.ScalarizedRewardFunc(weights, {
        "correctness": lambda q, p, label: 1.0, "length": lambda q, p, label: 0.0})
    out = reward(["q"] * 4, ["p"] * 4, [None] * 4)
    assert out["rewards"].tolist() == [pytest.approx(1.0)] * 4  # u = (1, 1): any weights
    reward = openrlhf.ScalarizedRewardFunc(weights, {
        "correctness": lambda q, p, label: 1.0, "length": lambda q, p, label: 1.0})
    out = reward(["q"] * 4, ["p"] * 4, [None] * 4)
    assert len(set(out["rewards"].tolist())) == 1, out["rewards"]


def _spec_with_bounds(bounds: list[float], weighting: Any = "fixed") -> CurriculumSpec:
    return CurriculumSpec.from_dict({
        "name": "s", "layout": {"distributions": [{"name": "d", "size": 10},
                                                  {"name": "e", "size": 10}]},
        "objectives": [{"name": "acc", "bounds": bounds}, "x"], "weighting": weighting,
        "batch_size": 4})


@pytest.mark.parametrize("bounds", [[0.0, 1e-310], [0.0, 5e-324], [-1e-200, 1e-200]])
def test_bounds_too_narrow_for_finite_unit_rewards_are_refused(bounds: list[float]) -> None:
    """Bounds a subnormal apart gave every unit reward an infinite gain: the spec was
    accepted and the first report turned the default sampler's probabilities (or spard's
    weights) into NaN, so every later batch of the curriculum failed (500)."""
    from paceline_server.domain.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="bounds"):
        _spec_with_bounds(bounds)


@pytest.mark.parametrize("weighting", ["fixed", {"kind": "spard", "every_steps": 1},
                                       "gradient", "hypervolume"])
def test_the_narrowest_bounds_accepted_keep_every_figure_finite(weighting: Any) -> None:
    from paceline_server.domain.spec import MIN_BOUNDS_WIDTH
    from paceline_server.engine.engine import CurriculumEngine
    from support import report

    cur = _spec_with_bounds([0.0, MIN_BOUNDS_WIDTH], weighting)
    engine = CurriculumEngine(cur)
    rng = np.random.default_rng(0)
    for step in range(4):  # rewards at the limit the service takes (1e6)
        batch = engine.next_batch("r", step)
        rewards = rng.choice([-1e6, 0.0, 1e6], (4, 3, 2))
        engine.apply(report(cur, batch.indices, rewards, step=step))
    batch = engine.next_batch("r", 4)
    assert np.all(np.isfinite(batch.probabilities)) and np.all(np.isfinite(
        batch.reward_weights)) and np.isfinite(batch.reward_scale)
