"""`--model DIR`: the example trainer on a local Hugging Face model. A two-layer GPT-2
with a character-level tokenizer is built and saved in a temporary folder (nothing is
downloaded), then trained for a few steps against an embedded service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from trainer_examples.grpo import completion_logprobs, generate  # noqa: E402
from trainer_examples.loop import Config, train  # noqa: E402
from trainer_examples.model import CHARS, HFModel  # noqa: E402

torch.set_num_threads(1)


def _tiny_hf_model(folder: Path) -> Path:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = tokenizers.decoders.Fuse()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=32,
                                     n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1,
                                     pad_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hf_adapter_pads_left_and_scores_completions(tmp_path: Path) -> None:
    model = HFModel(_tiny_hf_model(tmp_path / "model"), torch.device("cpu"))
    assert model.tokenizer.encode("12+3=") == model.tokenizer.encode("12") + \
        model.tokenizer.encode("+3=")
    assert model.tokenizer.decode(model.tokenizer.encode("T&F=")) == "T&F="
    rollouts = generate(model, ["3+4=", "T&!F|T="], group_size=2, max_new_tokens=4)
    assert rollouts.input_ids.shape == (4, rollouts.prompt_width + 4)
    logp = completion_logprobs(model, rollouts)
    assert logp.shape == (4, 4)
    assert bool((logp[rollouts.completion_mask == 0] == 0).all())
    # Left padding must not change what the short prompt's completion scores.
    alone = generate(model, ["3+4="], group_size=1, max_new_tokens=4, greedy=True)
    padded = generate(model, ["3+4=", "T&!F|T="], group_size=1, max_new_tokens=4,
                      greedy=True)
    assert alone.texts[0] == padded.texts[0]
    assert torch.allclose(completion_logprobs(model, alone)[0],
                          completion_logprobs(model, padded)[0], atol=1e-4)


def test_train_with_a_local_hf_model(tmp_path: Path) -> None:
    folder = _tiny_hf_model(tmp_path / "model")
    out = tmp_path / "run"
    summary = train(Config(out=str(out), model=str(folder), steps=3, batch_size=4,
                           group_size=2, sft_steps=10, sft_batch=16, eval_every=2,
                           eval_size=4, threads=1, progress=False))
    assert summary["service"]["seq"] == 3
    assert summary["sft_loss_last"] < summary["sft_loss_first"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert (out / "accuracy.png").exists()


def test_hf_weights_stay_float32_and_train_at_a_small_lr(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the model was loaded in bfloat16, weights and all: AdamW's steps at the
    documented `--lr 1e-6` (about 1e-6 per weight) are below bfloat16's spacing and were
    rounded away, so the model did not train. The weights stay float32 and the forward
    passes run under bfloat16 autocast (here on the CPU, as CUDA would)."""
    folder = _tiny_hf_model(tmp_path / "model")
    loaded_as = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def load_here(*args: object, **kwargs: object) -> object:
        loaded_as.append(kwargs.get("dtype"))
        module = load(*args, **kwargs)
        module.to = lambda device: module  # no CUDA here: the weights stay on the CPU
        return module

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_here)
    model = HFModel(folder, torch.device("cuda"))
    assert loaded_as == [torch.float32]
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}
    assert model.compute_dtype == torch.bfloat16

    model.device = torch.device("cpu")  # the same model and autocast, on the CPU
    torch.manual_seed(0)
    rollouts = generate(model, ["3+4=", "T&!F|T="], group_size=2, max_new_tokens=4)
    assert model.logits(rollouts.input_ids, rollouts.attention_mask).dtype == torch.bfloat16
    before = [p.detach().clone() for p in model.module.parameters()]
    optimizer = torch.optim.AdamW(model.module.parameters(), lr=1e-6, weight_decay=0.0)
    logp = completion_logprobs(model, rollouts)
    (-(logp * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])).sum()).backward()
    optimizer.step()
    moved = [float((p.detach() != b)[p.grad != 0].float().mean())
             for p, b in zip(model.module.parameters(), before, strict=True)
             if p.grad is not None and bool((p.grad != 0).any())]
    assert moved and min(moved) > 0.9  # in bfloat16 some tensors did not move at all


def test_hf_rollouts_come_from_the_policy_not_the_folders_generation_defaults(
        tmp_path: Path) -> None:
    """A model folder's generation_config.json (Qwen's has repetition_penalty 1.05) was
    applied by `generate`, even under explicit arguments: rollouts were not drawn from
    the π_old the loss scores, and greedy evaluation was not the policy's argmax."""
    folder = _tiny_hf_model(tmp_path / "model")
    transformers.GenerationConfig(repetition_penalty=1e6, no_repeat_ngram_size=1,
                                  eos_token_id=1, pad_token_id=0).save_pretrained(folder)
    model = HFModel(folder, torch.device("cpu"))
    greedy = generate(model, ["3+4=", "T&F="], group_size=1, max_new_tokens=6, greedy=True)
    width = greedy.prompt_width
    ids, mask = greedy.input_ids[:, :width], greedy.attention_mask[:, :width]
    argmax = []
    with torch.no_grad():
        for _ in range(6):
            token = model.logits(ids, mask)[:, -1].argmax(-1)
            argmax.append(token)
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], 1)
    new = greedy.input_ids[:, greedy.prompt_width:]
    keep = greedy.completion_mask.bool()
    assert torch.equal(new[keep], torch.stack(argmax, 1)[keep])
