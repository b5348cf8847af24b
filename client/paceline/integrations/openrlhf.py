"""Paceline in OpenRLHF's Ray PPO/GRPO trainer (tested with openrlhf 0.11.2).

OpenRLHF draws prompts one at a time from a `StatefulDataLoader` over its `PromptDataset`
(`prepare_datasets`, batch size 1) and collects `rollout.batch_size` of them per training
step; it scores rollouts in its vLLM engines with `reward_func(queries, prompts, labels)`
from the Python file given as `--remote_rm_url`, and turns them into `Experience`s with
advantages in `RemoteExperienceMaker.make_experience_batch`. Three pieces plug into those
places:

- `PacelinePromptSampler`: the prompt sampler. Each step yields the served batch's
  `rollout_batch_size` global sample indices; its `state_dict` (saved inside the loader's,
  which OpenRLHF checkpoints as `data_loader_state_dict`) names the curriculum, spec and
  run, so resuming against another one fails before a batch is drawn.
- `ExperienceReporter`: reports each step's rollouts — raw rewards per objective, the
  sequence-level advantages the actor trains on, one group per prompt — once, with the
  step's deterministic idempotency key. `attach(trainer, sampler)` installs the loader
  and the reporter in a built `PPOTrainer`.
- `ScalarizedRewardFunc`: the `reward_func` of the `--remote_rm_url` file. It calls one
  function per objective and returns the scalarised reward `reward_scale * Σ_k w_k u_k`
  with the served weights (`Batch.scalarize`, bounds and directions applied), plus each
  objective's raw value in `extra_logs` (which is how the reporter reads them back).

```python
# in your copy of OpenRLHF's train_ppo_ray, after the PPOTrainer is built
sampler = PacelinePromptSampler(run, trainer.prompts_dataloader.dataset,
                                rollout_batch_size=args.rollout.batch_size)
attach(trainer, sampler)
```

Importing this module imports torch and torchdata; `import paceline` does not, and
OpenRLHF itself is not imported here (its trainer needs flash-attn and GPUs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, Protocol

import torch
from torchdata.stateful_dataloader import StatefulDataLoader  # type: ignore[import-untyped, unused-ignore]

from paceline.client import Client, Curriculum, Run
from paceline.integrations._ledger import BatchLedger, Rollouts
from paceline.integrations._resume import check_dataset_size
from paceline.integrations._served import ServedWeights
from paceline.integrations.torch import PacelineSampler
from paceline.models import ReportAck

__all__ = [
    "ExperienceReporter",
    "PacelinePromptSampler",
    "ScalarizedRewardFunc",
    "ServedWeights",
    "attach",
    "objective_key",
    "prompts_dataloader",
]


def objective_key(objective: str) -> str:
    """The `Experience.info` / `extra_logs` key of an objective's raw reward: the one
    place the reporter reads rewards from, whatever the number of objectives."""
    return f"paceline/{objective}"


class _PromptDataset(Sized, Protocol):
    def __getitem__(self, index: int) -> Any: ...


def _prompt(item: Any) -> str:
    """The prompt of a `PromptDataset` item, `(datasource, prompt, label, images)`."""
    return str(item[1])


class PacelinePromptSampler(PacelineSampler):
    """OpenRLHF's prompt sampler: step after step, the `rollout_batch_size` indices of the
    served batch (row i of the dataset is Paceline's sample i; checked here, at start-up).
    It keeps each row's prompt text so the reporter can tell which served sample a
    rollout came from (OpenRLHF's `Experience` carries the prompt, not the row)."""

    def __init__(self, source: Run | BatchLedger, dataset: _PromptDataset, *,
                 rollout_batch_size: int, start_step: int = 0,
                 prompt_of: Callable[[Any], str] = _prompt) -> None:
        ledger = source if isinstance(source, BatchLedger) else BatchLedger(source)
        check_dataset_size(len(dataset), ledger.run.curriculum, "PacelinePromptSampler")
        # One process draws the prompts of every rollout worker: never sharded by rank.
        super().__init__(ledger, batch_size=rollout_batch_size, num_samples=len(dataset),
                         start_step=start_step, num_replicas=1, rank=0)
        self.dataset = dataset
        self.prompts = [prompt_of(dataset[i]) for i in range(len(dataset))]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the next step. OpenRLHF checkpoints the episode a step was trained
        in and resumes in that episode with the loader state restored: a state saved
        after an episode's last step leaves that episode nothing to draw (the next
        episode starts the next pass), as for OpenRLHF's own sampler. (`PacelineSampler`
        does this from its state; a state saved before it recorded `drawn_out` is read
        the same way, since OpenRLHF checkpoints inside the episode.)"""
        super().load_state_dict(state)
        if "drawn_out" not in state:
            drawn = self.steps.next_step - self.steps.start_step
            self._drawn_out = drawn > 0 and drawn % self.steps.steps_per_epoch == 0


def prompts_dataloader(dataset: Any, sampler: PacelinePromptSampler,
                       num_workers: int = 0) -> StatefulDataLoader:
    """The prompts loader OpenRLHF's `prepare_datasets` builds (batch size 1, the dataset's
    `collate_fn`, stateful), drawing from `sampler`. Without worker processes: a loader
    with workers draws indices ahead, so it would ask Paceline for a later step's batch
    before the step in training is reported (a batch chosen from old statistics)."""
    if num_workers != 0:
        raise ValueError(f"the paceline prompts loader needs num_workers=0; got "
                         f"{num_workers} (workers draw later steps' batches before the "
                         "step in training is reported)")
    return StatefulDataLoader(dataset, batch_size=1, sampler=sampler, drop_last=True,
                              collate_fn=getattr(dataset, "collate_fn", None),
                              num_workers=0)


def _rows(value: Any) -> list[float]:
    return [float(v) for v in torch.as_tensor(value).reshape(-1).tolist()]


def _advantages(experience: Any) -> list[float] | None:
    """One advantage per rollout: the mean of the token-level advantages over the action
    mask (GRPO's are constant along the response, so this is that value)."""
    advantages = getattr(experience, "advantages", None)
    if advantages is None:
        return None
    values = torch.as_tensor(advantages).double()
    if values.dim() == 1:
        return values.tolist()
    mask = getattr(experience, "action_mask", None)
    if mask is None:
        return values.mean(dim=-1).tolist()
    m = torch.as_tensor(mask).to(values.dtype)
    return ((values * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1)).tolist()


class ExperienceReporter:
    """Reports a step's `Experience`s (the oldest served step not yet reported).

    Each rollout's sample is found by its prompt among the step's served samples; its
    group is that sample (OpenRLHF generates `n_samples_per_prompt` rollouts per
    prompt). Raw rewards come from `info[objective_key(o)]` only: what
    `ScalarizedRewardFunc` logs, or for a single objective what `keep_raw_rewards` kept
    before OpenRLHF penalised `experience.rewards`."""

    def __init__(self, sampler: PacelinePromptSampler) -> None:
        self.sampler = sampler
        self.ledger = sampler.ledger
        self.objectives = sampler.ledger.run.curriculum.objectives

    def report(self, experiences: Sequence[Any]) -> ReportAck | None:
        record = self.ledger.next_unscored()
        by_prompt: dict[str, list[int]] = {}
        for index in record.batch.indices:
            by_prompt.setdefault(self.sampler.prompts[index], []).append(index)
        texts: list[str] = []
        rewards: list[list[float]] = []
        advantages: list[float] | None = []
        for experience in experiences:
            texts.extend(str(p) for p in experience.prompts)
            columns = [self._column(experience, o) for o in self.objectives]
            rewards.extend([list(row) for row in zip(*columns, strict=True)])
            adv = _advantages(experience)
            advantages = None if adv is None or advantages is None else advantages + adv
        stray = sorted({t for t in texts if t not in by_prompt})
        if stray:
            raise ValueError(
                f"ExperienceReporter: {len(stray)} prompt(s) were not served for step "
                f"{record.step} (first: {stray[0][:80]!r}); the prompts must come from "
                "the PacelinePromptSampler's loader")
        indices = self._assign(texts, by_prompt)
        group_of: dict[int, int] = {}
        record.rollouts = Rollouts(
            indices=indices, group_ids=[group_of.setdefault(i, len(group_of)) for i in indices],
            rewards=rewards, advantages=advantages)
        acks = self.ledger.report_scored()
        return acks[-1] if acks else None

    @staticmethod
    def _assign(texts: list[str], by_prompt: Mapping[str, list[int]]) -> list[int]:
        """The sample of each rollout: a prompt served once is that sample; a prompt text
        served for several samples of the step has its rollouts split among them in
        order (they are indistinguishable)."""
        counts: dict[str, int] = {}
        for text in texts:
            counts[text] = counts.get(text, 0) + 1
        seen: dict[str, int] = {}
        out = []
        for text in texts:
            candidates = by_prompt[text]
            per = math.ceil(counts[text] / len(candidates))
            j = seen.get(text, 0)
            seen[text] = j + 1
            out.append(candidates[j // per])
        return out

    def keep_raw_rewards(self, experiences: Sequence[Any]) -> None:
        """For a single objective the reward function does not log, keep each rollout's
        reward as the reward function or model returned it, under `objective_key`.
        Called before OpenRLHF shapes the rewards: its `apply_length_penalties` (DAPO
        overlong, ProRL stop-properly) changes `experience.rewards` in place and then
        copies them over `info["reward"]`, so neither holds the raw reward afterwards;
        hence a copy, not a reference. A reward the function logged is left as it is."""
        if len(self.objectives) != 1:
            return  # several objectives: only the reward function knows each one's value
        key = objective_key(self.objectives[0])
        for experience in experiences:
            rewards = getattr(experience, "rewards", None)
            if key not in experience.info and rewards is not None:
                experience.info[key] = torch.as_tensor(rewards).detach().clone()

    def _column(self, experience: Any, objective: str) -> list[float]:
        info = getattr(experience, "info", None) or {}
        key = objective_key(objective)
        if key in info:
            return _rows(info[key])
        raise KeyError(f"the experience has no {key!r} info: score with "
                       "ScalarizedRewardFunc, or log each objective's raw reward under "
                       f"{key!r} in the reward function's extra_logs (for a single "
                       "objective, attach() keeps the reward before OpenRLHF's penalties)")


def attach(trainer: Any, sampler: PacelinePromptSampler,
           num_workers: int = 0) -> ExperienceReporter:
    """Make a built OpenRLHF `PPOTrainer` draw its prompts from `sampler` and report each
    step's experiences right after their advantages are computed, with the rewards kept
    as `compute_advantages_and_returns` received them (before its length penalties).
    Refuses the settings that let a step's rollouts mix prompts of several Paceline
    steps."""
    args = getattr(trainer, "args", None)
    rollout = getattr(args, "rollout", None)
    if rollout is not None:
        if int(rollout.batch_size) != sampler.steps.batch_size:
            raise ValueError(f"rollout.batch_size is {rollout.batch_size}; the paceline "
                             f"sampler serves {sampler.steps.batch_size} prompts per step")
        generate = getattr(rollout, "vllm_generate_batch_size", None)
        if generate and int(generate) != int(rollout.batch_size):
            raise ValueError("rollout.vllm_generate_batch_size must be unset (or equal "
                             "rollout.batch_size) with the paceline sampler: one vLLM call "
                             "per Paceline step")
    algo = getattr(args, "algo", None)
    if algo is not None and getattr(algo, "dynamic_filtering_enable", False):
        raise ValueError("algo.dynamic_filtering_enable draws refill prompts past the "
                         "step's batch; it is not supported with the paceline sampler")
    loader = prompts_dataloader(sampler.dataset, sampler, num_workers)
    trainer.prompts_dataloader = loader
    trainer.samples_generator.prompts_dataloader = loader
    reporter = ExperienceReporter(sampler)
    maker = trainer.experience_maker
    make_batch = maker.make_experience_batch
    shape = maker.compute_advantages_and_returns

    def compute_advantages_and_returns(experiences: Any) -> Any:
        reporter.keep_raw_rewards(experiences)
        return shape(experiences)

    def make_experience_batch(rollout_samples: Any) -> Any:
        experiences = make_batch(rollout_samples)
        reporter.report(experiences)
        return experiences

    maker.compute_advantages_and_returns = compute_advantages_and_returns
    maker.make_experience_batch = make_experience_batch
    return reporter


Objective = Callable[[str, str, Any], float]


class ScalarizedRewardFunc:
    """OpenRLHF's `reward_func(queries, prompts, labels)`, scoring each objective with its
    own function `(query, prompt, label) -> float` and returning the scalarised reward
    (`rewards`, also `scores`) and each objective's raw value (`extra_logs`, under
    `objective_key`). The weights are the curriculum's current ones (`ServedWeights`,
    cached `ttl` seconds): the vLLM engines run in other processes than the sampler. They
    are read once per call, so every row of a call (a group's rollouts) takes the same."""

    def __init__(self, weights: ServedWeights, objectives: Mapping[str, Objective]) -> None:
        missing = [o for o in weights.curriculum.objectives if o not in objectives]
        extra = [o for o in objectives if o not in weights.curriculum.objectives]
        if missing or extra:
            raise ValueError(f"ScalarizedRewardFunc needs one function per objective of "
                             f"{weights.curriculum.name!r} {weights.curriculum.objectives}; "
                             f"missing {missing}, unknown {extra}")
        self.weights = weights
        self.objectives = dict(objectives)

    @classmethod
    def connect(cls, curriculum: str | Curriculum, objectives: Mapping[str, Objective], *,
                url: str | None = None, token: str | None = None,
                ttl: float = 10.0) -> ScalarizedRewardFunc:
        cur = (curriculum if not isinstance(curriculum, str)
               else Client(url, token=token).curriculum(curriculum))
        return cls(ServedWeights(cur, ttl), objectives)

    def __call__(self, queries: Sequence[str], prompts: Sequence[str],
                 labels: Sequence[Any]) -> dict[str, Any]:
        raw = {o: [float(fn(q, p, lab)) for q, p, lab in zip(queries, prompts, labels,
                                                             strict=True)]
               for o, fn in self.objectives.items()}
        view = self.weights.view()  # one weight vector for every row of the call
        totals = [float(view.scalarize({o: raw[o][i] for o in raw}))
                  for i in range(len(queries))]
        scalar = torch.tensor(totals, dtype=torch.float32)
        return {"rewards": scalar, "scores": scalar.clone(),
                "extra_logs": {objective_key(o): torch.tensor(v, dtype=torch.float32)
                               for o, v in raw.items()}}
