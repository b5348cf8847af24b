"""The example trainer's checkpoints: a run killed mid-way and resumed with `--resume`
ends exactly where the same run uninterrupted ends (metrics, model, curriculum), and a
checkpoint is not resumed against another configuration or a recreated curriculum."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the example trainer needs the `examples` extra")
pytest.importorskip("matplotlib", reason="the example trainer needs the `examples` extra")

import torch

import paceline

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--sft-steps", "10", "--sft-batch", "16", "--batch-size", "4", "--group-size", "4",
        "--eval-every", "2", "--eval-size", "4", "--dim", "16", "--layers", "1",
        "--threads", "1", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NAME = "tiny-grpo-dump_ucb-hypervolume-s0"  # the curriculum the defaults name


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer_examples", "train", *TINY, *args]


def _train(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(_command(*args), cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert (result.returncode == 0) is ok, result.stderr[-4000:]
    return result


def _rows(folder: Path) -> list[dict[str, Any]]:
    with (folder / "metrics.jsonl").open() as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in f]


def _model(folder: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(folder / "checkpoint.pt", weights_only=True)["model"])


def _curriculum(folder: Path) -> dict[str, Any]:
    """What the run's embedded service holds: its state and every served batch."""
    with paceline.Client.embedded(folder / "paceline.db") as client:
        cur = client.curriculum(NAME)
        state = cur.state()
        run = cur.runs()[0]
        return {"seq": state.seq, "probabilities": state.probabilities,
                "weights": state.reward_weights,
                "distributions": [d.model_dump() for d in state.distributions],
                "batches": [cur.start_run(run.run_id, heartbeat_interval=None)
                            .next_batch(step).indices for step in range(state.seq)]}


def _same_run(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)
    model_a, model_b = _model(a), _model(b)
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert _curriculum(a) == _curriculum(b)
    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    for key in ("final_eval", "final_objectives", "final_hypervolume", "service", "run_id"):
        assert summary_a[key] == summary_b[key], key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 steps of the tiny run, never stopped, a checkpoint every 3 steps."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _train("--steps", "20", "--checkpoint-every", "3", "--out", str(out))
    return out


def _kill_after(out: Path, rows: int, *args: str) -> None:
    """Start the run and SIGKILL it once `rows` steps are in its metrics (no cleanup of
    any kind runs: no context manager, no flush, no atexit)."""
    process = subprocess.Popen(_command(*args, "--out", str(out)), cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and metrics.read_text().count("\n") >= rows:
                break
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_a_killed_run_resumed_equals_the_uninterrupted_run(uninterrupted: Path,
                                                            tmp_path: Path) -> None:
    """Killed after its 7th step, its last checkpoint at step 5 (the next is due after
    step 9): the resumed run redoes the steps after the checkpoint, which the service
    answers as replays, and ends bit for bit where the uninterrupted one does."""
    out = tmp_path / "killed"
    _kill_after(out, 7, "--steps", "20", "--checkpoint-every", "5")
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 5
    assert _rows(out)[-1]["step"] >= 6  # steps after the checkpoint were reported
    # A resume killed while it rewrote the metrics left them cut short: the checkpoint
    # holds the rows before it, so nothing is lost.
    (out / "metrics.jsonl").write_text("")
    (out / "metrics.csv").unlink()
    result = _train("--steps", "20", "--checkpoint-every", "5", "--resume", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == saved["step"]
    assert "first report stands" not in result.stderr  # same rollouts: replays
    _same_run(uninterrupted, out)


def test_resume_without_a_checkpoint_starts_over_on_the_reports_it_holds(
        uninterrupted: Path, tmp_path: Path) -> None:
    """Killed before any checkpoint: `--resume` starts at step 0 (no refusal for the
    reports the curriculum holds) and the reports it sends again are replays."""
    out = tmp_path / "no-checkpoint"
    _kill_after(out, 5, "--steps", "20", "--checkpoint-every", "0")
    assert not (out / "checkpoint.pt").exists()
    refused = _train("--steps", "20", "--checkpoint-every", "3", "--out", str(out), ok=False)
    assert "--resume" in refused.stderr and "already holds" in refused.stderr
    _train("--steps", "20", "--checkpoint-every", "3", "--resume", "--out", str(out))
    assert json.loads((out / "summary.json").read_text())["resumed_from"] is None
    _same_run(uninterrupted, out)


def test_a_finished_run_goes_on_with_more_steps(uninterrupted: Path, tmp_path: Path) -> None:
    """The last checkpoint is written at the end: `--resume --steps 20` continues a
    12-step run to what 20 steps give (the first run's final row is replaced)."""
    out = tmp_path / "extended"
    _train("--steps", "12", "--checkpoint-every", "3", "--out", str(out))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 12
    _train("--steps", "20", "--checkpoint-every", "3", "--resume", "--out", str(out))
    _same_run(uninterrupted, out)


def test_a_checkpoint_is_not_resumed_against_another_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train("--steps", "3", "--checkpoint-every", "2", "--out", str(out))
    before = (out / "metrics.jsonl").read_bytes()

    other = _train("--steps", "5", "--lr", "0.001", "--resume", "--out", str(out), ok=False)
    assert "another configuration" in other.stderr and "lr" in other.stderr

    with paceline.Client.embedded(out / "paceline.db") as client:  # deleted since
        client.curriculum(NAME).delete()
    deleted = _train("--steps", "5", "--resume", "--out", str(out), ok=False)
    assert "no longer exists" in deleted.stderr
    assert (out / "metrics.jsonl").read_bytes() == before  # refused runs keep the files
    with paceline.Client.embedded(out / "paceline.db") as client:
        assert not client.list_curricula()  # the refusal did not create it anew
    # A new run of one step recreates it (and writes no checkpoint: the old one stays).
    _train("--steps", "1", "--checkpoint-every", "0", "--out", str(out))
    recreated = _train("--steps", "5", "--resume", "--out", str(out), ok=False)
    assert "recreated" in recreated.stderr

    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    damaged = _train("--steps", "5", "--resume", "--out", str(out), ok=False)
    assert "not a readable checkpoint" in damaged.stderr

    both = _train("--steps", "5", "--resume", "--reset", "--out", str(out), ok=False)
    assert "not both resume and reset" in both.stderr


def test_resume_without_a_checkpoint_is_refused_under_another_configuration(
        tmp_path: Path) -> None:
    """Without a checkpoint `--resume` starts at step 0 on the reports the run made: a
    changed option was accepted and its reports were dropped for the first ones."""
    out = tmp_path / "run"
    _train("--steps", "3", "--checkpoint-every", "0", "--out", str(out))
    before = (out / "metrics.jsonl").read_bytes()
    other = _train("--steps", "3", "--checkpoint-every", "0", "--group-size", "3",
                   "--resume", "--out", str(out), ok=False)
    assert "another configuration" in other.stderr and "group_size" in other.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    same = _train("--steps", "3", "--checkpoint-every", "0", "--resume", "--out", str(out))
    assert "first report stands" not in same.stderr  # its reports are replays
    assert [r["seq"] for r in _rows(out) if not r["final"]] == [1, 2, 3]
