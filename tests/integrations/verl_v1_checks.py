"""Checks of `paceline.integrations.verl_v1` against verl 0.9's real v1 trainer pieces.

Run by test_verl_v1_integration.py in a subprocess whose PYTHONPATH puts verl 0.9.1 and
TransferQueue (with pyzmq and msgspec) ahead of the venv's verl 0.7.1:
`python verl_v1_checks.py WORKDIR CHECK...`. Exits non-zero (an assertion) on the first
failure.

What is real: a local Ray and TransferQueue (its SimpleStorage), verl's `PPOTrainerSync`
built from verl's packaged trainer config (its constructor loads our class through
`trainer.v1.sampler.custom_sampler`), its own `_init_dataloader`, `prepare_step`,
`step` / `_step_once`, `_balance_batch`, `_compute_advantage` (GRPO),
`_save_checkpoint` / `_load_checkpoint` (the loader state in `data.pt`), and our class's
base, verl's sync `ReplayBuffer` with DAPO's group filter and refills. What stands in
for the GPU parts: the worker group (no model; `_compute_old_log_prob` and
`_update_actor` record that they ran), and the agent loop, which writes each prompt's
`rollout.n` trajectories into TransferQueue the way verl's `AgentLoopWorkerTQ` does
(keys `{uid}_{session}_0`, the prompt's fields, `rm_scores`, `reward_extra_info`) with
rewards from `ServedWeights.score`.
"""

from __future__ import annotations

import logging
import sys
import uuid
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
import verl
from integration_support import reports
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

import paceline
from paceline.integrations.verl import ServedWeights
from paceline.integrations.verl_v1 import PacelinePromptSource, PacelineReplayBuffer, redo_order

ROWS, BATCH, N, STEPS = 24, 4, 2, 6
SPEC = {"distributions": [{"name": "easy", "size": 16}, {"name": "hard", "size": 8}],
        "objectives": ["correct", "short"], "sampler": "dump_ucb",
        "weighting": {"kind": "fixed", "weights": [3, 1]}, "batch_size": BATCH}
UPDATED: list[int] = []
UIDS: dict[object, int] = {}


def _uid() -> uuid.UUID:
    """verl names each prompt group with uuid4; which surplus groups its sync loop keeps
    follows set order, so the uninterrupted and the resumed run get the same names for
    the same step (the step and a count within it)."""
    step = UIDS.get("step", 0)
    count = UIDS[("count", step)] = UIDS.get(("count", step), -1) + 1
    return uuid.UUID(int=(step << 32) + count)


trainer_base.uuid = SimpleNamespace(uuid4=_uid)  # type: ignore[attr-defined]


class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The dataset verl builds from `data.custom_cls` (RLHFDataset's row layout: the
    prompt and `index`, the global sample index)."""

    def __init__(self, data_files: Any = None, tokenizer: Any = None, processor: Any = None,
                 config: Any = None, max_samples: int = -1) -> None:
        self.size = int(config.get("paceline_rows", ROWS)) if config is not None else ROWS

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": torch.tensor([i, i + 1]), "raw_prompt": [f"prompt {i}"],
                "index": i, "data_source": "x"}


def correct(index: int, session: int, variant: int) -> float:
    """Every third prompt is answered the same in both sessions (DAPO drops its group);
    in the variant (a resumed trainer's new rollouts) every even one too."""
    if index % 3 == 0 or (variant and index % 2 == 0):
        return 1.0
    return float((index + session + variant) % 2 == 0)


class AgentLoop:
    """verl's AgentLoopManagerTQ without a model: each prompt's `n` sessions are written
    to TransferQueue as the real worker writes them, then the prompt is marked finished."""

    def __init__(self, weights: ServedWeights, variant: int = 0, until: int = 0) -> None:
        self.weights = weights
        self.variant = variant  # other rewards, for verl steps up to `until` (redone ones)
        self.until = until
        self.generated: dict[int, list[int]] = {}

    def generate_sequences(self, batch: Any) -> None:
        uids = list(batch["uid"])
        indices = [int(i) for i in batch["index"]]
        steps = batch["global_steps"]
        global_steps = int(getattr(steps, "data", steps))
        for uid, index in zip(uids, indices, strict=True):
            self.generated.setdefault(global_steps, []).append(index)
            for session in range(N):
                length = 2 + (index + session) % 3
                variant = self.variant if global_steps <= self.until else 0
                reward, info = self.score(index, session, variant, length)
                scores = torch.zeros(length)
                scores[-1] = reward
                field = {"uid": uid, "index": index, "session_id": session,
                         "global_steps": global_steps,
                         "prompts": torch.tensor([index, index + 1]),
                         "responses": torch.arange(length), "response_mask": torch.ones(length),
                         "rm_scores": scores,
                         "extra_fields": {"reward_extra_info": info}}
                tq.kv_batch_put(keys=[f"{uid}_{session}_0"], partition_id="train",
                                fields=list_of_dict_to_tensordict([field]),
                                tags=[{"status": "success", "prompt_len": 2,
                                       "response_len": length, "seq_len": 2 + length,
                                       "global_steps": global_steps}])
            tq.kv_put(key=uid, partition_id="train", tag={"status": "finished"})

    def score(self, index: int, session: int, variant: int, length: int
              ) -> tuple[float, dict[str, Any]]:
        """The sequence reward (`rm_scores`) and the reward extra info of a rollout."""
        result = self.weights.score({"correct": correct(index, session, variant),
                                     "short": 0.5})
        return result["score"], {"correct": result["correct"], "short": result["short"]}


class DigitTokenizer:
    """What DAPO's reward manager decodes responses with: token t is digit t."""

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(str(int(t)) for t in ids)


class DapoAgentLoop(AgentLoop):
    """Rollouts scored by verl's own reward-loop `DAPORewardManager` with its overlong
    buffer on: a float reward function (kept under `acc`) and, in `rm_scores`, that score
    plus the overlong penalty (responses of 2 to 4 tokens, 4 at most, buffer 2: 3 and 4
    tokens are penalised)."""

    def __init__(self, weights: ServedWeights) -> None:
        super().__init__(weights)
        self.manager = DAPORewardManager(OmegaConf.create({"reward": {"reward_kwargs": {
            "max_resp_len": 4, "overlong_buffer_cfg": {
                "enable": True, "len": 2, "penalty_factor": 1.0, "log": False}}}}),
            DigitTokenizer(), self.compute_score)

    @staticmethod
    def compute_score(data_source: str, solution_str: str, ground_truth: str,
                      extra_info: Any = None) -> float:
        return float(solution_str[0] == ground_truth)

    def score(self, index: int, session: int, variant: int, length: int
              ) -> tuple[float, dict[str, Any]]:
        answer = 1 if correct(index, session, variant) else 2
        data = DataProto.from_single_dict({
            "responses": torch.tensor([[answer] + [3] * (length - 1)]),
            "attention_mask": torch.ones(1, 2 + length, dtype=torch.long),
            "data_source": np.array(["x"], dtype=object),
            "reward_model": np.array([{"ground_truth": "1"}], dtype=object)})
        out = self.manager.loop.run_until_complete(self.manager.run_single(data))
        return float(out["reward_score"]), dict(out["reward_extra_info"])


class Workers:
    """The actor worker group's surface the trainer touches outside the stand-ins."""

    def __init__(self) -> None:
        self._dispatch_info = {"actor": [0]}

    def load_checkpoint(self, local_path: str, del_local_after_load: bool = False) -> None:
        pass

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        pass


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Replicas:
    """The checkpoint manager that syncs weights to the rollout replicas (no replicas)."""

    def sleep_replicas(self) -> None:
        pass

    def update_weights(self, global_steps: int) -> None:
        pass


class Rewards:
    """Streaming rewards (scored by the agent loop): nothing colocated to call."""

    def __init__(self) -> None:
        self.reward_loop_worker_handles: list[Any] = []


def config(work: Path, db: Path, run_id: str, curriculum: str = "v1", dapo: bool = True,
           spec: dict[str, Any] = SPEC, **data: Any) -> Any:
    packaged = resources.files("verl") / "trainer/config/_generated_ppo_trainer.yaml"
    base = OmegaConf.load(str(packaged))
    paceline_options = {"embedded": str(db), "curriculum": curriculum, "run_id": run_id,
                        "heartbeat_interval": None, "create": spec}
    overrides = OmegaConf.create({
        "data": {"train_batch_size": BATCH, "dataloader_num_workers": 0, "train_files": [],
                 "val_files": [], "custom_cls": {"path": "pkg://__main__", "name": "Rows"},
                 **data},
        "algorithm": {"adv_estimator": "grpo", "use_kl_in_reward": False,
                      "filter_groups": {"enable": dapo, "metric": "reward",
                                        "max_inflight_gen_batches": 1}},
        "actor_rollout_ref": {"rollout": {"n": N}, "actor": {"use_kl_loss": False,
                                                               "ppo_mini_batch_size": BATCH},
                              "model": {"path": "none"}},
        "reward": {"reward_model": {"enable": False}},
        "critic": {"enable": False},
        "trainer": {"use_v1": True, "total_epochs": 100, "total_training_steps": STEPS,
                    "critic_warmup": 0, "default_local_dir": str(work / f"ckpt-{db.stem}"),
                    "resume_mode": "auto", "balance_batch": True,
                    "v1": {"trainer_mode": "sync", "sampler": {
                        "custom_sampler": {"path": "pkg://paceline.integrations.verl_v1",
                                           "name": "PacelineReplayBuffer"},
                        "sampler_kwargs": {"paceline": paceline_options}}}},
    })
    return OmegaConf.merge(base, overrides)


def trainer(work: Path, db: Path, run_id: str, redo: int = 0, **kwargs: Any
            ) -> PPOTrainerSync:
    """verl's sync v1 trainer as `init()` builds it, minus the workers and the model."""
    UIDS.clear()
    made = PPOTrainerSync(config=config(work, db, run_id, **kwargs))
    made.tokenizer = type("Tokenizer", (), {"eos_token_id": 0, "pad_token_id": 0})()
    made.processor = None
    made.actor_rollout_wg = Workers()
    made.reward_loop_manager = Rewards()
    made.checkpoint_manager = Replicas()
    made.curr_step_profile = False
    made._init_dataloader()
    made._load_checkpoint()
    buffer = made.replay_buffer
    assert isinstance(buffer, PacelineReplayBuffer)
    made.agent_loop_manager = AgentLoop(ServedWeights(buffer.curriculum, ttl=0.0), 1, redo)
    made._compute_old_log_prob = lambda batch, metrics: batch  # type: ignore[method-assign]

    def update_actor(batch: Any, metrics: dict[str, Any]) -> Any:
        UPDATED.append(made.global_steps)
        return batch
    made._update_actor = update_actor  # type: ignore[method-assign]
    return made


def train(made: PPOTrainerSync, last: int, save_at: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """fit()'s loop body (its step, checkpoint and cleanup) up to verl step `last`."""
    metrics_per_step = []
    if made.global_steps == 0 or made.global_steps < last:
        made.global_steps += 1
    while made.global_steps <= last:
        metrics: dict[str, Any] = {}
        UIDS["step"] = made.global_steps
        batch = made.step(metrics, {})
        if made.global_steps in save_at:
            made._save_checkpoint()
        tq.kv_clear(keys=batch.keys, partition_id=batch.partition_id)
        metrics_per_step.append(metrics)
        made.global_steps += 1
    return metrics_per_step


def state(db: Path, curriculum: str = "v1") -> Any:
    with paceline.Client.embedded(db) as client:
        return client.curriculum(curriculum).state()


def check_interfaces() -> None:
    """The hook's contract, read from the installed verl: the buffer is a ReplayBuffer
    built with exactly the keyword arguments verl's `_build_replay_buffer` passes a custom
    sampler, and `sample(global_steps, partition_id, batch_size)`."""
    import inspect

    assert verl.__version__.startswith("0.9"), verl.__version__
    assert issubclass(PacelineReplayBuffer, ReplayBuffer)
    source = inspect.getsource(trainer_base.PPOTrainer._build_replay_buffer)
    assert "custom_sampler.path, custom_sampler.name" in source, source
    for name in ("trainer_mode", "trainer_config", "max_off_policy_threshold",
                 "max_off_policy_strategy", "sampler_kwargs", "refill_fn"):
        assert f"{name}=" in source, name
        assert name in inspect.signature(PacelineReplayBuffer.__init__).parameters
    assert list(inspect.signature(ReplayBuffer.sample).parameters) == [
        "self", "global_steps", "partition_id", "batch_size"]
    assert issubclass(PacelinePromptSource, torch.utils.data.Sampler)
    check_redo_order()


def check_redo_order() -> None:
    """A redone step's refill order (unserved samples ascending, then the served ones,
    round-robin) computed without listing the layout equals the listed definition."""
    import random

    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 60)
        served = rng.sample(range(n), rng.randint(0, n))
        order = [i for i in range(n) if i not in set(served)] + served
        start, count = rng.randint(0, 3 * n), rng.randint(0, 2 * n)
        want = [order[p % len(order)] for p in range(start, start + count)]
        assert redo_order(n, served, start, count) == want, (n, served, start, count)
    assert redo_order(10_000_000, [5, 0, 9_999_999], 9_999_996, 4) == [9_999_998, 5, 0,
                                                                      9_999_999]


def check_steps(work: Path) -> None:
    """Batches come from Paceline (the step's batch, then its refill parts), every group
    generated is reported once under the step's key, DAPO's dropped groups included."""
    UPDATED.clear()
    db = work / "steps.db"
    made = trainer(work, db, "steps")
    buffer = made.replay_buffer
    assert isinstance(buffer, PacelineReplayBuffer)
    assert made.train_dataloader.sampler is buffer.prompts
    metrics = train(made, 3)
    assert UPDATED == [1, 2, 3]  # one actor update per step, on a full batch
    loop = made.agent_loop_manager
    assert isinstance(loop, AgentLoop)
    assert [a.seq for a in buffer.acks] == [1, 2, 3], buffer.acks
    stored = reports(db, "v1")
    assert [r.step for r in stored] == [0, 1, 2]
    for step, (ack, report) in enumerate(zip(buffer.acks, stored, strict=True)):
        generated = loop.generated[step + 1]
        batch = buffer.run.next_batch(step, BATCH)  # asking again: the same batch
        assert generated[:BATCH] == batch.indices, (generated, batch.indices)
        refilled = []
        for part in range(1, 65):  # the parts served: a reported step gets no new one
            try:
                refilled += buffer.run.refill(step, part, BATCH).indices
            except paceline.errors.PacelineError:
                break
        assert generated[BATCH:] == refilled[:len(generated) - BATCH]  # refills, in order
        assert sorted(report.indices) == sorted(generated)  # every group generated
        assert ack.groups_dropped is not None
        assert ack.rollouts_generated == len(generated) * N
        assert ack.rollouts_trained == BATCH * N, ack  # a full batch of informative groups
        assert ack.groups_dropped == len(generated) - BATCH
        assert metrics[step]["paceline/groups_dropped"] == ack.groups_dropped
        rows = np.asarray(report.rollout_indices)
        assert report.advantages is not None
        assert np.all(report.advantages[rows % 3 == 0] == 0.0)  # all-equal: dropped
        assert np.all(report.rewards[:, 1] == 0.5)
        assert np.all(report.rewards[rows % 3 == 0, 0] == 1.0)
        informative = report.advantages[rows % 3 != 0]
        assert np.count_nonzero(informative) == BATCH * N  # trained groups: verl's GRPO
        assert np.allclose(np.abs(informative[informative != 0]), 0.7071, atol=1e-3)
    assert sum(a.groups_dropped or 0 for a in buffer.acks) > 0  # the filter did drop
    buffer.close()


def check_single_objective_raw(work: Path) -> None:
    """A single objective is reported with the reward function's own score (what verl's
    DAPO reward manager keeps under `acc`), not `rm_scores`, which carry its overlong
    penalty and which verl trains on."""
    db = work / "single.db"
    spec = {k: v for k, v in SPEC.items() if k != "weighting"}
    made = trainer(work, db, "single", curriculum="v1-single", dapo=False,
                   spec={**spec, "objectives": ["correct"]})
    buffer = made.replay_buffer
    assert isinstance(buffer, PacelineReplayBuffer)
    made.agent_loop_manager = DapoAgentLoop(ServedWeights(buffer.curriculum, ttl=0.0))
    train(made, 2)
    stored = reports(db, "v1-single")
    assert [r.step for r in stored] == [0, 1]
    for report in stored:
        rows = np.asarray(report.rollout_indices)
        got: dict[int, list[float]] = {}
        for index, reward in zip(rows.tolist(), report.rewards[:, 0].tolist(), strict=True):
            got.setdefault(index, []).append(reward)
        want = {i: sorted(correct(i, s, 0) for s in range(N)) for i in got}
        assert {i: sorted(v) for i, v in got.items()} == want, (got, want)
    buffer.close()


def check_part_served_before(work: Path) -> None:
    """A step whose first attempt (a process that crashed before reporting) was served
    refill part 1 with another size: the redo takes the part as served (asking its own
    size was refused IDEMPOTENCY_CONFLICT, ending the run), then asks further parts."""
    db = work / "served.db"
    made = trainer(work, db, "served")
    buffer = made.replay_buffer
    assert isinstance(buffer, PacelineReplayBuffer)
    for step in range(STEPS):  # the first step whose batch has an all-equal group
        first = buffer.run.next_batch(step, BATCH)
        if any(i % 3 == 0 for i in first.indices):
            break
        train(made, step + 1)
    else:
        raise AssertionError("no step needed a refill")
    before = buffer.run.refill(step, 1, 1).indices  # the crashed attempt's part 1
    train(made, step + 1)
    generated = made.agent_loop_manager.generated[step + 1]
    assert generated[:BATCH] == first.indices
    assert generated[BATCH:BATCH + 1] == before  # part 1 as it was served
    assert buffer.run.refill(step, 1).indices == before
    stored = reports(db, "v1")
    assert [r.step for r in stored] == list(range(step + 1))
    assert sorted(stored[-1].indices) == sorted(generated)
    buffer.close()


def check_crash_and_resume(work: Path) -> None:
    """Killed after step 5, resumed from the checkpoint of step 2 with new rollouts for the
    redone steps: the curriculum ends where an uninterrupted run ends."""
    straight = trainer(work, work / "straight.db", "r")
    train(straight, STEPS)
    want = state(work / "straight.db")
    straight.replay_buffer.close()
    first = trainer(work, work / "resumed.db", "r")
    train(first, 5, save_at=(2,))
    first.replay_buffer.close()
    resumed = trainer(work, work / "resumed.db", "r", redo=5)  # a new process
    assert resumed.global_steps == 2  # verl's _load_checkpoint found global_step_2
    warnings = Warnings()
    logging.getLogger("paceline.integrations.verl_v1").addHandler(warnings)
    train(resumed, STEPS)
    # a redone step whose new rollouts needed a refill part it never had was refilled
    # from unserved samples, trained, and not reported again
    assert any("needs a refill it never had" in m for m in warnings.messages), \
        warnings.messages
    buffer = resumed.replay_buffer
    assert isinstance(buffer, PacelineReplayBuffer)
    assert set(buffer.ledger.already_reported) == {2, 3, 4}, buffer.ledger.already_reported
    got = state(work / "resumed.db")
    assert got.seq == want.seq == STEPS, (got.seq, want.seq)
    assert got == want
    buffer.close()


def check_bad_input(work: Path) -> None:
    """A dataset off the layout, another run's or curriculum's checkpoint: refused at
    start-up, before any batch is drawn or report sent."""
    db = work / "bad.db"
    made = trainer(work, db, "a")
    train(made, 2, save_at=(2,))
    made.replay_buffer.close()
    seq = state(db).seq
    assert seq == 2
    with pytest.raises(ValueError, match="has 20 rows but curriculum 'v1' lays out 24"):
        trainer(work, db, "c", paceline_rows=20)
    other = trainer(work, db, "b")  # resumes from a's checkpoint (same directory)
    with pytest.raises(ValueError, match=r"run 'a'.*run 'b'"):
        other.step({}, {})
    other.replay_buffer.close()
    spec = {**SPEC, "distributions": [{"name": "all", "size": ROWS}]}
    elsewhere = config(work, db, "a", curriculum="v1-other")
    elsewhere.trainer.v1.sampler.sampler_kwargs.paceline.create = spec
    moved = PPOTrainerSync(config=elsewhere)
    moved.tokenizer, moved.processor = None, None
    moved.actor_rollout_wg = Workers()
    moved._init_dataloader()
    moved._load_checkpoint()
    moved.agent_loop_manager = AgentLoop(ServedWeights(moved.replay_buffer.curriculum))
    with pytest.raises(ValueError, match=r"belongs to curriculum 'v1'.*curriculum 'v1-other'"):
        moved.prepare_step()
    moved.replay_buffer.close()
    bad = config(work, db, "a")
    bad.trainer.v1.trainer_mode = "colocate_async"
    with pytest.raises(ValueError, match="trainer_mode=sync"):
        PPOTrainerSync(config=bad)
    bad = config(work, db, "a")
    bad.trainer.v1.sampler.sampler_kwargs = {}
    with pytest.raises(ValueError, match=r"sampler_kwargs\.paceline\.curriculum"):
        PPOTrainerSync(config=bad)
    with pytest.raises(ValueError, match="dataloader_num_workers=0"):
        PPOTrainerSync(config=config(work, db, "a", dataloader_num_workers=2))
    assert state(db).seq == seq  # nothing was reported
    with paceline.Client.embedded(db) as client:
        assert client.curriculum("v1-other").state().seq == 0


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    checks = sys.argv[2:] or ["interfaces", "steps", "single", "served", "resume",
                              "bad_input"]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        for check in checks:
            {"interfaces": lambda: check_interfaces(), "steps": lambda: check_steps(workdir),
             "single": lambda: check_single_objective_raw(workdir),
             "served": lambda: check_part_served_before(workdir),
             "resume": lambda: check_crash_and_resume(workdir),
             "bad_input": lambda: check_bad_input(workdir)}[check]()
            print("check passed:", check, flush=True)
    finally:
        tq.close()
        ray.shutdown()
    print("verl v1 checks passed with verl", verl.__version__)
