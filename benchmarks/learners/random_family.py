"""A family of random learners on `base.GrpoLearner` (the memorising ones on
`overfitting`'s; model: ours): learner k is drawn from a seeded generator, so the family
is as large as one asks and the same on every machine.

Why: the thirteen named learners were each built for one structure, and the defaults
were chosen on them; a learner drawn at random was tuned for by nobody. Each draw mixes
the structures the suite names, in random amounts:

- 2 to 8 distributions, sizes log-uniform in [40, 8 000] with one of them 3 000-10 000
  (imbalance up to 250:1);
- per distribution a difficulty N(mean, spread), mean in [-1.5, 3], spread in
  [0.4, 2.5], 0-30 % trivially solved and 0-20 % never-solvable prompts;
- transfer: none, between neighbours (t in [0.1, 0.5] one apart, t / 3 two apart), or
  interference (a step on one costs every other [0.03, 0.15] of its gain), one third
  each;
- a starting skill in [-1.5, 0.5] (below 0: a cold start, most groups all wrong);
- half the learners flip each reward with a probability in [0, 0.1] (reward noise);
- half of them memorise (as `overfitting`): the k-th step on a prompt sends
  1 / (1 + k / h) of its gradient to its distribution's skill and the rest to that
  prompt alone, h in [0.5, 4] (a language model that sees a problem again learns its
  answer more than the skill behind it); the others give revisits for free;
- G in {4, 8, 16}, batch in {32, 64, 128}, learning rate log-uniform in [0.3, 2],
  GRPO or Dr.GRPO advantages, 200 steps.

The target is set from uniform sampling and the oracle only, as for the named learners
(`benchmarks/random_learners.py` calibrates it). Binary rewards throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Dist, GrpoLearner, neighbour_transfer
from .overfitting import OverfittingLearner

FAMILY_SEED = 20_261_205
TRANSFERS = ("none", "neighbour", "interference")


def random_learner(k: int, target: float = 0.7) -> type[GrpoLearner]:
    """The class of learner `k` of the family, with `target` as its target."""
    rng = np.random.default_rng([FAMILY_SEED, k])
    count = int(rng.integers(2, 9))
    sizes = np.exp(rng.uniform(np.log(40), np.log(8_000), count)).astype(np.int64)
    sizes[rng.integers(count)] = int(rng.uniform(3_000, 10_000))
    dists = tuple(
        Dist(f"d{i}", int(sizes[i]), float(rng.uniform(-1.5, 3.0)),
             float(rng.uniform(0.4, 2.5)), trivial=float(rng.uniform(0.0, 0.3)),
             never=float(rng.uniform(0.0, 0.2)))
        for i in range(count))
    transfer = str(rng.choice(TRANSFERS))
    near = float(rng.uniform(0.1, 0.5))
    pull = float(rng.uniform(0.03, 0.15))
    flip = float(rng.uniform(0.0, 0.1)) if rng.random() < 0.5 else 0.0
    attributes: dict[str, Any] = {
        "name": f"random_{k}",
        "dists": dists,
        "group": int(rng.choice([4, 8, 16])),
        "batch": int(rng.choice([32, 64, 128])),
        "steps": 200,
        "target": target,
        "lr": float(np.exp(rng.uniform(np.log(0.3), np.log(2.0)))),
        "std_normalised": bool(rng.random() < 0.5),
        "initial_skill": float(rng.uniform(-1.5, 0.5)),
        "transfer_kind": transfer,
        "flip": flip,
        "structures": (),  # not the named learners' (a memorising one inherits from one)
    }
    # Drawn last: a structure added to the family leaves every earlier draw as it is.
    half = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0)))) if rng.random() < 0.5 else 0.0
    attributes["memorise_half"] = half
    attributes["summary"] = (
        f"{count} distributions, sizes {sizes.max()} to {sizes.min()} "
        f"({sizes.max() / sizes.min():.0f}:1), transfer {transfer}, start skill "
        f"{attributes['initial_skill']:+.1f}, reward flips {flip:.2f}, "
        + (f"memorises (h {half:.1f}), " if half else "")
        + f"G = {attributes['group']}, batch {attributes['batch']}, "
        f"lr {attributes['lr']:.2f}, {'GRPO' if attributes['std_normalised'] else 'Dr.GRPO'}")

    def transfer_matrix(self: GrpoLearner) -> np.ndarray:
        if transfer == "neighbour":
            return neighbour_transfer(count, near, near / 3.0)
        if transfer == "interference":
            return np.asarray(np.where(np.eye(count) > 0, 1.0, -pull))
        return np.eye(count)

    def observe(self: GrpoLearner, outcomes: np.ndarray) -> np.ndarray:
        if flip == 0.0:
            return outcomes
        flipped = self.rng.random(outcomes.shape) < flip
        return np.where(flipped, 1.0 - outcomes, outcomes)

    attributes["transfer_matrix"] = transfer_matrix
    attributes["observe"] = observe
    if half:
        attributes["half"] = half
    base: type[GrpoLearner] = OverfittingLearner if half else GrpoLearner
    return type(f"RandomLearner{k}", (base,), attributes)
