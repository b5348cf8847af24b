"""verl 0.9's v1 trainer through `paceline.integrations.verl_v1` (the replay buffer on
`trainer.v1.sampler.custom_sampler`).

Like test_verl09_integration.py, verl 0.9.1 lives in the directory named by
`PACELINE_VERL09_PATH` (with TransferQueue, pyzmq and msgspec, which its v1 trainer
imports; .ci/run installs them there), and the checks (verl_v1_checks.py) run in a
subprocess with that directory first on its path: a local Ray and TransferQueue, verl's
own sync trainer steps, replay buffer and checkpointing. One subprocess runs every
check: starting Ray and TransferQueue is most of its time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchdata")
pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent
VERL09 = os.environ.get("PACELINE_VERL09_PATH", "")
READY = bool(VERL09) and (Path(VERL09) / "verl").is_dir() \
    and (Path(VERL09) / "transfer_queue").is_dir()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not READY, reason="set PACELINE_VERL09_PATH to a directory holding verl 0.9.1 and "
                      "transferqueue 0.1.11 (see .ci/run)")]


def test_verl_v1_replay_buffer_steps_served_parts_resume_and_bad_input(tmp_path: Path) -> None:
    checks = ["interfaces", "steps", "single", "served", "resume", "bad_input"]
    client = HERE.parents[1] / "client"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [VERL09, str(client), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "verl_v1_checks.py"), str(tmp_path),
                           *checks], env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    for check in checks:
        assert f"check passed: {check}" in done.stdout, out[-6000:]
    assert "verl v1 checks passed with verl 0.9" in done.stdout
