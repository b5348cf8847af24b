"""`learning_progress`: |fast EMA − slow EMA| of per-report success, normalised (rank or
min-max), sharpened by a softmax and mixed with ε uniform."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams, Report
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.allocation import LearningProgressState
from paceline_server.strategies.samplers.learning_progress import rank_scores, reweight
from paceline_server.strategies.state_codec import decode_state, encode_state
from support import report, spec

#: The parameters the hand computations below use (the first defaults); the shipped
#: defaults are checked in `test_defaults_are_the_learner_suite_choice`.
HAND = {"alpha_fast": 0.1, "alpha_slow": 0.01, "temperature": 0.25, "p_theta": 0.5}


def lp(**params: Any) -> dict[str, Any]:
    return {"kind": "learning_progress", **HAND, **params}


def state_of(engine: CurriculumEngine) -> LearningProgressState:
    state: LearningProgressState = engine.state.sampler
    return state


def expected_p(scores: list[float], temperature: float = 0.25, epsilon: float = 0.1) \
        -> np.ndarray:
    z = np.exp((np.asarray(scores) - max(scores)) / temperature)
    return np.asarray((1 - epsilon) * z / z.sum() + epsilon / len(scores))


def two_reports(cur: Any) -> CurriculumEngine:
    """Report 1: d0 success 0.5, d1 success 1.0. Report 2: d0 success 1.0."""
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 150], [[1.0, 0.0], [1.0, 1.0]], step=0))
    engine.apply(report(cur, [1], [[1.0, 1.0]], step=1))
    return engine


def test_uniform_over_distributions_before_any_report() -> None:
    engine = CurriculumEngine(spec((100, 1000), sampler="learning_progress"))
    np.testing.assert_allclose(engine.next_batch("r", 0).probabilities, [0.5, 0.5])


def test_emas_after_two_reports_by_hand() -> None:
    # d0: EMAs start at 0.5; then fast = 0.5 + 0.1·(1 − 0.5) = 0.55,
    # slow = 0.5 + 0.01·(1 − 0.5) = 0.505, LP0 = 0.045. d1 seen once: LP1 = 0.
    cur = spec((100, 100), sampler=lp())
    engine = two_reports(cur)
    state = state_of(engine)
    np.testing.assert_allclose(state.ema_fast, [0.55, 1.0], rtol=1e-15)
    np.testing.assert_allclose(state.ema_slow, [0.505, 1.0], rtol=1e-15)
    assert state.reports.tolist() == [2, 1]
    described = engine.inspect().sampler
    assert described["learning_progress"] == [pytest.approx(0.045, rel=1e-12), 0.0]
    # Rank scores (1, 0); softmax at 0.25 then 10 % uniform.
    p = engine.next_batch("r", 2).probabilities
    e4 = math.exp(4.0)
    np.testing.assert_allclose(p, [0.9 * e4 / (e4 + 1) + 0.05, 0.9 / (e4 + 1) + 0.05],
                               rtol=1e-14)


def test_forgetting_counts_as_progress_too() -> None:
    cur = spec((100, 100), sampler=lp())
    engine = two_reports(cur)
    engine.apply(report(cur, [151], [[0.0, 0.0]], step=2))  # d1 drops from 1.0 to 0.0
    state = state_of(engine)
    assert state.ema_fast[1] == pytest.approx(0.9) and state.ema_slow[1] == pytest.approx(0.99)
    p = engine.next_batch("r", 3).probabilities
    np.testing.assert_allclose(p, expected_p([0.0, 1.0]), rtol=1e-14)  # LP1 0.09 > LP0 0.045


def three_distributions(normalization: str) -> CurriculumEngine:
    # LPs: d0 0.045 (0.5 -> 1.0), d1 0.09 (1.0 -> 0.0), d2 0.0225 (0.0 -> 0.25).
    cur = spec((100, 100, 100), sampler=lp(normalization=normalization))
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 100, 200], [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    engine.apply(report(cur, [1, 101, 201], [[1.0, 1.0], [0.0, 0.0], [0.5, 0.0]]))
    np.testing.assert_allclose(engine.inspect().sampler["learning_progress"],
                               [0.045, 0.09, 0.0225], rtol=1e-12)
    return engine


def test_rank_normalisation_by_hand() -> None:
    p = three_distributions("rank").next_batch("r", 0).probabilities
    np.testing.assert_allclose(p, expected_p([0.5, 1.0, 0.0]), rtol=1e-14)


def test_minmax_normalisation_by_hand() -> None:
    # (LP − 0.0225) / (0.09 − 0.0225): d0 1/3, d1 1, d2 0.
    p = three_distributions("minmax").next_batch("r", 0).probabilities
    np.testing.assert_allclose(p, expected_p([1 / 3, 1.0, 0.0]), rtol=1e-12)


def test_rank_scores_average_ties() -> None:
    scores = rank_scores(np.array([3.0, 1.0, 3.0, np.inf]))
    assert scores.tolist() == [0.5, 0.0, 0.5, 1.0]
    assert rank_scores(np.array([7.0])).tolist() == [0.0]


@pytest.mark.parametrize("normalization", ["rank", "minmax"])
def test_unseen_distributions_are_tried_first(normalization: str) -> None:
    cur = spec((100, 100, 100), sampler=lp(normalization=normalization))
    engine = two_reports(cur)  # d0 and d1 seen, d2 never
    p = engine.next_batch("r", 2).probabilities
    if normalization == "rank":
        assert p[2] > p[0] > p[1]  # ranked above every seen distribution
    else:
        assert p[2] == p[0] > p[1]  # scores 1, like the best seen one
    # After one report every seen LP is 0: uniform among the seen ones.
    fresh = CurriculumEngine(cur)
    fresh.apply(report(cur, [0, 150], [[1.0, 0.0], [1.0, 1.0]]))
    q = fresh.next_batch("r", 0).probabilities
    assert q[0] == q[1] < q[2]


def test_observation_is_the_mean_over_indices_not_rollouts() -> None:
    # Ragged groups in one report: index 0 solves 4/4, index 1 solves 0/2 -> s̄ = 0.5
    # (rollout-weighted it would be 4/6).
    cur = spec((100, 100), sampler=lp())
    engine = CurriculumEngine(cur)
    engine.apply(Report.flat(run_id="r", step=0, rollout_indices=[0, 0, 0, 0, 1, 1],
                             rewards=[1.0, 1.0, 1.0, 1.0, 0.0, 0.0], layout=cur.layout,
                             num_objectives=1))
    assert state_of(engine).ema_fast[0] == 0.5


def test_epsilon_bounds_the_mixture() -> None:
    cur = spec((100, 100), sampler=lp(epsilon=1.0))
    np.testing.assert_allclose(two_reports(cur).next_batch("r", 2).probabilities, [0.5, 0.5])
    greedy = spec((100, 100), sampler=lp(epsilon=0.0, temperature=0.01))
    p = two_reports(greedy).next_batch("r", 2).probabilities
    assert p[0] == pytest.approx(1.0) and p[1] < 1e-40


def test_state_round_trips_bit_exactly_and_engine_resumes() -> None:
    cur = spec((100, 1000, 50), sampler=lp(normalization="minmax"))
    engine = CurriculumEngine(cur)
    rng = np.random.default_rng(5)
    for step in range(6):
        engine.apply(report(cur, rng.choice(1150, size=5, replace=False),
                            (rng.random((5, 4)) < 0.5).astype(float), step=step))
    state = state_of(engine)
    decoded = decode_state(LearningProgressState, encode_state(state))
    for name in ("ema_fast", "ema_slow", "reports"):
        original, copy = getattr(state, name), getattr(decoded, name)
        assert original.dtype == copy.dtype and original.tobytes() == copy.tobytes(), name
    resumed = CurriculumEngine.from_bytes(cur, engine.to_bytes())
    assert resumed.next_batch("r", 6).same_as(engine.next_batch("r", 6))


def test_end_to_end_batches_are_valid_and_do_not_mutate_state() -> None:
    cur = spec((100, 1000, 500), batch_size=64, sampler=lp())
    engine = two_reports(cur)
    before = encode_state(engine.state.sampler)
    for step in range(10):
        batch = engine.next_batch("r", step)
        assert np.unique(batch.indices).size == 64
        assert batch.indices.min() >= 0 and batch.indices.max() < 1600
        assert batch.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    engine.inspect()
    assert encode_state(engine.state.sampler) == before


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"alpha_fast": 0.0}, "alpha_fast must be in"), ({"alpha_fast": 1.5}, "alpha_fast"),
     ({"alpha_slow": -0.1}, "alpha_slow must be in"),
     ({"alpha_slow": 0.2}, "must be smaller than alpha_fast"),
     ({"alpha_fast": 0.05, "alpha_slow": 0.05}, "must be smaller"),
     ({"temperature": 0.0}, "temperature must be positive"),
     ({"epsilon": 1.5}, "epsilon must be in"), ({"epsilon": -0.1}, "epsilon must be in"),
     ({"p_theta": 0.0}, "p_theta must be in"), ({"p_theta": 0.6}, "p_theta must be in"),
     ({"normalization": "zscore"}, "must be one of")],
)
def test_bad_params_are_rejected(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        CurriculumEngine(spec((100, 100), sampler=lp(**params)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.lists(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
                                   min_size=0, max_size=5),
       st.sampled_from(["rank", "minmax"]), st.floats(0.01, 10.0), st.floats(0.0, 1.0),
       st.integers(0, 2**31 - 1))
def test_property_simplex_floor_and_determinism(num: int, rounds: list[list[float]],
                                                normalization: str, temperature: float,
                                                epsilon: float, seed: int) -> None:
    cur = spec(tuple([20] * num), batch_size=8, seed=seed,
               sampler=lp(normalization=normalization, temperature=temperature,
                          epsilon=epsilon))
    engines = [CurriculumEngine(cur), CurriculumEngine(cur)]
    for step, successes in enumerate(rounds):
        indices = [20 * (i % num) + i // num for i in range(len(successes))]
        rewards = [[s, s] for s in successes]
        for engine in engines:
            engine.apply(report(cur, indices, rewards, step=step))
    a = engines[0].next_batch("r", len(rounds))
    assert a.same_as(engines[1].next_batch("r", len(rounds)))
    p = a.probabilities
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= epsilon / num * (1 - 1e-12))
    assert np.all(p <= 1.0 + 1e-15)


def test_defaults_are_the_learner_suite_choice() -> None:
    """α 0.2 / 0.05, rank, temperature 1.0, ε 0.1: chosen on the learner suite
    (docs/benchmarks.md, "Learner suite")."""
    engine = CurriculumEngine(spec((100, 100), sampler="learning_progress"))
    assert engine.spec.sampler.params == {"alpha_fast": 0.2, "alpha_slow": 0.05,
                                          "normalization": "rank", "temperature": 1.0,
                                          "epsilon": 0.1, "p_theta": 0.1,
                                          "allocation": "multinomial"}


def test_default_emas_and_mild_softmax_by_hand() -> None:
    # d0: 0.5 then 1.0 -> fast 0.5 + 0.2·0.5 = 0.6, slow 0.5 + 0.05·0.5 = 0.525;
    # r(p) = 0.9p / (p + 0.1(1 − 2p)): r(0.6) = 0.54/0.58, r(0.525) = 0.4725/0.52.
    # d1 seen once, LP 0. Rank scores (1, 0), softmax at 1.0: e / (e + 1), then 10 % uniform.
    engine = two_reports(spec((100, 100), sampler="learning_progress"))
    state = state_of(engine)
    np.testing.assert_allclose(state.ema_fast, [0.6, 1.0], rtol=1e-15)
    np.testing.assert_allclose(state.ema_slow, [0.525, 1.0], rtol=1e-15)
    np.testing.assert_allclose(engine.inspect().sampler["learning_progress"],
                               [0.54 / 0.58 - 0.4725 / 0.52, 0.0], rtol=1e-12)
    p = engine.next_batch("r", 2).probabilities
    e = math.e
    np.testing.assert_allclose(p, [0.9 * e / (e + 1) + 0.05, 0.9 / (e + 1) + 0.05],
                               rtol=1e-14)


def test_reweighting_favours_progress_near_zero_success() -> None:
    """The same +0.1 of success counts more leaving 0 than near 1 (θ = 0.1); θ = 0.5 is
    the identity."""
    low = reweight(np.array([0.15]), 0.1) - reweight(np.array([0.05]), 0.1)
    high = reweight(np.array([0.95]), 0.1) - reweight(np.array([0.85]), 0.1)
    assert low[0] > 3 * high[0]
    p = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(reweight(p, 0.5), p, atol=1e-15)
    np.testing.assert_allclose(reweight(np.array([0.0, 1.0]), 0.1), [0.0, 1.0])


def test_explanation_names_the_reweighted_emas_its_progress_is_taken_between() -> None:
    """The sentence said |fast - slow| = 0.312 next to fast 0.1 and slow 0.025: the
    progress is taken between the reweighted EMAs, which it now shows."""
    from paceline_server.strategies.samplers.learning_progress import reweight

    for theta in (0.1, 0.5):
        cur = spec((50, 50), sampler={"kind": "learning_progress", "p_theta": theta})
        engine = CurriculumEngine(cur)
        for step in range(4):  # distribution 0 improves: 0, 1, 2, 3 of 4 right
            solved = [1.0] * step + [0.0] * (4 - step)
            engine.apply(report(cur, [0, 60], [solved, [0.0] * 4], step=step))
        reason = engine.explain()[0]
        fast, slow = (float(engine.state.sampler.ema_fast[0]),
                      float(engine.state.sampler.ema_slow[0]))
        shown = abs(reweight(np.array([fast]), theta) - reweight(np.array([slow]), theta))[0]
        assert reason.terms["learning_progress"] == pytest.approx(shown)
        assert shown > 0
        if theta == 0.5:
            assert "|fast - slow EMA of success|" in reason.sentence
        else:
            assert reason.terms["reweighted_fast"] - reason.terms["reweighted_slow"] \
                == pytest.approx(shown)
            assert "ρ(fast) - ρ(slow)" in reason.sentence
