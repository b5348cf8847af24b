"""A label layout is a contiguous layout with its indices renamed: every sampler whose
draws run on positions in the layout's member order (all but `spard`'s per-sample tree,
kept in index order, and zero-variance skipping, whose coin hashes the index) must then
propose the renamed batches of the contiguous layout, step for step. A sampler that mixes
a member position with a dataset index somewhere diverges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from paceline_server.domain import CurriculumSpec
from paceline_server.engine import CurriculumEngine
from support import report

SIZES = (23, 37, 18)
SAMPLERS: list[Any] = [
    "uniform", "temperature", "dump_ucb", "learning_progress", "spard", "prioritized",
    {"kind": "prioritized", "params": {"allocation": "none", "is_correction": True}},
    "learnability",
    {"kind": "learnability", "params": {"allocation": "none"}},
    {"kind": "learnability", "params": {"ranking": "thompson", "level_shift": False,
                                        "revisit_drift": False}},
]


def curriculum(layout: dict[str, Any], sampler: Any) -> CurriculumSpec:
    return CurriculumSpec.from_dict({"name": "t", "layout": layout, "objectives": ["acc"],
                                     "sampler": sampler, "batch_size": 12, "seed": 1})


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: str(s))
def test_a_label_layout_proposes_the_renamed_batches(sampler: Any) -> None:
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], SIZES))
    labelled = curriculum({"names": ["a", "b", "c"], "labels": labels.tolist()}, sampler)
    contiguous = curriculum({"distributions": [{"name": n, "size": s}
                                               for n, s in zip("abc", SIZES, strict=True)]},
                            sampler)
    rename = labelled.layout.members(0, np.arange(sum(SIZES)))  # position -> index
    el, ec = CurriculumEngine(labelled), CurriculumEngine(contiguous)
    rng = np.random.default_rng(2)
    pass_rate = rng.random(sum(SIZES))
    for step in range(15):
        bl, bc = el.next_batch("r", step), ec.next_batch("r", step)
        np.testing.assert_array_equal(bl.indices, rename[bc.indices], err_msg=f"step {step}")
        if bc.loss_weights is not None:
            assert bl.loss_weights is not None
            np.testing.assert_allclose(bl.loss_weights, bc.loss_weights)
        rewards = (rng.random((12, 4)) < pass_rate[bc.indices, None]).astype(float)
        el.apply(report(labelled, bl.indices, rewards, step=step))
        ec.apply(report(contiguous, bc.indices, rewards, step=step))
