"""The load generator, bounded for CI: its own service process, 4 concurrent runs on one
curriculum, no errors, sane numbers; and it refuses to aim at anything but loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType

import pytest
from reliability_support import ROOT


def test_bounded_load_has_no_errors() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--runs", "4", "--steps", "12",
         "--duration", "60"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["cycles"] == 4 * 12
    assert summary["requests"] == 2 * 4 * 12
    assert summary["cycles_per_s"] > 0
    for kind in ("batch", "report"):
        latency = summary["latency_ms"][kind]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.1:8000"])
def test_refuses_non_loopback_targets(load: ModuleType, url: str) -> None:
    with pytest.raises(SystemExit, match="loopback"):
        load.check_loopback(url)
    load.check_loopback("http://127.0.0.1:8000")
    load.check_loopback("http://[::1]:8000")
