"""verl 0.9 (the current release) through `paceline.integrations.verl09`.

verl 0.9.1 cannot share a venv with the 0.7.1 the rest of the suite tests, so it lives in
a directory of its own (`pip install --no-deps --target DIR verl==0.9.1 cachetools`, as
.ci/run does) named by `PACELINE_VERL09_PATH`, and the
checks (verl09_checks.py) run in a subprocess with that directory first on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchdata")

HERE = Path(__file__).resolve().parent
VERL09 = os.environ.get("PACELINE_VERL09_PATH", "")


@pytest.mark.skipif(not VERL09 or not (Path(VERL09) / "verl").is_dir(),
                    reason="set PACELINE_VERL09_PATH to a directory holding verl 0.9.1")
def test_verl09_trainer_sampler_resume_and_bad_input(tmp_path: Path) -> None:
    client = HERE.parents[1] / "client"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [VERL09, str(client), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "verl09_checks.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "verl09 checks passed with verl 0.9" in done.stdout
