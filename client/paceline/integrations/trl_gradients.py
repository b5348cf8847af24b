"""Real per-objective gradient products for `PacelineGRPOTrainer` (opt-in).

Lu et al.'s gradient-based weighting moves the reward weights by the row sums of the Gram
matrix of per-objective policy gradients. Without it the service estimates that matrix
from the rewards (the rollout proxy); this callback sends the real one every `every`
Paceline steps, computed on a chosen subset of the parameters:

```python
from paceline.integrations.trl import PacelineGRPOTrainer
from paceline.integrations.trl_gradients import GradientProductsCallback

trainer = PacelineGRPOTrainer(run, model=model, ..., reward_funcs={...})
trainer.add_callback(GradientProductsCallback(trainer, every=4, layers="last"))
trainer.train()
```

Sign convention (the same as `trainer_examples` and the service's `gradient` weighting):
for objective i,

    g_i = ∇_θ  mean over the step's rollouts of  A^i · (token mean of log π(completion))

at the policy that generated the rollouts, where A^i is objective i's *unit* reward
(`Batch.objective_specs`: bounds and direction applied, larger is better) normalised
within each prompt's group (mean 0, population std 1; 0 where the group is constant or
a reward is missing). g_i is the ascent direction of objective i — for a minimised
objective it points toward smaller raw values — and G_ij = ⟨g_i, g_j⟩ > 0 means a step
on i also helps j. The matrix is sent raw (the service's `eta` applies to raw entries;
scale `eta` to the model: entries of a small model's last block are often ~1e-3).

Why here and not in TRL: TRL computes one loss from the scalarised advantages only. The
callback wraps the trainer's generation round: right after TRL has scored a Paceline
step (the rows `PacelineGRPOTrainer` recorded: their reward vectors and group order) it
takes k backward passes of the policy on those completions and leaves the matrix with
the step's ledger record, which sends it with the report. Costs k extra backward passes
(restricted to the chosen parameters' graph) every `every` steps. With several
processes each computes its rows' gradients and they are averaged across processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from paceline.integrations._gradients import gram_matrix, select_parameters
from paceline.integrations._ledger import GRAD_PRODUCTS, StepRecord
from paceline.models import Batch

__all__ = [
    "GradientProductsCallback",
    "gram_matrix",
    "objective_advantages",
    "select_parameters",
    "unit_rewards",
]

def unit_rewards(rewards: Sequence[Sequence[float]], batch: Batch) -> np.ndarray:
    """Raw reward rows [m, k] -> unit rewards (bounds and direction applied); NaN stays."""
    objectives = batch.objective_specs()
    table = np.asarray(rewards, dtype=np.float64).reshape(-1, len(objectives))
    gain = np.array([o.gain for o in objectives])
    offset = np.array([o.offset for o in objectives])
    return table * gain + offset


def objective_advantages(units: np.ndarray, group: int) -> np.ndarray:
    """A^i per rollout [m, k]: unit rewards normalised within each group of `group`
    consecutive rows; 0 where the group is constant on that objective or a reward is
    missing (a missing reward also leaves the others of its group out of the mean)."""
    m, k = units.shape
    if group < 1 or m % group:
        raise ValueError(f"{m} rows do not split into groups of {group}")
    grouped = units.reshape(m // group, group, k)
    present = np.isfinite(grouped)
    count = present.sum(axis=1, keepdims=True)
    filled = np.where(present, grouped, 0.0)
    mean = filled.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(present, grouped - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        advantages = np.where(std > 1e-12, centred / std, 0.0)
    return advantages.reshape(m, k)


def sequence_logprobs(model: nn.Module, output: dict[str, Any],
                      temperature: float) -> Tensor:
    """Token mean of log π(completion) per row [m], with the graph to the parameters."""
    prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
    mask = output["completion_mask"].to(torch.float32)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    width = completion_ids.size(1)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    logits = logits[:, -width - 1:-1, :].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(
        -1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def objective_gradients(model: nn.Module, output: dict[str, Any], advantages: np.ndarray,
                        parameters: Sequence[nn.Parameter], temperature: float,
                        rows: int) -> Tensor:
    """[k, P] flattened g_i (the module docstring), mean over `rows` rollouts in all."""
    with torch.enable_grad():
        sequence = sequence_logprobs(model, output, temperature)
        adv = torch.as_tensor(advantages, dtype=sequence.dtype, device=sequence.device)
        k = adv.shape[1]
        result = []
        for i in range(k):
            objective = (adv[:, i] * sequence).sum() / rows
            grads = torch.autograd.grad(objective, list(parameters),
                                        retain_graph=i < k - 1, allow_unused=True)
            result.append(torch.cat([
                (grad if grad is not None else torch.zeros_like(p)).reshape(-1).double()
                for grad, p in zip(grads, parameters, strict=True)]))
    return torch.stack(result)


class GradientProductsCallback(TrainerCallback):  # type: ignore[misc]
    """Attach the real per-objective gradient Gram matrix (`grad_products`) to the report
    of every `every`-th Paceline step of `trainer` (a `PacelineGRPOTrainer`), computed on
    the parameters `layers` selects (`select_parameters`). Opt-in: add it with
    `trainer.add_callback`. `computed` lists the steps that carry a matrix; a step whose
    matrix is not finite is sent without one (the service then uses its proxy)."""

    def __init__(self, trainer: Any, every: int = 1,
                 layers: str | Sequence[str] = "last") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1; got {every}")
        if not hasattr(trainer, "paceline") or not hasattr(trainer, "_record_rollouts"):
            raise TypeError("GradientProductsCallback needs a PacelineGRPOTrainer")
        if getattr(trainer, "dynamic_sampling", False):
            # The round it sees is the merged one (kept groups of every part), while the
            # step's rollouts hold every group generated: rows would pair with the wrong
            # groups' advantages.
            raise ValueError("GradientProductsCallback does not support dynamic_sampling=True")
        self.trainer = trainer
        self.every = every
        self.layers = layers
        self.parameters = select_parameters(trainer.accelerator.unwrap_model(trainer.model),
                                            layers)
        self.computed: list[int] = []
        original = trainer._generate_and_score_completions

        def generate_and_score(inputs: list[dict[str, Any]]) -> dict[str, Any]:
            output: dict[str, Any] = original(inputs)
            if trainer.model.training:
                self._after_scoring(output)
            return output

        trainer._generate_and_score_completions = generate_and_score

    def _after_scoring(self, output: dict[str, Any]) -> None:
        record = self._just_scored()
        if record is None or record.step % self.every:
            return
        matrix = self.products(record, output)
        if np.all(np.isfinite(matrix)):
            record.scratch[GRAD_PRODUCTS] = matrix.tolist()
            self.computed.append(record.step)
        else:
            warnings.warn(f"paceline: step {record.step}'s gradient products are not "
                          "finite; the report goes without them", RuntimeWarning,
                          stacklevel=2)

    def _just_scored(self) -> StepRecord | None:
        """The record PacelineGRPOTrainer has just filled with this round's rollouts (the
        newest one holding rollouts and no products yet)."""
        ledger = self.trainer.paceline
        with ledger._lock:
            done = [r for r in ledger._open.values()
                    if r.rollouts is not None and GRAD_PRODUCTS not in r.scratch]
        return done[-1] if done else None

    def products(self, record: StepRecord, output: dict[str, Any]) -> np.ndarray:
        """The k×k Gram matrix of this process's rows of `record`, averaged over
        processes."""
        trainer = self.trainer
        assert record.rollouts is not None
        group = int(trainer.num_generations)
        advantages = objective_advantages(unit_rewards(record.rollouts.rewards, record.batch),
                                          group)
        local = int(output["completion_ids"].size(0))
        start = int(trainer.accelerator.process_index) * local
        model = trainer.accelerator.unwrap_model(trainer.model)
        temperature = float(getattr(trainer.args, "temperature", 1.0) or 1.0)
        gradients = objective_gradients(model, output, advantages[start:start + local],
                                        self.parameters, temperature,
                                        rows=len(record.rollouts.rewards))
        if trainer.accelerator.num_processes > 1:
            gradients = trainer.accelerator.reduce(gradients, reduction="sum")
        return gram_matrix(gradients)
