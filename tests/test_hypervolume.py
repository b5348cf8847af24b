"""`hypervolume` weighting: meta-reward, reference, point sources and steer mode against
hand-computed values; parameter and report errors; state round trips; properties."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams, InvalidReport
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.state_codec import encode_state
from paceline_server.strategies.weightings import hypervolume as hv_module
from paceline_server.strategies.weightings.hypervolume import HISTORY, HypervolumeState, meta_reward
from support import report, spec


def m(delta: float) -> float:
    return 0.5 + 1.5 * math.tanh(delta)


def hv_engine(objectives: Any = ("a", "b"), **params: Any) -> CurriculumEngine:
    return CurriculumEngine(spec((10,), objectives,
                                 weighting={"kind": "hypervolume", **params}, batch_size=2))


def evaluate(engine: CurriculumEngine, point: list[float], step: int = 0,
             rewards: Any = None) -> None:
    k = len(engine.spec.objectives)
    engine.apply(report(engine.spec, [0], np.ones((1, 2, k)) if rewards is None else rewards,
                        step=step, eval_objectives=point))


def rollouts(engine: CurriculumEngine, means: list[float], step: int = 0) -> None:
    """A report without eval_objectives whose per-objective rollout means are `means`."""
    engine.apply(report(engine.spec, [0], np.array([[means, means]]), step=step))


def state_of(engine: CurriculumEngine) -> HypervolumeState:
    state: HypervolumeState = engine.state.weighting
    return state


def test_meta_reward_formula() -> None:
    assert meta_reward(0.0) == 0.5
    assert meta_reward(-1.0) == 0.5  # contributions are clipped at 0
    assert meta_reward(0.12) == pytest.approx(m(0.12))
    assert meta_reward(1e9) < 2.0 + 1e-12


def test_meta_reward_by_hand() -> None:
    e = hv_engine(mode="scale")
    assert e.weights().scale == 1.0
    evaluate(e, [0.2, 0.2], 0)  # the first evaluation is the reference
    assert e.weights().scale == 1.0
    evaluate(e, [0.5, 0.6], 1)  # ΔHV = 0.3 * 0.4 = 0.12
    assert e.weights().scale == pytest.approx(m(0.12))
    evaluate(e, [0.4, 0.5], 2)  # dominated: ΔHV = 0
    assert e.weights().scale == 0.5
    evaluate(e, [0.7, 0.3], 3)  # adds (0.7-0.5) * (0.3-0.2) = 0.02
    assert e.weights().scale == pytest.approx(m(0.02))
    evaluate(e, [0.1, 0.9], 4)  # below the reference on a: adds nothing
    assert e.weights().scale == 0.5
    view = e.inspect()
    assert [r.clock for r in view.hypervolume_history] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([r.hypervolume for r in view.hypervolume_history],
                               [0.0, 0.12, 0.12, 0.14, 0.14])
    assert view.hypervolume_history[1].point == (0.5, 0.6)
    assert view.reward_weights == (0.5, 0.5)  # scale mode keeps the preference
    assert view.weighting["front_size"] == 2
    assert view.weighting["reference"] == [0.2, 0.2]
    assert view.weighting["contribution"] == 0.0


def test_minimised_objective_is_flipped_and_scaled_by_its_bounds() -> None:
    objectives = ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 200]}]
    e = hv_engine(objectives)
    evaluate(e, [0.2, 160.0], 0)  # normalised (0.2, 0.2)
    evaluate(e, [0.5, 80.0], 1)  # normalised (0.5, 0.6): ΔHV = 0.12
    assert e.weights().scale == pytest.approx(m(0.12))
    assert e.inspect().hypervolume_history[1].point == pytest.approx((0.5, 0.6))
    evaluate(e, [0.9, 180.0], 2)  # longer than the reference: (0.9, 0.1) adds nothing
    assert e.weights().scale == 0.5


def test_declared_reference_scores_the_first_point() -> None:
    e = hv_engine([{"name": "a", "reference": 0.0}, {"name": "b", "reference": 0.0}])
    assert state_of(e).buffer.has_reference
    # No eval_objectives: the rollout means (0.5, 1.0) are the point.
    e.apply(report(e.spec, [0], np.array([[[1.0, 1.0], [0.0, 1.0]]])))
    assert e.weights().scale == pytest.approx(m(0.5))
    assert e.inspect().hypervolume_history[0].hypervolume == pytest.approx(0.5)


def test_partly_declared_reference_takes_the_rest_from_the_first_point() -> None:
    e = hv_engine([{"name": "a", "reference": 0.1}, "b"])
    evaluate(e, [0.3, 0.4], 0)  # reference (0.1, 0.4); m stays 1
    assert e.weights().scale == 1.0
    assert e.inspect().weighting["reference"] == pytest.approx([0.1, 0.4])
    evaluate(e, [0.5, 0.6], 1)  # ΔHV = 0.4 * 0.2
    assert e.weights().scale == pytest.approx(m(0.08))


def test_rollout_points_with_ema() -> None:
    e = hv_engine(ema=0.5)
    rollouts(e, [0.2, 0.2], 0)  # reference
    rollouts(e, [0.6, 1.0], 1)  # smoothed (0.4, 0.6): ΔHV = 0.2 * 0.4
    assert e.weights().scale == pytest.approx(m(0.08))
    np.testing.assert_allclose(state_of(e).smoothed, [0.4, 0.6])
    evaluate(e, [0.9, 0.9], 2)  # eval points are used as they are (no smoothing)
    assert e.weights().scale == pytest.approx(m(0.7 * 0.7 - 0.08))
    np.testing.assert_allclose(state_of(e).smoothed, [0.4, 0.6])


def test_points_eval_ignores_reports_without_evaluation() -> None:
    e = hv_engine(points="eval")
    before = encode_state(e.state.weighting)
    rollouts(e, [0.5, 0.5])
    assert encode_state(e.state.weighting) == before
    evaluate(e, [0.2, 0.2], 1)
    evaluate(e, [0.4, 0.4], 2)
    rollouts(e, [0.9, 0.9], 3)
    assert e.weights().scale == pytest.approx(m(0.04))
    assert len(e.inspect().hypervolume_history) == 2


def test_points_rollouts_ignores_evaluations() -> None:
    e = hv_engine(points="rollouts")
    evaluate(e, [0.9, 0.9], 0, rewards=np.full((1, 2, 2), 0.2))
    evaluate(e, [0.0, 0.0], 1, rewards=np.full((1, 2, 2), 0.5))
    assert e.weights().scale == pytest.approx(m(0.09))


def test_steer_moves_toward_the_objective_that_expands_the_front() -> None:
    e = hv_engine(mode="steer", eta=0.5)
    evaluate(e, [0.0, 0.0], 0)
    evaluate(e, [0.9, 0.1], 1)
    # HV(f) = 0.09; g_a = 0.91*0.1 - 0.09 = 0.001, g_b = 0.9*0.11 - 0.09 = 0.009,
    # g/Σg = (0.1, 0.9); w = 0.5*(0.5, 0.5) + 0.5*(0.1, 0.9).
    np.testing.assert_allclose(e.weights().weights, [0.3, 0.7], atol=1e-9)
    assert e.weights().scale == pytest.approx(m(0.09))
    batch = e.next_batch("run", 2)
    np.testing.assert_allclose(batch.reward_weights, [0.3, 0.7], atol=1e-9)


def test_steer_ignores_an_objective_at_its_upper_bound() -> None:
    e = hv_engine(mode="steer")
    evaluate(e, [0.0, 0.0], 0)
    evaluate(e, [1.0, 0.5], 1)  # a cannot improve: g = (0, 0.01)
    np.testing.assert_allclose(e.weights().weights, [0.45, 0.55])


def test_steer_does_not_move_without_gain() -> None:
    e = hv_engine(mode="steer", weights=[3, 1])
    evaluate(e, [0.0, 0.0], 0)
    evaluate(e, [0.9, 0.9], 1)  # symmetric gains: g/Σg = (0.5, 0.5)
    np.testing.assert_allclose(e.weights().weights, [0.9 * 0.75 + 0.05, 0.9 * 0.25 + 0.05])
    moved = e.weights().weights
    evaluate(e, [0.5, 0.5], 2)  # deep inside the front: f + h e_i still dominated
    assert e.weights().weights.tolist() == moved.tolist()
    assert e.weights().scale == 0.5


def test_scale_mode_keeps_the_preference() -> None:
    e = hv_engine(weights=[3, 1], mode="scale")
    evaluate(e, [0.0, 0.0], 0)
    evaluate(e, [0.9, 0.1], 1)
    assert e.weights().weights.tolist() == [0.75, 0.25]


def test_default_mode_steers_so_it_acts_under_grpo() -> None:
    # Under GRPO's std normalisation the served scale cancels; the default must still
    # change what the trainer optimises, i.e. move the weights.
    e = hv_engine(weights=[3, 1])
    assert e.inspect().weighting["mode"] == "steer"
    evaluate(e, [0.0, 0.0], 0)
    evaluate(e, [0.9, 0.1], 1)  # b is the objective whose improvement adds most volume
    w = e.weights().weights
    assert w[1] > 0.25 and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("params", [
    {"ema": 1.0}, {"ema": -0.1}, {"h": 0}, {"h": 1.5}, {"eta": 2}, {"eta": -0.1},
    {"capacity": 0}, {"capacity": 5000}, {"weights": [1, 2, 3]}, {"weights": [1, -1]},
    {"weights": [0, 0]}, {"mode": "other"}, {"points": "validation"}, {"unknown": 1},
    {"capacity": 2.5},
])
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParams):
        hv_engine(**params)


def test_bad_eval_objectives_are_rejected_before_state_changes() -> None:
    e = hv_engine()
    evaluate(e, [0.2, 0.2])
    with pytest.raises(InvalidReport, match="eval_objectives"):
        report(e.spec, [0], np.ones((1, 2, 2)), eval_objectives=[0.1, 0.2, 0.3])
    good = report(e.spec, [0], np.ones((1, 2, 2)), eval_objectives=[0.5, 0.5])
    before = e.to_bytes()
    for bad in (np.array([0.5]), np.array([[0.5, 0.5]]), np.array([np.nan, 0.5])):
        with pytest.raises(InvalidReport, match="eval_objectives"):
            e.apply(dataclasses.replace(good, eval_objectives=bad))
    assert e.to_bytes() == before


def test_round_trip_is_bit_exact_and_resumes_identically() -> None:
    e = hv_engine(mode="steer", ema=0.5, capacity=3)
    rng = np.random.default_rng(7)
    reports = [report(e.spec, [t % 10], rng.random((1, 3, 2)), step=t,
                      eval_objectives=rng.random(2) if t % 3 == 0 else None)
               for t in range(30)]
    for r in reports[:15]:
        e.apply(r)
    resumed = CurriculumEngine.from_bytes(e.spec, e.to_bytes())
    assert resumed.to_bytes() == e.to_bytes()
    for r in reports[15:]:
        e.apply(r)
        resumed.apply(r)
    assert resumed.to_bytes() == e.to_bytes()
    assert resumed.inspect().hypervolume_history == e.inspect().hypervolume_history


def test_current_and_inspect_do_not_change_state() -> None:
    e = hv_engine(mode="steer")
    evaluate(e, [0.1, 0.1], 0)
    evaluate(e, [0.4, 0.3], 1)
    before = e.to_bytes()
    e.weights()
    e.inspect()
    e.next_batch("run", 2)
    assert e.to_bytes() == before


def test_history_is_a_bounded_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hv_module, "HISTORY", 4)  # the ring logic, without 1024 reports
    e = hv_engine()
    for t in range(7):
        evaluate(e, [0.1 + 0.1 * t] * 2, t)
    history = e.inspect().hypervolume_history
    assert [r.clock for r in history] == [3, 4, 5, 6]
    assert history[-1].hypervolume == pytest.approx(0.6 * 0.6)
    assert state_of(e).history_hv.shape == (4,)
    assert state_of(e).buffer.count == 1  # each point dominated the previous one
    assert HISTORY == 1024


def test_end_to_end_served_weights_and_scale() -> None:
    e = CurriculumEngine(spec((6, 6), ("acc", "brevity"), sampler="uniform",
                              weighting={"kind": "hypervolume", "mode": "steer", "eta": 0.5},
                              batch_size=4))
    evaluations = [[0.2, 0.2], [0.6, 0.25], [0.7, 0.3], [0.5, 0.2]]
    served = []
    for step, point in enumerate(evaluations):
        batch = e.next_batch("run", step)
        served.append((batch.reward_weights.copy(), batch.reward_scale))
        rewards = np.random.default_rng(step).random((batch.indices.size, 4, 2))
        e.apply(report(e.spec, batch.indices, rewards, step=step, eval_objectives=point))
    final = e.next_batch("run", len(evaluations))
    scales = [s for _, s in served] + [final.reward_scale]
    assert scales[:2] == [1.0, 1.0]  # nothing scored before the reference is known
    assert scales[2] == pytest.approx(m(0.4 * 0.05))
    assert scales[3] == pytest.approx(m(0.5 * 0.1 - 0.4 * 0.05))  # dominates step 1
    assert scales[4] == 0.5
    # Accuracy ran ahead: steering shifts weight to brevity, and keeps it on the simplex.
    assert final.reward_weights[1] > 0.5
    assert final.reward_weights.sum() == pytest.approx(1.0)
    view = e.inspect()
    assert [r.clock for r in view.hypervolume_history] == [0, 1, 2, 3]
    assert view.hypervolume_history[-1].hypervolume == pytest.approx(0.5 * 0.1)
    assert view.reward_scale == 0.5
    assert len(view.weight_history) >= 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1,
                max_size=10), st.sampled_from(["scale", "steer"]), st.integers(1, 3))
def test_scale_and_weights_stay_in_range(points: list[tuple[float, float, float]],
                                         mode: str, capacity: int) -> None:
    e = hv_engine(("a", "b", "c"), mode=mode, capacity=capacity, eta=1.0)
    for step, point in enumerate(points):
        evaluate(e, list(point), step)
        decision = e.weights()
        assert 0.5 <= decision.scale < 2.0
        assert decision.weights.sum() == pytest.approx(1.0)
        assert np.all(decision.weights >= 0)
        assert state_of(e).buffer.count <= capacity


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8),
       st.sampled_from(["scale", "steer"]), st.floats(0, 0.9))
def test_deterministic(points: list[tuple[float, float]], mode: str, ema: float) -> None:
    engines = [hv_engine(mode=mode, ema=ema) for _ in range(2)]
    for step, point in enumerate(points):
        for e in engines:
            if step % 2:
                evaluate(e, list(point), step)
            else:
                rollouts(e, list(point), step)
    assert engines[0].to_bytes() == engines[1].to_bytes()
