"""Shared strategy kernels, and the rule that samplers and weightings do not import each
other (they share `base` and `kernels` instead)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from paceline_server.domain import InvalidParams
from paceline_server.strategies import kernels, registry
from paceline_server.strategies.kernels import preference_vector, softmax

STRATEGIES = Path(kernels.__file__).parent
#: Samplers built out of others are the sanctioned exceptions: learnability and
#: prioritized let dump_ucb or learning progress allocate across distributions (built in
#: strategies/allocation.py, whose states they hold); neither imports the other.
COMPOSITES = {"learnability": {"dump_ucb", "learning_progress"},
              "prioritized": {"dump_ucb", "learning_progress"}}


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


def strategy_modules() -> set[str]:
    paths = [*registry._BUILTIN_SAMPLERS.values(), *registry._BUILTIN_WEIGHTINGS.values()]
    return {path.partition(":")[0].rpartition(".")[2] for path in paths}


def test_samplers_and_weightings_do_not_import_each_other() -> None:
    modules = strategy_modules()
    assert {"uniform", "fixed", "dump_ucb", "hypervolume"} <= modules
    for module in sorted(modules):
        tree = ast.parse((STRATEGIES / f"{module}.py").read_text())
        imported = {node.module.rpartition(".")[2] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("paceline_server.strategies.")}
        siblings = (imported & modules) - COMPOSITES.get(module, set())
        assert not siblings, f"{module} imports the strategies {sorted(siblings)}"
