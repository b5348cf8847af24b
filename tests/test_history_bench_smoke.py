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
    assert cases["build"]["reports"] == 300 and cases["build"]["checkpoints"] == 3
    assert cases["app cold, at a checkpoint (rows read, no fold)"]["rows"] == 301
    assert cases["app warm, default every"]["every"] == 1
    assert cases["app warm, since=head-100"]["rows"] == 101
    assert cases["app after 10 new reports"]["head"] == 310
    tail = cases["app cold, 99 reports after the last checkpoint"]
    assert tail["rows"] == 400 and tail["head"] == 399
    ab = cases["report path A/B (ms per report, median of blocks)"]
    assert ab["with_rows_ms"] > 0 and ab["without_rows_ms"] > 0
    summary = rows[-1]
    assert summary["summary"] is True and summary["reports"] == 300
    assert isinstance(summary["target_100ms"], bool)
