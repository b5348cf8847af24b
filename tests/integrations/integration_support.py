"""What the service stored, read straight from its SQLite file: the reports (events) a
trainer integration sent and the batches it was served. The integration tests compare
the two, so a report with the wrong step, indices or rewards fails them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paceline_server.app.codec import decode_batch, decode_report
from paceline_server.store import open_store


@dataclass(frozen=True)
class Reported:
    """One stored report: a row per rollout (grouped), as the engine folded it."""

    run_id: str
    step: int
    indices: list[int]  # one per group
    rollout_indices: list[int]  # one per rollout
    group_of: list[int]
    rewards: np.ndarray  # [m, k]
    advantages: np.ndarray | None  # [m]


def reports(db: Path, curriculum: str) -> list[Reported]:
    store = open_store(f"sqlite:///{db}")
    try:
        found = []
        for event in store.events(curriculum):
            report = decode_report(event.payload)
            found.append(Reported(
                run_id=report.run_id, step=report.step, indices=report.indices.tolist(),
                rollout_indices=report.indices[report.group_of].tolist(),
                group_of=report.group_of.tolist(), rewards=report.rewards,
                advantages=report.advantages))
        return found
    finally:
        store.close()


def served_indices(db: Path, curriculum: str, run_id: str, step: int) -> list[int]:
    store = open_store(f"sqlite:///{db}")
    try:
        record = store.get_batch(curriculum, run_id, step)
        assert record is not None, f"no batch was served for step {step}"
        return list(decode_batch(record.payload).indices.tolist())
    finally:
        store.close()


def grpo_advantages(scalar: np.ndarray, group_of: list[int], eps: float = 1e-4) -> np.ndarray:
    """(r - group mean) / (group std, unbiased, + eps): TRL's and verl's GRPO formula."""
    groups = np.asarray(group_of)
    out = np.empty_like(scalar)
    for g in np.unique(groups):
        rows = groups == g
        values = scalar[rows]
        out[rows] = (values - values.mean()) / (values.std(ddof=1) + eps)
    return out
