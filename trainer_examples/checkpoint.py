"""Checkpoints of the example trainer: what the loop needs to go on as if it had never
stopped.

Why: a run is deterministic given its configuration (the run id follows from it, and
each step's batch is drawn from the seed, the run id and the step), so a run that crashed
and resumed from a checkpoint must end exactly where an uninterrupted one ends, which is
what Paceline promises every trainer that checkpoints. A checkpoint therefore holds the
model, the optimizer and every random generator the loop draws from, the evaluation
points the hypervolume is taken over, the metrics rows so far (the files are rewritten
from them on resume, so a metrics file lost or cut short by a crash is whole again), and
the Paceline position: the next step, with the
curriculum and run it belongs to (`Fingerprint`, the integrations' check). It is written
after a step's report was acknowledged, to a temporary file that is then renamed over the
last checkpoint, so a crash leaves the old checkpoint or the new one, never part of one.
The steps reported after the last checkpoint are done again on resume: Paceline serves
them the same batches and answers the same reports as replays, and keeps the first
report of a redone step whose rollouts came out different (a GPU that is not bitwise
deterministic), as for the integrations.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = 1  # bumped when the layout below changes; an older file is refused, not misread

#: Config fields that do not change what a run computes: a resumed run may differ in them.
#: (`steps` may grow: a finished run resumed with more steps goes on training.)
FREE_FIELDS = frozenset({"out", "url", "reset", "resume", "progress", "steps", "threads",
                         "device", "checkpoint_every"})


@dataclass
class Checkpoint:
    """A run's state after the report of step `step - 1` was acknowledged."""

    step: int  # the next step to train
    config: dict[str, Any]  # the fields of `Config` that define the run (not FREE_FIELDS)
    fingerprint: dict[str, str]  # `paceline.integrations._resume.Fingerprint.to_dict()`
    run_id: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    reference: dict[str, torch.Tensor] | None  # the frozen warm-started model (KL > 0)
    rng: dict[str, Any]  # `capture_rng()`
    eval_points: list[list[float]]
    first_eval: dict[str, Any] | None  # `Evaluation` as a dict
    last_eval: dict[str, Any] | None
    sft_losses: list[float]
    sft_seconds: float
    rows: list[dict[str, Any]]  # the metrics rows of the steps before `step`
    elapsed_s: float  # wall time of the run before this checkpoint
    started: str  # ISO time the run first started
    format: int = FORMAT


def run_fields(config: Any) -> dict[str, Any]:
    """The configuration values that define what a run computes (JSON-like)."""
    values = asdict(config)
    return {k: _plain(v) for k, v in values.items() if k not in FREE_FIELDS}


def differing(saved: dict[str, Any], config: Any) -> list[str]:
    """Names of the run-defining fields whose value differs from the checkpoint's."""
    now = run_fields(config)
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """Every random state the loop draws from: Python's, the loop's numpy generator,
    torch's CPU generator and, when CUDA is in use, each device's."""
    state: dict[str, Any] = {"python": random.getstate(),
                             "numpy": generator.bit_generator.state,
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    """Put back what `capture_rng` took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(checkpoint: Checkpoint, out: Path) -> Path:
    """Write `out/checkpoint.pt` atomically (temporary file, fsync, rename)."""
    path = out / CHECKPOINT
    partial = out / f".{CHECKPOINT}.partial"
    with partial.open("wb") as f:
        torch.save(asdict(checkpoint), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path


def load(out: Path) -> Checkpoint | None:
    """The checkpoint in `out`; None when there is none. Raises ValueError for a file
    that is not a checkpoint of this format."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({exc})") from exc
    names = {f.name for f in fields(Checkpoint)}
    if not isinstance(data, dict) or data.get("format") != FORMAT or set(data) != names:
        raise ValueError(f"{path} is not a checkpoint of this trainer (format {FORMAT})")
    return Checkpoint(**data)


def _plain(value: Any) -> Any:
    """Tuples as lists, as they come back from a saved checkpoint."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
