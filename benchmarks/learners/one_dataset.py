"""`one_dataset`: a single unlabelled dataset, the most common case in practice (model:
ours, on `base.GrpoLearner`).

Most RL post-training runs sample from one prompt set (a math collection scraped from
many sources) with no distribution labels. Then the layout has one distribution, every
distribution-level sampler (`dump_ucb`, `learning_progress`, `temperature`, Syllabus's
learning progress) can only sample it uniformly, and the only lever left is which prompts
inside it: what per-prompt estimates (`learnability`, `prioritized`, `spard`'s
per-index utility, zero-variance skipping) and DAPO's filter act on. 16 000 prompts,
difficulty N(2, 2) (a wide spread: the dataset mixes easy and olympiad problems), 20 %
trivially solved and 15 % never solvable; binary rewards, G = 8, Dr.GRPO advantages,
batch 128, 200 steps.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Dist, GrpoLearner


class OneDatasetLearner(GrpoLearner):
    name = "one_dataset"
    summary = ("one unlabelled dataset of 16 000 prompts (distribution-level samplers "
               "reduce to uniform), wide difficulty spread, 20 % solved and 15 % never "
               "solvable, binary, G = 8, batch 128, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "a single distribution: no labels to allocate over", "binary rewards",
                  "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("math", 16_000, 2.0, 2.0, trivial=0.2, never=0.15),
    )
    group = 8
    batch = 128
    steps = 200
    target = 0.7
    lr = 0.3
