"""The per-sample prioritized sampler against hand-computed priorities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import CurriculumSpec, InvalidParams
from paceline_server.domain.npz import load_npz, save_npz
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.samplers.prioritized import PrioritizedSampler, PrioritizedState
from paceline_server.strategies.state_codec import (
    VERSION_KEY,
    StateVersionError,
    decode_state,
    encode_state,
)
from paceline_server.strategies.sumtree import build_tree
from support import report, spec


def engine(**params: object) -> CurriculumEngine:
    """Without a distribution-level allocation unless asked: the hand computations below
    are of the priority mass alone (the default allocation is dump_ucb)."""
    params.setdefault("allocation", "none")
    return CurriculumEngine(spec((40, 60), sampler={"kind": "prioritized", **params},
                                 batch_size=8))


def sampler_of(e: CurriculumEngine) -> PrioritizedSampler:
    assert isinstance(e.sampler, PrioritizedSampler)
    return e.sampler


def test_unseen_priority_is_the_prior_value() -> None:
    e = engine()
    assert sampler_of(e).priorities(e.state.sampler, np.array([0, 99]), 0).tolist() == \
        [0.25, 0.25]
    np.testing.assert_allclose(e.next_batch("r", 0).probabilities, [0.4, 0.6])


def test_priority_after_a_report_by_hand() -> None:
    e = engine(gamma=1.0)
    # Index 3: 3 of 4 solved -> Beta(4, 2), p = 2/3; index 7: all solved -> Beta(5, 1).
    e.apply(report(e.spec, [3, 7], np.array([[1, 1, 1, 0], [1, 1, 1, 1.0]])))
    s = sampler_of(e)
    beta, h = 0.1, 1000.0
    p3, p7 = 4 / 6, 5 / 6
    # Seen at clock 0; at clock 0 staleness is 0.
    now = s.priorities(e.state.sampler, np.array([3, 7]), 0)
    np.testing.assert_allclose(now, [p3 * (1 - p3), p7 * (1 - p7)], rtol=1e-6)
    # 500 reports later the staleness bonus is beta (1 - exp(-500/h)).
    later = s.priorities(e.state.sampler, np.array([3, 7]), 500)
    bonus = beta * (1 - math.exp(-500 / h))
    np.testing.assert_allclose(later, [p3 * (1 - p3) + bonus, p7 * (1 - p7) + bonus],
                               rtol=1e-5)


def test_solved_samples_are_drawn_less() -> None:
    e = engine(beta=0.0)
    solved = np.arange(40)
    for step in range(5):
        e.apply(report(e.spec, solved, np.ones((40, 8)), step=step))
    probabilities = e.next_batch("r", 5).probabilities
    # d0's 40 samples are solved (p ~ 0.975, p(1-p) ~ 0.024) against d1's 60 unseen
    # (0.25 each): d0 holds ~1/16 of the mass instead of 40 %.
    assert probabilities[0] < 0.1
    counts = np.mean([(e.next_batch("r", s).indices < 40).mean() for s in range(50)])
    assert counts < 0.1


def test_rebase_keeps_priorities() -> None:
    e = engine(h=1.0)
    rng = np.random.default_rng(0)
    for step in range(30):  # (t - t0)/h passes 20 -> at least one rebase
        idx = rng.choice(100, 8, replace=False)
        e.apply(report(e.spec, idx, rng.integers(0, 2, (8, 4)).astype(float), step=step))
    s = sampler_of(e)
    state = e.state.sampler
    assert state.t0 > 0
    posteriors = e.state.posteriors
    assert posteriors is not None
    idx = np.arange(100)
    p = posteriors.alpha / (posteriors.alpha + posteriors.beta)
    last = posteriors.last_seen
    expected = np.where(last < 0, 0.25,
                        p * (1 - p) + 0.1 * (1 - np.exp(-(30 - last) / 1.0)))
    np.testing.assert_allclose(s.priorities(state, idx, 30), expected, rtol=1e-4, atol=1e-6)
    # Per-distribution mass follows the leaves exactly enough.
    mass = np.array([expected[:40].sum(), expected[40:].sum()])
    np.testing.assert_allclose(e.next_batch("r", 31).probabilities, mass / mass.sum(),
                               rtol=1e-4)


def test_state_round_trips_and_batches_match() -> None:
    e = engine()
    e.apply(report(e.spec, [1, 2, 50], np.array([[1, 0], [1, 1], [0, 0.0]])))
    resumed = CurriculumEngine.from_bytes(e.spec, e.to_bytes())
    assert resumed.to_bytes() == e.to_bytes()
    assert resumed.next_batch("r", 1).same_as(e.next_batch("r", 1))


def test_alpha_and_importance_weights() -> None:
    with pytest.raises(InvalidParams, match="alpha != 1 needs beta = 0"):
        engine(alpha=0.5)
    e = engine(alpha=2.0, beta=0.0, is_correction=True)
    e.apply(report(e.spec, [0, 1], np.array([[1, 1, 1, 0], [1, 0, 0, 0.0]])))
    batch = e.next_batch("r", 1)
    assert batch.loss_weights is not None
    assert batch.loss_weights.max() == pytest.approx(1.0)
    s = sampler_of(e)
    w = s.priorities(e.state.sampler, batch.indices, 1)
    # Higher probability -> smaller importance weight.
    order = np.argsort(w)
    assert np.all(np.diff(batch.loss_weights[order]) <= 1e-12)


@pytest.mark.parametrize("params", [{"h": 0}, {"beta": -1}, {"gamma": 0}, {"is_beta": 2},
                                    {"allocation": "bogus"},
                                    {"allocation": "dump_ucb",
                                     "allocation_params": {"bogus": 1}},
                                    {"allocation_params": {"c": 1.0}}])
def test_bad_params(params: dict[str, float]) -> None:
    with pytest.raises(InvalidParams):
        engine(**params)


@pytest.mark.parametrize("name", ["prior_alpha", "prior_beta"])
def test_a_bad_prior_is_named(name: str) -> None:
    with pytest.raises(InvalidParams, match=f"{name} must be > 0") as refused:
        engine(**{name: 0.0})
    assert refused.value.details["field"] == name


def test_bytes_per_sample_within_budget() -> None:
    e = CurriculumEngine(spec((500_000, 500_000), sampler="prioritized"))
    assert e.state_bytes_per_sample() <= 32


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_batches_unique_in_range_and_deterministic(seed: int, size: int) -> None:
    cur = spec((40, 60), sampler="prioritized", seed=seed, batch_size=8)
    a, b = CurriculumEngine(cur), CurriculumEngine(cur)
    rng = np.random.default_rng(seed)
    for e in (a, b):
        e.apply(report(cur, rng.choice(100, 10, replace=False) if e is a else
                       np.random.default_rng(seed).choice(100, 10, replace=False),
                       np.ones((10, 2))))
    x, y = a.next_batch("r", 1, size), b.next_batch("r", 1, size)
    assert x.same_as(y)
    assert np.unique(x.indices).size == size
    assert x.indices.max() < 100
    assert x.probabilities.sum() == pytest.approx(1.0)


def test_default_allocation_gives_small_distributions_their_share() -> None:
    """The default lets dump_ucb set each distribution's slots: a 20-sample distribution
    beside 2 000 gets the allocator's share, not 1 % (what the priority mass gives)."""
    cur = spec((2000, 20), sampler="prioritized", batch_size=32)
    flat = spec((2000, 20), sampler={"kind": "prioritized", "allocation": "none"},
                batch_size=32)
    allocated, plain = CurriculumEngine(cur), CurriculumEngine(flat)
    assert sampler_of(allocated).params.allocation == "dump_ucb"
    dump = CurriculumEngine(spec((2000, 20), sampler="dump_ucb", batch_size=32))
    small = [np.mean([(e.next_batch("r", s).indices >= 2000).mean() for s in range(20)])
             for e in (allocated, plain)]
    share = dump.next_batch("r", 0).probabilities[1]
    assert small[0] == pytest.approx(share, abs=0.1)
    assert small[1] < 0.05
    np.testing.assert_allclose(allocated.next_batch("r", 0).probabilities,
                               dump.next_batch("r", 0).probabilities)
    assert "allocation" in allocated.inspect().sampler


def test_allocated_draws_follow_priority_inside_a_distribution() -> None:
    """Inside its slots, a distribution's solved samples are drawn less than its other
    ones (one distribution, so the allocator gives it every slot); the allocator learns
    from the same reports."""
    cur = spec((100,), sampler={"kind": "prioritized", "beta": 0.0}, batch_size=16)
    e = CurriculumEngine(cur)
    mixed = np.tile([1.0, 0.0], (10, 4))  # 50-59: half solved
    for step in range(3):
        e.apply(report(cur, np.arange(60), np.concatenate([np.ones((50, 8)), mixed]),
                       step=step))
    solved = []
    for step in range(3, 40):
        batch = e.next_batch("r", step)
        assert np.unique(batch.indices).size == 16
        solved.append((batch.indices < 50).mean())
    # 50 solved samples hold ~0.024 each against ~0.25 for each of the 50 others.
    assert np.mean(solved) < 0.2
    assert e.state.sampler.dump is not None
    assert e.inspect().sampler["allocation"]["rollouts"] == [3 * 60 * 8]


def test_allocated_skipping_terminates_and_fills_the_batch() -> None:
    """The skipping hang of issue 14 (N = 10, batch 9, five indices predicted
    all-correct), with the allocation on: the batch is full, distinct, and the predicted
    ones are taken only as far as needed."""
    cur = spec((5, 5), sampler={"kind": "prioritized", "beta": 0.0}, batch_size=9,
               zero_variance={"threshold": 0.3, "max_redraws": 3})
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(5), np.ones((5, 4)), step=step))
    for step in range(3, 8):
        batch = e.next_batch("r", step)
        assert np.unique(batch.indices).size == 9
        assert batch.indices.max() < 10


def _as_version_1(sampler: PrioritizedSampler, state: PrioritizedState) -> dict[str, object]:
    """The arrays a version-1 state (leaves in index order, no allocator) would have."""
    n = sampler.layout.num_samples
    by_index = state.tree.leaves[:, :n][:, sampler._to_leaf(np.arange(n))].T
    arrays = load_npz(encode_state(PrioritizedState(
        tree=build_tree(by_index.astype(np.float64)), t0=state.t0, mass=state.mass,
        dump=None, progress=None)))
    old = {k: v for k, v in arrays.items()
           if not k.startswith(("dump.", "progress."))}
    old[VERSION_KEY] = np.asarray(1, dtype=np.int64)
    return old


@pytest.mark.parametrize("labelled", [False, True])
def test_version_1_state_migrates(labelled: bool) -> None:
    """A curriculum stored before the allocation existed loads: priorities are kept
    (leaves reordered for a label layout) and the allocator starts fresh."""
    labels = np.tile([1, 0, 1], 30)
    layout = ({"names": ["d0", "d1"], "labels": labels.tolist()} if labelled
              else {"distributions": [{"name": "d0", "size": 30}, {"name": "d1", "size": 60}]})
    cur = CurriculumSpec.from_dict({"name": "m", "layout": layout, "objectives": ["acc"],
                                    "sampler": "prioritized", "batch_size": 8})
    e = CurriculumEngine(cur)
    e.apply(report(cur, [1, 2, 50, 77], np.array([[1, 0], [1, 1], [0, 0], [1, 0.0]])))
    s = sampler_of(e)
    old = _as_version_1(s, e.state.sampler)
    with pytest.raises(StateVersionError):  # a v1 blob does not read as v2 directly
        decode_state(PrioritizedState, save_npz(old))
    migrated = decode_state(PrioritizedState, save_npz(old), s.migrate_state)
    idx = np.arange(90)
    np.testing.assert_allclose(s.priorities(migrated, idx, 1),
                               s.priorities(e.state.sampler, idx, 1), rtol=1e-6)
    assert migrated.dump is not None
    np.testing.assert_allclose(migrated.mass, e.state.sampler.mass)
    e.state.sampler = migrated
    batch = e.next_batch("r", 1)
    assert np.unique(batch.indices).size == 8
    with pytest.raises(StateVersionError):  # unknown versions are replayed instead
        s.migrate_state(7, old)


def test_importance_weights_follow_the_allocation() -> None:
    """With an allocation, P(x) is the distribution's share times x's share of its
    distribution's priority: the whole tree's share, used before, gave the 10 prompts
    that the allocation hands half of every batch the weights of the 1 000 others."""
    e = CurriculumEngine(spec((1000, 10), batch_size=8, sampler={
        "kind": "prioritized", "allocation": "dump_ucb", "is_correction": True,
        "is_beta": 1.0}))
    batch = e.next_batch("r", 0)
    np.testing.assert_allclose(batch.probabilities, [0.5, 0.5])  # before any report
    assert batch.loss_weights is not None
    labels = e.spec.layout.distribution_of(batch.indices)
    small, large = batch.loss_weights[labels == 1], batch.loss_weights[labels == 0]
    assert small.size and large.size
    # Equal priorities: P(x) = 0.5 / 10 against 0.5 / 1000, so w_small / w_large = 1 / 100.
    np.testing.assert_allclose(large, 1.0)
    np.testing.assert_allclose(small, 0.01, rtol=1e-9)
