"""What every learner of the suite shares: prompts with a fixed difficulty, distribution
skills, rollouts, GRPO advantages and the policy-gradient step (model: ours).

A prompt x of distribution d has a latent difficulty δ_x drawn from N(mean_d, spread_d);
a share of each distribution is *trivially solved* (δ = −∞, pass rate 1 whatever the
policy) and a share is *never solvable* (δ = +∞, pass rate 0: wrong reference answers).
The policy's correctness logit on x is `logit(x)` (by default S_d − δ_x, S the skill
vector); its true pass rate p_x = sigmoid(logit) is what the oracle sees and nobody else.

Rollouts: each of the G answers has an *outcome* y in [0, 1] (1/0 correctness, or a
partial-credit fraction) drawn from p_x; the trainer sees a *reward* r (y itself, or y
with noise). GRPO advantages A = r − mean(r) (Dr.GRPO) or that over the group std (GRPO).
The policy step is REINFORCE on the logit with the exact score (y − p), so a group whose
rewards are all equal has A = 0 and teaches nothing, and the expected signal of a group
grows with p(1 − p):

    g_x = mean_j A_j (y_j − p_x)                 (per prompt)
    S  += lr · TRANSFER @ (Σ_x g_x by distribution) / n_trained

Evaluation (noiseless): per distribution, the mean true pass rate over held-out prompts
drawn like its training prompts (same trivial / never-solvable shares); the target is
on the mean over distributions, each counting once whatever its size.

A learner module subclasses `GrpoLearner` and changes what makes it different (sizes,
transfer, prerequisites, forgetting, rewards); the runner in `benchmarks/suite.py` knows
nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

EVAL_SIZE = 256  # held-out prompts per distribution
STD_EPS = 1e-6


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-x)))


def neighbour_transfer(count: int, *by_distance: float) -> np.ndarray:
    """A transfer matrix for distributions in a chain of related ones: 1 on the diagonal
    and `by_distance[k - 1]` between two distributions k apart (0 beyond)."""
    distance = np.abs(np.arange(count)[:, None] - np.arange(count)[None, :])
    transfer = np.eye(count)
    for k, weight in enumerate(by_distance, start=1):
        transfer[distance == k] = weight
    return transfer


@dataclass(frozen=True)
class Dist:
    """One source of prompts: size, difficulty N(mean, spread) and the shares that are
    trivially solved (δ = −∞) and never solvable (δ = +∞)."""

    name: str
    size: int
    mean: float
    spread: float
    trivial: float = 0.1
    never: float = 0.1

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = rng.normal(self.mean, self.spread, n)
        u = rng.random(n)
        values[u < self.trivial] = -np.inf
        values[(u >= self.trivial) & (u < self.trivial + self.never)] = np.inf
        return values


@dataclass(frozen=True)
class Groups:
    """G rollouts for each of n prompts: indices [n], outcomes y and rewards r [n, G],
    true pass rates p [n] when they were generated."""

    indices: np.ndarray
    outcomes: np.ndarray
    rewards: np.ndarray
    p: np.ndarray

    @property
    def n(self) -> int:
        return int(self.indices.size)

    @property
    def constant(self) -> np.ndarray:
        """Groups whose rewards are all equal: zero advantage, no gradient (what DAPO's
        filter drops)."""
        return np.asarray(self.rewards.max(axis=1) == self.rewards.min(axis=1))

    def take(self, rows: np.ndarray) -> Groups:
        return Groups(self.indices[rows], self.outcomes[rows], self.rewards[rows],
                      self.p[rows])

    @staticmethod
    def concat(parts: list[Groups]) -> Groups:
        return Groups(*(np.concatenate([getattr(g, f) for g in parts])
                        for f in ("indices", "outcomes", "rewards", "p")))


class GrpoLearner:
    """A simulated GRPO learner; subclasses set the class attributes and override the
    hooks (`logits`, `draw_outcomes`, `observe`, `policy_step`, `after_step`)."""

    name: ClassVar[str] = "base"
    summary: ClassVar[str] = ""  # one line for the docs
    structures: ClassVar[tuple[str, ...]] = ()  # the suite's structures this one carries
    dists: ClassVar[tuple[Dist, ...]] = ()
    group: ClassVar[int] = 8
    batch: ClassVar[int] = 64
    steps: ClassVar[int] = 200
    target: ClassVar[float] = 0.7
    lr: ClassVar[float] = 1.0
    std_normalised: ClassVar[bool] = False  # GRPO (True) or Dr.GRPO (False) advantages
    initial_skill: ClassVar[float] = 0.0
    binary: ClassVar[bool] = True

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([20_261_203, seed])
        self.sizes = np.array([d.size for d in self.dists], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.num_samples = int(self.sizes.sum())
        self.dist_of = np.repeat(np.arange(len(self.dists)), self.sizes)
        self.difficulty = np.concatenate([d.draw(rng, d.size) for d in self.dists])
        self.eval_difficulty = np.stack([d.draw(rng, EVAL_SIZE) for d in self.dists])
        self.eval_dist = np.repeat(np.arange(len(self.dists)), EVAL_SIZE).reshape(
            len(self.dists), EVAL_SIZE)
        self.skill = np.full(len(self.dists), self.initial_skill, dtype=np.float64)
        self.transfer = self.transfer_matrix()
        self.rng = np.random.default_rng([seed, 7])

    @property
    def num_distributions(self) -> int:
        return len(self.dists)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dists]

    # ------------------------------------------------------------------ the model
    def transfer_matrix(self) -> np.ndarray:
        """How a gradient on one distribution's skill moves the others (identity: none)."""
        return np.eye(len(self.dists))

    def logits(self, dist: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
        """Correctness logit of prompts of distributions `dist` with `difficulty`."""
        return np.asarray(self.skill[dist] - difficulty)

    def pass_rate(self, indices: np.ndarray | None = None) -> np.ndarray:
        """True pass rate of each index (every index when None): the oracle's view."""
        if indices is None:
            return sigmoid(self.logits(self.dist_of, self.difficulty))
        return sigmoid(self.logits(self.dist_of[indices], self.difficulty[indices]))

    def accuracy(self) -> np.ndarray:
        """Held-out accuracy of each distribution (mean true pass rate)."""
        return np.asarray(sigmoid(self.logits(self.eval_dist, self.eval_difficulty))
                          .mean(axis=1))

    def draw_outcomes(self, p: np.ndarray) -> np.ndarray:
        """[n, G] outcomes in [0, 1] of answers with pass rates p [n]: correctness."""
        return (self.rng.random((p.size, self.group)) < p[:, None]).astype(np.float64)

    def observe(self, outcomes: np.ndarray) -> np.ndarray:
        """The reward the trainer sees for each outcome (exact by default)."""
        return outcomes

    def after_step(self, trained: Groups) -> None:
        """Anything that happens to the policy after its update (forgetting)."""

    # ------------------------------------------------------------------ GRPO
    def rollout(self, indices: np.ndarray) -> Groups:
        idx = np.asarray(indices, dtype=np.int64)
        p = self.pass_rate(idx)
        outcomes = self.draw_outcomes(p)
        return Groups(idx, outcomes, self.observe(outcomes), p)

    def advantages(self, groups: Groups) -> np.ndarray:
        r = groups.rewards
        a = r - r.mean(axis=1, keepdims=True)
        if self.std_normalised:
            a = a / (r.std(axis=1, keepdims=True) + STD_EPS)
        return np.asarray(a)

    def prompt_gradients(self, groups: Groups) -> np.ndarray:
        """g_x = mean_j A_j (y_j − p_x) of each group: the policy-gradient signal one
        prompt gives its correctness logit."""
        a = self.advantages(groups)
        return np.asarray((a * (groups.outcomes - groups.p[:, None])).mean(axis=1))

    def train(self, groups: Groups) -> np.ndarray:
        """One policy-gradient step on `groups` (mean over its prompts); returns the
        advantages used."""
        a = self.advantages(groups)
        if groups.n:
            self.policy_step(groups, self.prompt_gradients(groups))
        self.after_step(groups)
        return a

    def policy_step(self, groups: Groups, g: np.ndarray) -> None:
        """Move the policy by the prompts' gradients `g` (mean over the trained prompts):
        each distribution's skill by its prompts' share, spread by the transfer matrix."""
        per_dist = np.bincount(self.dist_of[groups.indices], weights=g,
                               minlength=self.num_distributions) / groups.n
        self.skill += self.lr * self.transfer @ per_dist


class VectorPromptLearner(GrpoLearner):
    """A learner whose prompts each carry a vector (`vectors` [N, K] for the training
    prompts, `eval_vectors` [D, EVAL_SIZE, K] for the held-out ones) and whose policy is
    a weight vector `theta` [K], all set by the subclass: a prompt's correctness logit is
    `scale` · v·θ − δ, so what a prompt is made of, not only its distribution's label,
    decides how it moves. The subclass's `policy_step` moves θ."""

    scale: ClassVar[float] = 1.0
    vectors: np.ndarray
    eval_vectors: np.ndarray
    theta: np.ndarray

    def vector_logits(self, vectors: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
        """Correctness logit scale · v·θ − δ of prompts with `vectors` and `difficulty`."""
        return np.asarray(self.scale * (vectors @ self.theta) - difficulty)

    def pass_rate(self, indices: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.num_samples) if indices is None else np.asarray(indices)
        return sigmoid(self.vector_logits(self.vectors[idx], self.difficulty[idx]))

    def accuracy(self) -> np.ndarray:
        return np.asarray(sigmoid(self.vector_logits(self.eval_vectors, self.eval_difficulty))
                          .mean(axis=1))
