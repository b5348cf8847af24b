"""`example_trainer`: the project's real GRPO trainer (`trainer_examples/`) as a suite
learner, in a reduced configuration a CPU can run (about 3 min a run on a quiet 2-vCPU
machine, 10-12 min under load 10).

The trainer's tiny character-level transformer (dim 128, three blocks), warm-started by
400 supervised steps, is trained by GRPO (clipped loss, one inner epoch,
group-normalised advantages, lr 3e-4) on the trainer's five generated distributions
(`add1` 100, `add2` 600, `add3` 2000, `logic1` 48, `logic2` 576 prompts; 42:1), batch 16
× G = 8 for 80 steps (the trainer's own default is 32 × 8 for 150). The reward is the
trainer's `correct` objective (binary); held-out accuracy is greedy decoding on 48
problems per distribution (held-out ones where the universe has a rest), measured every
5 steps, and the target is on their mean. Unlike the simulated learners nobody knows a
prompt's true pass rate, so the oracle rows cannot run here (`pass_rates_known`). The
DAPO and dynamic-sampling rows train on some groups of several rollout rounds of one
step: `train` takes them from every round generated since the last step (one loss, the
mean over the trained prompts, as one batch of them would give).

Needs torch (the `examples` extra); `benchmarks/suite.py --learners example_trainer`.
"""

from __future__ import annotations

import itertools
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import Groups

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # trainer_examples lives at the repository root
    sys.path.insert(0, str(ROOT))

EVAL_SIZE = 48  # held-out problems per distribution
EVAL_EVERY = 5  # steps between greedy evaluations (the accuracy holds in between)
SFT_STEPS = 400
DIM, LAYERS = 128, 3
MAX_NEW_TOKENS = 6
LR = 3e-4
CLIP = 0.2
NOT_THIS_STEP = ("the example trainer trains only on rounds it generated since its last "
                 "step (the last rollout)")


@dataclass(frozen=True)
class _Dist:
    name: str
    size: int


class ExampleTrainerLearner:
    """The suite's learner interface (`rollout`, `advantages`, `train`, `accuracy`) over
    `trainer_examples`' model, tasks and GRPO loss."""

    name: ClassVar[str] = "example_trainer"
    summary: ClassVar[str] = ("the example trainer (tiny transformer, 5 generated "
                              "distributions 2000 to 48, 42:1), correctness reward, "
                              "G = 8, batch 16, 80 steps")
    structures: ClassVar[tuple[str, ...]] = ("a real policy (the example trainer)",
                                             "sizes imbalanced 42:1", "binary rewards",
                                             "G = 8")
    group: ClassVar[int] = 8
    batch: ClassVar[int] = 16
    steps: ClassVar[int] = 80
    target: ClassVar[float] = 0.5
    binary: ClassVar[bool] = True
    pass_rates_known: ClassVar[bool] = False  # no oracle rows

    def __init__(self, seed: int) -> None:
        import torch
        from trainer_examples.loop import Config, warm_start
        from trainer_examples.model import build_model
        from trainer_examples.tasks import TaskSet

        torch.set_num_threads(1)
        random.seed(seed)
        torch.manual_seed(seed)
        self.seed = seed
        self.tasks = TaskSet(seed=seed, eval_size=EVAL_SIZE)
        self.dists = tuple(_Dist(d.name, d.size) for d in self.tasks.distributions)
        self.sizes = np.array([d.size for d in self.dists], dtype=np.int64)
        self.num_samples = int(self.sizes.sum())
        self.dist_of = np.repeat(np.arange(len(self.dists)), self.sizes)
        self.model = build_model(None, torch.device("cpu"), dim=DIM, layers=LAYERS)
        config = Config(out=str(ROOT / "out" / "unused"), sampler="uniform",
                        weighting="fixed", sft_steps=SFT_STEPS, seed=seed,
                        progress=False, device="cpu")
        warm_start(self.model, self.tasks, config, np.random.default_rng(seed),
                   lambda record: None)
        self.optimizer = torch.optim.AdamW(self.model.module.parameters(), lr=LR,
                                           weight_decay=0.0)
        self._pending: list[tuple[Groups, Any]] = []  # rounds generated since the last step
        self._trained = 0
        self._accuracy: np.ndarray | None = None

    @property
    def num_distributions(self) -> int:
        return len(self.dists)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dists]

    def rollout(self, indices: np.ndarray) -> Groups:
        from trainer_examples.grpo import generate
        from trainer_examples.tasks import score

        idx = np.asarray(indices, dtype=np.int64)
        problems = [self.tasks[int(i)] for i in idx]
        rollouts = generate(self.model, [p.prompt for p in problems], self.group,
                            MAX_NEW_TOKENS)
        correct = np.array([
            score(rollouts.texts[r], rollouts.finished[r], problems[r // self.group].answer,
                  ("correct",), MAX_NEW_TOKENS)[0]
            for r in range(idx.size * self.group)], dtype=np.float64)
        outcomes = correct.reshape(idx.size, self.group)
        groups = Groups(idx, outcomes, outcomes, np.full(idx.size, np.nan))
        self._pending.append((groups, rollouts))
        return groups

    def advantages(self, groups: Groups) -> np.ndarray:
        import torch
        from trainer_examples.grpo import group_advantages

        return np.asarray(group_advantages(torch.tensor(groups.rewards)).numpy(),
                          dtype=np.float64)

    def train(self, groups: Groups) -> np.ndarray:
        """One clipped GRPO step on `groups`: the last rollout, or some of the groups of
        the rounds generated since the last step, in their order (DAPO's filter, dynamic
        sampling). The step's loss is the mean over the trained prompts, as for one
        batch of them."""
        import torch
        from trainer_examples.grpo import completion_logprobs, grpo_loss

        picks = self._locate(groups)
        advantages = self.advantages(groups)
        model = self.model
        model.module.train()
        losses = []
        done = 0
        for (_, rollouts), rows in zip(self._pending, picks, strict=True):
            if rows.size == 0:
                continue
            part = rollouts.prompts(rows.tolist(), self.group)
            adv = torch.tensor(advantages[done:done + rows.size], dtype=torch.float32)
            done += rows.size
            with torch.no_grad():
                old = completion_logprobs(model, part)
            logp = completion_logprobs(model, part)
            loss = grpo_loss(logp, old, adv, part.completion_mask, None, CLIP, None,
                             0.0).loss
            losses.append(loss * (rows.size / groups.n))
        self.optimizer.zero_grad(set_to_none=True)
        if losses:
            torch.stack(losses).sum().backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.module.parameters(), 1.0)
            self.optimizer.step()
        self._pending = []
        self._trained += 1
        return advantages

    def _locate(self, groups: Groups) -> list[np.ndarray]:
        """The rows of each pending round that `groups` holds: the rounds' groups
        concatenated in order, of which `groups` is a subsequence (`Groups.take` of
        increasing rows, as the suite's runner does)."""
        if not self._pending:
            raise ValueError(NOT_THIS_STEP)
        if groups.n == 0:
            return [np.zeros(0, dtype=np.int64) for _ in self._pending]
        flat = Groups.concat([g for g, _ in self._pending])
        found, at = [], 0
        for i in range(groups.n):
            while at < flat.n and not (flat.indices[at] == groups.indices[i] and np.array_equal(
                    flat.outcomes[at], groups.outcomes[i])):
                at += 1
            if at == flat.n:
                raise ValueError(NOT_THIS_STEP)
            found.append(at)
            at += 1
        rows = np.asarray(found, dtype=np.int64)
        bounds = np.cumsum([0] + [g.n for g, _ in self._pending])
        return [rows[(rows >= lo) & (rows < hi)] - lo
                for lo, hi in itertools.pairwise(bounds)]

    def accuracy(self) -> np.ndarray:
        """Greedy held-out accuracy per distribution, measured every EVAL_EVERY
        training steps (and at the start); the last measurement in between."""
        from trainer_examples.loop import evaluate

        if self._accuracy is None or self._trained % EVAL_EVERY == 0:
            result = evaluate(self.model, self.tasks, MAX_NEW_TOKENS, ("correct",))
            self._accuracy = np.array([result.accuracy[name] for name in self.names])
        return self._accuracy

