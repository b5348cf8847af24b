"""OpenRLHF (0.11.2) through `paceline.integrations.openrlhf`.

OpenRLHF's `PromptDataset`, `Experience` and `SingleTurnAgentExecutor` (which loads the
`reward_func` of a `--remote_rm_url` Python file and calls it) are the real classes. Its
`PPOTrainer` and `RemoteExperienceMaker` import flash-attn and vLLM and cannot be imported
on CPU: the loop below follows their source (`SamplesGenerator` draws `rollout.batch_size`
prompts from the prompts loader one at a time; `make_experience_batch` calls
`make_experience`, then `compute_advantages_and_returns`, which applies the real
`apply_length_penalties` and computes the `group_norm` advantages; `fit` checkpoints
`prompts_dataloader.state_dict()`), and the trainer `attach` patches is a stand-in with
their attribute names.

OpenRLHF is installed apart (`pip install --no-deps --target DIR openrlhf==0.11.2
pylatexenc`, as .ci/run does), named by `PACELINE_OPENRLHF_PATH`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchdata")
if os.environ.get("PACELINE_OPENRLHF_PATH"):
    sys.path.insert(0, os.environ["PACELINE_OPENRLHF_PATH"])
pytest.importorskip("openrlhf", reason="set PACELINE_OPENRLHF_PATH to openrlhf 0.11.2")

import torch
from integration_support import grpo_advantages, reports, served_indices
from openrlhf.datasets import PromptDataset
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.utils.agent import SingleTurnAgentExecutor

import paceline
from paceline.integrations.openrlhf import (
    PacelinePromptSampler,
    attach,
    objective_key,
    prompts_dataloader,
)

ROWS = 16
BATCH = 4
N = 4  # rollout.n_samples_per_prompt
REWARD_FILE = '''
import paceline
from paceline.integrations.openrlhf import ScalarizedRewardFunc, ServedWeights

def answer(query):
    return int(query.rsplit(" ", 1)[1])

reward_func = ScalarizedRewardFunc(
    ServedWeights(paceline.Client.embedded({db!r}).curriculum("orlhf"), ttl=0.0),
    {{"correct": lambda q, p, label: float(answer(q) == int(label) % 4),
      "length": lambda q, p, label: 5.0 * answer(q)}})
'''


def curriculum(client: paceline.Client, sampler: object = "uniform") -> paceline.Curriculum:
    return client.create_curriculum(
        "orlhf", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        objectives=["correct", {"name": "length", "direction": "minimize",
                                "bounds": [0, 20]}],
        sampler=sampler, weighting={"kind": "fixed", "weights": [1, 3]}, batch_size=BATCH,
        seed=5, exist_ok=True)


def prompt_dataset(rows: int = ROWS) -> PromptDataset:
    data = SimpleNamespace(input_key="input", label_key="label", apply_chat_template=False,
                           image_key="images")
    strategy = SimpleNamespace(args=SimpleNamespace(data=data), is_rank_0=lambda: True)
    return PromptDataset([{"input": f"question {i}?", "label": str(i)} for i in range(rows)],
                         None, strategy)


def expected_score(correct: float, length: float) -> float:
    """0.25 · correct + 0.75 · (20 - length) / 20: weights 1:3, length minimised in [0, 20]."""
    return 0.25 * correct + 0.75 * (20.0 - length) / 20.0


class ExperienceMaker:
    """OpenRLHF's `RemoteExperienceMaker.make_experience_batch`: `make_experience`
    (the model forward passes; the rewards came with the samples from the reward
    function) on micro-batches of `micro_batch` rollouts joined by the real
    `Experience.concat_experiences`, then `compute_advantages_and_returns`, which
    applies the real `apply_length_penalties` to `experience.rewards` in place and then
    computes the `group_norm` advantages (no KL, no critic)."""

    def __init__(self, args: SimpleNamespace, micro_batch: int = 1) -> None:
        self.args = args
        self.micro_batch = micro_batch

    def make_experience_batch(self, rollout_samples: list[Experience]) -> list[Experience]:
        samples_list = [Experience.concat_experiences(
            rollout_samples[i:i + self.micro_batch], 0)
            for i in range(0, len(rollout_samples), self.micro_batch)]
        experiences = self.make_experience(samples_list)
        return self.compute_advantages_and_returns(experiences)

    def make_experience(self, samples_list: list[Experience]) -> list[Experience]:
        return samples_list

    def compute_advantages_and_returns(self, experiences: list[Experience]
                                       ) -> list[Experience]:
        for e in experiences:
            e.rewards = e.rewards.to(torch.promote_types(e.rewards.dtype, torch.float32))
        apply_length_penalties(experiences, self.args)
        rewards = torch.cat([e.rewards for e in experiences]).reshape(-1, N)
        adv = ((rewards - rewards.mean(-1, keepdim=True))
               / (rewards.std(-1, keepdim=True) + 1e-9)).reshape(-1)
        start = 0
        for e in experiences:
            a = adv[start:start + len(e.rewards)]
            start += len(e.rewards)
            e.advantages = a.unsqueeze(-1) * e.action_mask.float()
        return experiences


class Trainer:
    """The attributes of OpenRLHF's PPOTrainer that `attach` uses; `reward` holds the
    length-penalty options (`args.reward`), off by default."""

    def __init__(self, batch_size: int = BATCH, dynamic: bool = False,
                 micro_batch: int = 1, **reward: Any) -> None:
        self.args = SimpleNamespace(
            rollout=SimpleNamespace(batch_size=batch_size, n_samples_per_prompt=N,
                                    vllm_generate_batch_size=None, max_new_tokens=8),
            algo=SimpleNamespace(dynamic_filtering_enable=dynamic),
            data=SimpleNamespace(max_len=16),
            reward=SimpleNamespace(**{"overlong_buffer_len": None,
                                      "overlong_penalty_factor": 1.0,
                                      "stop_properly_penalty_coef": None, **reward}))
        self.prompts_dataloader: Any = None
        self.samples_generator = SimpleNamespace(prompts_dataloader=None)
        self.experience_maker = ExperienceMaker(self.args, micro_batch)


def generate(executor: SingleTurnAgentExecutor, prompts: list[str], labels: list[str],
             step: int, max_new_tokens: int = 8) -> list[Experience]:
    """N rollouts per prompt (a seeded 'policy' answering 0..3 in 1 + 3 * answer
    tokens, cut at `max_new_tokens`), scored by the real executor's call of the reward
    file, turned into Experiences as OpenRLHF's `_process_response_into_experience`
    does (a reward file without `scores` scores with its rewards, as the executor does)."""
    rng = np.random.default_rng(step)
    out = []
    for prompt, label in zip(prompts, labels, strict=True):
        for _ in range(N):
            answer = int(rng.integers(0, 4))
            query = f"{prompt} {answer}"
            [info] = asyncio.run(executor._fetch_rewards_via_func([query], [prompt], [label]))
            logs = {k: torch.tensor([v.flatten()[0].item()])
                    for k, v in (info.get("extra_logs") or {}).items()}
            reward = float(info["rewards"][0])
            score = float(info.get("scores", info["rewards"])[0])
            length = min(1 + 3 * answer, max_new_tokens)
            out.append(Experience(
                action_mask=torch.tensor([[1, 1, 0]]), prompts=[prompt], labels=[label],
                rewards=torch.tensor([reward]), scores=torch.tensor([score]),
                response_length=torch.tensor([length]),
                truncated=torch.tensor([length == max_new_tokens]),
                info={"reward": torch.tensor([reward]), "score": torch.tensor([score]),
                      **logs}))
    return out


def train(db: Path, tmp_path: Path, first: int, last: int, *, sampler_kind: object = "uniform",
          checkpoint: Any = None, save_after: int | None = None,
          keys: list[str] | None = None,
          redo: range = range(0)) -> tuple[Any, Any, list[list[Experience]]]:
    """OpenRLHF's fit loop, steps first..last-1: a checkpoint restores the loader state."""
    reward_file = tmp_path / f"reward_{db.stem}.py"
    reward_file.write_text(REWARD_FILE.format(db=str(db)))
    dataset = prompt_dataset()
    trained: list[list[Experience]] = []
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client, sampler_kind)
        with cur.start_run(run_id="orlhf", heartbeat_interval=None) as run:
            if keys is not None:
                report = run.report

                def spy(*args: Any, **kwargs: Any) -> Any:
                    keys.append(kwargs["idempotency_key"])
                    return report(*args, **kwargs)
                run.report = spy  # type: ignore[method-assign]
            sampler = PacelinePromptSampler(run, dataset, rollout_batch_size=BATCH)
            trainer = Trainer()
            attach(trainer, sampler)
            assert trainer.samples_generator.prompts_dataloader is trainer.prompts_dataloader
            loader = trainer.prompts_dataloader
            if checkpoint is not None:
                loader.load_state_dict(checkpoint)
            executor = SingleTurnAgentExecutor(str(reward_file))
            saved, items = None, iter(loader)
            for step in range(first, last):
                prompts, labels = [], []
                while len(prompts) < BATCH:  # SamplesGenerator's _collect_prompt_batch
                    try:
                        _, p, lab, _ = next(items)
                    except StopIteration:  # the next epoch
                        items = iter(loader)
                        continue
                    prompts += p
                    labels += lab
                assert sampler.ledger.latest is not None
                assert sampler.ledger.latest.step == step
                seed = 1000 + step if step in redo else step  # a redo samples anew
                experiences = trainer.experience_maker.make_experience_batch(
                    generate(executor, prompts, labels, seed))
                trained.append(experiences)
                if step == save_after:
                    saved = loader.state_dict()
            state = cur.state()
    return saved, state, trained


def test_the_sampler_serves_paceline_batches_and_each_step_is_reported_once(
        tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    keys: list[str] = []
    _, state, trained = train(db, tmp_path, 0, 6, keys=keys)
    assert keys == [f"paceline/orlhf/{s}/0" for s in range(6)]
    stored = reports(db, "orlhf")
    assert [r.step for r in stored] == list(range(6)) and state.seq == 6
    for report, experiences in zip(stored, trained, strict=True):
        served = served_indices(db, "orlhf", "orlhf", report.step)
        assert report.indices == served  # one group per served prompt, in order
        assert [f"question {i}?" for i in report.rollout_indices] == [
            e.prompts[0] for e in experiences]
        # Raw rewards reported; the trained reward is their scalarisation (length minimised).
        raw = report.rewards
        assert set(np.unique(raw[:, 0])) <= {0.0, 1.0}
        assert set(np.unique(raw[:, 1])) <= {0.0, 5.0, 10.0, 15.0}
        scalar = np.array([expected_score(c, length) for c, length in raw])
        np.testing.assert_allclose([float(e.rewards[0]) for e in experiences], scalar,
                                   rtol=1e-6)
        assert report.advantages is not None
        np.testing.assert_allclose(report.advantages, grpo_advantages(scalar, report.group_of,
                                                                      eps=1e-9),
                                   rtol=1e-4, atol=1e-5)
        logged = [float(e.info[objective_key("length")][0]) for e in experiences]
        np.testing.assert_allclose(logged, raw[:, 1])


PLAIN_REWARD_FILE = '''
import torch

def reward_func(queries, prompts, labels):  # a user's own, single-objective
    answers = [int(q.rsplit(" ", 1)[1]) for q in queries]
    return {{"rewards": torch.tensor([float(a == int(label) % 4) + a
                                      for a, label in zip(answers, labels)])}}
'''
SINGLE_REWARD_FILE = '''
import paceline
from paceline.integrations.openrlhf import ScalarizedRewardFunc, ServedWeights

reward_func = ScalarizedRewardFunc(
    ServedWeights(paceline.Client.embedded({db!r}).curriculum("orlhf1"), ttl=0.0),
    {{"score": lambda q, p, label: 5.0 * int(q.rsplit(" ", 1)[1])}})
'''


@pytest.mark.parametrize(("reward_file", "raw_key", "objective"), [
    (PLAIN_REWARD_FILE, "reward", "score"),  # the reward function's own reward
    (SINGLE_REWARD_FILE, objective_key("score"), {"name": "score", "direction": "minimize",
                                                  "bounds": [0, 20]}),
], ids=["own-reward-func", "scalarized-reward-func"])
def test_a_single_objective_reports_the_reward_before_openrlhfs_length_penalties(
        tmp_path: Path, reward_file: str, raw_key: str, objective: Any) -> None:
    """OpenRLHF's DAPO overlong and stop-properly penalties change `experience.rewards`
    (and `info["reward"]`) in place before the advantages: the actor trains on the
    penalised reward, but Paceline's report carries the reward function's raw value, as
    it does for several objectives."""
    db = tmp_path / "paceline.db"
    path = tmp_path / "reward1.py"
    path.write_text(reward_file.format(db=str(db)))
    expected_raw: list[list[float]] = []
    trained: list[list[float]] = []
    with paceline.Client.embedded(db) as client:
        cur = client.create_curriculum(
            "orlhf1", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
            objectives=[objective], batch_size=BATCH, seed=5)
        with cur.start_run(run_id="orlhf1", heartbeat_interval=None) as run:
            sampler = PacelinePromptSampler(run, prompt_dataset(), rollout_batch_size=BATCH)
            # max_new_tokens 8, buffer 4: answers 2 and 3 (7 and 8 tokens) are overlong;
            # answer 3 is cut at 8 tokens (truncated), which halves its reward too.
            trainer = Trainer(micro_batch=2, overlong_buffer_len=4,
                              stop_properly_penalty_coef=0.5)
            attach(trainer, sampler)
            executor = SingleTurnAgentExecutor(str(path))
            items = iter(trainer.prompts_dataloader)
            for step in range(3):
                prompts, labels = [], []
                for _ in range(BATCH):
                    _, p, lab, _ = next(items)
                    prompts += p
                    labels += lab
                samples = generate(executor, prompts, labels, step)
                expected_raw.append([float(s.info[raw_key][0]) for s in samples])
                untouched = [float(s.rewards[0]) for s in samples]
                experiences = trainer.experience_maker.make_experience_batch(samples)
                trained.append(torch.cat([e.rewards for e in experiences]).tolist())
                assert trained[-1] != pytest.approx(untouched)  # penalties were applied
    stored = reports(db, "orlhf1")
    assert [r.step for r in stored] == [0, 1, 2]
    for report, raw, penalised in zip(stored, expected_raw, trained, strict=True):
        np.testing.assert_allclose(report.rewards[:, 0], raw, rtol=1e-6)
        assert report.advantages is not None  # the advantages are the trained ones
        np.testing.assert_allclose(report.advantages,
                                   grpo_advantages(np.array(penalised), report.group_of,
                                                   eps=1e-9), rtol=1e-4, atol=1e-5)


def test_the_reward_function_scalarises_with_minimised_objectives(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    with paceline.Client.embedded(db) as client:
        curriculum(client)
    reward_file = tmp_path / "reward.py"
    reward_file.write_text(REWARD_FILE.format(db=str(db)))
    executor = SingleTurnAgentExecutor(str(reward_file))  # OpenRLHF loads reward_func
    queries = ["q 0", "q 1", "q 3"]
    out = executor.reward_func(queries, ["q", "q", "q"], ["1", "1", "1"])
    # correct: 0, 1, 0; length 0, 5, 15 (minimised: shorter is better)
    expected = [expected_score(0, 0), expected_score(1, 5), expected_score(0, 15)]
    np.testing.assert_allclose(out["rewards"].tolist(), expected, rtol=1e-6)
    assert expected[0] > expected[2]  # a longer answer scores lower
    np.testing.assert_allclose(out["scores"].tolist(), expected, rtol=1e-6)
    np.testing.assert_allclose(out["extra_logs"][objective_key("length")].tolist(),
                               [0, 5, 15])


def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed after step 5, resumed from the loader state checkpointed after step 2: steps
    3-5 are redone (new rollouts), the service keeps their first reports, and the
    curriculum (dump_ucb: batches follow the reports) ends as an uninterrupted run's."""
    steps = 8  # two epochs
    _, straight, _ = train(tmp_path / "straight.db", tmp_path, 0, steps,
                           sampler_kind="dump_ucb")
    checkpoint, _, _ = train(tmp_path / "resumed.db", tmp_path, 0, 6,
                             sampler_kind="dump_ucb", save_after=2)
    _, resumed, _ = train(tmp_path / "resumed.db", tmp_path, 3, steps,
                          sampler_kind="dump_ucb", checkpoint=checkpoint, redo=range(3, 6))
    assert resumed.seq == straight.seq == steps
    assert resumed == straight
    assert [r.step for r in reports(tmp_path / "resumed.db", "orlhf")] == list(range(steps))


def test_a_dataset_not_matching_the_layout_is_refused_at_start_up(tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client)
        with (cur.start_run(run_id="orlhf", heartbeat_interval=None) as run,
              pytest.raises(ValueError, match="the dataset has 15 rows but curriculum "
                                              "'orlhf' lays out 16 samples")):
            PacelinePromptSampler(run, prompt_dataset(15), rollout_batch_size=BATCH)
        assert cur.state().seq == 0


def test_a_checkpoint_of_another_run_and_unsupported_settings_are_refused(
        tmp_path: Path) -> None:
    db = tmp_path / "paceline.db"
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client)
        with cur.start_run(run_id="first", heartbeat_interval=None) as run:
            first = PacelinePromptSampler(run, prompt_dataset(), rollout_batch_size=BATCH)
            state = first.state_dict()
            loader = prompts_dataloader(first.dataset, first)
            next(iter(loader))
            loader_state = loader.state_dict()  # what OpenRLHF's fit checkpoints
        with cur.start_run(run_id="other", heartbeat_interval=None) as run:
            sampler = PacelinePromptSampler(run, prompt_dataset(), rollout_batch_size=BATCH)
            with pytest.raises(ValueError, match="pass run_id='first' to resume it"):
                sampler.load_state_dict(state)
            resumed = prompts_dataloader(sampler.dataset, sampler)
            resumed.load_state_dict(loader_state)
            with pytest.raises(ValueError, match="the checkpoint is run 'first'"):
                next(iter(resumed))
            with pytest.raises(ValueError, match="dynamic_filtering_enable"):
                attach(Trainer(dynamic=True), sampler)
            with pytest.raises(ValueError, match=r"rollout\.batch_size is 8"):
                attach(Trainer(batch_size=8), sampler)
            with pytest.raises(ValueError, match="needs num_workers=0; got 2"):
                attach(Trainer(), sampler, num_workers=2)
            # Rollouts of a prompt that was not served for the step are refused.
            trainer = Trainer()
            attach(trainer, sampler)
            next(iter(trainer.prompts_dataloader))
            stray = Experience(action_mask=torch.ones(1, 2), prompts=["not served"],
                               labels=["0"], rewards=torch.tensor([1.0]),
                               info={objective_key("correct"): torch.tensor([1.0]),
                                     objective_key("length"): torch.tensor([0.0])})
            with pytest.raises(ValueError, match="not served for step 0"):
                trainer.experience_maker.make_experience_batch([stray] * N)
        assert cur.state().seq == 0


def fit(db: Path, tmp_path: Path, episodes: int, *, resume: dict[str, Any] | None = None,
        crash_after: int | None = None, redo: range = range(0),
        ) -> tuple[list[int], dict[int, dict[str, Any]], Any]:
    """OpenRLHF's `PPOTrainer.fit` with its episodes: each episode draws steps until
    `SamplesGenerator.generate_samples` finds the prompts loader exhausted; after each
    step `client_states` (the episode and the loader state) is checkpointed, and a
    resumed fit starts at the checkpoint's episode with the loader state restored.
    Returns the steps trained, the checkpoint after each step and the curriculum."""
    reward_file = tmp_path / f"reward_{db.stem}.py"
    reward_file.write_text(REWARD_FILE.format(db=str(db)))
    trained: list[int] = []
    checkpoints: dict[int, dict[str, Any]] = {}
    with paceline.Client.embedded(db) as client:
        cur = curriculum(client, "dump_ucb")
        with cur.start_run(run_id="orlhf", heartbeat_interval=None) as run:
            sampler = PacelinePromptSampler(run, prompt_dataset(), rollout_batch_size=BATCH)
            trainer = Trainer()
            attach(trainer, sampler)
            loader = trainer.prompts_dataloader
            executor = SingleTurnAgentExecutor(str(reward_file))
            start_episode = 0
            if resume is not None:
                start_episode = resume["episode"]
                loader.load_state_dict(resume["data_loader_state_dict"])
            items = None
            for episode in range(start_episode, episodes):
                while True:
                    if items is None:  # generate_samples: a new pass over the loader
                        items = iter(loader)
                    prompts: list[str] = []
                    labels: list[str] = []
                    exhausted = False
                    while len(prompts) < BATCH:  # _collect_prompt_batch
                        try:
                            _, p, lab, _ = next(items)
                        except StopIteration:
                            exhausted = True
                            break
                        prompts += p
                        labels += lab
                    if exhausted:
                        items = None
                    if not prompts:
                        if exhausted:
                            break
                        continue
                    assert sampler.ledger.latest is not None
                    step = sampler.ledger.latest.step
                    seed = 1000 + step if step in redo else step  # a redo samples anew
                    trainer.experience_maker.make_experience_batch(
                        generate(executor, prompts, labels, seed))
                    trained.append(step)
                    checkpoints[step] = {"episode": episode,
                                         "data_loader_state_dict": loader.state_dict()}
                    if step == crash_after:
                        return trained, checkpoints, cur.state()
                    if exhausted:
                        break
            return trained, checkpoints, cur.state()


def test_resuming_from_the_last_step_of_an_episode_trains_no_extra_episode(
        tmp_path: Path) -> None:
    """OpenRLHF checkpoints the episode a step belongs to: a checkpoint of an episode's
    last step resumes in that episode, whose rest is empty, and then starts the next
    one. The resumed run trains the same steps as an uninterrupted one, not one episode
    of Paceline steps more."""
    episodes = 2  # 4 steps each (16 rows, 4 prompts a step)
    straight_steps, _, straight = fit(tmp_path / "straight.db", tmp_path, episodes)
    assert straight_steps == list(range(8))
    first, checkpoints, _ = fit(tmp_path / "resumed.db", tmp_path, episodes, crash_after=5)
    assert first == list(range(6)) and checkpoints[3]["episode"] == 0
    resumed_steps, _, resumed = fit(tmp_path / "resumed.db", tmp_path, episodes,
                                    resume=checkpoints[3], redo=range(4, 6))
    assert resumed_steps == [4, 5, 6, 7]
    assert resumed == straight
    assert [r.step for r in reports(tmp_path / "resumed.db", "orlhf")] == list(range(8))
