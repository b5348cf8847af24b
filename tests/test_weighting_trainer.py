"""`benchmarks/weighting_trainer.py` at tiny settings (so it cannot rot) and its summary:
the HV curve of the evaluation front, the baseline comparison and the issue's rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import weighting_trainer as wt  # noqa: E402

pytestmark = pytest.mark.slow  # trains the example trainer


def test_smoke_runs_the_baseline_and_two_dynamic_rows(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    plot = tmp_path / "hv.png"
    assert wt.main(["--seeds", "1", "--steps", "2", "--sft-steps", "2", "--out",
                    str(tmp_path), "--plot", str(plot), "--only", "gradient (real)",
                    "spard"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in results] == [wt.BASELINE, "gradient (real)", "spard"]
    for r in results:
        assert len(r["points"]) == 2 and all(len(p) == 3 for p in r["points"])
        assert np.all(np.diff(r["curve"]) >= 0) and r["final_hv"] == r["curve"][-1]
        assert abs(sum(r["final_w"]) - 1.0) < 1e-6
    grads = json.loads((tmp_path / "gradient_(real)-s0" / "metrics.jsonl")
                       .read_text().splitlines()[0])
    assert grads["grad_products_computed"] == 1.0  # real gradients were sent at step 0
    out = capsys.readouterr().out
    assert "| spard |" in out and "dynamic rows meeting the target:" in out
    assert plot.stat().st_size > 0


def _result(row: str, seed: int, curve: list[float]) -> dict[str, object]:
    return {"row": row, "seed": seed, "steps": 8, "eval_every": 4, "curve": curve,
            "final_hv": curve[-1], "final_point": [0.5, 0.5, 0.5],
            "final_w": [0.6, 0.2, 0.2], "wall_s": 1.0}


def test_summary_and_the_issue_rule() -> None:
    assert wt.front_curve([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2], [1.0, 0.0, 1.0]]) == [
        0.125, 0.125, 0.125]
    results = [_result(wt.BASELINE, 0, [0.0, 0.1, 0.2]),
               _result("spard", 0, [0.0, 0.2, 0.2]),  # reaches 0.2 at step 4 of 8
               _result("gradient (proxy)", 0, [0.0, 0.1, 0.2]),
               _result(wt.BASELINE, 1, [0.0, 0.0, 0.0]),  # a baseline with no volume
               _result("spard", 1, [0.0, 0.0, 0.1]),
               _result("gradient (proxy)", 1, [0.0, 0.0, 0.0])]
    table = {e["row"]: e for e in wt.summarise(results)}
    assert table["spard"]["reach_seeds"] == 1  # seed 1 has nothing to reach
    assert table["spard"]["step_ratio"][0] == pytest.approx(0.5)
    assert table["spard"]["hv_ratio"] == pytest.approx(0.15 / 0.1)
    assert table["gradient (proxy)"]["hv_ratio"] == pytest.approx(1.0)
    assert wt.verdict(list(table.values())) == ["spard"]
    assert wt.steps_to([0.0, 0.1], 0.5, 4, 8) == 9  # never: steps + 1
