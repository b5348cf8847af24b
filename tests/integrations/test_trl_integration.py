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
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig

import paceline
from paceline.integrations.trl import PacelineGRPOTrainer, ScalarizedReward

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
