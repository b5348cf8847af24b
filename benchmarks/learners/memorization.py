"""`memorization`: a trained prompt gets easier on its own, faster than its
distribution (model: ours, on `base.GrpoLearner`).

The other learners share one assumption: a prompt keeps its difficulty relative to its
distribution's skill, so what is learned about it stays true up to the distribution's
level. A language model also memorises the prompts it is trained on. Here each prompt
has a memory M_x (0 at the start) in its logit, S_d − δ_x + M_x; every policy step moves
the memory of each trained prompt by MEMORY · lr · g_x (its own gradient, not shared
over the batch) beside the usual distribution step, so a prompt trained twice is easier
than its distribution says, while held-out prompts (M = 0) gain only through S_d.
Difficulty inside every distribution is bimodal (half the prompts GAP below the
distribution's centre, half GAP above, each with a small spread), not one bell.
Binary rewards, G = 8, GRPO advantages (divided by the group std), no transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Dist, Groups, GrpoLearner, sigmoid

MEMORY = 1.0  # a trained prompt's own logit step, relative to the learning rate
GAP = 1.5  # half the distance between the two modes of difficulty


@dataclass(frozen=True)
class BimodalDist(Dist):
    """Difficulty mean ± GAP (either mode with probability 1/2) plus N(0, spread)."""

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = super().draw(rng, n)
        mode = np.where(rng.random(n) < 0.5, -GAP, GAP)
        return np.asarray(values + mode)  # ±inf (trivial, never solvable) stay as they are


class PromptMemoryLearner(GrpoLearner):
    """A learner whose prompts carry their own memory M_x in the logit (0 at the start):
    what a step teaches one prompt and not its distribution. Held-out prompts have none."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.memory = np.zeros(self.num_samples, dtype=np.float64)

    def pass_rate(self, indices: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.num_samples) if indices is None else np.asarray(indices)
        logit = self.logits(self.dist_of[idx], self.difficulty[idx]) + self.memory[idx]
        return sigmoid(logit)


class MemorizationLearner(PromptMemoryLearner):
    name = "memorization"
    summary = ("5 distributions, sizes 4000 to 250 (16:1), trained prompts memorised "
               "(easier than their distribution), bimodal difficulty, binary, G = 8, "
               "GRPO, batch 64, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "a trained prompt gets easier than its distribution (memorisation)",
                  "bimodal difficulty inside a distribution", "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        BimodalDist("easy", 4_000, -1.0, 0.5),
        BimodalDist("medium", 2_000, 0.5, 0.5),
        BimodalDist("hard", 1_000, 1.5, 0.5),
        BimodalDist("harder", 500, 2.5, 0.5),
        BimodalDist("hardest", 250, 3.0, 0.5),
    )
    group = 8
    batch = 64
    steps = 200
    target = 0.75
    lr = 1.5
    std_normalised = True

    def after_step(self, trained: Groups) -> None:
        if trained.n:
            np.add.at(self.memory, trained.indices,
                      MEMORY * self.lr * self.prompt_gradients(trained))
