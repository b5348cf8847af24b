"""Pareto buffer, normalisation and hypervolume helpers against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import ObjectiveSpec
from paceline_server.strategies.pareto import (
    ParetoBuffer,
    contribution,
    exclusive_contributions,
    hypervolume,
    normalize,
)
from paceline_server.strategies.state_codec import decode_state, encode_state


def fronts(buffer: ParetoBuffer) -> list[tuple[float, ...]]:
    return sorted(tuple(p) for p in buffer.front.tolist())


def test_normalize_bounds_direction_and_clipping() -> None:
    objectives = (ObjectiveSpec("acc"), ObjectiveSpec("len", "minimize", None, (0, 200)),
                  ObjectiveSpec("score", bounds=(-1, 1)))
    np.testing.assert_allclose(normalize([0.5, 50.0, 0.0], objectives), [0.5, 0.75, 0.5])
    # Out of bounds clips; a minimised objective above its upper bound is the worst (0).
    np.testing.assert_allclose(normalize([2.0, 300.0, -5.0], objectives), [1.0, 0.0, 0.0])
    batch = normalize(np.array([[0.0, 0.0, 1.0], [1.0, 200.0, -1.0]]), objectives)
    np.testing.assert_allclose(batch, [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_hypervolume_of_known_fronts() -> None:
    # Staircase (0.2, 0.8), (0.6, 0.4) above (0, 0): 0.2*0.8 + (0.6-0.2)*0.4 = 0.32.
    front = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert hypervolume(front, np.zeros(2)) == pytest.approx(0.32)
    # Same front above (0.1, 0.1): 0.1*0.7 + 0.4*0.3 = 0.19.
    assert hypervolume(front, np.full(2, 0.1)) == pytest.approx(0.19)
    # 3-D: two boxes 0.5^3 and 1*0.2*0.2 overlapping in 0.5*0.2*0.2.
    cube = np.array([[0.5, 0.5, 0.5], [1.0, 0.2, 0.2]])
    assert hypervolume(cube, np.zeros(3)) == pytest.approx(0.125 + 0.04 - 0.02)
    assert hypervolume(np.array([[0.7]]), np.array([0.2])) == pytest.approx(0.5)


def test_points_not_above_the_reference_add_nothing() -> None:
    assert hypervolume(np.zeros((0, 2)), np.zeros(2)) == 0.0
    assert hypervolume(np.array([[0.5, 0.0]]), np.zeros(2)) == 0.0  # on the reference
    assert hypervolume(np.array([[0.9, 0.05], [0.3, 0.4]]), np.full(2, 0.1)) == \
        pytest.approx(0.2 * 0.3)


def test_contribution_by_hand_and_clipped() -> None:
    front = np.array([[0.5, 0.6]])
    ref = np.full(2, 0.2)
    # (0.7, 0.3) adds the slab [0.5, 0.7] x [0.2, 0.3].
    assert contribution(front, np.array([0.7, 0.3]), ref) == pytest.approx(0.2 * 0.1)
    assert contribution(front, np.array([0.4, 0.5]), ref) == 0.0  # dominated
    assert contribution(front, np.array([0.1, 0.9]), ref) == 0.0  # below the reference
    assert contribution(np.zeros((0, 2)), np.array([0.5, 0.6]), ref) == pytest.approx(0.12)


def test_exclusive_contributions() -> None:
    front = np.array([[0.2, 0.8], [0.6, 0.4]])
    # Each point's box minus the overlap [0,0.2]x[0,0.4]: 0.16-0.08, 0.24-0.08.
    np.testing.assert_allclose(exclusive_contributions(front, np.zeros(2)), [0.08, 0.16])
    np.testing.assert_allclose(exclusive_contributions(np.array([[0.3], [0.7]]),
                                                       np.array([0.1])), [0.0, 0.4])
    # A point below the reference contributes nothing and does not break the rest.
    np.testing.assert_allclose(
        exclusive_contributions(np.array([[0.5, -0.1], [0.3, 0.4]]), np.zeros(2)), [0, 0.12])


def test_buffer_prunes_dominated_points_and_rejects_dominated_newcomers() -> None:
    buffer = ParetoBuffer.empty(8, 2)
    buffer.set_reference(np.zeros(2))
    assert buffer.add(np.array([0.1, 0.1]))
    assert buffer.add(np.array([0.5, 0.2]))  # dominates (0.1, 0.1)
    assert fronts(buffer) == [(0.5, 0.2)]
    assert not buffer.add(np.array([0.5, 0.2]))  # duplicate: weakly dominated
    assert not buffer.add(np.array([0.4, 0.1]))
    assert buffer.add(np.array([0.2, 0.6]))
    assert fronts(buffer) == [(0.2, 0.6), (0.5, 0.2)]
    assert buffer.hypervolume() == pytest.approx(0.2 * 0.6 + 0.3 * 0.2)
    assert buffer.contribution(np.array([0.6, 0.1])) == pytest.approx(0.1 * 0.1)
    assert buffer.inserted == 3


def test_full_buffer_evicts_the_smallest_contributor() -> None:
    buffer = ParetoBuffer.empty(2, 2)
    buffer.set_reference(np.zeros(2))
    buffer.add(np.array([0.1, 0.9]))
    buffer.add(np.array([0.9, 0.1]))
    # (0.5, 0.5) adds 0.16 alone; (0.1, 0.9) and (0.9, 0.1) then add 0.04 each: tie,
    # the oldest (0.1, 0.9) goes.
    assert buffer.add(np.array([0.5, 0.5]))
    assert fronts(buffer) == [(0.5, 0.5), (0.9, 0.1)]
    # A newcomer that would add least is not admitted and the front stays.
    assert not buffer.add(np.array([0.52, 0.45]))
    assert fronts(buffer) == [(0.5, 0.5), (0.9, 0.1)]
    assert buffer.reference.tolist() == [0.0, 0.0]  # never evicted


def test_capacity_one_keeps_the_best_single_point() -> None:
    buffer = ParetoBuffer.empty(1, 2)
    buffer.set_reference(np.zeros(2))
    buffer.add(np.array([0.2, 0.2]))
    assert buffer.add(np.array([0.1, 0.9]))  # adds 0.07 alone; (0.2, 0.2) adds 0.02
    assert fronts(buffer) == [(0.1, 0.9)]
    assert not buffer.add(np.array([0.9, 0.05]))  # would add 0.04 < 0.085
    assert buffer.count == 1


def test_empty_buffer_and_bad_sizes() -> None:
    buffer = ParetoBuffer.empty(4, 3)
    assert buffer.hypervolume() == 0.0
    assert buffer.contribution(np.ones(3)) == 0.0
    with pytest.raises(ValueError, match="capacity"):
        ParetoBuffer.empty(0, 2)


def test_buffer_round_trips_through_the_state_codec() -> None:
    buffer = ParetoBuffer.empty(4, 2)
    buffer.set_reference(np.array([0.1, 0.2]))
    buffer.add(np.array([0.3, 0.7]))
    decoded = decode_state(ParetoBuffer, encode_state(buffer))
    assert encode_state(decoded) == encode_state(buffer)
    assert decoded.hypervolume() == buffer.hypervolume()


point_lists = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
                       min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(point_lists)
def test_pruning_keeps_the_hypervolume_of_everything_added(points: list[tuple[float, ...]]
                                                           ) -> None:
    buffer = ParetoBuffer.empty(64, 3)
    buffer.set_reference(np.zeros(3))
    for p in points:
        buffer.add(np.array(p))
    front = buffer.front
    assert hypervolume(np.array(points), np.zeros(3)) == pytest.approx(buffer.hypervolume())
    for i in range(buffer.count):  # mutually non-dominated
        others = np.delete(front, i, axis=0)
        assert not np.any(np.all(others >= front[i], axis=1))


@settings(max_examples=60, deadline=None)
@given(point_lists, st.integers(1, 4))
def test_bounded_buffer_never_exceeds_capacity_or_gains_volume(
        points: list[tuple[float, ...]], capacity: int) -> None:
    buffer = ParetoBuffer.empty(capacity, 3)
    buffer.set_reference(np.zeros(3))
    for p in points:
        before = buffer.hypervolume()
        buffer.add(np.array(p))
        assert buffer.count <= capacity
        assert buffer.hypervolume() >= before - 1e-12  # eviction keeps the larger set
    assert buffer.hypervolume() <= hypervolume(np.array(points), np.zeros(3)) + 1e-12
