"""`prerequisite`: a chain of skills where one distribution is learnable only after
another is learned, with noisy rewards (model: ours, on `base.GrpoLearner`).

`algebra` transfers half of its gradient to `word_problems` and back. `proofs` needs
`algebra` first: its logit carries a penalty H·(1 − gate), gate = sigmoid(6·(S_algebra −
2.5)), so while algebra is weak every `proofs` group is all-wrong (no gradient) and once
it is learned `proofs` behaves like any distribution. `modelling` needs
`word_problems` the same way. The verifier is noisy: each reward is flipped with
probability 0.1 (the outcome the policy produced, which drives its score, is not), so
rewards of hopeless prompts are not always constant either.
Binary rewards, G = 4, GRPO advantages (divided by the group std).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner, sigmoid

FLIP = 0.1
PENALTY = 8.0
#: distribution -> its prerequisite and the prerequisite's skill at which the gate is half open
PREREQUISITES = {3: (1, 2.5), 4: (2, 2.5)}


class PrerequisiteLearner(GrpoLearner):
    name = "prerequisite"
    summary = ("5 distributions, two learnable only after a prerequisite, rewards "
               "flipped with p = 0.1, binary, G = 4, GRPO, batch 64, 250 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "a distribution learnable only after another is learned",
                  "skill transfer between related distributions", "reward noise",
                  "binary rewards", "G = 4")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("arith", 3_000, -1.5, 1.0, trivial=0.25, never=0.05),
        Dist("algebra", 2_000, 1.0, 1.0),
        Dist("word_problems", 1_500, 1.5, 1.0),
        Dist("proofs", 800, 1.0, 1.0),
        Dist("modelling", 400, 1.0, 1.0),
    )
    group = 4
    batch = 64
    steps = 250
    target = 0.7
    lr = 0.35
    std_normalised = True

    def transfer_matrix(self) -> np.ndarray:
        t = np.eye(len(self.dists))
        t[1, 2] = t[2, 1] = 0.5
        t[0, 1] = t[1, 0] = 0.2
        return t

    def logits(self, dist: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
        penalty = np.zeros(len(self.dists))
        for d, (prerequisite, level) in PREREQUISITES.items():
            gate = float(sigmoid(np.array(6.0 * (self.skill[prerequisite] - level))))
            penalty[d] = PENALTY * (1.0 - gate)
        return np.asarray(self.skill[dist] - difficulty - penalty[dist])

    def observe(self, outcomes: np.ndarray) -> np.ndarray:
        flip = self.rng.random(outcomes.shape) < FLIP
        return np.where(flip, 1.0 - outcomes, outcomes)
