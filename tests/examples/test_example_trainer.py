"""Smoke test of the example trainer (`python -m trainer_examples`) against a real
`paceline-server serve` process on a temporary SQLite file: a few GRPO steps of a very
small model for two sampler/weighting configurations plus a loss-weighted one. Fails when
the loop, the reports, the metrics or the plots break."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from support import running_service

pytest.importorskip("torch", reason="the example trainer needs the `examples` extra")
pytest.importorskip("matplotlib", reason="the example trainer needs the `examples` extra")

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--steps", str(STEPS), "--sft-steps", "40", "--sft-batch", "32", "--batch-size", "8",
         "--group-size", "4", "--eval-every", "2", "--eval-size", "8", "--dim", "32",
         "--layers", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real service process; yields its URL."""
    db = tmp_path_factory.mktemp("service") / "paceline.db"
    with running_service(f"sqlite:///{db}", ready_within=60, graceful=True) as service:
        yield service.url


def _trainer(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "trainer_examples", *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(folder: Path) -> list[dict[str, Any]]:
    with (folder / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f]


def _state(url: str, name: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/curricula/{name}/state")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _check_run(folder: Path, url: str, name: str) -> list[dict[str, Any]]:
    records = _records(folder)
    steps = [r for r in records if not r["final"]]
    assert [r["step"] for r in steps] == list(range(STEPS))
    assert records[-1]["final"] is True
    assert (folder / "metrics.csv").read_text().count("\n") == STEPS + 2  # header + final
    for r in steps:
        assert r["seq"] == r["step"] + 1  # every report acknowledged, in order
        assert math.isfinite(r["loss"]) and math.isfinite(r["nll"]) and r["nll"] > 0
        assert sum(r[k] for k in r if k.startswith("w_")) == pytest.approx(1.0)
        assert sum(r[k] for k in r if k.startswith("p_")) == pytest.approx(1.0)
        assert sum(r[k] for k in r if k.startswith("n_")) == 8
        assert 0.0 <= r["reward_correct"] <= 1.0
    evals = [r["eval_mean"] for r in records if r["eval_mean"] is not None]
    assert len(evals) == STEPS // 2 + 1 and all(0.0 <= e <= 1.0 for e in evals)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sft_loss_last"] < summary["sft_loss_first"]
    assert summary["service"]["seq"] == STEPS
    state = _state(url, name)
    assert state["seq"] == STEPS
    assert sum(d["sampled"] for d in state["distributions"]) == 8 * STEPS
    assert sum(d["rollouts"] for d in state["distributions"]) == 8 * 4 * STEPS
    for png in ("accuracy", "probabilities", "weights", "hypervolume", "training"):
        assert (folder / f"{png}.png").read_bytes()[:8] == PNG
    return records


def test_compare_against_a_real_service(service: str, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    result = _trainer("compare", "--configs", "uniform:fixed", "dump_ucb:hypervolume",
                      "--url", service, "--out", str(out), *SMALL)
    assert "uniform/fixed" in result.stdout and "dump_ucb/hypervolume" in result.stdout
    uniform = _check_run(out / "uniform-fixed", service, "tiny-grpo-uniform-fixed-s0")
    adaptive = _check_run(out / "dump_ucb-hypervolume", service,
                          "tiny-grpo-dump_ucb-hypervolume-s0")
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert all(r["w_correct"] == pytest.approx(0.7) for r in uniform[:-1])
    # The hypervolume weighting scored the evaluation points sent with the reports.
    state = _state(service, "tiny-grpo-dump_ucb-hypervolume-s0")
    assert len(state["hypervolume_history"]) == STEPS // 2
    assert adaptive[0]["p_add1"] == pytest.approx(0.2)  # DUMP: nothing reported yet

    # The same curriculum again without --reset is refused (it holds another run's data).
    again = subprocess.run(
        [sys.executable, "-m", "trainer_examples", "train", "--sampler", "uniform",
         "--weighting", "fixed", "--url", service, "--out", str(tmp_path / "again"), *SMALL],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--reset" in again.stderr


def test_served_loss_weights_are_used(service: str, tmp_path: Path) -> None:
    out = tmp_path / "upweight"
    _trainer("train", "--sampler", "temperature", "--weighting", "fixed",
             "--sampler-param", "mode=upweight", "--url", service, "--out", str(out), *SMALL)
    records = _check_run(out, service, "tiny-grpo-temperature-fixed-s0")
    lows = [r["loss_weight_min"] for r in records[:-1]]
    highs = [r["loss_weight_max"] for r in records[:-1]]
    assert all(low is not None and high is not None for low, high in zip(lows, highs,
                                                                         strict=True))
    assert max(highs) > 1.0 > min(lows)  # upweighting: small distributions weigh more


def test_real_gradient_products_reach_the_gradient_weighting(service: str,
                                                             tmp_path: Path) -> None:
    """`--grad-every 1`: every report carries the Gram matrix of per-objective policy
    gradients, and the service's gradient weighting uses it (its last influence is the
    row sums of the last logged matrix, not the proxy's)."""
    out = tmp_path / "grads"
    _trainer("train", "--sampler", "uniform", "--weighting", "gradient", "--grad-every", "1",
             "--url", service, "--out", str(out), *SMALL)
    records = _check_run(out, service, "tiny-grpo-uniform-gradient-s0")
    steps = records[:-1]
    assert all(r["grad_products_computed"] == 1.0 for r in steps)
    last = steps[-1]
    gram = np.array([[last["gram_correct_correct"], last["gram_correct_format"]],
                     [last["gram_correct_format"], last["gram_format_format"]]])
    assert np.all(np.diag(gram) >= 0)
    influence = _state(service, "tiny-grpo-uniform-gradient-s0")["weighting"]["influence"]
    np.testing.assert_allclose(influence, gram.sum(axis=1), rtol=1e-9, atol=1e-15)


def test_bad_values_are_refused_before_anything_runs() -> None:
    """They surfaced as tracebacks after the warm start, or ran (a negative clip_eps)."""
    from trainer_examples.loop import Config

    for bad in ({"lr": -1.0}, {"clip_eps": -1.0}, {"kl_coef": -1.0}, {"eval_size": 0},
                {"sft_batch": 0}, {"sft_format_rate": 2.0}, {"seed": -1}, {"threads": 0},
                {"layers": 0}):
        with pytest.raises(ValueError, match="invalid config"):
            Config(**bad)  # type: ignore[arg-type]
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="a CUDA device for --device cuda"):
            Config(device="cuda")


def test_held_out_problems_stay_out_of_the_pool() -> None:
    """An eval size above what a distribution has left evaluated add2 on its pool."""
    from trainer_examples.tasks import TaskSet

    for size in (48, 300, 301, 1000):
        add2 = next(d for d in TaskSet(eval_size=size).distributions if d.name == "add2")
        assert add2.eval and not set(add2.eval) & set(add2.train), size


def test_same_seed_same_run_and_a_refused_rerun_keeps_the_files(tmp_path: Path) -> None:
    """The run id was random, so the same seed served other batches; and rerunning a
    finished (or crashed) run's command emptied its metrics before it was refused."""
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        _trainer("train", *SMALL, "--out", str(out))
    strip = ("time_s", "step_s")

    def comparable(folder: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in strip} for r in _records(folder)]

    assert comparable(first) == comparable(second)
    summary = json.loads((first / "summary.json").read_text())
    assert summary["run_id"] == json.loads((second / "summary.json").read_text())["run_id"]
    before = (first / "metrics.jsonl").read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, "-m", "trainer_examples", "train", *SMALL,
                            "--out", str(first)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode != 0 and "already holds" in again.stderr
    assert (first / "metrics.jsonl").read_bytes() == before


def test_help_names_every_default() -> None:
    """`--help` showed no default for most options (those without a help text)."""
    from trainer_examples.cli import build_parser

    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = train.choices["train"].format_help()
    for option, default in (("--steps", "150"), ("--kl-coef", "0.0"), ("--lr", "0.0003"),
                            ("--preference", "0.7,0.3"), ("--checkpoint-every", "10"),
                            ("--sampler", "dump_ucb"), ("--grad-every", "0")):
        line = text[text.index(f"  {option} "):]
        assert f"(default: {default})" in " ".join(line.split()[:30]), option
    assert "(default: False)" not in text and "(default: None)" not in text
