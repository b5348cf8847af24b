"""The sum-tree: exact sums, sampling without replacement ∝ weight, bit-exact restore."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.strategies.state_codec import decode_state, encode_state
from paceline_server.strategies.sumtree import (
    SumTreeState,
    build_tree,
    channel_totals,
    leaf_weights,
    sample_filtered,
    sample_unique,
    set_leaves,
    total_weight,
)


@pytest.mark.parametrize("n", [1, 5, 16, 17, 255, 256, 257, 5000])
def test_totals_match_numpy(n: int) -> None:
    values = np.random.default_rng(n).random((n, 2)).astype(np.float32)
    tree = build_tree(values)
    np.testing.assert_allclose(channel_totals(tree), values.astype(np.float64).sum(axis=0))
    assert total_weight(tree, np.array([1.0, -0.5])) == pytest.approx(
        float((values[:, 0] - 0.5 * values[:, 1]).astype(np.float64).sum()))


def test_updates_equal_a_fresh_build_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    tree = build_tree(rng.random(5000))
    for _ in range(5):
        idx = rng.integers(0, 5000, 300)
        set_leaves(tree, idx, rng.random(300))
    fresh = build_tree(tree.leaves[:, :5000].T)
    assert tree.nodes.tobytes() == fresh.nodes.tobytes()


def test_duplicate_updates_last_wins() -> None:
    tree = build_tree(np.zeros(10))
    set_leaves(tree, np.array([3, 3, 3]), np.array([1.0, 2.0, 5.0]))
    assert tree.leaves[0, 3] == 5.0
    assert channel_totals(tree)[0] == 5.0


def test_single_draw_frequencies() -> None:
    tree = build_tree(np.array([1.0, 2.0, 3.0, 4.0]))
    rng = np.random.default_rng(1)
    counts = np.bincount(np.concatenate([sample_unique(tree, 1, rng) for _ in range(20000)]),
                         minlength=4)
    np.testing.assert_allclose(counts / 20000, [0.1, 0.2, 0.3, 0.4], atol=0.012)


def test_with_two_channels_and_coefficients() -> None:
    # weight = a - 0.5 b: leaf 0 has 1 - 0.5*2 = 0 and must never be drawn.
    tree = build_tree(np.array([[1.0, 2.0], [1.0, 0.0], [2.0, 2.0]]))
    rng = np.random.default_rng(2)
    coef = np.array([1.0, -0.5])
    np.testing.assert_allclose(leaf_weights(tree, np.arange(3), coef), [0.0, 1.0, 1.0])
    drawn = np.concatenate([sample_unique(tree, 2, rng, coef) for _ in range(200)])
    assert set(drawn.tolist()) == {1, 2}


def test_sampling_leaves_the_tree_bit_identical() -> None:
    rng = np.random.default_rng(3)
    tree = build_tree(rng.random(1000) ** 4)  # peaked: forces the zeroing fallback
    before = (tree.leaves.tobytes(), tree.nodes.tobytes())
    chosen = sample_unique(tree, 900, rng)
    assert np.unique(chosen).size == 900
    assert (tree.leaves.tobytes(), tree.nodes.tobytes()) == before


def test_zero_weight_leaves_come_last() -> None:
    values = np.zeros(100)
    values[[5, 50, 77]] = [1.0, 2.0, 3.0]
    tree = build_tree(values)
    rng = np.random.default_rng(4)
    three = sample_unique(tree, 3, rng)
    assert sorted(three.tolist()) == [5, 50, 77]
    ten = sample_unique(tree, 10, rng)
    assert {5, 50, 77} <= set(ten.tolist())
    assert np.unique(ten).size == 10  # filled uniformly among the rest


def test_filter_rejects_and_counts() -> None:
    tree = build_tree(np.ones(1000))
    rng = np.random.default_rng(5)
    chosen, skipped = sample_filtered(tree, 50, rng, accept=lambda idx: idx % 2 == 0,
                                      max_redraws=10)
    assert skipped > 0
    assert np.all(chosen % 2 == 0)
    assert np.unique(chosen).size == 50


def test_state_round_trip() -> None:
    tree = build_tree(np.random.default_rng(6).random((33, 2)))
    back = decode_state(SumTreeState, encode_state(tree))
    assert back.size == 33
    assert back.nodes.tobytes() == tree.nodes.tobytes()
    assert back.leaves.tobytes() == tree.leaves.tobytes()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, width=32), min_size=1, max_size=300),
       st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_draws_are_unique_in_range_and_positive_first(values: list[float], count: int,
                                                       seed: int) -> None:
    array = np.asarray(values, dtype=np.float32)
    tree = build_tree(array)
    chosen = sample_unique(tree, count, np.random.default_rng(seed))
    k = min(count, array.size)
    assert chosen.size == k
    assert np.unique(chosen).size == k
    assert chosen.min() >= 0
    assert chosen.max() < array.size
    positive = int((array > 0).sum())
    assert (array[chosen] > 0).sum() == min(k, positive)


def test_filtered_sampling_takes_rejected_leaves_back_before_starving() -> None:
    tree = build_tree(np.ones(10))
    rng = np.random.default_rng(0)
    reject_low = lambda idx: idx >= 5  # noqa: E731 - five of ten accepted
    chosen, skipped = sample_filtered(tree, 9, rng, accept=reject_low, max_redraws=3)
    assert np.unique(chosen).size == 9
    assert set(range(5, 10)) <= set(chosen.tolist())
    assert skipped == 1
    assert tree.nodes.tobytes() == build_tree(np.ones(10)).nodes.tobytes()


def test_filtered_sampling_with_no_mass_and_everything_rejected() -> None:
    tree = build_tree(np.zeros(10))
    chosen, skipped = sample_filtered(tree, 10, np.random.default_rng(1),
                                      accept=lambda idx: np.zeros(idx.size, bool),
                                      max_redraws=5)
    assert sorted(chosen.tolist()) == list(range(10))
    assert skipped == 0


def test_uniform_fill_is_bounded_and_refuses_the_impossible() -> None:
    from paceline_server.strategies.sumtree import uniform_excluding

    rng = np.random.default_rng(2)
    dense = uniform_excluding(10, 4, np.arange(6), rng)
    assert sorted(dense.tolist()) == [6, 7, 8, 9]
    sparse = uniform_excluding(1_000_000, 50, np.arange(10), rng)
    assert np.unique(sparse).size == 50 and sparse.min() >= 10
    with pytest.raises(ValueError, match="only 4 of 10 free"):
        uniform_excluding(10, 5, np.arange(6), rng)


def test_sibling_draws_are_each_proportional_to_weight() -> None:
    from paceline_server.strategies.sumtree import descend

    weights = np.random.default_rng(3).random(64) ** 2
    tree = build_tree(weights)
    rng = np.random.default_rng(4)
    count = 200_000
    leaves = descend(tree, rng.random(count) * total_weight(tree), siblings=rng.random(
        (count, 2)))
    assert leaves.shape == (count, 3)
    expected = weights / weights.sum()
    for column in range(3):
        frequency = np.bincount(leaves[:, column], minlength=64) / count
        np.testing.assert_allclose(frequency, expected, atol=0.004)
    # Siblings share the first draw's block of 16.
    assert (leaves // 16 == leaves[:, :1] // 16).all()


@pytest.mark.parametrize("with_siblings", [False, True])
def test_descents_in_blocks_equal_one_descent(monkeypatch: pytest.MonkeyPatch,
                                              with_siblings: bool) -> None:
    """`descend` works in blocks (large BLAS products go multi-threaded and slow down on
    a busy machine); the leaves do not depend on the block size, for every caller
    (`prioritized` and `learnability` alike)."""
    import paceline_server.strategies.sumtree as module

    tree = build_tree(np.random.default_rng(5).random((5000, 2)))
    rng = np.random.default_rng(6)
    u = rng.random(2500) * total_weight(tree, np.array([1.0, -0.5]))
    siblings = rng.random((2500, 3)) if with_siblings else None
    whole = module.descend(tree, u, np.array([1.0, -0.5]), siblings)
    monkeypatch.setattr(module, "DESCENT_CHUNK", 7)
    blocks = module.descend(tree, u, np.array([1.0, -0.5]), siblings)
    assert blocks.shape == whole.shape == ((2500, 4) if with_siblings else (2500,))
    np.testing.assert_array_equal(blocks, whole)


def test_a_last_leaf_of_small_weight_is_found_before_the_uniform_fill() -> None:
    """When one leaf is missing and the chosen ones hold nearly all the mass, every
    round misses it; those misses must count (`need // 2` is 0 for one missing leaf, so
    they did not, the chosen leaves were never taken out, the rounds ran out, and the
    uniform fill took a zero-weight leaf instead in about half the seeds)."""
    weights = np.asarray([6.0, 4.0, 1.0, 2.0, 1e-7, 0.0], dtype=np.float32)
    for seed in range(200):
        chosen = sample_unique(build_tree(weights), 5, np.random.default_rng(seed))
        assert sorted(chosen.tolist()) == [0, 1, 2, 3, 4], seed
