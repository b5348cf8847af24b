"""`cold_start`: a policy that solves almost nothing at first, as a small model on
competition mathematics (model: ours, on `base.GrpoLearner`).

The other learners start with mean held-out accuracy 0.3-0.5, so most groups a sampler
draws already carry signal or are solved. Here the initial pass rate is below 0.05 on
most prompts: nine groups in ten are all wrong, the informative prompts are the rare
ones the policy sometimes solves, and a sampler has to find them, keep them while they
teach, and move to harder ones as the policy improves. The distribution-level signal
is weak at the start (every distribution looks alike: nearly all zero), so an
allocation that waits for it starts late; a per-prompt posterior can hold on to the few
prompts with a success. Neighbouring distributions share skill (0.3), so learning the
easiest opens the next. Added after the defaults were chosen, to check them on a
structure they were not chosen on. Binary rewards, G = 16 (large groups, as used for
hard problems), GRPO advantages, batch 32.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner, neighbour_transfer


class ColdStartLearner(GrpoLearner):
    name = "cold_start"
    summary = ("5 distributions, sizes 3000 to 200 (15:1), initial pass rate below 0.05 "
               "on most prompts, neighbour transfer, binary, G = 16, GRPO, batch 32, "
               "250 steps")
    structures = ("a cold start: most groups all wrong at first",
                  "difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 15:1", "skill transfer between related distributions",
                  "binary rewards", "G = 16")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("amc", 3_000, 3.0, 1.2, trivial=0.02, never=0.05),
        Dist("aime", 1_500, 4.0, 1.2, trivial=0.01, never=0.1),
        Dist("olympiad", 800, 4.5, 1.2, trivial=0.01, never=0.1),
        Dist("putnam", 400, 5.0, 1.2, trivial=0.01, never=0.15),
        Dist("imo", 200, 5.5, 1.2, trivial=0.01, never=0.2),
    )
    group = 16
    batch = 32
    steps = 250
    target = 0.4
    lr = 0.3
    std_normalised = True

    def transfer_matrix(self) -> np.ndarray:
        return neighbour_transfer(len(self.dists), 0.3)
