"""`fixed_mix`: a given mixture over distributions, validated against the layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.base import StatelessState
from paceline_server.strategies.state_codec import decode_state, encode_state
from support import report, spec


def mix(probabilities: Any, **extra: Any) -> dict[str, Any]:
    return {"kind": "fixed_mix", "probabilities": probabilities, **extra}


def test_list_in_layout_order_is_served() -> None:
    engine = CurriculumEngine(spec((100, 300, 50), sampler=mix([0.2, 0.5, 0.3])))
    np.testing.assert_array_equal(engine.next_batch("r", 0).probabilities, [0.2, 0.5, 0.3])


def test_mapping_by_name_is_served_in_layout_order() -> None:
    engine = CurriculumEngine(spec((100, 300, 50), sampler=mix({"d2": 0.3, "d0": 0.2,
                                                                "d1": 0.5})))
    np.testing.assert_array_equal(engine.next_batch("r", 0).probabilities, [0.2, 0.5, 0.3])
    assert engine.spec.sampler.params["probabilities"] == {"d2": 0.3, "d0": 0.2, "d1": 0.5}
    assert engine.inspect().sampler == {"probabilities": {"d0": 0.2, "d1": 0.5, "d2": 0.3}}


def test_near_one_sum_is_normalised_exactly() -> None:
    # Sums to 1 + 9e-7 (inside the tolerance); served probabilities are renormalised.
    given_mix = [1 / 3 + 3e-7, 1 / 3 + 3e-7, 1 / 3 + 3e-7]
    p = CurriculumEngine(spec((10, 10, 10), sampler=mix(given_mix))).next_batch("r", 0) \
        .probabilities
    assert abs(p.sum() - 1.0) < 1e-15
    np.testing.assert_allclose(p, 1 / 3, rtol=1e-15)


def test_largest_remainder_follows_the_mixture_exactly() -> None:
    engine = CurriculumEngine(spec((100, 300), batch_size=20,
                                   sampler=mix([0.25, 0.75], allocation="largest_remainder")))
    for step in range(5):
        batch = engine.next_batch("r", step)
        labels = engine.layout.distribution_of(batch.indices)
        assert np.bincount(labels, minlength=2).tolist() == [5, 15]
        assert np.unique(batch.indices).size == 20


def test_zero_probability_distribution_is_never_drawn() -> None:
    engine = CurriculumEngine(spec((50, 50, 50), batch_size=32, sampler=mix([0.5, 0.0, 0.5])))
    for step in range(20):
        labels = engine.layout.distribution_of(engine.next_batch("r", step).indices)
        assert not np.any(labels == 1)


def test_reports_change_nothing_and_state_round_trips() -> None:
    cur = spec((100, 300), sampler=mix([0.4, 0.6]))
    engine = CurriculumEngine(cur)
    before = engine.next_batch("r", 3)
    engine.apply(report(cur, [0, 150], [[1.0, 0.0], [0.0, 0.0]]))
    after = engine.next_batch("r", 3)
    np.testing.assert_array_equal(before.indices, after.indices)
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    state = engine.state.sampler
    assert isinstance(decode_state(StatelessState, encode_state(state)), StatelessState)
    resumed = CurriculumEngine.from_bytes(cur, engine.to_bytes())
    assert resumed.next_batch("r", 9).same_as(engine.next_batch("r", 9))


@pytest.mark.parametrize(
    ("probabilities", "fragment"),
    [
        ([0.5, 0.5, 0.0], "one entry per distribution \\(2"),
        ([1.0], "one entry per distribution"),
        ([1.2, -0.2], "non-negative"),
        ([0.5, 0.4], "sum to 1"),
        ([0.0, 0.0], "sum to 1"),
        ({"d0": 1.0}, "missing \\['d1'\\]"),
        ({"d0": 0.5, "d1": 0.25, "dx": 0.25}, "unknown \\['dx'\\]"),
        ([], "must not be empty"),
        ("0.5,0.5", "must be a list"),
        ([0.5, "a"], "must be a number"),
    ],
)
def test_bad_mixtures_are_rejected(probabilities: Any, fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment) as info:
        CurriculumEngine(spec((100, 300), sampler=mix(probabilities)))
    assert "probabilities" in info.value.details["field"]
    assert "fixed_mix" in info.value.message


def test_probabilities_are_required() -> None:
    with pytest.raises(InvalidParams, match="probabilities is required"):
        CurriculumEngine(spec((100, 300), sampler="fixed_mix"))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6).filter(lambda w: sum(w) > 0.01),
       st.integers(0, 2**32 - 1), st.integers(0, 10_000))
def test_property_simplex_and_determinism(raw: list[float], seed: int, step: int) -> None:
    total = sum(raw)
    given_mix = [w / total for w in raw]
    sizes = tuple(5 + 3 * i for i in range(len(raw)))
    cur = spec(sizes, sampler=mix(given_mix), seed=seed, batch_size=min(8, sum(sizes)))
    a = CurriculumEngine(cur).next_batch("r", step)
    b = CurriculumEngine(cur).next_batch("r", step)
    assert a.same_as(b)
    assert np.all(a.probabilities >= 0.0)
    assert a.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(a.probabilities, given_mix, atol=1e-12)
    assert a.indices.min() >= 0 and a.indices.max() < sum(sizes)
    labels = cur.layout.distribution_of(a.indices)
    assert np.all(np.asarray(given_mix)[labels] > 0.0)
    for d, size in enumerate(sizes):  # unique unless a distribution is smaller than its slots
        members = a.indices[labels == d]
        if members.size <= size:
            assert np.unique(members).size == members.size
