"""The peer comparison (`benchmarks/peers/compare.py`, issue 8) still runs end to end in
its tiny mode: Syllabus in process, DAPO's filter, static mixing, Paceline in process and
over a real loopback server, and the invariants its table in docs/benchmarks.md rests on
(the learner is simulate.py's, loopback equals in process, DAPO trains on no
zero-variance group)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"Syllabus learning progress", "DAPO dynamic sampling (uniform)",
         "DAPO filter, no refill (uniform)", "static temperature T=2",
         "static temperature T=5"}
PACELINE = {"uniform", "temperature", "dump_ucb", "learning_progress", "prioritized", "spard",
            "uniform + zero_variance (threshold 0.5)",
            "prioritized + zero_variance (threshold 0.5)"}
FILTERED = {"DAPO dynamic sampling (uniform)", "DAPO filter, no refill (uniform)",
            "learning_progress + DAPO filter, no refill"}


def test_peer_comparison_quick(tmp_path: Path) -> None:
    pytest.importorskip("syllabus")  # the `peers` extra
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers" / "compare.py"), "--quick",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    rows = {o["row"]: o for o in objects if "row" in o}
    assert all("error" not in r for r in rows.values()), \
        {n: r["error"] for n, r in rows.items() if "error" in r}
    assert set(rows) >= PEERS | PACELINE | FILTERED
    assert {rows[n]["who"] for n in PEERS} == {"peer"}
    assert {rows[n]["who"] for n in PACELINE} == {"Paceline"}

    for name, r in rows.items():
        assert r["seeds"] == 1
        low, high = r["steps_to_target"]
        assert 1 <= low <= 11 and high == 0.0  # 10 steps; never reached counts as 11
        for key in ("min_accuracy", "mean_accuracy"):
            assert 0.0 <= r[key][0] <= 1.0
        assert r["min_accuracy"][0] <= r["mean_accuracy"][0]
        assert 0.0 < r["wasted_share"][0] < 1.0, name
        assert abs(sum(r["batch_share"]) - 1.0) < 0.01
        assert r["step_ms"]["p50"] > 0
        if name in FILTERED:  # DAPO's filter: zero-variance groups never reach the loss
            assert r["trained_wasted_per_step"] == 0.0, name
            assert r["wasted_per_step"] > 0.0
        else:
            assert r["trained_wasted_per_step"] == pytest.approx(r["wasted_per_step"])
            assert r["rollouts_per_step"] == 128 * 8
            assert r["surplus"] == 0
    dapo = rows["DAPO dynamic sampling (uniform)"]
    assert dapo["rollouts_per_step"] > 128 * 8  # it refilled: more generation per step
    assert rows["DAPO filter, no refill (uniform)"]["rollouts_per_step"] == 128 * 8

    overhead = next(o["overhead"] for o in objects if "overhead" in o)
    assert overhead["loopback_identical_to_in_process"] is True
    cases = overhead["ms_per_step"]
    assert set(cases) == {"paceline_loopback", "paceline_in_process", "syllabus_in_process"}
    for case in cases.values():
        assert 0 < case["p50"] <= case["p99"]
    assert overhead["ratios"]["paceline_loopback_vs_syllabus_p50"] == pytest.approx(
        cases["paceline_loopback"]["p50"] / cases["syllabus_in_process"]["p50"])

    checks = next(o["checks"] for o in objects if "checks" in o)
    assert checks["learner_matches_simulate"] == {"uniform": True, "learning_progress": True}
    assert checks["static_temperature_matches_paceline"] is True

    tables = [line for line in lines if line.startswith("| ")]
    assert tables[0].startswith("| strategy | | steps to 70% | rollouts to 70% (k)")
    assert any(line.startswith("| Syllabus learning progress | peer |") for line in tables)
    assert any(line.startswith("| Paceline server over loopback") for line in tables)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "peers.png").stat().st_size > 10_000


def test_the_syllabus_peer_leaves_numpys_error_state_alone() -> None:
    """Importing Syllabus runs `np.seterr(all="raise")`; building the peer puts the
    process's state back (checked in a fresh interpreter, where the import is real)."""
    pytest.importorskip("syllabus")
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks' / 'peers')!r})\n"
        "from strategies import syllabus_curriculum\n"
        "before = np.geterr()\n"
        "syllabus_curriculum(0, 10)\n"
        "assert 'syllabus' in sys.modules\n"
        "print(before == np.geterr())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
