"""`gradient` weighting: Gram-matrix influence updates, accumulation, the floor and the
rollout proxy against hand-computed values; errors; round trips; properties."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import CurriculumSpec, InvalidParams, InvalidReport
from paceline_server.domain.validation import MAX_GRAD_PRODUCT
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.weightings.gradient import GradientState, apply_floor, proxy_gram
from support import report, signals, spec


def engine(k: int = 2, **params: Any) -> CurriculumEngine:
    return CurriculumEngine(spec((10,), tuple("abcdefgh"[:k]),
                                 weighting={"kind": "gradient", **params}, batch_size=2))


def step(e: CurriculumEngine, gram: Any, t: int = 0) -> None:
    k = len(e.spec.objectives)
    e.apply(report(e.spec, [0], np.ones((1, 2, k)), step=t, grad_products=gram))


def state_of(e: CurriculumEngine) -> GradientState:
    state: GradientState = e.state.weighting
    return state


def symmetric(matrix: np.ndarray) -> np.ndarray:
    """A random matrix made a valid Gram-like input (reports refuse asymmetric ones)."""
    return np.asarray((matrix + matrix.T) / 2)


def softmax(logits: list[float]) -> np.ndarray:
    z = np.exp(np.asarray(logits) - max(logits))
    return np.asarray(z / z.sum())


# Two groups of two rollouts, rewards (a, b): a splits both groups, b only the first.
# A^a = (1, -1, 1, -1), A^b = (1, -1, 0, 0): G = [[1, .5], [.5, .5]], I = (1.5, 1).
AGREEING = np.array([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])


def test_update_with_a_given_gram_matrix_by_hand() -> None:
    e = engine()
    assert e.weights().weights.tolist() == [0.5, 0.5]
    step(e, [[2.0, 1.0], [1.0, -1.0]])  # I = (3, 0); log w = log .5 + 0.1 I
    expected = math.exp(0.3) / (math.exp(0.3) + 1)
    np.testing.assert_allclose(e.weights().weights, [expected, 1 - expected])
    assert e.weights().scale == 1.0
    assert e.inspect().weighting == {"influence": [3.0, 0.0], "pending": 0, "updates": 1}


def test_update_from_a_preference() -> None:
    e = engine(weights=[3, 1], eta=0.1)
    step(e, [[1.0, -2.0], [-2.0, 4.0]])  # I = (-1, 2)
    a, b = 0.75 * math.exp(-0.1), 0.25 * math.exp(0.2)
    np.testing.assert_allclose(e.weights().weights, [a / (a + b), b / (a + b)])


def test_accumulation_averages_influences_over_two_reports() -> None:
    e = engine(accumulation_steps=2)
    step(e, [[2.0, 0.0], [0.0, 0.0]], 0)  # η I = (0.2, 0)
    assert e.weights().weights.tolist() == [0.5, 0.5]  # waits for the second report
    assert state_of(e).pending == 1
    step(e, [[3.0, 0.0], [0.0, 1.0]], 1)  # η I = (0.3, 0.1): mean (0.25, 0.05)
    np.testing.assert_allclose(e.weights().weights, softmax([0.25, 0.05]))
    assert state_of(e).pending == 0
    assert state_of(e).accumulated.tolist() == [0.0, 0.0]


def test_floor_by_hand() -> None:
    # One entry below the floor: it sits at w_min, the rest share 0.9 in ratio 0.6 : 0.35.
    np.testing.assert_allclose(apply_floor(np.array([0.6, 0.35, 0.05]), 0.1),
                               [0.9 * 0.6 / 0.95, 0.9 * 0.35 / 0.95, 0.1])
    # Cascade: flooring c pushes b's share to 0.105 * 0.9 / 0.985 < 0.1, so b floors too.
    np.testing.assert_allclose(apply_floor(np.array([0.88, 0.105, 0.015]), 0.1),
                               [0.8, 0.1, 0.1])
    untouched = np.array([0.5, 0.3, 0.2])
    assert apply_floor(untouched, 0.1).tolist() == untouched.tolist()
    np.testing.assert_allclose(apply_floor(np.array([1.0, 0.0]), 0.01), [0.99, 0.01])


def test_floor_is_active_and_a_floored_objective_climbs_back_from_it() -> None:
    e = engine(3, w_min=0.1)
    step(e, [[30.0, 0, 0], [0, 0, 0], [0, 0, 0]])  # softmax (e³, 1, 1)/(e³ + 2): b, c < 0.1
    np.testing.assert_allclose(e.weights().weights, [0.8, 0.1, 0.1])
    step(e, [[0, 0, 0], [0, 0, 0], [0, 0, 10.0]], 1)  # c's logit + 1 from log 0.1
    raw = softmax([math.log(0.8), math.log(0.1), math.log(0.1) + 1])
    assert raw[1] < 0.1
    rest = 0.9 / (raw[0] + raw[2])
    np.testing.assert_allclose(e.weights().weights, [raw[0] * rest, 0.1, raw[2] * rest])


def test_initial_preference_is_floored() -> None:
    assert engine(weights=[1, 0]).weights().weights.tolist() == pytest.approx([0.99, 0.01])


def test_proxy_gram_by_hand() -> None:
    cur = spec((10,), ("a", "b"))
    np.testing.assert_allclose(proxy_gram(signals(cur, [0, 1], AGREEING)),
                               [[1.0, 0.5], [0.5, 0.5]])
    # Conflict: a = (1, 0), b = (0, 1) -> A^a = (1, -1), A^b = (-1, 1).
    conflict = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(proxy_gram(signals(cur, [0], conflict)), [[1, -1], [-1, 1]])
    # Scaled so the largest entry is 1 whatever the reward scale.
    np.testing.assert_allclose(proxy_gram(signals(cur, [0, 1], AGREEING * 7)),
                               [[1.0, 0.5], [0.5, 0.5]])
    assert not proxy_gram(signals(cur, [0], np.ones((1, 3, 2)))).any()


def test_proxy_gram_counts_a_minimised_objective_negatively() -> None:
    # The issue's case (Lu et al.'s accuracy vs conciseness): accuracy (max), length (min,
    # bounds [0, 1000]) and format (max), in a report where the longer answers are the
    # correct ones. With length minimised, accuracy and length conflict, so length's
    # influence must be lower than when length is maximised; before the fix the proxy
    # Gram ignored the direction and served the same weights in both cases.
    rewards = np.array([[[1.0, 900.0, 1.0], [0.0, 100.0, 1.0], [1.0, 800.0, 0.0],
                         [0.0, 200.0, 0.0]]])

    def served(direction: str) -> tuple[np.ndarray, np.ndarray]:
        cur = CurriculumSpec.from_dict({
            "name": "lu", "layout": {"distributions": [{"name": "d0", "size": 10}]},
            "objectives": ["accuracy", {"name": "length", "direction": direction,
                                        "bounds": [0, 1000]}, "format"],
            "weighting": "gradient", "batch_size": 2})
        e = CurriculumEngine(cur)
        e.apply(report(cur, [0], rewards))
        return proxy_gram(signals(cur, [0], rewards)), e.weights().weights

    gram_min, w_min = served("minimize")
    gram_max, w_max = served("maximize")
    assert gram_min[0, 1] < 0 < gram_max[0, 1]  # conflict only when length is minimised
    np.testing.assert_allclose(np.abs(gram_min), np.abs(gram_max))
    # Row sums by hand: accuracy (1, 0, 1, 0) and length (900, 100, 800, 200) share the
    # sign pattern (correlation 0.99), format (1, 1, 0, 0) is uncorrelated with both.
    np.testing.assert_allclose(gram_max.sum(axis=1), [1.99, 1.99, 1.0], atol=0.01)
    np.testing.assert_allclose(gram_min.sum(axis=1), [0.01, 0.01, 1.0], atol=0.01)
    # Served weights: the conflict pair loses to format only when length is minimised.
    assert w_min[2] > w_min[0] and w_max[2] < w_max[0]
    assert w_min[1] < w_max[1]


def test_proxy_update_uses_eta_proxy() -> None:
    e = engine(eta_proxy=0.5, eta=100.0)
    e.apply(report(e.spec, [0, 1], AGREEING))  # 0.5 * (1.5, 1)
    np.testing.assert_allclose(e.weights().weights, softmax([0.75, 0.5]))
    conflicting = engine()
    conflicting.apply(report(conflicting.spec, [0], np.array([[[1.0, 0.0], [0.0, 1.0]]])))
    np.testing.assert_allclose(conflicting.weights().weights, [0.5, 0.5])  # I = (0, 0)


def test_constant_groups_give_no_estimate_and_do_not_count() -> None:
    e = engine(accumulation_steps=2)
    before = e.to_bytes()
    e.apply(report(e.spec, [0], np.ones((1, 3, 2))))
    assert state_of(e).pending == 0
    assert e.weights().weights.tolist() == [0.5, 0.5]
    assert e.to_bytes() != before  # the engine's clock moved, the weighting did not
    step(e, [[2.0, 0.0], [0.0, 0.0]], 1)
    assert state_of(e).pending == 1


def test_trainer_and_proxy_reports_accumulate_together() -> None:
    e = engine(accumulation_steps=2, eta=0.1, eta_proxy=0.5)
    step(e, [[4.0, 0.0], [0.0, 0.0]], 0)  # (0.4, 0)
    e.apply(report(e.spec, [0, 1], AGREEING, step=1))  # (0.75, 0.5)
    np.testing.assert_allclose(e.weights().weights, softmax([1.15 / 2, 0.5 / 2]))


def test_huge_gram_entries_saturate_without_nan() -> None:
    e = engine(w_min=0.05)
    big = MAX_GRAD_PRODUCT  # the largest accepted magnitude (1e308 is refused)
    step(e, [[big, big], [big, -big]])
    w = e.weights().weights
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w, [0.95, 0.05])


def test_single_objective() -> None:
    e = engine(1)
    step(e, [[5.0]])
    assert e.weights().weights.tolist() == [1.0]


@pytest.mark.parametrize(("k", "params"), [
    (2, {"eta": -1}), (2, {"eta_proxy": -0.5}), (2, {"accumulation_steps": 0}),
    (2, {"accumulation_steps": 1.5}), (2, {"w_min": 0.5}), (3, {"w_min": 0.34}),
    (2, {"w_min": -0.1}), (2, {"w_min": 1.0}), (2, {"weights": [1.0, 0.0], "w_min": 0.0}),
    (2, {"weights": [1, 1, 1]}), (2, {"weights": [1, -1]}), (2, {"weights": [0, 0]}),
    (2, {"lr": 0.1}),
])
def test_bad_params(k: int, params: dict[str, object]) -> None:
    with pytest.raises(InvalidParams):
        engine(k, **params)


def test_bad_grad_products_are_rejected_before_state_changes() -> None:
    e = engine()
    good = report(e.spec, [0], np.ones((1, 2, 2)), grad_products=[[1.0, 0.0], [0.0, 1.0]])
    before = e.to_bytes()
    for bad in (np.ones((3, 3)), np.ones(2), np.array([[np.inf, 0.0], [0.0, 1.0]]),
                np.array([[1.0, 0.5], [0.25, 1.0]]), np.array([[1e308, 1e308], [-1e308, 1.0]])):
        with pytest.raises(InvalidReport, match="grad_products"):
            e.apply(dataclasses.replace(good, grad_products=bad))
    assert e.to_bytes() == before
    # Products computed one by one may differ in the last bits: that much is accepted.
    e.apply(dataclasses.replace(good, grad_products=np.array([[1.0, 0.3],
                                                              [0.3 + 1e-12, 1.0]])))


def test_round_trip_is_bit_exact_and_resumes_identically() -> None:
    e = engine(3, accumulation_steps=3)
    rng = np.random.default_rng(3)
    reports = [report(e.spec, [t % 10], rng.random((1, 4, 3)), step=t,
                      grad_products=symmetric(rng.normal(size=(3, 3))) if t % 2 else None)
               for t in range(12)]
    for r in reports[:7]:
        e.apply(r)
    resumed = CurriculumEngine.from_bytes(e.spec, e.to_bytes())
    assert resumed.to_bytes() == e.to_bytes()
    for r in reports[7:]:
        e.apply(r)
        resumed.apply(r)
    assert resumed.to_bytes() == e.to_bytes()


def test_current_does_not_change_state() -> None:
    e = engine()
    step(e, [[1.0, 0.2], [0.2, 0.5]])
    before = e.to_bytes()
    decision = e.weights()
    decision.weights[:] = 0.0  # a caller scribbling on the served array
    e.inspect()
    e.next_batch("run", 1)
    assert e.to_bytes() == before


def test_end_to_end_served_weights_follow_influence() -> None:
    e = CurriculumEngine(spec((6, 6), ("acc", "brevity"), sampler="uniform",
                              weighting={"kind": "gradient", "eta": 0.5}, batch_size=4))
    served = []
    for t in range(4):
        batch = e.next_batch("run", t)
        served.append(batch.reward_weights.copy())
        rewards = np.random.default_rng(t).random((batch.indices.size, 4, 2))
        # The trainer measures that brevity's gradient also helps accuracy.
        e.apply(report(e.spec, batch.indices, rewards, step=t,
                       grad_products=[[1.0, 0.8], [0.8, 2.0]]))
    assert served[0].tolist() == [0.5, 0.5]
    brevity = [w[1] for w in served]
    assert all(later > earlier for earlier, later in itertools.pairwise(brevity))
    # Each update multiplies the odds b : a by exp(0.5 * (2.8 - 1.8)) = e^0.5.
    np.testing.assert_allclose(served[3][1] / served[3][0], math.exp(1.5))
    view = e.inspect()
    assert len(view.weight_history) == 5
    assert view.hypervolume_history == ()


gram_entries = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(gram_entries, min_size=9, max_size=9), min_size=1, max_size=6),
       st.floats(0.0, 0.33), st.integers(1, 3))
def test_weights_on_simplex_above_floor(grams: list[list[float]], w_min: float,
                                        accumulation: int) -> None:
    e = engine(3, w_min=w_min, accumulation_steps=accumulation)
    for t, g in enumerate(grams):
        step(e, symmetric(np.reshape(g, (3, 3))), t)
        w = e.weights().weights
        assert w.sum() == pytest.approx(1.0)
        assert np.all(w >= w_min - 1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8).filter(lambda v: sum(v) > 0),
       st.floats(0.0, 1.0))
def test_floor_properties(values: list[float], fraction: float) -> None:
    weights = np.asarray(values) / sum(values)
    w_min = fraction * 0.99 / len(values)
    floored = apply_floor(weights, w_min)
    assert floored.sum() == pytest.approx(1.0)
    assert np.all(floored >= w_min - 1e-12)
    free = floored > w_min + 1e-12
    if free.sum() >= 2:  # unfloored entries keep the softmax's ratios
        ratios = floored[free] / weights[free]
        np.testing.assert_allclose(ratios, ratios[0])
    np.testing.assert_allclose(apply_floor(floored, w_min), floored, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=8), st.integers(0, 2**16))
def test_deterministic(use_trainer: list[bool], seed: int) -> None:
    engines = [engine(accumulation_steps=2) for _ in range(2)]
    rng = np.random.default_rng(seed)
    for t, trainer in enumerate(use_trainer):
        r = report(engines[0].spec, [t % 10], rng.random((1, 3, 2)), step=t,
                   grad_products=symmetric(rng.normal(size=(2, 2))) if trainer else None)
        for e in engines:
            e.apply(r)
    assert engines[0].to_bytes() == engines[1].to_bytes()
