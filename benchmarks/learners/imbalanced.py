"""`imbalanced`: six distributions whose sizes differ 60:1, with skill transfer between
neighbours (model: ours, on `base.GrpoLearner`).

The big distributions are the easy ones, as in real mixes (lots of grade-school data,
little olympiad data): uniform sampling spends most of the batch where the policy is
already good. Each distribution's skill also moves the neighbouring ones (a gradient on
`algebra` helps `precalc` at 0.35 and `arith` at 0.35; one further away at 0.1), so a
curriculum can reach a small distribution through a big one and the reverse.
Binary rewards, G = 8, Dr.GRPO advantages.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner, neighbour_transfer


class ImbalancedLearner(GrpoLearner):
    name = "imbalanced"
    summary = ("6 distributions, sizes 9000 to 150 (60:1), neighbour transfer, "
               "binary reward, G = 8, batch 64, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 60:1", "skill transfer between related distributions",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("arith", 9_000, -2.0, 1.0, trivial=0.3, never=0.02),
        Dist("algebra", 3_000, 0.5, 1.2),
        Dist("precalc", 1_200, 2.0, 1.2),
        Dist("geometry", 600, 2.5, 1.0),
        Dist("number_theory", 300, 3.0, 1.0),
        Dist("olympiad", 150, 3.5, 1.0, trivial=0.02, never=0.2),
    )
    group = 8
    batch = 64
    steps = 200
    target = 0.7
    lr = 1.5

    def transfer_matrix(self) -> np.ndarray:
        return neighbour_transfer(len(self.dists), 0.35, 0.1)
