"""Paceline with verl 0.8 and later (tested with 0.9.1).

verl 0.8 removed the curriculum-sampler interface the 0.5 to 0.7 integration plugs into
(`paceline.integrations.verl`). Its `RayPPOTrainer` still takes a `train_sampler`, and
`PacelineCurriculumSampler` is one; what is gone is the call after each step that
reported it. `PacelineRayPPOTrainer` restores that call: it reports each step's rollouts
(rewards per objective, the advantages the actor is updated with, the `uid` groups) at
the step's first update (critic or actor).

```python
from paceline.integrations.verl09 import PacelineRayPPOTrainer

# where verl's main_ppo builds RayPPOTrainer, with the same arguments:
trainer = PacelineRayPPOTrainer(config=config, tokenizer=tokenizer, ...,
                                train_dataset=train_dataset)   # sampler built from config.data
trainer.init_workers()
trainer.fit()
```

Set `data.dataloader_num_workers=0` (refused otherwise: loader workers prefetch later
steps' batches). The sampler reads its options from `data.sampler.paceline` exactly as on verl 0.7
(`curriculum`, `url` or `embedded`, `run_id`, `reward_keys`, ...); the reward function
scalarises with `paceline.integrations.verl.ServedWeights`. verl checkpoints the data
loader, and with it the sampler's position and fingerprint: resuming with another run id
or against another curriculum raises ValueError before the first step. Steps the resumed
trainer redoes were reported before the crash: the service keeps those first reports
(the redone ones are logged and not counted).

verl's v1 trainer (`trainer.use_v1=True`, TransferQueue) has no `train_sampler`; its hook
is a custom replay buffer, `paceline.integrations.verl_v1.PacelineReplayBuffer` (see
docs/integrations/verl.md).
Importing this module imports verl's trainer (ray, torch); `import paceline` does not.
"""

from __future__ import annotations

from typing import Any

from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from paceline.integrations.verl import PacelineCurriculumSampler, ServedWeights

__all__ = ["PacelineCurriculumSampler", "PacelineRayPPOTrainer", "ServedWeights"]


class PacelineRayPPOTrainer(RayPPOTrainer):  # type: ignore[misc]
    """`RayPPOTrainer` whose prompts come from a Paceline run and whose steps are
    reported back (every argument is RayPPOTrainer's).

    Without `train_sampler` a `PacelineCurriculumSampler` is built from `config.data`
    and `train_dataset`; a given one must be a `PacelineCurriculumSampler`.
    `data.dataloader_num_workers` must be 0 (verl 0.7 enforced this for curriculum
    samplers; 0.8+ does not), so each step's batch is drawn after the previous step
    was reported."""

    def __init__(self, config: Any, *args: Any, train_dataset: Any = None,
                 train_sampler: Any = None, **kwargs: Any) -> None:
        workers = config.data.get("dataloader_num_workers", 8)  # verl's default: 8
        if workers != 0:
            raise ValueError("PacelineRayPPOTrainer needs data.dataloader_num_workers=0; got "
                             f"{workers} (loader workers prefetch: later steps' batches "
                             "would be drawn before this step is reported)")
        if train_sampler is None:
            if train_dataset is None:
                raise ValueError("PacelineRayPPOTrainer needs train_dataset (the sampler "
                                 "checks it against the curriculum's layout)")
            train_sampler = PacelineCurriculumSampler(train_dataset, config.data)
        if not isinstance(train_sampler, PacelineCurriculumSampler):
            raise TypeError("train_sampler must be a PacelineCurriculumSampler; got "
                            f"{type(train_sampler).__name__}")
        self.paceline_sampler = train_sampler
        super().__init__(config, *args, train_dataset=train_dataset,
                         train_sampler=train_sampler, **kwargs)

    def _report_once(self, batch: DataProto) -> None:
        """Report the step's batch the first time one of its updates sees it (the critic
        update comes first when there is a critic; during critic warm-up it is the only
        one)."""
        if getattr(self, "_paceline_reported", None) is not batch:
            self.paceline_sampler.update(batch)
            self._paceline_reported = batch

    def _update_critic(self, batch: DataProto) -> DataProto:
        self._report_once(batch)
        result: DataProto = super()._update_critic(batch)
        return result

    def _update_actor(self, batch: DataProto) -> DataProto:
        """Report the step (its rewards and the advantages about to be trained on),
        then update the actor as RayPPOTrainer does."""
        self._report_once(batch)
        result: DataProto = super()._update_actor(batch)
        return result
