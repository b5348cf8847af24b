"""`tight_budget`: a large pool seen at most about twice per prompt, with a bimodal
difficulty (model: ours, on `base.GrpoLearner`).

12 800 prompts in eight distributions (sizes 4800 to 150, 32:1), batch 128 for 200
steps: 25 600 prompt draws, two per prompt on average, so a per-prompt estimate has one
visit to learn from at best and any evidence must be pooled. Within every distribution
a third of the prompts are solved already and a fifth can never be solved: most of a
uniform batch is zero-variance. The skills are independent (no transfer).
Binary rewards, G = 8, Dr.GRPO advantages.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Dist, GrpoLearner


class TightBudgetLearner(GrpoLearner):
    name = "tight_budget"
    summary = ("8 distributions, 12 800 prompts (32:1), 1/3 solved and 1/5 never "
               "solvable each, ≤ ~2 visits per prompt, binary, G = 8, batch 128, 200 steps")
    structures = ("difficulty spread with trivial and never-solvable prompts",
                  "sizes imbalanced 32:1", "tight budget: each prompt seen about twice",
                  "binary rewards", "G = 8")
    dists: ClassVar[tuple[Dist, ...]] = (
        Dist("gsm", 4_800, -0.5, 1.0, trivial=0.33, never=0.2),
        Dist("math_l1", 3_000, 0.0, 1.0, trivial=0.33, never=0.2),
        Dist("math_l2", 2_000, 0.5, 1.0, trivial=0.33, never=0.2),
        Dist("math_l3", 1_200, 1.0, 1.0, trivial=0.33, never=0.2),
        Dist("math_l4", 800, 1.5, 1.0, trivial=0.33, never=0.2),
        Dist("math_l5", 500, 2.0, 1.0, trivial=0.33, never=0.2),
        Dist("aime", 350, 2.5, 1.0, trivial=0.33, never=0.2),
        Dist("imo", 150, 3.0, 1.0, trivial=0.33, never=0.2),
    )
    group = 8
    batch = 128
    steps = 200
    target = 0.65
    lr = 1.5
