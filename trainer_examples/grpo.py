"""GRPO's pieces, written out so they can be checked: sampling a group of completions per
prompt, group-relative advantages, the clipped policy-gradient loss with Paceline's
per-prompt loss weights, and the supervised warm start.

Conventions (as in DeepSeekMath's GRPO and TRL's implementation):
- the g rollouts of prompt i are rows i·g … i·g + g − 1 of every flat tensor;
- advantage A_ij = (r_ij − mean_j r_ij) / (std_j r_ij + eps), with the sample standard
  deviation over the group (TRL's `torch.std`), so a group whose rewards are all equal
  gives A = 0 and no gradient — the zero-variance groups Paceline counts;
- the loss of a rollout is the token mean over its completion of
  −min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) (+ β · KL_t to a frozen reference when β > 0,
  with the k3 estimator exp(q − p) − (q − p) − 1), ρ_t = π(y_t) / π_old(y_t); a prompt's
  loss is the mean over its g rollouts, multiplied by its Paceline loss weight when one is
  served; the step's loss is the mean over prompts. With one inner epoch on the whole
  batch ρ = 1 and the clip never binds, but the gradient is exactly A ∇log π.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from trainer_examples.model import LanguageModel, left_pad


@dataclass
class Rollouts:
    """g completions for each of n prompts, flattened prompt-major."""

    input_ids: Tensor  # [n·g, P + M]: left-padded prompt, then the completion
    attention_mask: Tensor  # [n·g, P + M]
    completion_mask: Tensor  # [n·g, M] float: 1 on generated tokens up to the first EOS
    prompt_width: int  # P
    texts: list[str]  # decoded completion before the EOS
    finished: list[bool]  # whether an EOS was generated
    lengths: list[int]  # generated tokens, the EOS included

    @property
    def size(self) -> int:
        return len(self.texts)

    def prompts(self, rows: Sequence[int], group_size: int) -> Rollouts:
        """The completions of the prompts at `rows` (each prompt's `group_size`
        consecutive rows), in that order."""
        take = [r * group_size + j for r in rows for j in range(group_size)]
        return Rollouts(input_ids=self.input_ids[take],
                        attention_mask=self.attention_mask[take],
                        completion_mask=self.completion_mask[take],
                        prompt_width=self.prompt_width,
                        texts=[self.texts[i] for i in take],
                        finished=[self.finished[i] for i in take],
                        lengths=[self.lengths[i] for i in take])


def completion_mask(new_tokens: Tensor, eos_id: int) -> Tensor:
    """1.0 on every generated token up to and including the first EOS, 0 after it."""
    is_eos = (new_tokens == eos_id).long()
    # Tokens strictly after the first EOS have a positive count of EOS before them.
    eos_before = is_eos.cumsum(-1) - is_eos
    return (eos_before == 0).float()


def generate(model: LanguageModel, prompts: Sequence[str], group_size: int,
             max_new_tokens: int, temperature: float = 1.0,
             greedy: bool = False) -> Rollouts:
    """Sample `group_size` completions of each prompt (temperature sampling, or greedy)."""
    tok = model.tokenizer
    rows = [tok.encode(p) for p in prompts for _ in range(group_size)]
    encoded = left_pad(rows, tok.pad_id, model.device)
    was_training = model.module.training
    model.module.eval()
    try:
        new = model.sample(encoded.input_ids, encoded.attention_mask, max_new_tokens,
                           temperature, greedy)
    finally:
        model.module.train(was_training)
    mask = completion_mask(new, tok.eos_id)
    texts, finished, lengths = [], [], []
    for row, row_mask in zip(new.tolist(), mask.tolist(), strict=True):
        length = int(sum(row_mask))
        done = tok.eos_id in row[:length]
        lengths.append(length)
        finished.append(done)
        texts.append(tok.decode(row[: length - 1] if done else row[:length]))
    return Rollouts(
        input_ids=torch.cat([encoded.input_ids, new], dim=1),
        attention_mask=torch.cat([encoded.attention_mask, mask.long()], dim=1),
        completion_mask=mask, prompt_width=encoded.input_ids.shape[1],
        texts=texts, finished=finished, lengths=lengths)


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """(r − group mean) / (group std + eps) over the last axis ([n, g] → [n, g]); exactly 0
    for a group whose rewards are all equal (its float mean can miss the common value by
    an ulp, which eps then turned into an advantage of ±6e-4 for every rollout, of one
    sign: not the zero-variance group the docs and Paceline count)."""
    if rewards.shape[-1] < 2:
        raise ValueError("group-relative advantages need at least 2 rollouts per prompt")
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    advantages = (rewards - mean) / (std + eps)
    return advantages.masked_fill(zero_variance(rewards)[..., None], 0.0)


def zero_variance(rewards: Tensor) -> Tensor:
    """[n] True where every rollout of the group has the same reward (compared, not a std
    tested against 0: the std of equal float32 values need not be 0)."""
    return rewards.amax(dim=-1) == rewards.amin(dim=-1)


def completion_logprobs(model: LanguageModel, rollouts: Rollouts,
                        temperature: float = 1.0) -> Tensor:
    """log π(y_t | prompt, y_<t) of every completion token, [n·g, M] (0 beyond EOS).

    The logits are divided by the sampling temperature (as TRL does), so π_old is the
    distribution the rollouts were actually drawn from."""
    logits = model.logits(rollouts.input_ids, rollouts.attention_mask).float() / temperature
    start = rollouts.prompt_width
    # The logits at position t predict the token at t + 1.
    predicted = logits[:, start - 1: -1, :]
    targets = rollouts.input_ids[:, start:]
    logp = torch.log_softmax(predicted, dim=-1).gather(-1, targets[..., None])[..., 0]
    return logp * rollouts.completion_mask


@dataclass
class LossParts:
    loss: Tensor
    clip_fraction: float
    kl: float


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
              loss_weights: Tensor | None = None, clip_eps: float = 0.2,
              ref_logp: Tensor | None = None, kl_coef: float = 0.0) -> LossParts:
    """The clipped GRPO objective (see the module docstring); `advantages` is [n, g],
    `logp`, `old_logp`, `ref_logp` and `mask` are [n·g, M], `loss_weights` is [n]."""
    n, g = advantages.shape
    adv = advantages.reshape(n * g, 1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl_value = 0.0
    if ref_logp is not None and kl_coef > 0:
        log_ratio = ref_logp - logp
        kl = torch.exp(log_ratio) - log_ratio - 1
        per_token = per_token + kl_coef * kl
        kl_value = float(((kl * mask).sum() / mask.sum().clamp(min=1)).detach())
    per_rollout = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    per_prompt = per_rollout.view(n, g).mean(-1)
    if loss_weights is not None:
        per_prompt = per_prompt * loss_weights
    with torch.no_grad():  # tokens where the clipped term binds (no gradient)
        binds = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        clip_fraction = float((binds.float() * mask).sum() / mask.sum().clamp(min=1))
    return LossParts(loss=per_prompt.mean(), clip_fraction=clip_fraction, kl=kl_value)


def supervised_loss(model: LanguageModel, pairs: Sequence[tuple[str, str]]) -> Tensor:
    """Cross-entropy of target + EOS after each (prompt, target): the warm start that
    gives RL non-zero rewards to work with."""
    tok = model.tokenizer
    rows, answer_lengths = [], []
    for prompt, target in pairs:
        answer = [*tok.encode(target), tok.eos_id]
        rows.append(tok.encode(prompt) + answer)
        answer_lengths.append(len(answer))
    batch = left_pad(rows, tok.pad_id, model.device)
    width = batch.input_ids.shape[1]
    logits = model.logits(batch.input_ids, batch.attention_mask).float()[:, :-1]
    targets = batch.input_ids[:, 1:]
    columns = torch.arange(1, width, device=model.device)[None, :]
    lengths = torch.tensor(answer_lengths, device=model.device)[:, None]
    target_mask = (columns >= width - lengths).float()  # the answer and EOS columns
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             reduction="none").view_as(target_mask)
    return (losses * target_mask).sum() / target_mask.sum()
