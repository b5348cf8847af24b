"""TRL's real GRPOTrainer, a tiny randomly initialised Llama and a word-level tokenizer
built here (no hub access), trained for three steps against an embedded Paceline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("tokenizers")

import torch
from datasets import Dataset
from integration_support import grpo_advantages, reports, served_indices
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl import GRPOConfig

import paceline
from paceline.integrations.trl import PacelineGRPOTrainer, ScalarizedReward, with_sample_index

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
WEIGHTS = {"correct": 0.75, "short": 0.25}
STEPS = 3
PROMPTS_PER_STEP = 4
GROUP = 2


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="<eos>", unk_token="<unk>")


def tiny_model(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                         bos_token_id=1, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def grpo_args(tmp_path: Path, **overrides: Any) -> GRPOConfig:
    options: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, learning_rate=1e-2,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP, num_generations=GROUP,
        max_completion_length=4, beta=0.0, temperature=1.0, use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=0, dataloader_num_workers=0)
    return GRPOConfig(**(options | overrides))


class Objectives:
    """Two objectives of the completion text, remembering what they scored."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[int], list[float], list[float]]] = []

    def correct(self, completions: list[str], paceline_index: list[int] | None = None,
                **kwargs: Any) -> list[float]:
        values = [c.split().count("a") / max(1, len(c.split())) for c in completions]
        self.seen.append((list(paceline_index or []), values, []))
        return values

    def short(self, completions: list[str], **kwargs: Any) -> list[float]:
        values = [1.0 / (1 + len(c.split())) for c in completions]
        self.seen[-1][2].extend(values)
        return values


@pytest.fixture
def curriculum_db(tmp_path: Path) -> Path:
    return tmp_path / "paceline.db"


def make_curriculum(client: paceline.Client, sampler: Any = "uniform") -> paceline.Curriculum:
    return client.create_curriculum(
        "trl", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        objectives=list(WEIGHTS), sampler=sampler,
        weighting={"kind": "fixed", "weights": [3, 1]}, batch_size=PROMPTS_PER_STEP, seed=1)


def dataset() -> Dataset:
    prompts = [f"{WORDS[i % 4]} {WORDS[4 + i % 4]}" for i in range(12)] + \
              [f"{WORDS[4 + i]} {WORDS[i]} h" for i in range(4)]
    return Dataset.from_dict({"prompt": prompts})


def test_grpo_trainer_trains_on_served_batches_and_reports_them(
        tmp_path: Path, curriculum_db: Path) -> None:
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    with paceline.Client.embedded(curriculum_db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="trl", heartbeat_interval=None) as run:
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path), train_dataset=dataset(),
                reward_funcs={"short": objectives.short, "correct": objectives.correct})
            before = [p.detach().clone() for p in trainer.model.parameters()]
            trainer.train()
            state = cur.state()
        run_id = run.run_id
    assert any(not torch.equal(b, p.detach()) for b, p in
               zip(before, trainer.model.parameters(), strict=True)), "the model did not train"

    stored = reports(curriculum_db, "trl")
    assert [r.step for r in stored] == list(range(STEPS))
    assert {r.run_id for r in stored} == {run_id}
    assert sum(d.reports for d in state.distributions) > 0
    assert state.seq == STEPS
    for report, (indices, correct, short) in zip(stored, objectives.seen, strict=True):
        served = served_indices(curriculum_db, "trl", run_id, report.step)
        # The trainer generated GROUP completions for exactly the served prompts, in order.
        assert indices == [i for i in served for _ in range(GROUP)]
        assert report.indices == served
        assert report.rollout_indices == indices
        assert report.group_of == [pos // GROUP for pos in range(len(indices))]
        # The reward vectors are the objectives' values, in the curriculum's order.
        np.testing.assert_allclose(report.rewards, np.column_stack([correct, short]))
        # TRL trained on advantages of the served-weight scalarisation, 0.75 r1 + 0.25 r2.
        scalar = report.rewards @ np.array([WEIGHTS["correct"], WEIGHTS["short"]])
        assert report.advantages is not None
        np.testing.assert_allclose(report.advantages, grpo_advantages(scalar, report.group_of),
                                   rtol=1e-4, atol=1e-5)
    assert any(np.abs(r.advantages).max() > 0 for r in stored if r.advantages is not None)
    logged = [entry["rewards/paceline/mean"] for entry in trainer.state.log_history
              if "rewards/paceline/mean" in entry]
    expected = [float((r.rewards @ np.array([0.75, 0.25])).mean()) for r in stored]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)


def test_upweighted_samples_scale_the_trained_advantages(
        tmp_path: Path, curriculum_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    trained: list[torch.Tensor] = []
    with paceline.Client.embedded(curriculum_db) as client:
        cur = make_curriculum(client, sampler={"kind": "temperature", "mode": "upweight",
                                               "t0": 5.0, "schedule": "constant"})
        # A run id whose first batch mixes both distributions (batches are seeded by it).
        with cur.start_run(run_id="upweight-1", heartbeat_interval=None) as run:
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path, max_steps=1), train_dataset=dataset(),
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
            original = trainer._generate_and_score_completions

            def spy(inputs: Any) -> Any:
                output = original(inputs)
                trained.append(output["advantages"].clone())
                return output

            monkeypatch.setattr(trainer, "_generate_and_score_completions", spy)
            trainer.train()
            batch = run.next_batch(0)
    assert batch.loss_weights is not None and len(set(batch.loss_weights)) > 1
    (report,) = reports(curriculum_db, "trl")
    assert report.advantages is not None
    weights = np.repeat(batch.loss_weights, GROUP)
    np.testing.assert_allclose(trained[0].numpy(), report.advantages * weights, rtol=1e-5,
                               atol=1e-6)


def test_reward_function_rejects_rows_that_were_not_served(curriculum_db: Path) -> None:
    objectives = Objectives()
    with paceline.Client.embedded(curriculum_db) as client:
        cur = make_curriculum(client)
        with cur.start_run(heartbeat_interval=None) as run:
            from paceline.integrations import BatchLedger

            ledger = BatchLedger(run)
            reward = ScalarizedReward({"correct": objectives.correct,
                                       "short": objectives.short}, ledger)
            batch = ledger.fetch(0, PROMPTS_PER_STEP)
            stray = next(i for i in range(16) if i not in batch.indices)
            with pytest.raises(ValueError, match="not served for step 0"):
                reward(prompts=["a"], completions=["a a"], paceline_index=[stray])
            # Served rows get the served weights; evaluation rows (no index) the latest.
            scored = reward(prompts=["a", "a"], completions=["a", "b b b"],
                            paceline_index=[batch.indices[0]] * 2)
            assert scored == pytest.approx([0.75 * 1 + 0.25 * 0.5, 0.25 * 0.25])
            assert reward(prompts=["a"], completions=["a"]) == pytest.approx([0.875])
            assert not math.isnan(scored[0])


# ------------------------------------------------------------------ resume and bad input
class PromptRewards:
    """Rewards that depend on the prompt and the rollout's place in its group only, not on
    the completion: a resumed run then reports exactly what an uninterrupted one does."""

    @staticmethod
    def _values(indices: list[int], salt: float) -> list[float]:
        seen: dict[int, int] = {}
        values = []
        for index in indices:
            seen[index] = seen.get(index, 0) + 1
            values.append(((index * 7 + salt) % 5) / 5 + 0.1 * seen[index])
        return values

    def correct(self, completions: list[str], paceline_index: list[int] | None = None,
                **kwargs: Any) -> list[float]:
        return self._values(list(paceline_index or [0] * len(completions)), 1.0)

    def short(self, completions: list[str], paceline_index: list[int] | None = None,
              **kwargs: Any) -> list[float]:
        return self._values(list(paceline_index or [0] * len(completions)), 3.0)


class CrashAfter(TrainerCallback):  # type: ignore[misc]
    """Stands in for a killed trainer: raises once step `step` has ended (and reported)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


RESUME_STEPS = 6


def resume_trainer(tmp_path: Path, run: paceline.Run, out: str,
                   **overrides: Any) -> PacelineGRPOTrainer:
    tokenizer = tiny_tokenizer()
    rewards = PromptRewards()
    args = grpo_args(tmp_path, **({"max_steps": RESUME_STEPS, "save_strategy": "steps",
                                    "save_steps": 2, "output_dir": str(tmp_path / out)}
                                   | overrides))
    return PacelineGRPOTrainer(run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                               args=args, train_dataset=dataset(),
                               reward_funcs={"correct": rewards.correct,
                                             "short": rewards.short})


@pytest.mark.parametrize(("overrides", "crashed_at", "skip_before", "steps"), [
    ({}, 3, 2, RESUME_STEPS),
    # An epoch of 4 loader batches in optimizer steps of 3: the Trainer counts 2 updates
    # an epoch (rounding up), so checkpoint-2 ends epoch 0 and the resume skips nothing
    # of epoch 1; rounding down put it two epochs on (skip_before 8), and the resumed
    # run failed at its first reward ("rows ... the paceline sampler did not draw").
    ({"gradient_accumulation_steps": 3, "steps_per_generation": 1}, 7, 4, 12),
])
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(
        tmp_path: Path, overrides: dict[str, Any], crashed_at: int, skip_before: int,
        steps: int) -> None:
    sampler = "dump_ucb"  # its batches depend on the reports folded so far
    with paceline.Client.embedded(tmp_path / "straight.db") as client:
        cur = make_curriculum(client, sampler=sampler)
        with cur.start_run(run_id="trl", heartbeat_interval=None) as run:
            resume_trainer(tmp_path, run, "straight", **overrides).train()
            straight = cur.state()
    with paceline.Client.embedded(tmp_path / "resumed.db") as client:
        cur = make_curriculum(client, sampler=sampler)
        with cur.start_run(run_id="trl", heartbeat_interval=None) as run:
            trainer = resume_trainer(tmp_path, run, "resumed", **overrides)
            trainer.add_callback(CrashAfter(3))  # runs after PacelineCallback's report
            with pytest.raises(KeyboardInterrupt):
                trainer.train()
            assert cur.state().seq == crashed_at  # reported before the crash
        with cur.start_run(run_id="trl", heartbeat_interval=None) as run:
            trainer = resume_trainer(tmp_path, run, "resumed", **overrides)
            trainer.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
            assert trainer.paceline.skip_before == skip_before
            resumed = cur.state()
    assert resumed.seq == straight.seq == steps  # no step was folded twice
    assert resumed.model_dump(exclude={"name"}) == straight.model_dump(exclude={"name"})
    got = reports(tmp_path / "resumed.db", "trl")
    want = reports(tmp_path / "straight.db", "trl")
    assert [r.step for r in got] == [r.step for r in want] == list(range(steps))
    for a, b in zip(got, want, strict=True):
        assert a.indices == b.indices
        np.testing.assert_array_equal(a.rewards, b.rewards)
        np.testing.assert_array_equal(a.advantages, b.advantages)


def test_resume_refuses_a_checkpoint_of_another_run_or_curriculum(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="first", heartbeat_interval=None) as run:
            trainer = resume_trainer(tmp_path, run, "out", max_steps=2)
            trainer.train()
        checkpoint = str(tmp_path / "out" / "checkpoint-2")
        seq = cur.state().seq
        with cur.start_run(run_id="second", heartbeat_interval=None) as run:
            other = resume_trainer(tmp_path, run, "out", max_steps=4)
            with pytest.raises(ValueError, match=r"run 'first'.*run 'second'"):
                other.train(resume_from_checkpoint=checkpoint)
        other_cur = client.create_curriculum(
            "trl-other", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
            objectives=list(WEIGHTS), sampler="uniform", batch_size=PROMPTS_PER_STEP)
        with other_cur.start_run(run_id="first", heartbeat_interval=None) as run:
            elsewhere = resume_trainer(tmp_path, run, "out", max_steps=4)
            with pytest.raises(ValueError, match=r"curriculum 'trl'.*curriculum 'trl-other'"):
                elsewhere.train(resume_from_checkpoint=checkpoint)
        (tmp_path / "out" / "checkpoint-2" / "paceline.json").unlink()
        with cur.start_run(run_id="first", heartbeat_interval=None) as run:
            unmarked = resume_trainer(tmp_path, run, "out", max_steps=4)
            with pytest.raises(ValueError, match=r"no paceline\.json"):
                unmarked.train(resume_from_checkpoint=checkpoint)
        assert cur.state().seq == seq and other_cur.state().seq == 0  # nothing reported


def test_a_dataset_that_does_not_match_the_layout_is_refused(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(heartbeat_interval=None) as run, pytest.raises(
                ValueError, match="has 12 rows but curriculum 'trl' lays out 16"):
            PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path), train_dataset=dataset().select(range(12)),
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
        assert cur.state().seq == 0


def test_a_batch_size_mismatch_is_warned_about_once(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)  # batch_size 4 prompts
        with cur.start_run(heartbeat_interval=None) as run:
            with pytest.warns(UserWarning, match="generates for 2 prompts per step") as caught:
                trainer = PacelineGRPOTrainer(
                    run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                    args=grpo_args(tmp_path, per_device_train_batch_size=4),
                    train_dataset=dataset(),
                    reward_funcs={"correct": objectives.correct, "short": objectives.short})
            ours = [str(w.message) for w in caught if "prompts per step" in str(w.message)]
            assert len(ours) == 1 and "per_device_train_batch_size" in ours[0]
            assert trainer.prompts_per_step == 2


def test_each_objective_gets_its_reward_curve(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    db = tmp_path / "p.db"
    with paceline.Client.embedded(db) as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="curves", heartbeat_interval=None) as run:
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path), train_dataset=dataset(),
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
            trainer.train()
    stored = reports(db, "trl")
    for k, name in enumerate(["correct", "short"]):
        logged = [entry[f"rewards/paceline/{name}"] for entry in trainer.state.log_history
                  if f"rewards/paceline/{name}" in entry]
        np.testing.assert_allclose(logged, [r.rewards[:, k].mean() for r in stored],
                                   rtol=1e-6)


def test_an_evaluation_set_with_the_index_column_is_scored_not_recorded(
        tmp_path: Path) -> None:
    """An evaluation set built with `with_sample_index` (as the training set is) was
    taken for a training batch: its rows were checked against the served step and the
    run failed ("not served"). While the model evaluates, rows are scored only."""
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    with paceline.Client.embedded(tmp_path / "eval.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(run_id="trl", heartbeat_interval=None) as run:
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=1,
                               per_device_eval_batch_size=PROMPTS_PER_STEP * GROUP),
                train_dataset=dataset(), eval_dataset=with_sample_index(dataset()),
                reward_funcs={"short": objectives.short, "correct": objectives.correct})
            trainer.train()
            assert cur.state().seq == 3  # the training steps only
    assert [r.step for r in reports(tmp_path / "eval.db", "trl")] == [0, 1, 2]


#: A chat template that renders every part of a tool-calling exchange (what TRL checks).
TOOL_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] if m['content'] is string "
    "else '' }}{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %} call "
    "{{ c['function']['name'] }} {{ c['function']['arguments'] | tojson }}{% endfor %}"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


class ScoredEnvironment:
    """A TRL environment that owns a reward (`get_reward`): TRL adds it as one more reward
    source of weight 1 beside the trainer's reward functions."""

    def reset(self, **kwargs: Any) -> str:
        return ""

    def get_reward(self) -> float:
        return 1.0


def test_an_environment_reward_paceline_does_not_weight_is_refused(tmp_path: Path) -> None:
    """The policy would train on Paceline's scalarised reward plus the environment's,
    while Paceline weights and learns from its objectives only."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE  # TRL's environments need tool calling
    objectives = Objectives()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = make_curriculum(client)
        with cur.start_run(heartbeat_interval=None) as run, pytest.raises(
                ValueError, match=r"reward source\(s\) \['ScoredEnvironment'\]"):
            PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path), train_dataset=dataset(),
                environment_factory=ScoredEnvironment,
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
        assert cur.state().seq == 0
