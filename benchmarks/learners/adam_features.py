"""`adam_features`: a parametric policy over prompt features, trained with Adam (model:
ours, on `base.GrpoLearner`).

Every other simulated learner moves its policy by plain gradient steps averaged over
the trained prompts, so a batch full of all-equal groups takes a small step and a batch
of informative ones a large step: part of what a curriculum gains there is step size.
A language model is trained with Adam, which divides each coordinate's step by the
running root mean square of its gradients, so a batch's step is about as long whatever
share of its groups carried signal; what a curriculum can still change is the step's
direction (which prompts it follows) and its noise (how many informative groups it
averages). Here the policy is a weight vector θ in R^K; prompt x has a unit feature
vector φ_x drawn around its distribution's centre and a difficulty δ_x, and its
correctness logit is SCALE · φ_x·θ − δ_x. The centres of neighbouring distributions
overlap and the first and last point partly apart, so transfer and interference come
from the geometry of the features, not from a matrix chosen by hand; a step follows the
trained prompts' features, θ ← Adam(θ, SCALE · Σ_x g_x φ_x / n). Held-out prompts are
drawn like the training ones. Binary rewards, G = 8, GRPO advantages (divided by the
group std), six distributions 4 800 ... 150 (32:1), batch 64.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import EVAL_SIZE, Dist, Groups, VectorPromptLearner

FEATURES = 16
SCALE = 2.0  # a unit of θ along a prompt's features moves its logit by 2
SPREAD = 0.5  # how far a prompt's features stray from its distribution's centre
BETAS = (0.9, 0.999)  # Adam's moment decays, as most RL post-training recipes use
ADAM_EPS = 1e-8
#: How much each distribution's centre shares with the one before it (cosine ≈ this):
#: a chain of related distributions, the last one turned partly against the first.
CHAIN = 0.5
AGAINST_FIRST = -0.3
INITIAL_ALONG_FIRST = 0.8  # θ at the start: some skill on the first distribution only


class AdamFeaturesLearner(VectorPromptLearner):
    name = "adam_features"
    summary = ("6 distributions, sizes 4800 to 150 (32:1), a linear policy over prompt "
               "features trained with Adam (step length independent of the batch's "
               "signal), transfer and interference from overlapping features, binary, "
               "G = 8, GRPO, batch 64, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 32:1",
                  "an optimiser that normalises the step (Adam)",
                  "transfer and interference through shared features",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("arithmetic", 4_800, -0.5, 1.0, trivial=0.2),
        Dist("algebra", 2_400, 0.5, 1.0),
        Dist("geometry", 1_200, 1.0, 1.0),
        Dist("combinatorics", 600, 1.5, 1.0),
        Dist("number_theory", 300, 1.5, 1.0, never=0.15),
        Dist("olympiad", 150, 2.0, 1.0, trivial=0.02, never=0.2),
    )
    group = 8
    batch = 64
    steps = 200
    target = 0.7
    lr = 0.01
    std_normalised = True
    scale = SCALE

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        rng = np.random.default_rng([20_261_205, seed])
        self.centres = _chain_centres(rng, len(self.dists))
        self.vectors = self._draw_features(rng, self.dist_of)  # features φ_x
        self.eval_vectors = self._draw_features(rng, self.eval_dist.reshape(-1)).reshape(
            len(self.dists), EVAL_SIZE, FEATURES)
        self.theta = INITIAL_ALONG_FIRST * self.centres[0]
        self.moment = np.zeros(FEATURES)
        self.second = np.zeros(FEATURES)
        self.updates = 0

    def _draw_features(self, rng: np.random.Generator, dist: np.ndarray) -> np.ndarray:
        noise = rng.normal(0.0, SPREAD / np.sqrt(FEATURES), (dist.size, FEATURES))
        return _unit_rows(self.centres[dist] + noise)

    def policy_step(self, groups: Groups, g: np.ndarray) -> None:
        """One Adam step (ascent) on the batch's mean policy gradient with respect to θ."""
        gradient = self.scale * (g @ self.vectors[groups.indices]) / groups.n
        self.updates += 1
        beta1, beta2 = BETAS
        self.moment = beta1 * self.moment + (1 - beta1) * gradient
        self.second = beta2 * self.second + (1 - beta2) * gradient ** 2
        moment = self.moment / (1 - beta1 ** self.updates)
        second = self.second / (1 - beta2 ** self.updates)
        self.theta = self.theta + self.lr * moment / (np.sqrt(second) + ADAM_EPS)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))


def _chain_centres(rng: np.random.Generator, count: int) -> np.ndarray:
    """Unit centres c_0 ... c_{D-1}: c_k shares about CHAIN (cosine) with c_{k-1}, and the
    last is pulled toward −c_0 so that learning one end of the chain costs the other."""
    basis = np.linalg.qr(rng.normal(size=(FEATURES, FEATURES)))[0][:count]
    centres = [basis[0]]
    for k in range(1, count):
        fresh = np.sqrt(1 - CHAIN ** 2) * basis[k]
        centres.append(_unit_rows(CHAIN * centres[-1] + fresh))
    centres[-1] = _unit_rows(centres[-1] + AGAINST_FIRST * 2 * centres[0])
    return np.stack(centres)
