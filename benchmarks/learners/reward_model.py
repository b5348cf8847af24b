"""`reward_model`: the trainer's reward is a learned reward model's score, continuous and
noisy, so no group's rewards ever agree (model: ours, on `base.GrpoLearner`).

Every other learner's rewards take a few values (0/1, flipped 0/1, four tests' partial
credit), so groups whose rewards all agree are common and DAPO's filter, zero-variance
skipping and a pass-rate posterior all read them. Trainers that score answers with a
reward model see instead a score in [0, 1] that separates right from wrong answers
imperfectly: here r = sigmoid(SEPARATION · (y − 1/2) + N(0, NOISE²)) for an answer of
correctness y, so a right answer scores about 0.5–0.97 and a wrong one 0.03–0.5, and a
group of eight wrong answers still has a spread of rewards. Its advantages are mostly
noise (the policy step still credits the true outcome through the score y − p, as
everywhere in the suite), DAPO's filter drops nothing, and what a sampler can estimate
is a prompt's mean score, not its pass rate. Held-out accuracy is the true pass rate.
Added after the defaults were chosen, to check them on a structure they were not chosen
on. Six distributions, sizes 4000 to 150 (27:1), neighbour transfer, G = 8, GRPO
advantages (the group's std is never zero here), batch 64.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner, neighbour_transfer, sigmoid

SEPARATION = 4.0  # logit gap between a right and a wrong answer's score
NOISE = 1.0  # the reward model's noise on that logit


class RewardModelLearner(GrpoLearner):
    name = "reward_model"
    summary = ("6 distributions, sizes 4000 to 150 (27:1), rewards a noisy reward "
               "model's scores in [0, 1] (no group all-equal), neighbour transfer, "
               "G = 8, GRPO, batch 64, 200 steps")
    structures = ("continuous reward-model scores: no group has all-equal rewards",
                  "reward noise", "sizes imbalanced 27:1",
                  "skill transfer between related distributions",
                  "difficulty spread with trivial and never-solvable prompts", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("chat", 4_000, -1.5, 1.0, trivial=0.25, never=0.02),
        Dist("summaries", 2_000, 0.0, 1.2),
        Dist("code_review", 1_000, 1.0, 1.2),
        Dist("proofs", 500, 2.0, 1.0),
        Dist("puzzles", 300, 2.5, 1.0, never=0.15),
        Dist("research", 150, 3.0, 1.0, trivial=0.02, never=0.2),
    )
    group = 8
    batch = 64
    steps = 200
    target = 0.8
    lr = 1.5
    std_normalised = True
    binary = False

    def observe(self, outcomes: np.ndarray) -> np.ndarray:
        noise = self.rng.normal(0.0, NOISE, outcomes.shape)
        return sigmoid(SEPARATION * (outcomes - 0.5) + noise)

    def transfer_matrix(self) -> np.ndarray:
        return neighbour_transfer(len(self.dists), 0.3)
