"""benchmarks/history_bench.py still runs (tiny settings) and prints what
docs/benchmarks.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_history_bench_quick() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "history_bench.py"),
                           "--quick", "--no-http"], capture_output=True, text=True,
                          timeout=300, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    cases = {row["case"]: row for row in rows if "case" in row}
    assert cases["build"]["reports"] == 300
    cold = cases["app cold (replay the log)"]
    assert cold["rows"] == 301 and cold["per_report_ms"] > 0
    assert cases["app warm, default every"]["every"] == 1
    assert cases["app warm, since=head-100"]["rows"] == 101
    assert cases["app after 10 new reports"]["head"] == 310
    summary = rows[-1]
    assert summary["summary"] is True and summary["reports"] == 300
    assert isinstance(summary["target_100ms"], bool)
