"""Helpers for the CLI and export/import tests: a curriculum with a history, and the CLI
run in process (its output, or its exit status and stderr)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from paceline_server.app.service import PacelineService
from paceline_server.cli import main
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC


def populated(url: str, reports: int = 12, spec: Mapping[str, Any] = SPEC,
              start: int = 0, service: PacelineService | None = None) -> PacelineService:
    """`spec` (math: easy 60, hard 40; objectives acc, len) with run-1 and `reports`
    reports of steps start, start + 1, ... (keys k<step>), snapshots every 5."""
    if service is None:
        service = PacelineService(open_store(url, auto_migrate=True),
                                  Settings(database_url=url, snapshot_every=5))
        service.create_curriculum(spec, exist_ok=True)
        service.attach_run(spec["name"], run_id="run-1")
    rng = np.random.default_rng(start)
    for step in range(start, start + reports):
        batch = service.next_batch(spec["name"], "run-1", step)
        hard = batch.indices >= 60
        correct = rng.random((batch.indices.size, 4)) < np.where(hard, 0.1, 0.9)[:, None]
        rewards = np.stack([correct, np.full(correct.shape, 30.0)], axis=-1).astype(float)
        service.report(spec["name"], {"run_id": "run-1", "step": step,
                                      "indices": batch.indices.tolist(),
                                      "rewards": rewards.tolist()}, f"k{step}")
    return service


def run(*argv: str) -> str:
    """The CLI's output; fails the test unless it exits 0."""
    out = io.StringIO()
    assert main(list(argv), out=out) == 0
    return out.getvalue()


def fail(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of a CLI run that must fail with one line and print nothing
    on stdout."""
    capsys.readouterr()
    out = io.StringIO()
    status = main(list(argv), out=out)
    err = capsys.readouterr().err
    assert status != 0
    assert out.getvalue() == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return status, err.strip()
