"""Two rows of the learner suite compared seed by seed (paired), on one learner.

Why: on a learner whose seeds differ a lot (the example trainer's warm start puts some
seeds near the target before any step), mean ± std over seeds hides a difference that a
per-seed comparison shows, and vice versa shows none where there is none. Each seed runs
both rows from the same start; the difference B − A per seed is summarised by its mean,
its standard error and the count of seeds where B is ahead.

    python benchmarks/paired.py --learner example_trainer --seeds 24 [--first-seed 24] \\
        --rows uniform "default (no sampler named)"

Prints one JSON line per seed, then one per metric (final mean accuracy, steps to
target: a run that never reaches it counts the budget + 1, as `suite.py` does).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite


def _job(args: tuple[str, str, int, float]) -> tuple[str, int, dict[str, Any]]:
    row_name, learner, seed, steps_scale = args
    row = {r.name: r for r in suite.rows()}[row_name]
    result = suite.run(row, learner, seed, steps_scale)
    result.pop("curve")
    return row_name, seed, result


def paired(values: list[tuple[float, float]], higher_is_better: bool) -> dict[str, Any]:
    """Mean of B − A, its standard error, and in how many seeds B is ahead / behind."""
    diffs = [b - a for a, b in values]
    n = len(diffs)
    mean = sum(diffs) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    sign = 1.0 if higher_is_better else -1.0
    return {"a": sum(a for a, _ in values) / n, "b": sum(b for _, b in values) / n,
            "diff": mean, "se": spread / math.sqrt(n) if n > 1 else math.nan,
            "b_ahead": sum(sign * d > 0 for d in diffs),
            "b_behind": sum(sign * d < 0 for d in diffs), "seeds": n}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", default="example_trainer",
                        choices=[*suite.LEARNERS, *suite.REAL_LEARNERS])
    parser.add_argument("--rows", nargs=2, metavar=("A", "B"),
                        default=["uniform", suite.DEFAULT])
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (fresh seeds for a "
                             "second look)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    known = {r.name for r in suite.rows()}
    for name in args.rows:
        if name not in known:
            parser.error(f"unknown row {name!r}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(name, args.learner, seed, args.steps_scale) for seed in seeds
            for name in args.rows]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            done = pool.map(_job, jobs, chunksize=1)
    else:
        done = [_job(j) for j in jobs]
    results = {(name, seed): result for name, seed, result in done}
    a, b = args.rows
    lines: list[dict[str, Any]] = []
    for seed in seeds:
        line = {"seed": seed, **{name: {k: results[(name, seed)][k] for k in (
            "steps_to_target", "mean_accuracy", "zero_variance_share")} for name in (a, b)}}
        lines.append(line)
        print(json.dumps(line), flush=True)

    def steps(name: str, seed: int) -> float:
        r = results[(name, seed)]
        return float(r["steps_to_target"] or r["steps"] + 1)

    metrics = {
        "final mean accuracy": ([(results[(a, s)]["mean_accuracy"],
                                  results[(b, s)]["mean_accuracy"])
                                 for s in seeds], True),
        "steps to target": ([(steps(a, s), steps(b, s)) for s in seeds], False),
    }
    for metric, (values, higher) in metrics.items():
        summary = {"metric": metric, "rows": [a, b], **paired(values, higher)}
        lines.append(summary)
        print(json.dumps(summary), flush=True)
    return lines


if __name__ == "__main__":
    main()
