"""Predicted zero-variance skipping: agreement probabilities by hand, and skipping through
the engine for a distribution-level and the per-sample sampler."""

from __future__ import annotations

import numpy as np
import pytest

from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.posteriors import PosteriorConfig, init_posteriors
from paceline_server.strategies.zero_variance import agreement_probability
from support import report, spec


def test_plug_in_and_exact_agreement_by_hand() -> None:
    table = init_posteriors(2, PosteriorConfig())
    table.alpha[1], table.beta[1] = 3.0, 1.0  # mean 0.75
    plug_in = agreement_probability(table, np.array([0, 1]), 2, exact=False)
    np.testing.assert_allclose(plug_in, [0.5, 0.75**2 + 0.25**2])
    exact = agreement_probability(table, np.array([0, 1]), 2, exact=True)
    # Beta(1,1): P(2 of 2) = 1/2 * 2/3 = 1/3, twice -> 2/3.
    # Beta(3,1): P(all pass) = 3/4 * 4/5 = 3/5; P(all fail) = 1/4 * 2/5 = 1/10.
    np.testing.assert_allclose(exact, [2 / 3, 0.7])


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_solved_samples_are_skipped(sampler: str) -> None:
    cur = spec((50, 50), sampler=sampler, batch_size=10,
               zero_variance={"threshold": 0.5, "max_redraws": 5})
    e = CurriculumEngine(cur)
    # Half of d0 solved 8/8 three times: p ~ 0.96, q ~ 0.73 > 0.5. Redraws stay inside
    # the distribution (the mix is the sampler's choice), so d0's slots go to its
    # unsolved half.
    solved = np.arange(25)
    for step in range(3):
        e.apply(report(cur, solved, np.ones((25, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == 10
    if sampler == "uniform":
        assert batch.skipped_zero_variance > 0
    assert (batch.indices < 25).sum() <= 1


def test_skipping_off_keeps_batches_unchanged() -> None:
    plain = CurriculumEngine(spec((50, 50), batch_size=10))
    assert plain.next_batch("r", 0).skipped_zero_variance == 0
    assert plain.state.posteriors is None


def test_batch_near_the_accepted_count_never_hangs() -> None:
    """Issue 14's hang: 5 of 10 indices predicted all-equal, a batch of 9. The sampler
    may skip at most the surplus; the batch is full and distinct, and the rejected
    indices that had to fill it are not counted as skipped."""
    cur = spec((10,), sampler="prioritized", batch_size=9,
               zero_variance={"threshold": 0.3, "max_redraws": 3})
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(5), np.ones((5, 4)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == 9
    assert set(range(5, 10)) <= set(batch.indices.tolist())
    assert batch.skipped_zero_variance == 1  # only one solved index could stay out


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "spard"])
@pytest.mark.parametrize("size", [1, 7, 10])
def test_every_index_rejected_still_fills_the_batch(sampler: str, size: int) -> None:
    cur = spec((10,), sampler=sampler, batch_size=size,
               zero_variance={"threshold": 0.05, "max_redraws": 100})
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(10), np.ones((10, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == size
    assert batch.skipped_zero_variance <= 10 - size
