"""The policy: a tiny character-level transformer built here, or a local Hugging Face
causal LM, behind one small interface the GRPO loop uses.

Both backends take left-padded batches (so every prompt ends at the same column and
generation appends in lockstep) and compute position ids from the attention mask, so a
padded prompt sees the same positions as an unpadded one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CHARS = "0123456789+-*=TF&|^!().,"


class Tokenizer(Protocol):
    """What the loop needs from a tokenizer."""

    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class CharTokenizer:
    """One token per character of `CHARS`, plus padding and end-of-sequence."""

    def __init__(self, chars: str = CHARS) -> None:
        self.pad_id = 0
        self.eos_id = 1
        self._to_id = {c: i + 2 for i, c in enumerate(chars)}
        self._to_char = {i: c for c, i in self._to_id.items()}
        self.vocab_size = len(chars) + 2

    def encode(self, text: str) -> list[int]:
        return [self._to_id[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self._to_char.get(i, "") for i in ids)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(b, t, d)))
        out: Tensor = x + self.dropout(self.mlp(self.norm2(x)))
        return out


class TinyGPT(nn.Module):
    """A pre-norm GPT: learned token and position embeddings, causal self-attention that
    also ignores padded keys, tied output head."""

    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 3, heads: int = 4,
                 max_len: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits [B, T, V]."""
        t = input_ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_len {self.max_len}")
        x = self.embed(input_ids) + self.position(position_ids(attention_mask))
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        # Query i may attend key j when j <= i and j is a real token; a query on a pad
        # position attends itself only, so no row is all masked (which would give NaN).
        keys = attention_mask.bool()[:, None, None, :]
        mask = (causal & keys) | torch.eye(t, dtype=torch.bool, device=input_ids.device)
        for block in self.blocks:
            x = block(x, mask)
        logits: Tensor = self.norm(x) @ self.embed.weight.T
        return logits


class LanguageModel(Protocol):
    """A causal LM as the GRPO loop sees it."""

    module: nn.Module

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def device(self) -> torch.device: ...

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...

    def sample(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
               temperature: float, greedy: bool) -> Tensor: ...


@dataclass
class Encoded:
    """A left-padded batch of prompts."""

    input_ids: Tensor  # [B, P]
    attention_mask: Tensor  # [B, P]


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> Encoded:
    """Pad token lists on the left to a common length."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return Encoded(ids.to(device), mask.to(device))


class TinyModel:
    """The tiny transformer with its character tokenizer."""

    def __init__(self, device: torch.device, dim: int = 128, layers: int = 3,
                 heads: int = 4, max_len: int = 32) -> None:
        self.tokenizer = CharTokenizer()
        self.module: nn.Module = TinyGPT(self.tokenizer.vocab_size, dim, layers, heads,
                                         max_len).to(device)
        self.device = device

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.module(input_ids, attention_mask)  # type: ignore[no-any-return]

    @torch.no_grad()
    def sample(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
               temperature: float, greedy: bool) -> Tensor:
        """New tokens [B, max_new_tokens]; after EOS a row continues with padding.

        No KV cache: sequences are at most a few dozen tokens, so a full forward per new
        token is cheaper than the bookkeeping."""
        ids, mask = input_ids, attention_mask
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new = []
        for _ in range(max_new_tokens):
            last = self.logits(ids, mask)[:, -1, :].float()
            if greedy:
                token = last.argmax(-1)
            else:
                token = torch.multinomial(F.softmax(last / temperature, dim=-1), 1)[:, 0]
            token = torch.where(done, torch.full_like(token, self.tokenizer.pad_id), token)
            new.append(token)
            done |= token == self.tokenizer.eos_id
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
            if bool(done.all()):
                break
        out = torch.stack(new, dim=1)
        if out.shape[1] < max_new_tokens:
            pad = torch.full((out.shape[0], max_new_tokens - out.shape[1]),
                             self.tokenizer.pad_id, dtype=out.dtype, device=out.device)
            out = torch.cat([out, pad], dim=1)
        return out


class _HFTokenizer:
    """Adapts a Hugging Face tokenizer; answers are plain text after the prompt."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token")
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.pad_id: int = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


class HFModel:
    """A local Hugging Face causal LM (`--model DIR`). transformers is imported here only,
    so the tiny model needs nothing beyond torch; nothing is downloaded."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        try:
            from transformers import (  # type: ignore[import-not-found, unused-ignore]
                AutoModelForCausalLM,
                AutoTokenizer,
                GenerationConfig,
            )
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SystemExit("--model needs `pip install transformers`") from exc
        if not Path(path).is_dir():
            raise SystemExit(f"--model {path}: not a local directory")
        self.tokenizer = _HFTokenizer(AutoTokenizer.from_pretrained(path,
                                                                    local_files_only=True))
        # Float32 weights on every device, bfloat16 compute on CUDA (autocast): loaded in
        # bfloat16, AdamW's steps at a pretrained model's learning rates (1e-6: about 1e-6
        # per weight) fell below bfloat16's spacing (1e-4 at 0.02) and were rounded away,
        # so the model did not train.
        loaded: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                           dtype=torch.float32)
        # Sampling from π: the directory's generation defaults (Qwen's repetition_penalty
        # 1.05, ...) reshaped what `generate` drew, even under explicit arguments (it
        # fills the arguments left at their defaults from them), so the rollouts did not
        # come from the π_old the loss scores, and greedy evaluation was not greedy.
        loaded.generation_config = GenerationConfig()
        self.module: nn.Module = loaded.to(device)
        self.device = device
        self.compute_dtype: torch.dtype | None = (torch.bfloat16 if device.type == "cuda"
                                                  else None)

    def _autocast(self) -> AbstractContextManager[object]:
        """Forward passes in `compute_dtype` (None: in the weights' float32)."""
        if self.compute_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        with self._autocast():
            out = self.module(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask), use_cache=False)
        return out.logits  # type: ignore[no-any-return]

    @torch.no_grad()
    def sample(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
               temperature: float, greedy: bool) -> Tensor:
        """New tokens [B, max_new_tokens] through `generate` (KV cache, left padding),
        drawn from π itself (softmax of logits / temperature, or its argmax): the
        distribution the loss scores as π_old (see `__init__`; no minimum length either,
        which masked EOS at the first token, as the tiny model does not)."""
        options: dict[str, Any] = ({"do_sample": False} if greedy else
                                   {"do_sample": True, "temperature": temperature,
                                    "top_k": 0, "top_p": 1.0})
        generate: Any = getattr(self.module, "generate")  # noqa: B009 - not on nn.Module
        with self._autocast():
            out = generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_id, eos_token_id=self.tokenizer.eos_id,
                **options)
        new: Tensor = out[:, input_ids.shape[1]:]
        if new.shape[1] < max_new_tokens:
            new = F.pad(new, (0, max_new_tokens - new.shape[1]), value=self.tokenizer.pad_id)
        return new


def build_model(model: str | None, device: torch.device, dim: int = 128,
                layers: int = 3) -> LanguageModel:
    """The tiny model (`model` None or "tiny") or a local Hugging Face directory."""
    if model in (None, "tiny"):
        return TinyModel(device, dim=dim, layers=layers)
    return HFModel(model, device)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

