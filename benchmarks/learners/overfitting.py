"""`overfitting`: a prompt trained again teaches its distribution less each time (model:
ours, on `memorization.PromptMemoryLearner`).

The example trainer showed what none of the first eight learners has: the default,
which revisits the prompts its posterior finds informative (59–92 % of its picks were
revisits, one prompt trained 33 times in 80 steps), ended below `dump_ucb` sampling the
same distributions uniformly (docs/benchmarks.md, "example trainer"). A small model
that sees a problem again learns that problem's answer more than the skill behind it.
Here the k-th step on a prompt (k = 0 the first) sends 1 / (1 + k / HALF) of its
gradient to its distribution's skill, what held-out prompts gain from, and the rest to
the prompt's own memory (its logit alone, as in `memorization`): a revisited prompt gets
easier and its group still carries signal, while its distribution gains less. Four
distributions, sizes 1 600 to 50 (32:1), binary rewards, G = 8, GRPO advantages (÷ std),
batch 32, no transfer.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, Groups
from .memorization import PromptMemoryLearner

HALF = 1.0  # visits after which a prompt sends half of its gradient to the skill


class OverfittingLearner(PromptMemoryLearner):
    name = "overfitting"
    summary = ("4 distributions, sizes 1600 to 50 (32:1), a prompt's k-th step gives its "
               "distribution 1/(1 + k) of its gradient and the rest to memorising it, "
               "binary, G = 8, GRPO, batch 32, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 32:1",
                  "revisits teach the distribution less (a prompt is memorised)",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("word_problems", 1_600, 1.5, 1.2, trivial=0.05),
        Dist("arith", 400, -0.5, 1.0, trivial=0.2, never=0.05),
        Dist("geometry", 200, 1.0, 1.0),
        Dist("olympiad", 50, 2.5, 1.0, trivial=0.05, never=0.2),
    )
    group = 8
    batch = 32
    steps = 200
    target = 0.7
    lr = 1.5
    std_normalised = True
    #: Visits after which a prompt sends half of its gradient to the skill (the random
    #: family draws its own).
    half: ClassVar[float] = HALF

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.visits = np.zeros(self.num_samples, dtype=np.float64)  # steps per prompt

    def transferred(self, indices: np.ndarray) -> np.ndarray:
        """Share of each trained prompt's gradient its distribution gets this step."""
        return np.asarray(1.0 / (1.0 + self.visits[indices] / self.half))

    def policy_step(self, groups: Groups, g: np.ndarray) -> None:
        share = self.transferred(groups.indices)
        super().policy_step(groups, g * share)
        np.add.at(self.memory, groups.indices, self.lr * g * (1.0 - share))
        np.add.at(self.visits, groups.indices, 1.0)
