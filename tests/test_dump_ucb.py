"""`dump_ucb` (DUMP): UCB over the mean |advantage| of a window of recent rollouts, with a
softmax at temperature τ."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.allocation import DumpUcbState
from paceline_server.strategies.state_codec import decode_state, encode_state
from support import hopeless_share_under_a_length_term, report, spec


def dump(**params: Any) -> dict[str, Any]:
    return {"kind": "dump_ucb", **params}


def softmax(x: list[float], tau: float) -> np.ndarray:
    z = np.exp((np.asarray(x) - max(x)) / tau)
    return np.asarray(z / z.sum())


def state_of(engine: CurriculumEngine) -> DumpUcbState:
    state: DumpUcbState = engine.state.sampler
    return state


def window_contents(state: DumpUcbState, d: int) -> list[float]:
    """Ring entries of distribution d, oldest first."""
    window = state.advantages.shape[1]
    filled, cursor = int(state.filled[d]), int(state.cursor[d])
    slots = [(cursor - filled + i) % window for i in range(filled)]
    return [float(state.advantages[d, s]) for s in slots]


def test_uniform_before_any_report() -> None:
    engine = CurriculumEngine(spec((100, 1000, 10), sampler="dump_ucb"))
    np.testing.assert_allclose(engine.next_batch("r", 0).probabilities, [1 / 3] * 3)


def test_hand_computed_ucb_and_softmax() -> None:
    # d0 reported once: one group of 2 rollouts with A = (1, -3) -> L0 = mean(|A|) = 2,
    # n0 = 2, n1 = 0, N = 2.  UCB0 = 2 + sqrt(2 ln 3 / 3), UCB1 = 0 + sqrt(2 ln 3 / 1).
    cur = spec((100, 100), sampler=dump())
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [5], [[1.0, 0.0]], advantages=[[1.0, -3.0]]))
    ucb0 = 2.0 + math.sqrt(2 * math.log(3) / 3)
    ucb1 = math.sqrt(2 * math.log(3) / 1)
    expected = softmax([ucb0, ucb1], 0.1)
    np.testing.assert_allclose(engine.next_batch("r", 0).probabilities, expected, rtol=1e-12)
    described = engine.inspect().sampler
    np.testing.assert_allclose(described["ucb"], [ucb0, ucb1], rtol=1e-14)
    assert described["learnability"] == [2.0, 0.0]
    assert described["rollouts"] == [2, 0]


def test_abs_is_taken_before_the_mean() -> None:
    cur = spec((100, 100), sampler=dump())
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 1], [[1.0, 0.0], [1.0, 0.0]],
                        advantages=[[1.0, -1.0], [0.5, -0.5]]))
    assert state_of(engine).learnability.tolist() == [0.75, 0.0]


def test_unreported_distribution_is_explored_first() -> None:
    # d0's advantages are all zero (a solved or hopeless distribution): only the bonus is
    # left and the never-seen d1 has the larger one.
    cur = spec((100, 100), sampler=dump())
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 1, 2], np.ones((3, 4)), advantages=np.zeros((3, 4))))
    p = engine.next_batch("r", 0).probabilities
    assert p[1] > 0.99


def test_grpo_advantages_are_used_when_the_report_has_none() -> None:
    # rewards (1, 0): mean 0.5, std 0.5, A = ±0.5 / (0.5 + 1e-6).
    cur = spec((100, 100), sampler=dump())
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0], [[1.0, 0.0]]))
    assert state_of(engine).learnability[0] == pytest.approx(0.5 / (0.5 + 1e-6), rel=1e-14)


def test_window_evicts_the_oldest_rollouts() -> None:
    cur = spec((100, 100), sampler=dump(window=3))
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0], [[1.0, 0.0]], advantages=[[1.0, 1.0]]))
    assert window_contents(state_of(engine), 0) == [1.0, 1.0]
    engine.apply(report(cur, [1], [[1.0, 0.0]], advantages=[[2.0, -2.0]]))
    state = state_of(engine)
    assert window_contents(state, 0) == [1.0, 2.0, -2.0]
    assert state.learnability[0] == pytest.approx(5 / 3, rel=1e-15)
    engine.apply(report(cur, [2], [[1.0, 0.0]], advantages=[[4.0, 4.0]]))
    state = state_of(engine)
    assert window_contents(state, 0) == [-2.0, 4.0, 4.0]
    assert state.learnability[0] == pytest.approx(10 / 3, rel=1e-15)
    assert state.rollouts.tolist() == [6, 0]  # n_d counts every rollout, evicted or not


def test_report_larger_than_the_window_keeps_its_last_rollouts_in_report_order() -> None:
    # Groups interleave distributions: d0, d1, d0. d0 gets 6 rollouts (1, 2, 3, 0.5, 5, 6);
    # window 3 keeps the last three in report order: 0.5, 5, 6.
    cur = spec((100, 100), sampler=dump(window=3))
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 150, 1], np.zeros((3, 3)),
                        advantages=[[1.0, 2.0, 3.0], [4.0, 4.5, -4.0], [0.5, 5.0, 6.0]]))
    state = state_of(engine)
    assert window_contents(state, 0) == [0.5, 5.0, 6.0]
    assert window_contents(state, 1) == [4.0, 4.5, -4.0]
    assert state.learnability.tolist() == [pytest.approx(11.5 / 3), pytest.approx(12.5 / 3)]
    assert state.rollouts.tolist() == [6, 3]


def test_beta_posterior_is_logged_but_does_not_enter_p() -> None:
    cur = spec((100, 100), sampler=dump())
    good = CurriculumEngine(cur)
    bad = CurriculumEngine(cur)
    advantages = [[1.0, -1.0, 1.0, -1.0]]
    good.apply(report(cur, [0], [[1.0, 1.0, 1.0, 0.5]], advantages=advantages))
    bad.apply(report(cur, [0], [[0.0, 0.0, 0.0, 0.5]], advantages=advantages))
    assert state_of(good).alpha.tolist() == [4.5, 1.0]
    assert state_of(good).beta.tolist() == [1.5, 1.0]
    assert good.inspect().sampler["beta_mean"][0] == pytest.approx(0.75)
    assert state_of(bad).alpha.tolist() == [1.5, 1.0]
    np.testing.assert_array_equal(good.next_batch("r", 0).probabilities,
                                  bad.next_batch("r", 0).probabilities)


def test_state_round_trips_bit_exactly_and_engine_resumes() -> None:
    cur = spec((100, 1000, 50), sampler=dump(window=4))
    engine = CurriculumEngine(cur)
    rng = np.random.default_rng(3)
    for step in range(5):
        indices = rng.choice(1150, size=6, replace=False)
        engine.apply(report(cur, indices, rng.random((6, 3)), advantages=rng.normal(size=(6, 3)),
                            step=step))
    state = state_of(engine)
    decoded = decode_state(DumpUcbState, encode_state(state))
    for name in ("advantages", "filled", "cursor", "learnability", "rollouts", "alpha", "beta"):
        original, copy = getattr(state, name), getattr(decoded, name)
        assert original.dtype == copy.dtype and original.tobytes() == copy.tobytes(), name
    resumed = CurriculumEngine.from_bytes(cur, engine.to_bytes())
    assert resumed.next_batch("r", 5).same_as(engine.next_batch("r", 5))


def test_end_to_end_batches_are_valid_and_do_not_mutate_state() -> None:
    cur = spec((100, 1000, 500), batch_size=64, sampler=dump())
    engine = CurriculumEngine(cur)
    engine.apply(report(cur, [0, 500, 1120], np.zeros((3, 2)),
                        advantages=[[0.1, -0.1], [2.0, -2.0], [0.0, 0.0]]))
    before = encode_state(engine.state.sampler)
    for step in range(10):
        batch = engine.next_batch("r", step)
        assert np.unique(batch.indices).size == 64
        assert batch.indices.min() >= 0 and batch.indices.max() < 1600
        assert batch.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
        assert batch.loss_weights is None
    engine.inspect()
    assert encode_state(engine.state.sampler) == before


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"window": 0}, "window must be in"), ({"window": 10**6}, "window must be in"),
     ({"c": -0.5}, "c must be non-negative"), ({"tau": 0.0}, "tau must be positive"),
     ({"tau": "cold"}, "must be a number"), ({"window": 2.5}, "integer"),
     ({"temperature": 0.1}, "unknown parameter")],
)
def test_bad_params_are_rejected(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        CurriculumEngine(spec((100, 100), sampler=dump(**params)))


reports_strategy = st.lists(
    st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=5),  # group distributions
              st.integers(1, 4),  # group size
              st.integers(0, 2**31 - 1)),  # seed for advantages
    min_size=1, max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(reports_strategy, st.integers(1, 5))
def test_property_ring_matches_a_naive_window(reports: list[tuple[list[int], int, int]],
                                              window: int) -> None:
    """Vectorised ring == per-distribution deque(maxlen=window) fed in report order."""
    cur = spec((10, 10, 10), sampler=dump(window=window))
    engine = CurriculumEngine(cur)
    naive: list[deque[float]] = [deque(maxlen=window) for _ in range(3)]
    counts = [0, 0, 0]
    for groups, size, seed in reports:
        # distinct indices: the k-th group of distribution d uses index 10·d + k.
        seen = [0, 0, 0]
        indices = []
        for d in groups:
            indices.append(10 * d + seen[d])
            seen[d] += 1
        advantages = np.random.default_rng(seed).normal(size=(len(groups), size))
        engine.apply(report(cur, indices, np.zeros((len(groups), size)),
                            advantages=advantages))
        for d, row in zip(groups, advantages, strict=True):
            naive[d].extend(row.tolist())
            counts[d] += size
    state = state_of(engine)
    for d in range(3):
        assert window_contents(state, d) == list(naive[d])
        expected = float(np.mean(np.abs(list(naive[d])))) if naive[d] else 0.0
        assert state.learnability[d] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert state.rollouts.tolist() == counts
    p = engine.next_batch("r", 0).probabilities
    assert np.all(p >= 0.0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    again = CurriculumEngine.from_bytes(cur, engine.to_bytes())
    assert again.next_batch("r", 1).same_as(engine.next_batch("r", 1))


def hopeless_share(source: str | None) -> float:
    """d0's mean probability under a length term (support.py), by advantage source."""
    params = {} if source is None else {"advantage_source": source}
    return hopeless_share_under_a_length_term(dump(params=params))


def test_primary_advantages_drop_a_hopeless_distribution_under_a_length_term() -> None:
    paper = hopeless_share("scalarized")
    assert paper > 0.25  # the length term alone keeps d0's learnability up
    assert hopeless_share("primary") < 0.05
    # The default (`auto`) reads the primary objective when there are several.
    assert hopeless_share(None) == hopeless_share("primary")


def test_auto_is_the_paper_with_one_objective_and_primary_with_several() -> None:
    assert hopeless_share("auto") == hopeless_share("primary")
    for sampler in (dump(), dump(params={"advantage_source": "auto"})):
        one = spec((10, 10), objective_names=("acc",), sampler=sampler)
        paper = spec((10, 10), objective_names=("acc",),
                     sampler=dump(params={"advantage_source": "scalarized"}))
        check_paper_rule_with_one_objective(one, paper)


def check_paper_rule_with_one_objective(one: Any, paper: Any) -> None:
    """`one` folds a single-objective report into exactly the ring `paper` (the paper's
    rule, the trainer's advantages) does."""
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    advantages = np.array([[2.0, -1.0, -0.5, -0.5], [0.3, 0.3, -0.3, -0.3]])
    states = []
    for cur in (one, paper):
        e = CurriculumEngine(cur)
        e.apply(report(cur, [0, 10], rewards, advantages=advantages))
        states.append(state_of(e))
    np.testing.assert_array_equal(states[0].advantages, states[1].advantages)
    assert states[0].learnability[0] == pytest.approx(1.0)  # the trainer's |A|, not primary


def test_primary_advantages_by_hand() -> None:
    cur = spec((10, 10), objective_names=("acc", "fmt"),
               sampler=dump(params={"advantage_source": "primary"}))
    e = CurriculumEngine(cur)
    rewards = np.zeros((2, 4, 2))
    rewards[0, :, 0] = [1, 0, 0, 0]  # index 0: primary varies
    rewards[1, :, 1] = [1, 0, 1, 0]  # index 10: only the secondary varies
    e.apply(report(cur, [0, 10], rewards))
    state = state_of(e)
    one = np.array([1, 0, 0, 0.0])
    expected = np.abs((one - one.mean()) / one.std()).mean()
    np.testing.assert_allclose(state.learnability, [expected, 0.0])


def test_unknown_advantage_source_is_refused() -> None:
    with pytest.raises(InvalidParams, match="advantage_source"):
        CurriculumEngine(spec((10,), sampler=dump(params={"advantage_source": "mean"})))
