"""`benchmarks/replicas_bench.py --quick` still runs and reports what docs/benchmarks.md
quotes (cycles/s, CPU per cycle, the replicas' coordination counters)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_replicas_bench_quick() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "replicas_bench.py"),
                           "--quick"], capture_output=True, text=True, timeout=120, check=True)
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["replicas"], row["coordination"], row["runs"]) == (2, "redis", 2)
    assert row["cycles"] > 0 and row["cycles_per_s"] > 0
    # Every cycle's report committed under a lease; the other replica folded it.
    assert row['write_leases{outcome="acquired"}'] > 0
    assert row["background_caught_up_events"] > 0
    assert set(row["cpu_ms_per_cycle"]) == {"replicas", "trainers", "postgres_redis"}
    assert row["cpu_ms_per_cycle"]["replicas"] > 0
