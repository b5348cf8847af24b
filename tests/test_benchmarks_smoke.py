"""The benchmark scripts still run (tiny settings) and print what docs/benchmarks.md
quotes, so they cannot rot silently."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = {"uniform", "fixed_mix", "temperature", "dump_ucb", "learning_progress",
            "prioritized", "spard"}


def run(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.splitlines()


def test_engine_bench_quick() -> None:
    lines = [json.loads(line) for line in run("engine_bench.py", "--quick")]
    summary = lines[-1]
    cases = lines[:-1]
    assert summary["summary"] is True
    assert {r["sampler"] for r in cases} >= SAMPLERS
    assert any(r["sampler"] == "prioritized" and r["zero_variance"] for r in cases)
    for r in cases:
        if "error" in r:  # a strategy that cannot be built is reported, not fatal
            assert isinstance(r["error"], str)
            continue
        assert r["n"] == 20000 and r["batch"] == 64
        for key in ("propose_ms", "propose_back_to_back_ms", "update_ms",
                    "report_build_ms", "naive_choice_ms"):
            assert 0 < r[key]["p50"] <= r[key]["p99"]
        assert 0 < r["bytes_per_sample"] <= 32
        assert r["serialized_bytes"] > 0
        assert r["speedup_vs_naive"] > 0
    for key in ("propose_target_2ms", "speedup_target_10x", "update_target_5ms",
                "bytes_target_32"):
        assert isinstance(summary[key], bool)
    assert summary["bytes_target_32"] is True


def test_engine_bench_reports_a_broken_sampler() -> None:
    lines = [json.loads(line) for line in run("engine_bench.py", "--quick", "--samplers",
                                                 "uniform", "no_such_sampler")]
    broken = [r for r in lines if r.get("sampler") == "no_such_sampler"]
    assert len(broken) == 1 and "error" in broken[0]
    assert lines[-1]["errors"] == ["no_such_sampler"]


@pytest.mark.parametrize("extra", [[], ["--advantages", "grpo", "--accuracy-only"]])
def test_simulation_quick(tmp_path: Path, extra: list[str]) -> None:
    lines = run("simulate.py", "--quick", "--out", str(tmp_path), *extra)
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert all("error" not in r for r in rows), [r for r in rows if "error" in r]
    names = {r["configuration"] for r in rows}
    assert {"uniform", "dump_ucb", "learning_progress", "prioritized", "spard",
            "temperature"} <= names
    if not extra:
        assert {"weighting hypervolume", "weighting gradient", "weighting spard",
                "spard + spard"} <= names
    for r in rows:
        mean, std = r["min_accuracy"]
        assert 0.0 <= mean <= 1.0 and std >= 0.0
        assert 0.0 <= r["wasted_share"][0] <= 1.0
        assert abs(sum(r["batch_share"]) - 1.0) < 0.01
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| configuration | steps to 70% mean acc.")
    assert any(line.startswith("| uniform |") for line in table)
    stem = "simulation_grpo_accuracy_only" if extra else "simulation"
    assert (tmp_path / f"{stem}.md").read_text().count("| uniform |") == 2
    if importlib.util.find_spec("matplotlib") is not None:  # the `bench` extra
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["lean", "httpx"])
def test_service_bench_tiny(trainer: str) -> None:
    """Every case of the service benchmark runs against a real server process: round
    trips with one and two requests per step, and concurrent trainer processes of
    either kind."""
    rows = [json.loads(line) for line in run(
        "service_bench.py", "--backends", "sqlite", "--cycles", "8", "--seconds", "1",
        "--runs", "2", "--trainer", trainer)]
    trips = [(r["encoding"], r["calls"]) for r in rows if r["case"] == "round_trip"]
    assert trips == [("json", 2), ("msgpack", 2), ("msgpack", 1)]
    for row in rows:
        if row["case"] == "round_trip":
            assert 0 < row["p50_ms"] <= row["p99_ms"]
    concurrent = [r for r in rows if r["case"] == "concurrent_runs"]
    assert [r["calls"] for r in concurrent] == [2, 1]
    assert all(r["runs"] == 2 and r["cycles"] > 0 for r in concurrent)
    assert all(r.get("server_cpu_ms_per_cycle", 1.0) > 0 for r in concurrent)
    assert all(r["trainer"] == trainer and r["trainer_cpu_ms_per_cycle"] > 0
               for r in concurrent)


@pytest.mark.slow
def test_grpc_vs_rest_quick() -> None:
    """`grpc_vs_rest.py --quick` (a documented command) runs every case against one
    server with both APIs: each wire and SDK case times its cycles, and the concurrent
    rows count cycles from the moment every run is attached (set-up is not timed)."""
    rows = [json.loads(line) for line in run("grpc_vs_rest.py", "--quick")
            if line.startswith("{")]
    assert rows[0]["case"] == "machine"
    latency = {r["case"]: r for r in rows if "p50_ms" in r}
    assert set(latency) == {"rest-json", "rest-msgpack", "grpc", "client-http-json",
                            "client-http-msgpack", "client-grpc"}
    for name, row in latency.items():
        assert row["cycles"] == 6 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["encoding_timed"] == name.startswith("client-")
    concurrent = {r["case"]: r for r in rows if r["case"].startswith("concurrent-")}
    assert set(concurrent) == {"concurrent-http", "concurrent-grpc"}
    assert all(r["runs"] == 2 and r["cycles"] > 0 and r["cycles_per_s"] > 0
               for r in concurrent.values())
