"""`temperature` (Cooldown): P_d(T) ∝ n_d^(1/T) with a schedule over the run's step, in
upsample and upweight modes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.base import ProposeContext
from paceline_server.strategies.samplers.temperature import (
    TemperatureParams,
    TemperatureState,
    temperature_at,
)
from paceline_server.strategies.state_codec import decode_state, encode_state
from support import report, spec


def temp(**params: Any) -> dict[str, Any]:
    return {"kind": "temperature", **params}


def probabilities(engine: CurriculumEngine, step: int) -> np.ndarray:
    return engine.next_batch("r", step).probabilities


def test_hand_computed_at_t2_for_sizes_100_1000() -> None:
    # n^(1/2): sqrt(100) = 10, sqrt(1000) = 31.6227766...; P = (10, 31.62...) / 41.62...
    engine = CurriculumEngine(spec((100, 1000), sampler=temp(schedule="constant", t0=2.0)))
    root = math.sqrt(1000.0)
    expected = [10.0 / (10.0 + root), root / (10.0 + root)]
    np.testing.assert_allclose(probabilities(engine, 0), expected, rtol=1e-14)
    assert expected[0] == pytest.approx(0.2402530733520421)


def test_t1_is_proportional_and_large_t_is_uniform() -> None:
    proportional = CurriculumEngine(spec((100, 1000), sampler=temp(schedule="constant", t0=1)))
    np.testing.assert_allclose(probabilities(proportional, 0), [1 / 11, 10 / 11], rtol=1e-14)
    flat = CurriculumEngine(spec((100, 1000), sampler=temp(schedule="constant", t0=1e9)))
    np.testing.assert_allclose(probabilities(flat, 0), [0.5, 0.5], rtol=1e-8)


def test_log_space_is_stable_for_huge_sizes_and_tiny_temperature() -> None:
    # 2e9^(1/0.01) overflows float64; in log space the small distribution just underflows.
    engine = CurriculumEngine(spec((1, 2_000_000_000), batch_size=4,
                                   sampler=temp(schedule="constant", t0=0.01)))
    p = probabilities(engine, 0)
    assert np.all(np.isfinite(p))
    assert p.tolist() == [0.0, 1.0]


def test_step_schedule_switches_at_half_the_planned_steps_by_default() -> None:
    engine = CurriculumEngine(spec((100, 1000), sampler=temp(t0=2.0, t1=1.0, steps=1000)))
    hot = [10 / (10 + math.sqrt(1000)), math.sqrt(1000) / (10 + math.sqrt(1000))]
    np.testing.assert_allclose(probabilities(engine, 0), hot, rtol=1e-14)
    np.testing.assert_allclose(probabilities(engine, 499), hot, rtol=1e-14)
    np.testing.assert_allclose(probabilities(engine, 500), [1 / 11, 10 / 11], rtol=1e-14)
    np.testing.assert_allclose(probabilities(engine, 5000), [1 / 11, 10 / 11], rtol=1e-14)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        # t0 = 5, t1 = 1, S = 1000, start = 200: u = (t - 200) / 800.
        ("step", 199, 5.0), ("step", 200, 1.0),
        ("linear", 0, 5.0), ("linear", 200, 5.0), ("linear", 600, 3.0), ("linear", 800, 2.0),
        ("linear", 999, 5.0 - 4.0 * 799 / 800), ("linear", 1000, 1.0), ("linear", 10**6, 1.0),
        ("cosine", 200, 5.0), ("cosine", 400, 1.0 + 2.0 * (1 + math.cos(math.pi / 4))),
        ("cosine", 600, 3.0), ("cosine", 1000, 1.0), ("cosine", 2000, 1.0),
        ("constant", 0, 5.0), ("constant", 10**6, 5.0),
    ],
)
def test_schedule_values_at_boundaries(schedule: str, step: int, expected: float) -> None:
    params = TemperatureParams(schedule=schedule, start=200)  # type: ignore[arg-type]
    assert temperature_at(params, step) == pytest.approx(expected, rel=1e-12)


def test_default_start_is_half_of_s_for_smooth_schedules_and_start_equal_s_switches() -> None:
    linear = TemperatureParams(schedule="linear", steps=100)
    assert temperature_at(linear, 50) == 5.0
    assert temperature_at(linear, 75) == pytest.approx(3.0)
    late = TemperatureParams(schedule="cosine", steps=100, start=100)
    assert temperature_at(late, 99) == 5.0
    assert temperature_at(late, 100) == 1.0
    first = TemperatureParams(schedule="linear", steps=1, start=0)
    assert temperature_at(first, 0) == 5.0
    assert temperature_at(first, 1) == 1.0


def test_upweight_weights_stay_finite_when_p_t_underflows() -> None:
    # At T = 1e-3, P_d0(T) = (100/1000)^1000 underflows to 0: d0's indices weigh 0 and
    # d1's 1 / P_d1(1) = 1.1, finite in every batch (a batch of d0 only weighs nothing).
    cur = spec((100, 1000), sampler=temp(mode="upweight", schedule="constant", t0=1e-3))
    engine = CurriculumEngine(cur)
    only_small = mixed = 0
    for step in range(300):
        batch = engine.next_batch("r", step, size=2)
        assert batch.loss_weights is not None
        assert np.all(np.isfinite(batch.loss_weights))
        labels = cur.layout.distribution_of(batch.indices)
        np.testing.assert_allclose(batch.loss_weights[labels == 1], 1.1, rtol=1e-12)
        assert np.all(batch.loss_weights[labels == 0] == 0.0)
        only_small += bool(np.all(labels == 0))
        mixed += bool(np.any(labels == 0) and np.any(labels == 1))
    assert only_small > 0 and mixed > 0


def test_upweight_is_unbiased_in_small_batches() -> None:
    """Dividing the weights by each batch's mean gave the 10-prompt distribution 6 % of
    the weight instead of P(T)'s 29 % in batches of 8 (and 21 % in batches of 64)."""
    sizes = np.array([1000.0, 10.0])
    target = sizes ** 0.2 / (sizes ** 0.2).sum()
    for size in (8, 64):
        cur = spec((1000, 10), batch_size=size,
                   sampler=temp(mode="upweight", schedule="constant", t0=5.0))
        engine = CurriculumEngine(cur)
        mass, rounds = np.zeros(2), 3000
        for step in range(rounds):
            batch = engine.next_batch("r", step)
            assert batch.loss_weights is not None
            labels = cur.layout.distribution_of(batch.indices)
            mass += np.bincount(labels, weights=batch.loss_weights, minlength=2) / size
        # about 4.5 standard errors of the mean over the rounds; the bias was 0.22 / 0.08
        np.testing.assert_allclose(mass / rounds, target, atol=0.08 if size == 8 else 0.03)


def test_schedule_follows_the_asking_runs_step_not_the_report_clock() -> None:
    cur = spec((100, 1000), sampler=temp(t0=2.0, steps=10))
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0], [[1.0, 0.0]], step=9))
    np.testing.assert_allclose(probabilities(engine, 0)[0], 10 / (10 + math.sqrt(1000)))
    described = engine.inspect().sampler
    assert described["step"] == 9 and described["temperature"] == 1.0
    np.testing.assert_allclose(described["target_probabilities"], [1 / 11, 10 / 11])


def test_upweight_samples_proportionally_with_importance_weights() -> None:
    cur = spec((100, 1000), batch_size=64, sampler=temp(mode="upweight", schedule="constant",
                                                        t0=2.0))
    batch = CurriculumEngine(cur).next_batch("r", 0)
    np.testing.assert_allclose(batch.probabilities, [1 / 11, 10 / 11], rtol=1e-14)
    assert batch.loss_weights is not None
    labels = cur.layout.distribution_of(batch.indices)
    root = math.sqrt(1000)
    w0 = batch.loss_weights[labels == 0]
    w1 = batch.loss_weights[labels == 1]
    assert w0.size and w1.size
    np.testing.assert_allclose(w0, (10 / (10 + root)) / (1 / 11), rtol=1e-12)
    np.testing.assert_allclose(w1, (root / (10 + root)) / (10 / 11), rtol=1e-12)
    assert CurriculumEngine(spec((100, 1000), sampler=temp())).next_batch("r", 0) \
        .loss_weights is None


def test_upweight_expected_weight_mass_equals_upsample_probabilities() -> None:
    cur = spec((100, 1000, 400), batch_size=256,
               sampler=temp(mode="upweight", schedule="constant", t0=3.0))
    engine = CurriculumEngine(cur)
    upsampled = CurriculumEngine(spec((100, 1000, 400), sampler=temp(schedule="constant",
                                                                     t0=3.0)))
    target = probabilities(upsampled, 0)
    sampler, state = engine.sampler, engine.state.sampler
    ctx = ProposeContext(step=0, clock=0, reward_weights=np.ones(1))
    rng = np.random.default_rng(7)
    mass = np.zeros(3)
    rounds = 400
    for _ in range(rounds):
        proposal = sampler.propose(state, 256, rng, ctx)
        labels = cur.layout.distribution_of(proposal.indices)
        assert proposal.loss_weights is not None
        mass += np.bincount(labels, weights=proposal.loss_weights, minlength=3) / 256
    np.testing.assert_allclose(mass / rounds, target, atol=0.005)


def test_state_round_trips_bit_exactly() -> None:
    cur = spec((100, 1000), sampler=temp(schedule="cosine"))
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [1, 500], [[1.0, 0.0], [1.0, 1.0]], step=321))
    state = engine.state.sampler
    decoded = decode_state(TemperatureState, encode_state(state))
    assert decoded == state and decoded.last_step == 321
    resumed = CurriculumEngine.from_bytes(cur, engine.to_bytes())
    assert resumed.next_batch("r", 700).same_as(engine.next_batch("r", 700))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"t0": 0.0}, "t0 must be at least 1e-06"), ({"t1": -1.0}, "t1 must be at least"),
        ({"t0": 1e-7}, "t0 must be at least"),
        ({"steps": 0}, "steps must be at least 1"), ({"start": -1}, "start must be in"),
        ({"steps": 10, "start": 11}, "start must be in \\[0, steps=10\\]"),
        ({"schedule": "exponential"}, "must be one of"), ({"mode": "both"}, "must be one of"),
        ({"t0": "hot"}, "must be a number"), ({"start": 1.5}, "integer"),
    ],
)
def test_bad_params_are_rejected(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        CurriculumEngine(spec((100, 1000), sampler=temp(**params)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=6),
       st.floats(0.05, 50.0), st.floats(0.05, 50.0),
       st.sampled_from(["constant", "step", "linear", "cosine"]),
       st.sampled_from(["upsample", "upweight"]), st.integers(0, 3000))
def test_property_simplex_order_and_determinism(sizes: list[int], t0: float, t1: float,
                                                schedule: str, mode: str, step: int) -> None:
    cur = spec(tuple(sizes), batch_size=min(16, sum(sizes)),
               sampler=temp(t0=t0, t1=t1, schedule=schedule, mode=mode, steps=2000))
    a = CurriculumEngine(cur).next_batch("r", step)
    b = CurriculumEngine(cur).next_batch("r", step)
    assert a.same_as(b)
    p = a.probabilities
    assert np.all(p >= 0.0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    order = np.argsort(sizes, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-15)  # larger distributions never get less
    if mode == "upweight":  # the importance weights P_d(T) / P_d(1), of mean 1 under P(1)
        assert a.loss_weights is not None
        sampler = CurriculumEngine(cur).sampler
        weights = np.exp(sampler.log_target(step) - sampler.log_proportional)
        labels = cur.layout.distribution_of(a.indices)
        np.testing.assert_allclose(a.loss_weights, weights[labels], rtol=1e-12)
        assert float(weights @ p) == pytest.approx(1.0, rel=1e-9)
