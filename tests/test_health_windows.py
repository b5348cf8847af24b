"""The health windows' means: one mask for several rings must give what a plain mean over
each distribution's filled entries gives (the history stores these numbers per report)."""

from __future__ import annotations

import numpy as np

from paceline_server.engine.health import (
    WINDOW,
    HealthState,
    flag_arrays,
    init_health,
    update_health,
    window_mean,
    window_means,
)


def _filled_state(reports: int, seed: int = 0) -> HealthState:
    rng = np.random.default_rng(seed)
    state = init_health(3)
    for _ in range(reports):
        distribution = rng.integers(0, 2, size=8)  # distribution 2 is never reported
        update_health(state, distribution, rng.random(8), rng.random(8) < 0.3,
                      rng.random(8), np.full(8, 4.0))
    return state


def test_means_over_the_filled_entries_and_nan_where_empty() -> None:
    for reports in (1, 7, WINDOW + 13):
        state = _filled_state(reports)
        rings = (state.success, state.abs_advantage, state.zero_variance)
        got = window_means(state, *rings)
        for ring, mean in zip(rings, got, strict=True):
            for d in range(2):
                n = int(state.filled[d])
                assert 0 < n <= WINDOW
                assert np.isclose(mean[d], np.mean(ring[d, :n]))
            assert np.isnan(mean[2])
            np.testing.assert_array_equal(mean, window_mean(state, ring))


def test_ring_entries_past_the_filled_ones_are_not_counted() -> None:
    state = _filled_state(3)
    state.success[:, 10:] = 1e6  # garbage beyond the filled entries must not leak in
    assert np.all(window_means(state, state.success)[0][:2] < 1.0)


def test_flags_take_a_given_success_or_compute_it() -> None:
    state = _filled_state(WINDOW + 5, seed=3)
    success = window_mean(state, state.success)
    for given, computed in zip(flag_arrays(state, success), flag_arrays(state), strict=True):
        np.testing.assert_array_equal(given, computed)
