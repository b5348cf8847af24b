"""`forgetting`: partial-credit rewards in [0, 1] and skills that fade when a
distribution is not trained on (model: ours, on `base.GrpoLearner`).

Each answer passes m = 4 unit tests, each with the prompt's pass rate p; the reward is
the passed fraction (continuous, mean p; a group is constant when every answer passes
the same number of tests). After every step the skill of each distribution decays
toward its start by a share φ·exp(−c_d / 2) of the way, c_d the number of its prompts
in the trained batch (φ = 0.03): a distribution left out for a while forgets what it
learned. Sizes 3000 to 100 (30:1). G = 16, Dr.GRPO advantages.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, Groups, GrpoLearner

TESTS = 4
FORGET = 0.02


class ForgettingLearner(GrpoLearner):
    name = "forgetting"
    summary = ("6 distributions, sizes 3000 to 100 (30:1), skills fade when not "
               "trained, partial-credit reward (4 tests), G = 16, batch 32, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 30:1", "forgetting of skills not visited",
                  "continuous rewards", "G = 16")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("python_basic", 3_000, -1.5, 1.0, trivial=0.3, never=0.05),
        Dist("python_algo", 1_500, 1.0, 1.0),
        Dist("sql", 800, 0.5, 1.0),
        Dist("rust", 400, 2.0, 1.0),
        Dist("cuda", 200, 2.5, 1.0),
        Dist("haskell", 100, 2.5, 1.0, never=0.2),
    )
    group = 16
    batch = 32
    steps = 200
    target = 0.65
    lr = 4.0
    binary = False

    def draw_outcomes(self, p: np.ndarray) -> np.ndarray:
        passed = self.rng.binomial(TESTS, np.broadcast_to(p[:, None], (p.size, self.group)))
        return np.asarray(passed / TESTS, dtype=np.float64)

    def after_step(self, trained: Groups) -> None:
        counts = np.bincount(self.dist_of[trained.indices], minlength=self.num_distributions)
        share = FORGET * np.exp(-counts / 2.0)
        self.skill -= share * (self.skill - self.initial_skill)
