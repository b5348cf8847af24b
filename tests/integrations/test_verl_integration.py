"""verl's real curriculum-sampler machinery: the sampler is built by verl's own
`create_rl_sampler` from a `data` config loaded from verl's packaged defaults, feeds a
`StatefulDataLoader` over verl's `RLHFDataset` (a parquet file written here), and is
updated with `DataProto` batches whose advantages come from verl's GRPO estimator — the
trainer's step loop without Ray workers or a model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("verl.experimental.dataset.sampler")
pytest.importorskip("verl.trainer.main_ppo")

import pandas as pd
import torch
from integration_support import reports, served_indices
from omegaconf import DictConfig, OmegaConf
from torchdata.stateful_dataloader import StatefulDataLoader
from verl import DataProto
from verl.experimental.dataset.sampler import AbstractCurriculumSampler
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.trainer.main_ppo import create_rl_dataset, create_rl_sampler
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.utils.dataset.rl_dataset import collate_fn

import paceline
from paceline.integrations.verl import PacelineCurriculumSampler, ServedWeights

ROWS = 16
BATCH = 4
ROLLOUTS = 2
STEPS = 3
RESPONSE = 5


def write_parquet(path: Path) -> Path:
    """verl's data format: chat prompt, data source, ground truth, extra_info.index."""
    pd.DataFrame({
        "data_source": ["easy"] * 12 + ["hard"] * 4,
        "prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(ROWS)],
        "ability": ["math"] * ROWS,
        "reward_model": [{"style": "rule", "ground_truth": str(i)} for i in range(ROWS)],
        "extra_info": [{"index": i, "split": "train"} for i in range(ROWS)],
    }).to_parquet(path)
    return path


def data_config(tmp_path: Path, db: Path, **paceline_options: Any) -> DictConfig:
    defaults = resources.files("verl") / "trainer/config/data/legacy_data.yaml"
    config = OmegaConf.load(str(defaults))
    assert isinstance(config, DictConfig)
    config.train_files = str(write_parquet(tmp_path / "train.parquet"))
    config.train_batch_size = BATCH
    config.dataloader_num_workers = 0
    config.filter_overlong_prompts = False
    config.cache_dir = str(tmp_path / "cache")
    config.sampler.class_path = "pkg://paceline.integrations.verl"
    config.sampler.class_name = "PacelineCurriculumSampler"
    config.sampler.paceline = {
        "embedded": str(db), "curriculum": "verl", "heartbeat_interval": None,
        "create": {"distributions": [{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
                   "objectives": ["correct", "short"], "sampler": "uniform",
                   "weighting": {"kind": "fixed", "weights": [3, 1]}, "batch_size": BATCH},
        **paceline_options}
    return config


def rollout(batch_dict: dict[str, Any], weights: ServedWeights, seed: int) -> DataProto:
    """What verl's step does to a loaded batch before `update`: uids, n rollouts per
    prompt, rewards (the reward function's dict), GRPO advantages, a row shuffle
    (balance_batch reorders rows)."""
    batch = DataProto.from_single_dict(batch_dict)
    batch.non_tensor_batch["uid"] = np.array([f"uid-{seed}-{i}" for i in range(len(batch))],
                                             dtype=object)
    batch = batch.repeat(repeat_times=ROLLOUTS, interleave=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, RESPONSE + 1, size=len(batch))
    mask = torch.tensor([[1] * n + [0] * (RESPONSE - n) for n in lengths], dtype=torch.long)
    results = [weights.score({"correct": float(rng.integers(0, 2)), "short": 1.0 / n})
               for n in lengths]
    scores = torch.zeros(len(batch), RESPONSE)
    scores[torch.arange(len(batch)), torch.tensor(lengths - 1)] = torch.tensor(
        [r["score"] for r in results])
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=scores, response_mask=mask, index=batch.non_tensor_batch["uid"])
    batch.batch["response_mask"] = mask
    batch.batch["token_level_scores"] = scores
    batch.batch["advantages"] = advantages
    for key in ("correct", "short"):
        batch.non_tensor_batch[key] = np.array([r[key] for r in results])
    batch.reorder(torch.from_numpy(rng.permutation(len(batch))))
    return batch


def rollout_rows(groups: Any, *columns: Any) -> dict[Any, list[tuple[float, ...]]]:
    """Rollouts as rounded tuples (index, correct, short, advantage), by group."""
    found: dict[Any, list[tuple[float, ...]]] = {}
    for group, *values in zip(groups, *columns, strict=True):
        found.setdefault(group, []).append(tuple(round(float(v), 6) for v in values))
    return {group: sorted(rows) for group, rows in found.items()}


def test_verl_drives_the_sampler_and_its_updates_arrive(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    config = data_config(tmp_path, db, run_id="verl")
    dataset = create_rl_dataset(config.train_files, config, None, None)
    sampler = create_rl_sampler(config, dataset)
    assert isinstance(sampler, PacelineCurriculumSampler)
    assert isinstance(sampler, AbstractCurriculumSampler)
    loader = StatefulDataLoader(dataset=dataset, batch_size=BATCH, num_workers=0,
                                drop_last=True, collate_fn=collate_fn, sampler=sampler)
    assert len(loader) == ROWS // BATCH
    weights = ServedWeights(sampler.curriculum, ttl=0.0)
    trained: list[DataProto] = []
    for step, batch_dict in zip(range(STEPS), loader, strict=False):
        assert sampler.batch is not None and sampler.batch.step == step
        assert list(batch_dict["index"]) == sampler.batch.indices
        batch = rollout(batch_dict, weights, seed=step)
        sampler.update(batch=batch)  # what RayPPOTrainer.fit does after each step
        trained.append(batch)
    run_id = sampler.run.run_id
    state = sampler.curriculum.state()
    assert sampler.state_dict()["next_step"] == STEPS
    sampler.close()

    assert state.reward_weights == pytest.approx({"correct": 0.75, "short": 0.25})
    stored = reports(db, "verl")
    assert [r.step for r in stored] == list(range(STEPS))
    for report, batch in zip(stored, trained, strict=True):
        served = served_indices(db, "verl", run_id, report.step)
        assert sorted(report.indices) == sorted(served)  # one group per served prompt
        # Every rollout kept its own index, rewards and advantage through the shuffle, and
        # the groups are verl's uids.
        assert report.advantages is not None
        token_adv = batch.batch["advantages"][:, 0].numpy()  # GRPO: constant per response
        nt = batch.non_tensor_batch
        sent = rollout_rows(report.group_of, report.rollout_indices, report.rewards[:, 0],
                            report.rewards[:, 1], report.advantages)
        made = rollout_rows(nt["uid"], nt["index"], nt["correct"], nt["short"], token_adv)
        assert sorted(sent.values()) == sorted(made.values())
        # The reward function scored with the served weights: score = .75 correct + .25 short.
        total = batch.batch["token_level_scores"].sum(-1).numpy()
        expected = 0.75 * batch.non_tensor_batch["correct"] + 0.25 * batch.non_tensor_batch[
            "short"]
        np.testing.assert_allclose(total, expected.astype(float), rtol=1e-6)


def test_a_resumed_sampler_continues_at_the_next_step(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    config = data_config(tmp_path, db)
    dataset = create_rl_dataset(config.train_files, config, None, None)
    first = create_rl_sampler(config, dataset)
    assert isinstance(first, PacelineCurriculumSampler)
    iterator = iter(first)
    step0 = [next(iterator) for _ in range(BATCH)]
    checkpoint = first.state_dict()
    run_id = first.run.run_id
    first.close()

    resumed_config = data_config(tmp_path, db, run_id=run_id)
    resumed = create_rl_sampler(resumed_config, dataset)
    assert isinstance(resumed, PacelineCurriculumSampler)
    resumed.load_state_dict(checkpoint)
    step1 = [next(iter(resumed)) for _ in range(1)]
    assert resumed.batch is not None and resumed.batch.step == 1
    assert resumed.run.run_id == run_id
    resumed.close()
    assert step0 == served_indices(db, "verl", run_id, 0)
    assert step1[0] == served_indices(db, "verl", run_id, 1)[0]


def test_update_rejects_rows_that_were_not_served(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    config = data_config(tmp_path, db)
    sampler = PacelineCurriculumSampler(list(range(ROWS)), config)
    try:
        served = [next(iter(sampler)) for _ in range(1)]
        assert sampler.batch is not None
        stray = next(i for i in range(ROWS) if i not in sampler.batch.indices)
        batch = DataProto.from_single_dict({
            "dummy_tensor": torch.zeros(2, 1),
            "index": np.array([served[0], stray], dtype=object),
            "uid": np.array(["a", "b"], dtype=object),
            "correct": np.array([1.0, 0.0]), "short": np.array([0.5, 0.5])})
        with pytest.raises(ValueError, match="not served for step 0"):
            sampler.update(batch)
    finally:
        sampler.close()
    with paceline.Client.embedded(db) as client:
        assert client.curriculum("verl").info.seq == 0


def test_verls_checkpointed_loader_resumes_at_the_next_served_step(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    config = data_config(tmp_path, db, run_id="resume")
    dataset = create_rl_dataset(config.train_files, config, None, None)

    def loader(sampler: Any) -> StatefulDataLoader:
        return StatefulDataLoader(dataset=dataset, batch_size=BATCH, num_workers=0,
                                  drop_last=True, collate_fn=collate_fn, sampler=sampler)

    first = create_rl_sampler(config, dataset)
    before = loader(first)
    batches = iter(before)
    for _ in range(2):
        next(batches)
    checkpoint = before.state_dict()
    first.close()

    resumed = create_rl_sampler(config, dataset)  # a new process: a fresh sampler
    after = loader(resumed)
    after.load_state_dict(checkpoint)
    batch_dict = next(iter(after))
    assert list(batch_dict["index"]) == served_indices(db, "verl", "resume", 2)
    resumed.close()


def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """verl 0.7's loop killed after step 5 and resumed from its checkpoint after step 2
    (a new sampler, the loader state restored): steps 3-5 are redone, the service keeps
    their first reports, and the curriculum ends as an uninterrupted run's."""
    steps = 8  # two epochs

    def trained(db: Path, first: int, last: int, checkpoint: Any = None,
                save_after: int | None = None) -> tuple[Any, Any]:
        config = data_config(tmp_path, db, run_id="crash")
        config.sampler.paceline.create.sampler = "dump_ucb"  # batches follow the reports
        dataset = create_rl_dataset(config.train_files, config, None, None)
        sampler = create_rl_sampler(config, dataset)
        loader = StatefulDataLoader(dataset=dataset, batch_size=BATCH, num_workers=0,
                                    drop_last=True, collate_fn=collate_fn, sampler=sampler)
        if checkpoint is not None:
            loader.load_state_dict(checkpoint)
        weights = ServedWeights(sampler.curriculum, ttl=0.0)
        saved, batches = None, iter(loader)
        for step in range(first, last):
            try:
                batch_dict = next(batches)
            except StopIteration:  # the next epoch, as verl's fit loop does
                batches = iter(loader)
                batch_dict = next(batches)
            assert sampler.batch is not None and sampler.batch.step == step
            sampler.update(batch=rollout(batch_dict, weights, seed=step))
            if step == save_after:
                saved = loader.state_dict()
        state = sampler.curriculum.state()
        sampler.close()
        return saved, state

    _, straight = trained(tmp_path / "straight.db", 0, steps)
    checkpoint, _ = trained(tmp_path / "resumed.db", 0, 6, save_after=2)
    _, resumed = trained(tmp_path / "resumed.db", 3, steps, checkpoint=checkpoint)
    assert resumed.seq == straight.seq == steps
    assert resumed == straight


class DigitTokenizer:
    """The tokenizer DAPO's reward manager decodes responses with: token t is digit t."""

    def decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> str:
        return "".join(str(int(t)) for t in ids)


@pytest.mark.parametrize("result", ["float", "dict"])
def test_a_single_objective_reports_the_reward_before_the_dapo_overlong_penalty(
        tmp_path: Path, result: str) -> None:
    """verl's DAPO reward manager (the reward loop's, verl 0.7's trainer) adds its
    overlong-buffer penalty to the sequence score (`rm_scores`, trained on as
    `token_level_scores`) and keeps the reward function's own score in the reward extra
    info (`acc` for a float result, `score` for a dict). A single objective reports
    the latter: the penalty is verl's shaping, not the objective."""
    db = tmp_path / "paceline.db"
    config = data_config(tmp_path, db, run_id="dapo", create={
        "distributions": [{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        "objectives": ["correct"], "sampler": "uniform", "batch_size": BATCH})
    dataset = create_rl_dataset(config.train_files, config, None, None)
    sampler = create_rl_sampler(config, dataset)
    assert isinstance(sampler, PacelineCurriculumSampler)
    loader = StatefulDataLoader(dataset=dataset, batch_size=BATCH, num_workers=0,
                                drop_last=True, collate_fn=collate_fn, sampler=sampler)

    def compute_score(data_source: str, solution_str: str, ground_truth: str,
                      extra_info: Any = None) -> Any:
        score = float(solution_str[0] == str(int(ground_truth) % 3)) + 0.5 * len(solution_str)
        return score if result == "float" else {"score": score, "pred": solution_str[0]}

    # Responses of up to RESPONSE = 5 tokens; buffer 2: 4 and 5 tokens are penalised.
    manager = DAPORewardManager(OmegaConf.create({"reward": {"reward_kwargs": {
        "max_resp_len": RESPONSE, "overlong_buffer_cfg": {
            "enable": True, "len": 2, "penalty_factor": 1.0, "log": False}}}}),
        DigitTokenizer(), compute_score)
    raw_key = "acc" if result == "float" else "score"
    trained = []
    for step, batch_dict in zip(range(STEPS), loader, strict=False):
        rows = BATCH * ROLLOUTS
        rng = np.random.default_rng(step)
        lengths = rng.integers(1, RESPONSE + 1, size=rows)
        mask = torch.tensor([[1] * n + [0] * (RESPONSE - n) for n in lengths])
        repeat = np.repeat(np.arange(BATCH), ROLLOUTS)
        nt = {k: np.asarray(batch_dict[k], dtype=object)[repeat]
              for k in ("index", "data_source", "reward_model", "extra_info")}
        nt["uid"] = np.array([f"uid-{step}-{i}" for i in repeat], dtype=object)
        batch = DataProto.from_single_dict({
            "prompts": torch.ones(rows, 2, dtype=torch.long),
            "responses": torch.from_numpy(rng.integers(0, 3, size=(rows, RESPONSE))) * mask,
            "attention_mask": torch.cat([torch.ones(rows, 2, dtype=torch.long), mask], -1),
            "response_mask": mask, **nt})
        # The reward loop: one run_single per rollout, rm_scores at the last token.
        outputs = [manager.loop.run_until_complete(manager.run_single(batch[i:i + 1]))
                   for i in range(rows)]
        scores = torch.zeros(rows, RESPONSE)
        scores[torch.arange(rows), torch.from_numpy(lengths - 1)] = torch.tensor(
            [o["reward_score"] for o in outputs], dtype=torch.float32)
        batch.batch["token_level_scores"] = scores
        for key in outputs[0]["reward_extra_info"]:  # RayPPOTrainer's non_tensor update
            batch.non_tensor_batch[key] = np.array(
                [o["reward_extra_info"][key] for o in outputs])
        advantages, _ = compute_grpo_outcome_advantage(
            token_level_rewards=scores, response_mask=mask, index=nt["uid"])
        batch.batch["advantages"] = advantages
        sampler.update(batch=batch)
        trained.append(batch)
    sampler.close()

    stored = reports(db, "verl")
    assert [r.step for r in stored] == list(range(STEPS))
    penalised = 0
    for report, batch in zip(stored, trained, strict=True):
        nt = batch.non_tensor_batch
        sequence = batch.batch["token_level_scores"].sum(-1).numpy()
        raw = np.asarray(nt[raw_key], dtype=np.float64)
        penalised += int((np.abs(sequence - raw) > 1e-6).sum())
        sent = rollout_rows(report.group_of, report.rollout_indices, report.rewards[:, 0])
        made = rollout_rows(nt["uid"], nt["index"], raw)
        assert sorted(sent.values()) == sorted(made.values())
    assert penalised > 0  # the penalty was applied to what verl trained on
