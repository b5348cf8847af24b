"""Turning per-distribution probabilities into a batch (shared by every
distribution-level sampler)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.distribution import allocate
from support import spec


def test_largest_remainder_by_hand() -> None:
    # 10 slots at P = (0.26, 0.34, 0.40): floors 2, 3, 4; the leftover slot goes to the
    # largest fractional part (0.6 of d0).
    counts = allocate(np.array([0.26, 0.34, 0.40]), 10, np.random.default_rng(0),
                      "largest_remainder")
    assert counts.tolist() == [3, 3, 4]


def test_largest_remainder_ties_go_to_lower_position() -> None:
    counts = allocate(np.array([0.5, 0.5]), 1, np.random.default_rng(0), "largest_remainder")
    assert counts.tolist() == [1, 0]


def test_multinomial_matches_probabilities_on_average() -> None:
    rng = np.random.default_rng(1)
    p = np.array([0.1, 0.6, 0.3])
    mean = np.mean([allocate(p, 100, rng, "multinomial") for _ in range(2000)], axis=0)
    np.testing.assert_allclose(mean, 100 * p, rtol=0.03)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.integers(1, 500),
       st.sampled_from(["multinomial", "largest_remainder"]))
def test_allocation_fills_the_batch(raw: list[float], size: int, how: str) -> None:
    p = np.asarray(raw) + 1e-3
    p /= p.sum()
    counts = allocate(p, size, np.random.default_rng(0), how)  # type: ignore[arg-type]
    assert counts.sum() == size and counts.min() >= 0
    if how == "largest_remainder":
        assert np.all(np.abs(counts - size * p) < 1.0 + 1e-9)


def test_small_distribution_is_drawn_with_replacement_only_when_overfull() -> None:
    engine = CurriculumEngine(spec((3, 3), batch_size=6))
    overfull = 0
    for step in range(50):
        indices = engine.next_batch("r", step).indices
        for d in (0, 1):
            members = indices[engine.layout.distribution_of(indices) == d]
            if members.size > 3:
                overfull += 1
                assert np.unique(members).size <= 3
            else:
                assert np.unique(members).size == members.size
    assert overfull > 0


def test_batch_order_is_shuffled() -> None:
    engine = CurriculumEngine(spec((500, 500), batch_size=100))
    labels = engine.layout.distribution_of(engine.next_batch("r", 0).indices)
    assert np.any(np.diff(labels) < 0)  # not sorted by distribution


@pytest.mark.parametrize("allocation", ["multinomial", "largest_remainder"])
def test_uniform_frequency_follows_sizes(allocation: str) -> None:
    engine = CurriculumEngine(spec((100, 300), sampler={"kind": "uniform",
                                                        "allocation": allocation},
                                   batch_size=40))
    share = np.mean([(engine.next_batch("r", s).indices < 100).mean() for s in range(200)])
    assert share == pytest.approx(0.25, abs=0.02)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=6), st.integers(0, 2**32),
       st.integers(0, 1000))
def test_uniform_batches_are_valid_and_deterministic(sizes: list[int], seed: int,
                                                     step: int) -> None:
    cur = spec(tuple(sizes), seed=seed, batch_size=min(8, sum(sizes)))
    a = CurriculumEngine(cur).next_batch("r", step)
    b = CurriculumEngine(cur).next_batch("r", step)
    assert a.same_as(b)
    assert a.indices.min() >= 0 and a.indices.max() < sum(sizes)
    assert a.probabilities.sum() == pytest.approx(1.0)
    for d, size in enumerate(sizes):
        members = a.indices[cur.layout.distribution_of(a.indices) == d]
        if members.size <= size:
            assert np.unique(members).size == members.size
