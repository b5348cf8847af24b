"""`interference`: training one distribution pulls the others back (model: ours, on
`base.GrpoLearner`).

The example trainer showed what none of the first seven learners has: a distribution
that is not trained while the others are gets worse (its `logic1` fell from 0.69 to
0.55 while the default trained the arithmetic distributions; docs/benchmarks.md). A
small model shares its capacity, so a step toward one kind of problem moves the
parameters away from another. Here the transfer matrix is 1 on the diagonal and −PULL
everywhere else: a step's gain on one distribution costs every other PULL of it.
Uniform sampling keeps the pulls balanced but spends most of the batch on the big hard
distribution; a curriculum that concentrates gains fast and lets what it neglects
slide. Five distributions shaped like the example trainer's (one small easy one, one
big hard one, a tiny one), binary rewards, G = 8, GRPO advantages (÷ std, as the
example trainer), batch 32.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner

PULL = 0.15  # what a step's gain on one distribution costs each of the others


class InterferenceLearner(GrpoLearner):
    name = "interference"
    summary = ("5 distributions, sizes 3000 to 60 (50:1), a step on one pulls every other "
               "back by 0.15 of its gain, binary, G = 8, GRPO, batch 32, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 50:1", "negative transfer: distributions interfere",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("arith", 150, -1.5, 1.0, trivial=0.3, never=0.05),
        Dist("algebra", 900, 0.5, 1.0),
        Dist("long_arith", 3_000, 2.5, 1.0, trivial=0.02, never=0.1),
        Dist("puzzles", 60, 0.0, 1.0),
        Dist("logic", 700, 0.5, 1.0),
    )
    group = 8
    batch = 32
    steps = 200
    target = 0.7
    lr = 1.0
    std_normalised = True

    def transfer_matrix(self) -> np.ndarray:
        d = len(self.dists)
        return np.asarray(np.where(np.eye(d) > 0, 1.0, -PULL))
