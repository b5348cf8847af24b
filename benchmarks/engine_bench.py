"""Engine micro-benchmarks: propose / update latency and state size per sampler and N.

Per case (sampler × N, batch B = 1024 by default), on one `CurriculumEngine` in process:

- the curriculum: 8 distributions of different sizes (30 % ... 3 % of N), 3 objectives,
  the `fixed` weighting; `fixed_mix` gets the size shares as its probabilities;
- 10 warm-up steps, then `repeat` steps of: `next_batch` (propose, timed) -> simulated
  0/1 rewards [B, 8, 3] (not timed) -> `Report.dense` (construction + validation, timed
  separately as `report_build_ms`) -> `apply` (update, timed alone);
- `propose_back_to_back_ms`: `next_batch` for another run `repeat` times in a row, with
  nothing applied in between;
- `propose_cpu_ms`: the process CPU time of each timed `next_batch` (on a shared machine
  the wall clock also counts the waits for a core);
- `bytes_per_sample` = `engine.state_bytes_per_sample()`, `serialized_bytes` =
  len(`engine.to_bytes()`) (and the time it took);
- the naive reference in the same process: `Generator.choice(N, B, replace=False, p=p)`
  with p a random positive normalised vector over N, and `speedup_vs_naive` = its p50 /
  the propose p50.

The per-sample samplers (`prioritized`, `learnability`) also run with predicted
zero-variance skipping on (`zero_variance: true`).
A sampler that cannot be built (e.g. a file still being written) prints
`{"sampler": ..., "n": ..., "error": ...}` and the others go on. One JSON object per case
on stdout, flushed, then one summary object with the targets: prioritized and learnability
propose at the largest N <= 2 ms p50 and >= 10x faster than the naive reference; update
<= 5 ms p50; <= 32 bytes of state per sample.

    python benchmarks/engine_bench.py [--samplers uniform prioritized ...]
        [--sizes 10000 1000000 10000000] [--batch 1024] [--repeat 100]
    python benchmarks/engine_bench.py --quick     # smoke test: N = 20000, B = 64, 5 repeats
    python benchmarks/engine_bench.py > docs/engine_bench.jsonl
    python benchmarks/engine_bench.py --table docs/engine_bench.jsonl   # markdown table
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.registry import available_samplers

K, G = 3, 8
PER_SAMPLE = ("prioritized", "learnability")  # also measured with zero-variance skipping
SHARES = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.06, 0.04, 0.03])


def make_spec(sampler: str, n: int, batch: int, zero_variance: bool) -> CurriculumSpec:
    sizes = np.maximum(1, np.floor(SHARES * n)).astype(int)
    sizes[0] += n - sizes.sum()
    strategy: Any = sampler
    if sampler == "fixed_mix":  # the one sampler that needs parameters
        strategy = {"kind": "fixed_mix", "probabilities": (SHARES / SHARES.sum()).tolist()}
    return CurriculumSpec.from_dict({
        "name": "bench", "batch_size": batch, "sampler": strategy, "weighting": "fixed",
        "layout": {"distributions": [{"name": f"d{i}", "size": int(s)}
                                     for i, s in enumerate(sizes)]},
        "objectives": ["correct", "format", "brevity"],
        "zero_variance": zero_variance or None,
    })


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3)}


def case(sampler: str, n: int, batch: int, repeat: int, zero_variance: bool,
         warmup: int = 10) -> dict[str, Any]:
    """Measure one (sampler, N) case; see the module docstring."""
    spec = make_spec(sampler, n, batch, zero_variance)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    engine = CurriculumEngine(spec)
    init_s = time.perf_counter() - start

    def rewards_for(indices: np.ndarray) -> np.ndarray:
        """Correctness-like 0/1 rewards [n, G, K]; index x passes with 1 - (x mod 7) / 7."""
        difficulty = (indices % 7) / 7.0
        return (rng.random((indices.size, G, K)) >= difficulty[:, None, None]).astype(
            np.float32)

    propose, update, build, propose_cpu = [], [], [], []
    skipped = 0
    for step in range(warmup + repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = engine.next_batch("bench", step, batch)
        t1 = time.perf_counter()
        c1 = time.process_time()
        rewards = rewards_for(result.indices)  # simulated rollouts: not timed
        t2 = time.perf_counter()
        report = Report.dense(run_id="bench", step=step, indices=result.indices,
                              rewards=rewards, layout=spec.layout, num_objectives=K)
        t3 = time.perf_counter()
        engine.apply(report)
        t4 = time.perf_counter()
        if step >= warmup:  # the first reports page fresh arrays in
            propose.append(t1 - t0)
            propose_cpu.append(c1 - c0)
            build.append(t3 - t2)
            update.append(t4 - t3)
            skipped += result.skipped_zero_variance
    # Back to back: another run asks in a row, nothing applied in between.
    back_to_back = []
    for step in range(repeat):
        t0 = time.perf_counter()
        engine.next_batch("bench-2", step, batch)
        back_to_back.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    serialized = len(engine.to_bytes())
    serialize_s = time.perf_counter() - t0
    p = rng.random(n) + 1e-3
    p /= p.sum()
    naive = []
    for _ in range(max(3, repeat // 10)):
        t0 = time.perf_counter()
        rng.choice(n, batch, replace=False, p=p)
        naive.append(time.perf_counter() - t0)
    naive_ms, propose_ms = percentiles(naive), percentiles(propose)
    return {
        "sampler": sampler, "zero_variance": zero_variance, "n": n, "batch": batch,
        "repeat": repeat, "propose_ms": propose_ms,
        # CPU time of this process: what a proposal costs without the waits for a core
        # that other processes on a shared machine add to the wall-clock figure.
        "propose_cpu_ms": percentiles(propose_cpu),
        "propose_back_to_back_ms": percentiles(back_to_back),
        "update_ms": percentiles(update), "report_build_ms": percentiles(build),
        "naive_choice_ms": naive_ms,
        "bytes_per_sample": round(engine.state_bytes_per_sample(), 2),
        "serialized_bytes": serialized, "serialize_s": round(serialize_s, 3),
        "init_s": round(init_s, 3), "skipped_per_batch": round(skipped / repeat, 2),
        # Two decimals: at small N the naive draw is cheaper and the ratio is below 0.1.
        "speedup_vs_naive": round(naive_ms["p50"] / max(propose_ms["p50"], 1e-9), 2),
    }


def summarize(results: list[dict[str, Any]], largest: int) -> dict[str, Any]:
    """The targets, checked on the measured cases."""
    summary: dict[str, Any] = {"summary": True}
    top = [r for r in results if r.get("sampler") == "prioritized" and "error" not in r
           and not r["zero_variance"] and r["n"] == largest]
    if top:
        r = top[0]
        summary.update({
            "n": largest,
            "prioritized_propose_p50_ms": r["propose_ms"]["p50"],
            "prioritized_propose_cpu_p50_ms": r["propose_cpu_ms"]["p50"],
            "prioritized_propose_back_to_back_p50_ms": r["propose_back_to_back_ms"]["p50"],
            "propose_target_2ms": r["propose_ms"]["p50"] <= 2.0,
            "speedup_vs_naive": r["speedup_vs_naive"],
            "speedup_target_10x": r["speedup_vs_naive"] >= 10,
        })
    for name in PER_SAMPLE[1:]:
        mine = [r for r in results if r.get("sampler") == name and "error" not in r
                and not r["zero_variance"] and r["n"] == largest]
        if mine:
            r = mine[0]
            summary.update({
                f"{name}_propose_p50_ms": r["propose_ms"]["p50"],
                f"{name}_propose_cpu_p50_ms": r["propose_cpu_ms"]["p50"],
                f"{name}_propose_back_to_back_p50_ms": r["propose_back_to_back_ms"]["p50"],
                f"{name}_propose_target_2ms": r["propose_ms"]["p50"] <= 2.0,
                f"{name}_speedup_vs_naive": r["speedup_vs_naive"],
            })
    ok = [r for r in results if "error" not in r]
    summary["max_update_p50_ms"] = max((r["update_ms"]["p50"] for r in ok), default=None)
    summary["update_target_5ms"] = all(r["update_ms"]["p50"] <= 5.0 for r in ok)
    summary["max_bytes_per_sample"] = max((r["bytes_per_sample"] for r in ok), default=None)
    summary["bytes_target_32"] = all(r["bytes_per_sample"] <= 32 for r in ok)
    summary["errors"] = [r["sampler"] for r in results if "error" in r]
    return summary


def markdown(lines: list[dict[str, Any]]) -> str:
    """The cases of a saved run (JSON lines) as the markdown table of docs/benchmarks.md."""
    out = ["| sampler | N | propose p50 / p99 ms | propose CPU p50 ms "
           "| propose back-to-back p50 ms "
           "| update p50 / p99 ms | report build p50 ms | naive p50 ms | speed-up "
           "| state B/sample | serialized MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in lines:
        if "summary" in r:
            continue
        name = r["sampler"] + (" + zero_variance" if r.get("zero_variance") else "")
        if "error" in r:
            out.append(f"| {name} | {r['n']:,} | error: {r['error']} ||||||||")
            continue
        cpu = f"{r['propose_cpu_ms']['p50']:.3f}" if "propose_cpu_ms" in r else "—"
        out.append(
            f"| {name} | {r['n']:,} | {r['propose_ms']['p50']:.3f} / {r['propose_ms']['p99']:.3f} "
            f"| {cpu} | {r['propose_back_to_back_ms']['p50']:.3f} "
            f"| {r['update_ms']['p50']:.3f} / {r['update_ms']['p99']:.3f} "
            f"| {r['report_build_ms']['p50']:.3f} | {r['naive_choice_ms']['p50']:.2f} "
            f"| {r['speedup_vs_naive']:.{1 if r['speedup_vs_naive'] >= 1 else 2}f}× "
            f"| {r['bytes_per_sample']:.2f} "
            f"| {r['serialized_bytes'] / 1e6:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", nargs="+", default=None,
                        help="default: every available sampler")
    parser.add_argument("--sizes", nargs="+", type=int,
                        default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--quick", action="store_true",
                        help="N = 20000, batch 64, 5 repeats: a smoke test")
    parser.add_argument("--table", metavar="JSONL", default=None,
                        help="print the markdown table of a saved run and exit")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as handle:
            print(markdown([json.loads(line) for line in handle if line.strip()]))
        return
    if args.quick:
        # 20 000, not fewer: the fixed state (weight history, health windows) would
        # dominate the per-sample bytes the smoke test checks against the 32 B budget.
        args.sizes, args.repeat, args.batch = [20_000], 5, 64
    samplers = args.samplers or available_samplers()
    results = []
    for n in args.sizes:
        for sampler in samplers:
            for zero_variance in ([False, True] if sampler in PER_SAMPLE else [False]):
                try:
                    result = case(sampler, n, args.batch, args.repeat, zero_variance)
                except Exception as exc:  # a broken strategy must not hide the others
                    result = {"sampler": sampler, "zero_variance": zero_variance, "n": n,
                              "error": repr(exc)}
                results.append(result)
                print(json.dumps(result), flush=True)
    print(json.dumps(summarize(results, max(args.sizes))), flush=True)


if __name__ == "__main__":
    main()
