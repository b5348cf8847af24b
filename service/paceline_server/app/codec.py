"""Event and batch payloads as `.npz` bytes (no pickle): what the store keeps opaque."""

from __future__ import annotations

import numpy as np

from paceline_server.domain.batch import Batch
from paceline_server.domain.npz import load_npz, save_npz
from paceline_server.domain.report import Report

_REPORT_ARRAYS = ("indices", "group_of", "rewards", "advantages", "grad_products",
                  "eval_objectives")
_BATCH_ARRAYS = ("indices", "reward_weights", "loss_weights", "probabilities")


def encode_report(report: Report) -> bytes:
    arrays = {name: getattr(report, name) for name in _REPORT_ARRAYS
              if getattr(report, name) is not None}
    arrays["run_id"] = np.asarray(report.run_id)
    arrays["step"] = np.asarray(report.step, dtype=np.int64)
    return save_npz(arrays)


def decode_report(data: bytes) -> Report:
    arrays = load_npz(data, "stored payload")
    return Report(
        run_id=str(arrays["run_id"].item()), step=int(arrays["step"].item()),
        indices=arrays["indices"], group_of=arrays["group_of"], rewards=arrays["rewards"],
        advantages=arrays.get("advantages"), grad_products=arrays.get("grad_products"),
        eval_objectives=arrays.get("eval_objectives"),
    )


def encode_batch(batch: Batch) -> bytes:
    arrays = {name: getattr(batch, name) for name in _BATCH_ARRAYS
              if getattr(batch, name) is not None}
    arrays["run_id"] = np.asarray(batch.run_id)
    arrays["scalars"] = np.array([batch.step, batch.skipped_zero_variance, batch.clock],
                                 dtype=np.int64)
    arrays["reward_scale"] = np.asarray(batch.reward_scale, dtype=np.float64)
    return save_npz(arrays)


def decode_batch(data: bytes) -> Batch:
    arrays = load_npz(data, "stored payload")
    step, skipped, clock = (int(v) for v in arrays["scalars"])
    return Batch(
        run_id=str(arrays["run_id"].item()), step=step, indices=arrays["indices"],
        reward_weights=arrays["reward_weights"],
        reward_scale=float(arrays["reward_scale"].item()),
        loss_weights=arrays.get("loss_weights"), probabilities=arrays["probabilities"],
        skipped_zero_variance=skipped, clock=clock,
    )
