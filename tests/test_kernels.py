"""Shared strategy kernels (the rule that samplers and weightings do not import each other
is tests/test_strategy_imports.py)."""

from __future__ import annotations

import numpy as np
import pytest

from paceline_server.domain import InvalidParams
from paceline_server.strategies.kernels import preference_vector, softmax


def test_softmax_sums_to_one_and_follows_the_temperature() -> None:
    scores = np.array([0.0, 1.0, 2.0])
    p = softmax(scores)
    np.testing.assert_allclose(p, np.exp(scores) / np.exp(scores).sum())
    assert softmax(scores, 0.1)[2] > p[2] > softmax(scores, 10.0)[2]
    np.testing.assert_array_equal(softmax(scores + 1e6), p)  # shift-invariant, no overflow
    assert softmax(np.array([1e300, 0.0])).tolist() == [1.0, 0.0]


def test_preference_vector() -> None:
    assert preference_vector(None, 4, "w").tolist() == [0.25] * 4
    np.testing.assert_allclose(preference_vector((1.0, 3.0), 2, "w"), [0.25, 0.75])
    with pytest.raises(InvalidParams, match="one entry per objective"):
        preference_vector((1.0,), 2, "w")
    with pytest.raises(InvalidParams, match="finite"):
        preference_vector((1e308, 1e308), 2, "w")

