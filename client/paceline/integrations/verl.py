"""Paceline as verl's curriculum sampler.

verl (0.5 to 0.7; the interface was removed in 0.8) builds the training sampler from
`data.sampler.class_path` / `class_name` and calls `update(batch)` after every training
step. Point it at this module and name the curriculum:

```bash
python -m verl.trainer.main_ppo ... data.dataloader_num_workers=0 \\
  data.sampler.class_path=pkg://paceline.integrations.verl \\
  data.sampler.class_name=PacelineCurriculumSampler \\
  +data.sampler.paceline.curriculum=math +data.sampler.paceline.url=http://paceline:8000
```

Options under `data.sampler.paceline`: `curriculum` (required), `url` / `token` (default
`PACELINE_URL` / `PACELINE_TOKEN`), `embedded` (a SQLite path: run the service in this
process instead), `create` (create_curriculum keyword arguments, created if missing),
`run_id` (resume a run), `start_step` (the step of the first batch; see resuming below),
`heartbeat_interval`, `index_key` (the non-tensor column holding
each row's global sample index; default `index`, which verl's RLHFDataset fills from
`extra_info.index`), `reward_keys` ({objective: non-tensor column}; default: the column
named like the objective, or for a single objective the reward function's own score:
its `score` / `acc` column, else the sequence score; see `_verl_reward`).

Resuming: give the old `run_id`. verl's StatefulDataLoader restores its position by
re-reading the current epoch's batches up to where it stopped, which asks Paceline for the
same (run, step) batches again and gets the same indices; in epoch e > 0 also set
`start_step` to e * steps_per_epoch, since the fresh sampler cannot know the epoch.

The reward weights reach the reward function through `ServedWeights`, since verl scores
rollouts in its reward workers, other processes than the sampler's. Importing this module
imports verl, omegaconf and torch; `import paceline` does not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto

try:  # verl 0.5 to 0.7: the curriculum-sampler interface (data.sampler.class_path)
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler as _SamplerBase
except ImportError:  # verl 0.8+: a plain sampler, given to RayPPOTrainer as train_sampler
    from torch.utils.data import Sampler as _SamplerBase

from paceline.client import Client, Curriculum
from paceline.integrations._ledger import BatchLedger, Rollouts
from paceline.integrations._resume import check_dataset_size
from paceline.integrations._served import ServedWeights
from paceline.integrations._steps import StepStream
from paceline.integrations._verl_reward import raw_score_key
from paceline.models import Batch

__all__ = ["PacelineCurriculumSampler", "ServedWeights", "sequence_advantages"]


def _options(data_config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    sampler = data_config.get("sampler") or {}
    options = sampler.get("paceline") if isinstance(sampler, Mapping | DictConfig) else None
    if options is None:
        raise ValueError("set data.sampler.paceline.curriculum (and url, or embedded) to "
                         "use the paceline sampler")
    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    return dict(options)


def _client(options: Mapping[str, Any]) -> Client:
    if options.get("embedded"):
        return Client.embedded(options["embedded"])
    return Client(options.get("url"), token=options.get("token"))


class PacelineCurriculumSampler(_SamplerBase):  # type: ignore[misc]
    """verl's `AbstractCurriculumSampler` backed by a Paceline run (on verl 0.8+, where
    that interface is gone, a plain sampler: see `paceline.integrations.verl09`).

    Each training step is one Paceline step: the sampler yields the served batch's
    indices (`data.gen_batch_size`, or `data.train_batch_size`, of them), and `update`
    reports the step's rollouts — rewards per objective, the sequence-level advantages
    verl trained on, and verl's `uid` groups. verl requires `dataloader_num_workers=0`
    with a curriculum sampler, so a step's batch is drawn after the previous step was
    reported."""

    def __init__(self, data_source: Sized, data_config: DictConfig) -> None:
        options = _options(data_config)
        if "curriculum" not in options:
            raise ValueError("data.sampler.paceline.curriculum is required")
        self.client = _client(options)
        create = options.get("create")
        curriculum = (self.client.create_curriculum(options["curriculum"], **create,
                                                    exist_ok=True)
                      if create else self.client.curriculum(options["curriculum"]))
        check_dataset_size(len(data_source), curriculum, "PacelineCurriculumSampler")
        self.run = curriculum.start_run(run_id=options.get("run_id"),
                                        metadata={"trainer": "verl"},
                                        heartbeat_interval=options.get("heartbeat_interval",
                                                                       30.0))
        self.ledger = BatchLedger(self.run)
        batch_size = int(data_config.get("gen_batch_size") or data_config["train_batch_size"])
        self.steps = StepStream(self.ledger, batch_size=batch_size,
                                steps_per_epoch=max(1, len(data_source) // batch_size),
                                start_step=int(options.get("start_step", 0)))
        self.index_key: str = options.get("index_key", "index")
        keys: Mapping[str, str] = options.get("reward_keys") or {}
        self.reward_keys = {o: keys.get(o, o) for o in curriculum.objectives}

    @property
    def curriculum(self) -> Curriculum:
        return self.run.curriculum

    @property
    def batch(self) -> Batch | None:
        """The latest served batch: its reward and loss weights apply to this step."""
        return self.ledger.latest

    def __iter__(self) -> Iterator[int]:
        for batch in self.steps.epoch():
            yield from batch.indices

    def __len__(self) -> int:
        return self.steps.steps_per_epoch * self.steps.batch_size

    def state_dict(self) -> dict[str, Any]:
        return self.steps.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps.load_state_dict(state)

    def update(self, batch: DataProto) -> None:
        """Report the step verl has just trained on (the oldest unreported served one)."""
        record = self.ledger.next_unscored()
        non_tensor = batch.non_tensor_batch
        if self.index_key not in non_tensor:
            raise KeyError(f"the batch has no {self.index_key!r} column; set "
                           "data.sampler.paceline.index_key to the column holding each "
                           "row's global sample index")
        indices = [int(i) for i in non_tensor[self.index_key]]
        record.check_indices(indices, "PacelineCurriculumSampler.update")
        uids = non_tensor["uid"]
        group_of: dict[Any, int] = {}
        group_ids = [group_of.setdefault(uid, len(group_of)) for uid in uids]
        columns = [self._rewards(batch, objective) for objective in self.reward_keys]
        tensors = batch.batch.keys()  # TensorDict refuses `key in td`; its keys() answer
        advantages = sequence_advantages(batch).tolist() if "advantages" in tensors else None
        record.rollouts = Rollouts(indices=indices, group_ids=group_ids,
                                   rewards=np.column_stack(columns).tolist(),
                                   advantages=advantages)
        self.ledger.report_scored()

    def _rewards(self, batch: DataProto, objective: str) -> np.ndarray:
        """The objective's raw reward per rollout. A single objective without its own
        column is the reward function's score as verl's reward manager kept it, not
        `token_level_scores`, which holds the DAPO overlong penalty when it is on."""
        key = self.reward_keys[objective]
        if len(self.reward_keys) == 1 and key not in batch.non_tensor_batch:
            key = raw_score_key(batch.non_tensor_batch) or key
        if key in batch.non_tensor_batch:
            return np.asarray(batch.non_tensor_batch[key], dtype=np.float64)
        tensors = batch.batch.keys()
        if len(self.reward_keys) == 1 and "token_level_scores" in tensors:
            scores: torch.Tensor = batch.batch["token_level_scores"]
            return scores.sum(dim=-1).double().cpu().numpy()
        raise KeyError(f"no reward column {key!r} for objective {objective!r}: return it from "
                       "the reward function (as a key of its result dict), or map it with "
                       "data.sampler.paceline.reward_keys")

    def close(self) -> None:
        """Stop the run's heartbeat and release the connection."""
        self.client.close()


def sequence_advantages(batch: DataProto) -> np.ndarray:
    """One advantage per rollout: the mean of verl's token-level advantages over the
    response tokens (GRPO's are constant along the response, so this is that value)."""
    advantages: torch.Tensor = batch.batch["advantages"].double()
    tensors = batch.batch.keys()  # TensorDict refuses `key in td`
    if "response_mask" in tensors:
        mask = batch.batch["response_mask"].to(advantages.dtype)
        total = (advantages * mask).sum(dim=-1)
        return (total / mask.sum(dim=-1).clamp(min=1)).cpu().numpy()
    return advantages.mean(dim=-1).cpu().numpy()
