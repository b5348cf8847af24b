"""`many_sources`: forty small task sources in five families, as in a mixture of many
task generators or benchmarks (model: ours, on `base.GrpoLearner`).

Every other learner has at most eight distributions, so a distribution-level allocation
sees each of them many times a step. Real RL mixtures often have dozens of sources
(task generators, benchmarks, languages), most of them small: here sizes fall as a Zipf
law from 6 000 to 72 prompts (83:1), and a source's difficulty does not follow its
size (drawn once for the class, the same for every seed). Sources come in five families
of eight (a family shares a skill at 0.25: training one source of a family helps its
siblings), so the policy must learn forty skills where a batch of 64 prompts gives each
source fewer than two prompts a step on average: an allocation that explores every
source before exploiting pays forty arms' worth of exploration. Added after the
defaults were chosen, to check them on a structure they were not chosen on.
Binary rewards, G = 8, Dr.GRPO advantages, batch 64.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Dist, GrpoLearner

SOURCES = 40
FAMILIES = 5
SIBLING_TRANSFER = 0.25


def _sources() -> tuple[Dist, ...]:
    """Zipf sizes, and difficulties drawn once (not per seed): the benchmark's fixed
    mixture."""
    rng = np.random.default_rng(40_005)
    means = rng.uniform(-1.5, 3.0, SOURCES)
    spreads = rng.uniform(0.6, 1.4, SOURCES)
    return tuple(
        Dist(f"source_{k:02d}", round(6_000 / (k + 1) ** 1.2), float(means[k]),
             float(spreads[k]))
        for k in range(SOURCES))


class ManySourcesLearner(GrpoLearner):
    name = "many_sources"
    summary = ("40 sources in 5 families, Zipf sizes 6000 to 72 (83:1), difficulty "
               "independent of size, sibling transfer, binary, G = 8, batch 64, "
               "250 steps")
    structures = ("many small distributions (40, fewer than two prompts each per step)",
                  "sizes imbalanced 85:1", "skill transfer inside families",
                  "difficulty spread with trivial and never-solvable prompts",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = _sources()
    group = 8
    batch = 64
    steps = 250
    target = 0.7
    lr = 2.0

    def transfer_matrix(self) -> np.ndarray:
        family = np.arange(SOURCES) % FAMILIES
        same = family[:, None] == family[None, :]
        return np.asarray(np.where(np.eye(SOURCES, dtype=bool), 1.0,
                                   np.where(same, SIBLING_TRANSFER, 0.0)))
