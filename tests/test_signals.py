"""Report signals and pass-rate posteriors, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from paceline_server.domain import Report
from paceline_server.strategies.posteriors import (
    PosteriorConfig,
    init_posteriors,
    occurrence_rounds,
    posterior_mean,
    update_posteriors,
)
from paceline_server.strategies.signals import ReportSignals
from support import signals, spec


def test_success_spread_and_grpo_advantages() -> None:
    cur = spec((10, 10))
    sig = signals(cur, [0, 12], np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    assert sig.success.tolist() == [0.75, 0.0]
    assert sig.distribution.tolist() == [0, 1]
    # std of (1, 0, 1, 1) = sqrt(0.75 * 0.25)
    assert sig.spread[0] == pytest.approx(np.sqrt(0.1875))
    assert sig.zero_variance.tolist() == [False, True]
    adv = sig.advantages[:4]
    expected = (np.array([1, 0, 1, 1]) - 0.75) / (np.sqrt(0.1875) + 1e-6)
    np.testing.assert_allclose(adv, expected)
    assert np.all(sig.advantages[4:] == 0.0)
    assert sig.abs_advantage[0] == pytest.approx(np.abs(expected).mean())
    assert sig.group_size.tolist() == [4, 4] and sig.group_size_typical == 4


def test_trainer_advantages_win() -> None:
    cur = spec((10,))
    sig = signals(cur, [1], np.array([[1.0, 0.0]]), advantages=np.array([[2.0, -3.0]]))
    assert sig.abs_advantage.tolist() == [2.5]


def test_minimised_objective_is_flipped_and_bounded() -> None:
    cur = spec((10,), ("len",))
    cur = cur.__class__.from_dict({**cur.to_dict(), "objectives": [
        {"name": "len", "direction": "minimize", "bounds": [0, 200]}]})
    sig = signals(cur, [0], np.array([[50.0, 250.0]]))
    np.testing.assert_allclose(sig.normalized_rewards[:, 0], [0.75, 0.0])
    assert sig.success.tolist() == [0.375]
    # what the trainer maximises: the unit reward (200 - len) / 200, not clipped
    np.testing.assert_allclose(sig.scalarized, [0.75, -0.25])
    # a minimised objective's per-objective advantage is that of -len
    np.testing.assert_allclose(sig.objective_advantages[:, 0], [1.0, -1.0])


def test_per_objective_signals() -> None:
    cur = spec((10,), ("a", "b"))
    rewards = np.array([[[1.0, 3.0], [0.0, 3.0]]])  # b constant within the group
    sig = signals(cur, [0], rewards)
    np.testing.assert_allclose(sig.group_means, [[0.5, 3.0]])
    np.testing.assert_allclose(sig.dispersion, [[0.5, 0.0]])
    np.testing.assert_allclose(sig.objective_advantages, [[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(sig.objective_means, [0.5, 3.0])
    np.testing.assert_allclose(sig.scalarized, [2.0, 1.5])


def test_ragged_groups() -> None:
    cur = spec((10,))
    rep = Report.flat(run_id="r", step=0, rollout_indices=[1, 1, 1, 2, 2],
                      rewards=[1, 1, 0, 1, 0], layout=cur.layout, num_objectives=1)
    sig = ReportSignals(rep, cur.layout, cur.objectives, 0, np.array([1.0]))
    assert sig.group_size.tolist() == [3, 2]
    np.testing.assert_allclose(sig.success, [2 / 3, 0.5])
    np.testing.assert_allclose(sig.successes, [2.0, 1.0])


def test_posterior_update_with_forgetting_by_hand() -> None:
    config = PosteriorConfig(prior_alpha=1.0, prior_beta=1.0, gamma=0.5)
    table = init_posteriors(4, config)
    update_posteriors(table, config, np.array([2]), np.array([3.0]), np.array([4]), clock=7)
    assert (table.alpha[2], table.beta[2], table.last_seen[2]) == (4.0, 2.0, 7)
    update_posteriors(table, config, np.array([2]), np.array([0.0]), np.array([4]), clock=8)
    # a = 1 + 0.5 (4 - 1) + 0 = 2.5, b = 1 + 0.5 (2 - 1) + 4 = 5.5
    assert (table.alpha[2], table.beta[2]) == (2.5, 5.5)
    assert posterior_mean(table, np.array([2, 0])).tolist() == [2.5 / 8, 0.5]
    assert table.last_seen.tolist() == [-1, -1, 8, -1]


def test_repeated_index_in_one_report_is_applied_twice() -> None:
    config = PosteriorConfig(gamma=1.0)
    table = init_posteriors(3, config)
    update_posteriors(table, config, np.array([1, 1, 0]), np.array([2.0, 1.0, 0.0]),
                      np.array([2, 2, 2]), clock=0)
    assert (table.alpha[1], table.beta[1]) == (4.0, 2.0)
    rounds = occurrence_rounds(np.array([5, 3, 5, 5]))
    assert [r.tolist() for r in rounds] == [[0, 1], [2], [3]]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_primary_rewards_are_the_normalized_column_bit_for_bit(direction: str) -> None:
    """The fold normalises only the primary objective; it must be exactly the column
    every other strategy reads from `normalized_rewards`."""
    base = spec((50, 50), ("a", "b", "c"))
    cur = base.__class__.from_dict({**base.to_dict(), "primary_objective": "b", "objectives": [
        {"name": "a"}, {"name": "b", "direction": direction, "bounds": [-3.5, 7.25]},
        {"name": "c", "bounds": [0, 10]}]})
    rng = np.random.default_rng(3)
    sig = signals(cur, rng.choice(100, 40, replace=False), rng.normal(2.0, 4.0, (40, 6, 3)))
    column = np.ascontiguousarray(sig.normalized_rewards[:, 1])
    assert sig.primary_rewards.view(np.int64).tolist() == column.view(np.int64).tolist()
    assert sig.success.tolist() == sig.group_mean(column).tolist()
