"""Per-objective policy gradients on a subset of the layers, as Lu et al.'s gradient-based
weighting computes them, and the Gram matrix the report sends as `grad_products`.

For each objective i the policy gradient is taken with that objective's own advantages:

    g_i = ∇_θ  mean over rollouts of  A^i · (token mean of log π(y_t))

on the chosen parameters θ (by default the last transformer block and what follows it,
as the reference restricts itself to a few layers), at the policy that generated the
rollouts (ratio 1, so this is exactly the GRPO gradient with A^i in place of A). A^i is
the group-normalised *unit* reward of objective i (`paceline.scalarize`: bounds and
direction applied, larger is better), so g_i is the ascent direction of objective i and
G_ij = ⟨g_i, g_j⟩ > 0 means a step on i also helps j: the sign convention the service
expects. The same A^i are what the service's rollout proxy uses when no Gram matrix is
sent (G_ij ≈ mean A^i A^j under an isotropy assumption), so `compare` measures only how
far that assumption is from the real gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import paceline
from trainer_examples.grpo import Rollouts, completion_logprobs
from trainer_examples.model import LanguageModel


def objective_advantages(unit_rewards: Tensor) -> Tensor:
    """A^i: [n, g, k] unit rewards normalised within each group (mean 0, population std
    1; 0 where the group is constant on that objective), as the service's proxy. Constant
    is tested by comparing the values: a float mean an ulp off the common value gave a
    std above any threshold and A = ±1 (a brevity of 2/3 in a group of 8, one objective)."""
    centred = unit_rewards - unit_rewards.mean(dim=1, keepdim=True)
    std = unit_rewards.std(dim=1, unbiased=False, keepdim=True)
    constant = unit_rewards.amax(dim=1, keepdim=True) == unit_rewards.amin(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(centred),
                       centred / std.clamp(min=1e-12))


def unit_rewards(rewards: Tensor, batch: paceline.Batch) -> Tensor:
    """Raw rewards [n, g, k] -> unit rewards by the curriculum's bounds and directions."""
    objectives = batch.objective_specs()
    gain = torch.tensor([o.gain for o in objectives], dtype=rewards.dtype)
    offset = torch.tensor([o.offset for o in objectives], dtype=rewards.dtype)
    return rewards * gain + offset


def objective_gradients(model: LanguageModel, rollouts: Rollouts, advantages: Tensor,
                        parameters: Sequence[nn.Parameter],
                        temperature: float = 1.0) -> Tensor:
    """[k, P] flattened g_i on `parameters` (see the module docstring)."""
    n, g, k = advantages.shape
    logp = completion_logprobs(model, rollouts, temperature)
    mask = rollouts.completion_mask
    sequence = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [n·g]
    adv = advantages.to(sequence.device, sequence.dtype).reshape(n * g, k)
    rows = []
    for i in range(k):
        objective = (adv[:, i] * sequence).mean()
        grads = torch.autograd.grad(objective, list(parameters), retain_graph=i < k - 1,
                                    allow_unused=True)
        rows.append(torch.cat([
            (grad if grad is not None else torch.zeros_like(p)).reshape(-1).double()
            for grad, p in zip(grads, parameters, strict=True)]))
    return torch.stack(rows)


def proxy_gram(advantages: Tensor) -> np.ndarray:
    """The service's rollout proxy: mean over rollouts of A^i A^j, scaled to max |entry| 1."""
    flat = advantages.reshape(-1, advantages.shape[-1]).double()
    matrix = (flat.T @ flat / flat.shape[0]).cpu().numpy()
    largest = float(np.abs(matrix).max())
    return matrix / largest if largest > 0 else np.zeros_like(matrix)


@dataclass(frozen=True)
class Agreement:
    """How well the proxy tracks the real Gram matrix on one batch."""

    gram_cosine: float  # cosine of the two matrices (both scaled to max |entry| 1)
    gram_correlation: float  # Pearson correlation of the upper-triangle entries (NaN if < 3)
    move_cosine: float  # cosine of the centred influences: the direction w moves
    conflict_agrees: bool  # same sign of every off-diagonal entry

    def to_record(self) -> dict[str, float]:
        return {"proxy_gram_cosine": self.gram_cosine,
                "proxy_gram_correlation": self.gram_correlation,
                "proxy_move_cosine": self.move_cosine,
                "proxy_conflict_agrees": float(self.conflict_agrees)}


def compare(real: np.ndarray, proxy: np.ndarray) -> Agreement:
    """Proxy against real Gram matrix; a zero matrix on either side gives NaN cosines.

    The weighting moves log w by η·I with I the row sums; softmax ignores a common shift,
    so the direction w moves in is the centred influence I − mean(I). `move_cosine` is the
    cosine of the two directions (±1 with two objectives: agree or not)."""
    largest = float(np.abs(real).max())
    real_n = real / largest if largest > 0 else real
    upper = np.triu_indices(real.shape[0])
    a, b = real_n[upper], proxy[upper]
    correlation = (float(np.corrcoef(a, b)[0, 1])
                   if a.size >= 3 and a.std() > 0 and b.std() > 0 else math.nan)
    move_real = real_n.sum(axis=1) - real_n.sum(axis=1).mean()
    move_proxy = proxy.sum(axis=1) - proxy.sum(axis=1).mean()
    off = ~np.eye(real.shape[0], dtype=bool)
    return Agreement(gram_cosine=_cosine(real_n.ravel(), proxy.ravel()),
                     gram_correlation=correlation,
                     move_cosine=_cosine(move_real, move_proxy),
                     conflict_agrees=bool(np.all(np.sign(real_n[off]) == np.sign(proxy[off]))))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else math.nan
