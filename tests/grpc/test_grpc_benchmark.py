"""benchmarks/grpc_vs_rest.py still runs (tiny settings) and prints every case that
docs/benchmarks.md quotes, so the recorded comparison cannot rot silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_grpc_vs_rest_quick() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpc_vs_rest.py"),
                           "--quick"], capture_output=True, text=True, timeout=300, check=True)
    rows = {r["case"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {"machine", "rest-json", "rest-msgpack", "grpc", "client-http-json",
                         "client-http-msgpack", "client-grpc", "concurrent-http",
                         "concurrent-grpc"}
    assert all(rows[c]["p50_ms"] > 0 for c in ("rest-msgpack", "grpc", "client-grpc"))
    assert rows["concurrent-grpc"]["cycles"] > 0
