"""What both real-gradient paths share (the TRL callback and the example trainer): which
parameters the per-objective gradients are taken on, and their Gram matrix. Needs only
torch, so the example trainer uses it without TRL or transformers installed."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

_NUMBERED = re.compile(r"(?:^|\.)(\d+)\.")


def select_parameters(module: nn.Module, layers: str | Sequence[str] = "last"
                      ) -> list[nn.Parameter]:
    """The trainable parameters the gradients are taken on: "last" = the last numbered
    block (`model.layers.23.`, `blocks.2.`) and every parameter registered after it (final
    norm, head); "all"; or name prefixes (a sequence or comma-separated)."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    if layers == "all":
        return [p for _, p in named]
    if layers == "last":
        numbered = [(i, int(m.group(1))) for i, (name, _) in enumerate(named)
                    if (m := _NUMBERED.search(name))]
        if not numbered:
            return [p for _, p in named]
        last = max(index for _, index in numbered)
        first = min(i for i, index in numbered if index == last)
        return [p for _, p in named[first:]]
    parts = layers.split(",") if isinstance(layers, str) else list(layers)
    prefixes = tuple(part.strip() for part in parts if part.strip())
    chosen = [p for name, p in named if prefixes and name.startswith(prefixes)]
    if not chosen:
        raise ValueError(f"no parameter to take gradients on: no trainable parameter name "
                         f"starts with any of {list(prefixes)}")
    return chosen


def gram_matrix(gradients: Tensor) -> np.ndarray:
    """G = [⟨g_i, g_j⟩] of the rows of `gradients` [k, P], exactly symmetric."""
    matrix = (gradients @ gradients.T).detach().cpu().double().numpy()
    return np.asarray((matrix + matrix.T) / 2)
