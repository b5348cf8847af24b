"""`latent_skills`: the policy has several skills and every prompt needs its own mix of
them, so prompts of one distribution move at different speeds (model: ours, on
`base.GrpoLearner`).

The other learners give each distribution one skill S_d: whatever is learned moves every
prompt of a distribution alike, so a prompt keeps its rank inside its distribution (up to
`memorization`'s own memory). Real skills are shared and mixed: a geometry problem needs
some algebra, an algebra problem some arithmetic. Here the policy has a skill vector
θ (K = SKILLS entries) and prompt x a loading vector w_x ≥ 0 summing to 1, drawn around its
distribution's mix (Dirichlet, concentration CONCENTRATION); its correctness logit is
SCALE · w_x·θ − δ_x. A policy step moves θ along the loadings of the trained prompts,
θ += lr · Σ_x g_x w_x / n, so transfer between distributions is not a matrix chosen by
hand but follows from the skills they share, and inside a distribution a prompt leaning
on a skill still being learned climbs faster than its neighbours: ranks inside a
distribution change as the policy learns (what `learnability`'s level shift cannot read
from the distribution's level alone). The distributions' labels are the only structure a
curriculum sees. Binary rewards, G = 5 (a group size none of the others has), Dr.GRPO
advantages, batch 96.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import EVAL_SIZE, Dist, Groups, VectorPromptLearner

SKILLS = 5
SCALE = 2.0  # a skill of 1 moves the logit of a prompt that needs only it by 2
CONCENTRATION = 4.0  # Dirichlet concentration of a prompt's mix around its distribution's
#: the policy's skills at the start: the first well known, the last barely
INITIAL_SKILLS = (1.5, 0.25, -0.5, -1.0, -1.5)
#: each distribution's mix of skills (rows sum to 1): a chain, each leaning on the one
#: before, and the smallest mixing the two hardest
MIXES = (
    (0.85, 0.15, 0.0, 0.0, 0.0),
    (0.35, 0.55, 0.10, 0.0, 0.0),
    (0.05, 0.35, 0.55, 0.05, 0.0),
    (0.0, 0.10, 0.30, 0.60, 0.0),
    (0.0, 0.0, 0.10, 0.30, 0.60),
    (0.0, 0.0, 0.0, 0.50, 0.50),
)


class LatentSkillsLearner(VectorPromptLearner):
    name = "latent_skills"
    summary = ("6 distributions, sizes 6000 to 180 (33:1), 5 shared skills mixed per "
               "prompt (ranks inside a distribution change), binary, G = 5, batch 96, "
               "200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 33:1", "skill transfer through shared skills",
                  "ranks inside a distribution change as the policy learns",
                  "binary rewards", "G = 5")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("counting", 6_000, -1.0, 1.0, trivial=0.25, never=0.02),
        Dist("algebra", 3_000, 0.0, 1.0),
        Dist("functions", 1_500, 0.5, 1.0),
        Dist("calculus", 700, 0.5, 1.0),
        Dist("analysis", 350, 0.5, 1.0),
        Dist("proofs", 180, 0.5, 1.0, trivial=0.02, never=0.15),
    )
    group = 5
    batch = 96
    steps = 200
    target = 0.7
    lr = 0.5
    scale = SCALE

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        rng = np.random.default_rng([20_261_204, seed])
        mixes = np.asarray(MIXES, dtype=np.float64)
        self.vectors = self._draw_loadings(rng, mixes, self.dist_of)  # loadings w_x
        self.eval_vectors = self._draw_loadings(rng, mixes, self.eval_dist.reshape(-1)
                                                ).reshape(len(self.dists), EVAL_SIZE, SKILLS)
        self.theta = np.asarray(INITIAL_SKILLS, dtype=np.float64)

    @staticmethod
    def _draw_loadings(rng: np.random.Generator, mixes: np.ndarray,
                       dist: np.ndarray) -> np.ndarray:
        """A Dirichlet draw per prompt around its distribution's mix (skills the mix does
        not use get a small share, so no prompt is entirely cut off from them)."""
        alpha = CONCENTRATION * mixes[dist] + 0.05
        return _dirichlet_rows(rng, alpha)

    def policy_step(self, groups: Groups, g: np.ndarray) -> None:
        """θ moves along the trained prompts' loadings (d logit / d θ = SCALE · w)."""
        self.theta += self.lr * self.scale * (g @ self.vectors[groups.indices]) / groups.n


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet draw per row of `alpha` (numpy's `dirichlet` takes one alpha)."""
    gamma = rng.standard_gamma(alpha)
    return np.asarray(gamma / gamma.sum(axis=1, keepdims=True))
