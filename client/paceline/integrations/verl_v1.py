"""Paceline in verl's v1 trainer (`trainer.use_v1=True`, verl 0.9; tested with 0.9.1).

The v1 trainer keeps prompts and rollouts in TransferQueue and picks each step's groups
with a replay buffer; the only hook it offers is a custom one,
`trainer.v1.sampler.custom_sampler.{path,name}`. `PacelineReplayBuffer` is that class:

```bash
python -m verl.trainer.main_ppo trainer.use_v1=True trainer.v1.trainer_mode=sync \\
  algorithm.adv_estimator=grpo data.dataloader_num_workers=0 \\
  trainer.v1.sampler.custom_sampler.path=pkg://paceline.integrations.verl_v1 \\
  trainer.v1.sampler.custom_sampler.name=PacelineReplayBuffer \\
  +trainer.v1.sampler.sampler_kwargs.paceline.curriculum=math \\
  +trainer.v1.sampler.sampler_kwargs.paceline.url=http://paceline:8000
```

It is verl's own `ReplayBuffer` (its sync sampling loop, DAPO's group filter configured
by `algorithm.filter_groups` exactly as for the built-in one) with three changes:

- Prompts come from Paceline. verl hands the buffer its refill function, a method of the
  trainer; through it the buffer puts `PacelinePromptSource` behind the trainer's
  prompt loader when the trainer builds it. Step s (verl's `global_steps` s + 1) draws
  Paceline's batch of (run, s); every refill verl's DAPO loop asks for is a Paceline
  refill part of the step (`Run.refill`), asked a batch at a time (prompts a part
  served beyond what the step generated are not reported).
- Every group is reported. Groups the filter drops (all rewards equal) and surplus
  groups discarded after the drain are read from TransferQueue before verl clears them;
  the trained groups are read right after verl computed their advantages. The report
  holds all of them (one rollout per session; rewards per objective from the reward
  function's extra info, advantage = mean token advantage over the response), names
  the dropped ones in `dropped`, and uses the key `paceline/{run}/{step}/0`.
- Resuming is exact: verl saves the prompt loader's state (`data.pt`) with each
  checkpoint, and with it the source's next step and the fingerprint of its curriculum
  and run; a resumed trainer draws the same batches and refill parts again, and the
  steps it redoes keep the reports the service already has.

Options under `trainer.v1.sampler.sampler_kwargs.paceline`: `curriculum` (required),
`url` / `token`, `embedded`, `create`, `run_id`, `heartbeat_interval`, `index_key` and
`reward_keys`, as for `paceline.integrations.verl`. Only the sync trainer mode with
`parameter_sync_step` 1 and `data.dataloader_num_workers=0` is supported (others are
refused when the trainer is built). Importing this module imports verl's v1 trainer
(ray, TransferQueue); `import paceline` does not.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from paceline.client import Client, Curriculum
from paceline.errors import Conflict
from paceline.integrations._ledger import BatchLedger, Rollouts, StepRecord, refill_part
from paceline.integrations._resume import Fingerprint, check_dataset_size
from paceline.integrations._verl_reward import raw_score_key
from paceline.models import ReportAck

__all__ = ["PacelinePromptSource", "PacelineReplayBuffer"]

_log = logging.getLogger(__name__)

#: StepRecord.scratch key of the sample indices of a step's refill parts so far.
REFILLS = "paceline.verl_v1.refills"
#: StepRecord.scratch flag: the service refused a refill because the step is reported.
ALREADY_REPORTED = "paceline.verl_v1.already_reported"
#: StepRecord.scratch: where a redone, already reported step's next refill prompt starts.
REDO_CURSOR = "paceline.verl_v1.redo_cursor"


def redo_order(num_samples: int, served: Sequence[int], start: int,
               count: int) -> list[int]:
    """Positions start .. start + count - 1 (round-robin) of the order a redone step's
    refills follow: the samples not in `served`, ascending, then `served` as given.
    Computed from the served indices alone (O(|served| log) per call), not by listing
    every sample of the layout."""
    if count <= 0:
        return []
    taken = np.unique(np.asarray(served, dtype=np.int64))
    unserved = num_samples - taken.size
    # The k-th unserved sample v has v - k samples of `taken` below it, so it is k plus
    # the number of taken t_j (j-th, ascending) with t_j - j <= k.
    below = taken - np.arange(taken.size)
    length = unserved + len(served)
    out = []
    for position in range(start, start + count):
        p = position % length
        out.append(p + int(np.searchsorted(below, p, side="right")) if p < unserved
                   else int(served[p - unserved]))
    return out


def _options(sampler_kwargs: Any) -> dict[str, Any]:
    kwargs = sampler_kwargs or {}
    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    options = kwargs.get("paceline") if isinstance(kwargs, Mapping) else None
    if not isinstance(options, Mapping) or "curriculum" not in options:
        raise ValueError("PacelineReplayBuffer: set trainer.v1.sampler.sampler_kwargs.paceline."
                         "curriculum (and url, or embedded) to use the paceline replay buffer")
    return dict(options)


class PacelinePromptSource(torch.utils.data.Sampler):  # type: ignore[misc]
    """The sample indices behind the v1 trainer's prompt loader: each step's Paceline
    batch, then the refill parts the replay buffer asks for, in the order the trainer
    draws them. Endless (the trainer counts steps, not epochs). `state_dict` /
    `load_state_dict` follow torchdata's stateful-sampler protocol, so the loader state
    verl checkpoints holds the next step and the fingerprint of the curriculum and run."""

    def __init__(self, ledger: BatchLedger, batch_size: int, num_samples: int) -> None:
        self.ledger = ledger
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.next_step = 0
        self.current: StepRecord | None = None
        self.parts = 0  # refill parts asked for in the current step
        self._queue: deque[int] = deque()
        self._reserve: deque[int] = deque()  # refilled indices not yet drawn

    def __iter__(self) -> Iterator[int]:
        while True:
            if not self._queue:
                self._start_step()
            yield self._queue.popleft()

    def __len__(self) -> int:
        return self.num_samples

    def _start_step(self) -> None:
        step = self.next_step
        batch = self.ledger.fetch(step, self.batch_size)
        self.current = self.ledger.record(step)
        self.next_step, self.parts = step + 1, 0
        self._reserve.clear()
        self._queue.extend(batch.indices)

    @property
    def pending(self) -> int:
        """Indices queued for the trainer and not drawn yet."""
        return len(self._queue)

    def refill(self, size: int) -> list[int]:
        """Queue `size` more prompts of the current step: refill parts of a batch each
        (more when `size` is larger), taken as needed. Raises RuntimeError when the step
        has no unserved sample left for them."""
        record = self.current
        if record is None:
            raise RuntimeError("a refill was asked for before the first paceline batch")
        refills = record.scratch.setdefault(REFILLS, [])
        assert isinstance(refills, list)
        while len(self._reserve) < size:
            left = self.num_samples - len(record.batch.indices) - len(refills)
            ask = min(left, self.batch_size * math.ceil(size / self.batch_size))
            if ask < size - len(self._reserve):
                raise RuntimeError(
                    f"paceline step {record.step} needs {size} more prompts but only {left} "
                    f"samples of the layout were not served to it yet: DAPO's filter dropped "
                    "nearly every group (every reward equal); check the reward function")
            if record.scratch.get(ALREADY_REPORTED):
                self._redo_refill(record, size)
                continue
            try:
                batch = refill_part(self.ledger.run, record.step, self.parts + 1, ask)
            except Conflict as exc:
                if exc.code != "STEP_ALREADY_REPORTED":
                    raise
                self._redo_refill(record, size)
                continue
            self.parts += 1
            refills.extend(batch.indices)
            self._reserve.extend(batch.indices)
        taken = [self._reserve.popleft() for _ in range(size)]
        self._queue.extend(taken)
        return taken

    def _redo_refill(self, record: StepRecord, size: int) -> None:
        """A resumed trainer redoing a step reported before the crash needs a refill part
        the step never had: Paceline serves no new part to a reported step, and the
        redone step's report would not count (the first one stands), so the step is not
        reported again and its refills are samples it was not served, in index order
        (then, when none is left, its own served ones), taken round-robin so that the
        trainer's filter always gets prompts it has not judged yet."""
        if not record.scratch.get(ALREADY_REPORTED):
            _log.warning("paceline: step %d of run %r was reported before the trainer "
                         "resumed and needs a refill it never had; it is refilled with "
                         "unserved samples and not reported again", record.step,
                         self.ledger.run.run_id)
            record.scratch[ALREADY_REPORTED] = True
        refills = record.scratch.get(REFILLS, [])
        assert isinstance(refills, list)
        served = [*record.batch.indices, *refills]
        cursor = int(record.scratch.get(REDO_CURSOR, 0))  # type: ignore[call-overload]
        picked = redo_order(self.num_samples, served, cursor, size - len(self._reserve))
        self._reserve.extend(picked)
        record.scratch[REDO_CURSOR] = cursor + len(picked)

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self.next_step, **Fingerprint.of(self.ledger.run).to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = Fingerprint.from_dict(state)
        if saved is None:
            raise ValueError("loading the paceline prompt source state: the checkpoint's "
                             "loader state names no paceline curriculum and run")
        saved.check(self.ledger.run, "loading the paceline prompt source state")
        self.next_step = int(state["next_step"])
        self.current, self.parts = None, 0
        self._queue.clear()
        self._reserve.clear()


@dataclass(frozen=True)
class _Row:
    """One rollout as read from TransferQueue: the final output of one session."""

    group: str  # the prompt's uid
    index: int  # global sample index
    rewards: list[float]
    advantage: float = 0.0


class PacelineReplayBuffer(ReplayBuffer):  # type: ignore[misc]
    """verl's sync `ReplayBuffer`, with prompts from a Paceline run and every group
    reported (see the module docstring). Built by verl's v1 trainer from
    `trainer.v1.sampler.custom_sampler`; the arguments are the ones it passes."""

    def __init__(self, trainer_mode: str, trainer_config: Any,
                 max_off_policy_threshold: int | None, max_off_policy_strategy: str,
                 sampler_kwargs: Any, poll_interval: float = 2.0, refill_fn: Any = None,
                 **kwargs: Any) -> None:
        trainer = getattr(refill_fn, "__self__", None)
        if not isinstance(trainer, PPOTrainer):
            raise TypeError("PacelineReplayBuffer is built by verl's v1 PPOTrainer "
                            "(trainer.v1.sampler.custom_sampler), which passes its refill "
                            f"function as refill_fn; got {refill_fn!r}")
        if trainer_mode != "sync":
            raise ValueError(f"PacelineReplayBuffer supports trainer.v1.trainer_mode=sync; got "
                             f"{trainer_mode!r} (async modes train a step on prompts drawn for "
                             "earlier steps, which no Paceline step describes)")
        if trainer.parameter_sync_step != 1:
            raise ValueError("PacelineReplayBuffer needs trainer.v1.sync.parameter_sync_step=1; "
                             f"got {trainer.parameter_sync_step}")
        config = trainer.config
        if config.data.get("dataloader_num_workers", 0) != 0:
            raise ValueError("PacelineReplayBuffer needs data.dataloader_num_workers=0: loader "
                             "workers prefetch prompts ahead of the refills")
        options = _options(sampler_kwargs)
        metric = trainer._resolve_filter_groups_metric()  # verl's own check of the settings
        filter_groups = config.algorithm.get("filter_groups", None) or {}
        refill_failed = bool(config.trainer.v1.sampler.get("sync_refill_failed_groups", False))
        self.train_batch_size = int(config.data.train_batch_size)
        super().__init__(
            trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
            sampler_kwargs, poll_interval=poll_interval, refill_fn=self._refill,
            filter_groups_metric=metric, train_batch_size=self.train_batch_size,
            gen_batch_size=1 if metric is not None or refill_failed
            else int(config.data.get("gen_batch_size", None) or self.train_batch_size),
            max_inflight_gen_batches=int(filter_groups.get("max_inflight_gen_batches", 1))
            if metric is not None else 1,
            sync_refill_failed_groups=refill_failed)
        self.trainer = trainer
        self._add_prompts = refill_fn
        self.index_key: str = options.get("index_key", "index")
        self.client = (Client.embedded(options["embedded"]) if options.get("embedded")
                       else Client(options.get("url"), token=options.get("token")))
        create = options.get("create")
        curriculum = (self.client.create_curriculum(options["curriculum"], **create,
                                                    exist_ok=True)
                      if create else self.client.curriculum(options["curriculum"]))
        keys: Mapping[str, str] = options.get("reward_keys") or {}
        self.reward_keys = {o: keys.get(o, o) for o in curriculum.objectives}
        self.run = curriculum.start_run(run_id=options.get("run_id"),
                                        metadata={"trainer": "verl-v1"},
                                        heartbeat_interval=options.get("heartbeat_interval",
                                                                       30.0))
        self.ledger = BatchLedger(self.run)
        self.prompts = PacelinePromptSource(self.ledger, self.train_batch_size,
                                            curriculum.info.num_samples)
        self.acks: list[ReportAck] = []
        self._dropped: list[_Row] = []
        _attach(trainer, self)

    @property
    def curriculum(self) -> Curriculum:
        return self.run.curriculum

    # ---------------------------------------------------------------- prompts

    def use_prompt_loader(self, trainer: PPOTrainer) -> None:
        """Put the Paceline source behind the loader verl just built (same dataset, batch
        size and collate function), after checking the dataset against the layout."""
        loader = trainer.train_dataloader
        check_dataset_size(len(loader.dataset), self.curriculum, "PacelineReplayBuffer")
        trainer.train_dataloader = type(loader)(  # verl's StatefulDataLoader
            dataset=loader.dataset, batch_size=loader.batch_size, num_workers=0,
            drop_last=True, collate_fn=loader.collate_fn, sampler=self.prompts)
        trainer.train_dataloader_it = None

    def _refill(self, num_prompts: int) -> int:
        """verl's refill (DAPO evictions, failed groups): `num_prompts` more prompts of
        this step, from the step's Paceline refill parts."""
        self.prompts.refill(num_prompts)
        added: int = self._add_prompts(num_prompts)
        if self.prompts.pending:
            raise RuntimeError(f"the trainer drew {num_prompts - self.prompts.pending} of the "
                               f"{num_prompts} refilled prompts")
        return added

    # ---------------------------------------------------------------- groups

    def _clear_groups(self, partition_id: str, uids: set[str]) -> None:
        """Groups verl drops (DAPO filter, surplus, failures) are read before they go."""
        if partition_id == "train" and uids:
            keys = [k for k in self.partitions[partition_id] if k.split("_")[0] in uids]
            self._dropped.extend(self._rows(partition_id, keys, {}))
        super()._clear_groups(partition_id, uids)

    def report_step(self, batch: KVBatchMeta) -> ReportAck | None:
        """Report the step whose advantages verl just computed: its trained groups (from
        `batch`) and every group dropped while it was sampled."""
        record = self.prompts.current
        step = int(self.trainer.global_steps) - 1
        if record is None or record.step != step:
            raise RuntimeError(f"verl step {step + 1} trained on paceline step "
                               f"{None if record is None else record.step}; the prompt loader "
                               "and the trainer's step count disagree")
        keys = [k for k, tag in zip(batch.keys, batch.tags, strict=True)
                if not tag.get("is_padding", False)]
        data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id,
                               select_fields=["advantages", "response_mask"])
        advantages = {k: _mean_over_response(a, m) for k, a, m in
                      zip(keys, data["advantages"].unbind(), data["response_mask"].unbind(),
                          strict=True)}
        trained = self._rows(batch.partition_id, keys, advantages)
        dropped, self._dropped = self._dropped, []
        if record.scratch.get(ALREADY_REPORTED):  # the first report stands
            record.rollouts = Rollouts(indices=[], group_ids=[], rewards=[])
            self.ledger.pop_scored()
            self.ledger.already_reported.append(record.step)
            return None
        rows = trained + dropped
        groups: dict[str, int] = {}
        indices = [r.index for r in rows]
        refills = record.scratch.get(REFILLS, [])
        assert isinstance(refills, list)
        record.check_indices(indices, "PacelineReplayBuffer", also=refills)
        record.rollouts = Rollouts(
            indices=indices, group_ids=[groups.setdefault(r.group, len(groups)) for r in rows],
            rewards=[r.rewards for r in rows], advantages=[r.advantage for r in rows],
            dropped=sorted({r.index for r in dropped})
            if self.filter_groups_metric is not None else None)
        acks = self.ledger.report_scored()
        self.acks.extend(acks)
        return acks[0] if acks else None

    def _rows(self, partition_id: str, keys: Sequence[str],
              advantages: Mapping[str, float]) -> list[_Row]:
        """One row per session (its final output; verl copies the reward to the others),
        rewards in objective order; advantage from `advantages` (0: not trained on)."""
        final: dict[str, tuple[int, str]] = {}
        for key in keys:
            uid, session, output = key.rsplit("_", 2)
            if f"{uid}_{session}" not in final or final[f"{uid}_{session}"][0] < int(output):
                final[f"{uid}_{session}"] = (int(output), key)
        chosen = [key for _, key in final.values()]
        if not chosen:
            return []
        data = tq.kv_batch_get(keys=chosen, partition_id=partition_id,
                               select_fields=[self.index_key, "rm_scores", "extra_fields"])
        if self.index_key not in set(data.keys()):  # TensorDict refuses `in`
            raise KeyError(f"the rollouts have no {self.index_key!r} field; set "
                           "sampler_kwargs.paceline.index_key to the dataset column holding "
                           "each row's global sample index")
        index = _values(data[self.index_key])
        extras = _values(data["extra_fields"])
        scores = [float(s.sum()) for s in data["rm_scores"].unbind()]
        rows = []
        for key, i, extra, score in zip(chosen, index, extras, scores, strict=True):
            info = extra.get("reward_extra_info", {}) if isinstance(extra, Mapping) else {}
            rows.append(_Row(group=key.split("_")[0], index=int(i),
                             rewards=[self._reward(info, score, o) for o in self.reward_keys],
                             advantage=advantages.get(key, 0.0)))
        return rows

    def _reward(self, info: Mapping[str, Any], score: float, objective: str) -> float:
        """The objective's raw reward. A single objective without its own key is the
        reward function's score as verl's reward manager kept it, not `rm_scores`,
        which holds the DAPO overlong penalty when it is on."""
        key = self.reward_keys[objective]
        if len(self.reward_keys) == 1 and key not in info:
            key = raw_score_key(info) or key
        if key in info:
            return float(info[key])
        if len(self.reward_keys) == 1:
            return score
        raise KeyError(f"no reward {key!r} for objective {objective!r} in the rollout's "
                       "reward_extra_info: return it from the reward function (a key of its "
                       "result dict, as ServedWeights.score does), or map it with "
                       "sampler_kwargs.paceline.reward_keys")

    def close(self) -> None:
        """Stop the run's heartbeat and release the connection."""
        self.client.close()


def _attach(trainer: PPOTrainer, buffer: PacelineReplayBuffer) -> None:
    """Hook the two trainer methods the buffer needs (on this trainer instance only):
    building the prompt loader, and computing advantages (the step is reported then)."""
    init_dataloader = trainer._init_dataloader
    compute_advantage = trainer._compute_advantage

    def _init_dataloader_from_paceline() -> None:
        init_dataloader()
        buffer.use_prompt_loader(trainer)

    def _compute_advantage_and_report(batch: KVBatchMeta, metrics: dict[str, Any]
                                      ) -> KVBatchMeta:
        batch = compute_advantage(batch, metrics)
        if batch.partition_id == "train":
            ack = buffer.report_step(batch)
            if ack is not None and ack.groups_dropped is not None:
                metrics["paceline/groups_dropped"] = ack.groups_dropped
        return batch

    trainer._init_dataloader = _init_dataloader_from_paceline
    trainer._compute_advantage = _compute_advantage_and_report


def _values(column: Any) -> list[Any]:
    """A TransferQueue column as a list of Python values (tensors, NonTensorStack, lists)."""
    if isinstance(column, torch.Tensor) and not column.is_nested:
        values: list[Any] = column.tolist()
        return values
    return [getattr(v, "data", v) for v in (column.tolist() if hasattr(column, "tolist")
                                            else list(column))]


def _mean_over_response(advantages: torch.Tensor, mask: torch.Tensor) -> float:
    weights = mask.to(torch.float64)
    return float((advantages.double() * weights).sum() / weights.sum().clamp(min=1.0))
