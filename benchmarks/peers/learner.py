"""The simulated GRPO learner of `benchmarks/simulate.py`, split into rollout and update.

`simulate.run()` does rollout, policy update and the Paceline calls in one loop, which
suits strategies that only choose the batch. A DAPO-style filter acts *between* rollout
and update (generate, drop zero-variance groups, generate again), so the peer comparison
needs the two halves separately. Everything that defines the model (world, policy,
evaluation, learning rates, constants) is imported from `simulate`; the arithmetic below
is the same as in `simulate.run()`, in the same order, so a Paceline row driven through
this class reproduces `simulate.run()` bit for bit (checked by `compare.py` and
`tests/test_peers_smoke.py`, so the two cannot drift apart silently).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simulate
from simulate import (
    DISTRIBUTIONS,
    GRPO_EPS,
    LEARNING_RATES,
    LENGTH_COST,
    LR_MEMO,
    NUM_SKILLS,
    TRANSFER,
    G,
    World,
    evaluate,
    policy_logits,
    sigmoid,
)

SIZES = np.array([d.size for d in DISTRIBUTIONS], dtype=np.int64)
OFFSETS = np.concatenate([[0], np.cumsum(SIZES)[:-1]]).astype(np.int64)
NUM_SAMPLES = int(SIZES.sum())


def distribution_of(indices: np.ndarray) -> np.ndarray:
    """Position of each global index's distribution (samples are laid out in order)."""
    return np.searchsorted(OFFSETS, indices, side="right") - 1


@dataclass(frozen=True)
class Rollouts:
    """G rollouts for each of n prompts, with what the policy update needs."""

    indices: np.ndarray  # int64 [n]
    brief: np.ndarray  # bool [n, G]
    correct: np.ndarray  # bool [n, G]
    p: np.ndarray  # float64 [n, G], probability of a correct answer
    q_brief: float  # probability of a brief answer when they were generated

    @property
    def n(self) -> int:
        return int(self.indices.size)

    @property
    def rewards(self) -> np.ndarray:
        """[n, G, 2]: (correct, brief), the simulator's objectives."""
        return np.stack([self.correct, self.brief], axis=-1).astype(np.float64)

    @property
    def constant(self) -> np.ndarray:
        """Groups whose correctness does not vary: zero variance of the primary reward
        (DAPO's `acc` filter metric), no accuracy gradient under GRPO."""
        return np.asarray(self.correct.all(axis=1) | ~self.correct.any(axis=1))

    def take(self, rows: np.ndarray) -> Rollouts:
        """The groups selected by a boolean mask or an index array."""
        return Rollouts(self.indices[rows], self.brief[rows], self.correct[rows],
                        self.p[rows], self.q_brief)

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """Groups of several generation rounds of one step (same policy, same q_brief)."""
        return Rollouts(np.concatenate([r.indices for r in parts]),
                        np.concatenate([r.brief for r in parts]),
                        np.concatenate([r.correct for r in parts]),
                        np.concatenate([r.p for r in parts]), parts[0].q_brief)


class Learner:
    """The toy policy of `simulate` and its REINFORCE step (see that module's docstring)."""

    def __init__(self, seed: int, estimator: str = "dr_grpo") -> None:
        self.estimator = estimator
        self.lr, self.lr_brevity = LEARNING_RATES[estimator]
        self.world = World.build(seed)
        self.rng = np.random.default_rng(seed)
        self.skill = np.zeros(NUM_SKILLS)
        self.brevity = simulate.BREVITY_START
        self.memo = np.zeros(self.world.difficulty.size)

    def rollout(self, indices: np.ndarray) -> Rollouts:
        """G answers per prompt: brief with probability sigmoid(b), then correct."""
        idx = np.asarray(indices, dtype=np.int64)
        n = idx.size
        q_brief = float(sigmoid(np.array(self.brevity)))
        brief = self.rng.random((n, G)) < q_brief
        logit = policy_logits(self.world, self.skill, self.memo, idx)[:, None] \
            - LENGTH_COST * brief
        p = sigmoid(logit)  # exactly 0 where the logit is -inf (unlearnable)
        correct = self.rng.random((n, G)) < p
        return Rollouts(idx, brief, correct, p, q_brief)

    def advantages(self, roll: Rollouts, weights: np.ndarray, scale: float = 1.0
                   ) -> np.ndarray:
        """Group advantages [n, G] of the scalarised reward (what the trainer reports)."""
        scalar = scale * (roll.rewards @ weights)
        advantages = scalar - scalar.mean(axis=1, keepdims=True)
        if self.estimator == "grpo":
            advantages /= scalar.std(axis=1, keepdims=True) + GRPO_EPS
        return np.asarray(advantages)

    def train(self, roll: Rollouts, weights: np.ndarray, scale: float = 1.0,
              loss_weights: np.ndarray | None = None) -> np.ndarray:
        """One policy-gradient step on `roll` (the prompt mean runs over its n groups);
        returns the advantages [n, G] used."""
        n = roll.n
        loss_w = np.ones(n) if loss_weights is None else loss_weights
        advantages = self.advantages(roll, weights, scale)
        if n == 0:
            return advantages
        grad_logit = (advantages * (roll.correct - roll.p)).mean(axis=1) * loss_w
        grad_brevity = float(((advantages * (roll.brief - roll.q_brief)).mean(axis=1)
                              * loss_w).mean())
        per_skill = np.bincount(self.world.skill_of[roll.indices], weights=grad_logit,
                                minlength=NUM_SKILLS) / n
        self.skill += self.lr * TRANSFER @ per_skill
        self.brevity += self.lr_brevity * grad_brevity
        np.add.at(self.memo, roll.indices, LR_MEMO * grad_logit)
        return advantages

    def accuracy(self) -> np.ndarray:
        """Noiseless held-out accuracy of each learnable distribution."""
        return evaluate(self.world, self.skill, self.brevity)

    def brevity_rate(self) -> float:
        return float(sigmoid(np.array(self.brevity)))
