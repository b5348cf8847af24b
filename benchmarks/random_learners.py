"""Every sampler at its pure defaults on learners drawn at random (issue 14: "choose
defaults on a suite of structurally different learners"; the family is
`benchmarks/learners/random_family.py`).

The named learners of `suite.py` were each built for one structure and the defaults were
chosen on them. Here learner k of a seeded family mixes those structures in random
amounts, so nobody tuned for it; it is the check of the issue's item 7 (no shipped
adaptive sampler fails to reach a target where uniform sampling or Syllabus does) and of
the default's place against the oracle on learners never seen.

Rows, each as a trainer that names only the sampler gets it (`{"sampler": NAME}`):
`uniform`, `temperature`, `dump_ucb`, `learning_progress`, `prioritized`, `spard`, the
default (`learnability` with `dump_ucb` allocation: no sampler named), then Syllabus's
`OnlineLearningProgress`, DAPO's filter with refill and the band oracle (`suite.py`).
The target of each learner is calibrated from uniform sampling and the oracle only, as
for the named learners: the lower of the oracle's mean accuracy after 40 % of the steps
(minus 0.005) and uniform's after all of them plus 0.03, so uniform misses or barely
reaches it and the oracle reaches it in under half the budget (seed 0, rounded to 0.01).

Per learner and row: seeds that reached the target, mean rollouts to it (a run that
never does counts every rollout it generated), final minimum accuracy. Summary per row:
learners where it missed the target in a seed where uniform or Syllabus reached it
(item 7), geometric mean and worst of its rollouts over the oracle's, learners within
1.5x the oracle; and for the default the issue's three cells.

    python benchmarks/random_learners.py --learners 40 --seeds 3 --jobs 2 --out docs
    python benchmarks/random_learners.py --first-learner 40 --learners 10   # more draws
    python benchmarks/random_learners.py --quick    # 2 learners, 1 seed, 10 % of the steps
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite
from learners.base import GrpoLearner
from learners.random_family import random_learner

#: Fraction of the steps within which the oracle must reach the target.
ORACLE_SHARE = 0.4
#: How far above uniform's final accuracy the target may sit.
UNIFORM_MARGIN = 0.03
#: Paceline's rows: a trainer naming only the sampler (None: naming none).
SAMPLERS: dict[str, str | None] = {
    "uniform": "uniform", "temperature": "temperature", "dump_ucb": "dump_ucb",
    "learning_progress": "learning_progress", "prioritized": "prioritized",
    "spard": "spard", suite.DEFAULT: None,
}
#: Rows whose samplers adapt to what they are told (item 7 applies to them).
ADAPTIVE = ("dump_ucb", "learning_progress", "prioritized", "spard", suite.DEFAULT)
PEERS = (suite.SYLLABUS, suite.DAPO, suite.ORACLE)


def rows() -> list[suite.Row]:
    by_name = {r.name: r for r in suite.rows()}
    ours = [suite.Row(name, "Paceline", suite.paceline(sampler))
            for name, sampler in SAMPLERS.items()]
    return ours + [by_name[name] for name in PEERS]


@functools.cache
def target_of(k: int, steps_scale: float = 1.0) -> float:
    """Learner k's target from uniform sampling and the oracle (seed 0)."""
    oracle = final_accuracy(k, suite.ORACLE, ORACLE_SHARE * steps_scale)
    uniform = final_accuracy(k, suite.UNIFORM_EPOCHS, steps_scale)
    return round(min(oracle - 0.005, uniform + UNIFORM_MARGIN), 2)


def final_accuracy(k: int, row: str, steps_scale: float) -> float:
    """Mean accuracy of learner k (seed 0) after `steps_scale` of its steps under the
    suite's `row`."""
    return float(suite.run(suite.row_named(row), random_learner(k), 0,
                           steps_scale)["mean_accuracy"])


def learner(k: int, steps_scale: float = 1.0) -> type[GrpoLearner]:
    return random_learner(k, target_of(k, steps_scale))


def _job(args: tuple[str, int, int, float]) -> tuple[str, int, int, dict[str, Any]]:
    name, k, seed, scale = args
    return name, k, seed, suite.run(suite.row_named(name, rows()), learner(k, scale), seed,
                                    scale)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "reached": sum(r["steps_to_target"] is not None for r in runs),
        "seeds": len(runs),
        "rollouts_k": float(np.mean([r["rollouts_to_target"] or r["generated"]
                                     for r in runs])) / 1000.0,
        "min_accuracy": float(np.mean([r["min_accuracy"] for r in runs])),
    }


def missed_where_peers_reach(cells: dict[str, dict[str, Any]], row: str) -> bool:
    """Item 7: fewer seeds at the target than uniform or Syllabus reached."""
    best = max(cells["uniform"]["reached"], cells[suite.SYLLABUS]["reached"])
    return bool(cells[row]["reached"] < best)


def report(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per row: item-7 misses, rollouts over the oracle's; the default's issue cells."""
    out: dict[str, Any] = {}
    for name in [*SAMPLERS, suite.SYLLABUS, suite.DAPO]:
        ratios = [cells[name]["rollouts_k"] / cells[suite.ORACLE]["rollouts_k"]
                  for cells in results.values()]
        out[name] = {
            "item7_misses": [k for k, cells in results.items()
                             if name in ADAPTIVE and missed_where_peers_reach(cells, name)],
            "always_reached": sum(c[name]["reached"] == c[name]["seeds"]
                                  for c in results.values()),
            "oracle_ratio_geomean": math.exp(float(np.mean(np.log(ratios)))),
            "oracle_ratio_worst": max(ratios),
            "within_1_5_oracle": sum(r <= 1.5 for r in ratios),
        }
    default = [cells[suite.DEFAULT]["rollouts_k"] for cells in results.values()]
    for peer, key, limit in ((suite.SYLLABUS, "syllabus_cell", 0.5),
                             (suite.DAPO, "dapo_cell", 0.25)):
        out[suite.DEFAULT][key] = sum(
            d <= limit * cells[peer]["rollouts_k"] for d, cells in
            zip(default, results.values(), strict=True))
    return out


def table(results: dict[int, dict[str, dict[str, Any]]], summary: dict[str, Any],
          first: int, steps_scale: float = 1.0) -> str:
    names = [r.name for r in rows()]
    short = {suite.DEFAULT: "default", suite.SYLLABUS: "Syllabus", suite.DAPO: "DAPO + refill",
             suite.ORACLE: "oracle"}
    lines = ["| learner | target | " + " | ".join(short.get(n, n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for k, cells in results.items():
        cls = learner(k, steps_scale)
        row = [f"{k}: {cls.summary}", f"{cls.target:.2f}"]
        for name in names:
            c = cells[name]
            mark = "" if c["reached"] == c["seeds"] else f" ({c['reached']}/{c['seeds']})"
            row.append(f"{c['rollouts_k']:.1f}{mark} · {c['min_accuracy']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| row | reached the target in every seed | misses where uniform or "
              "Syllabus reach (item 7) | rollouts / oracle, geometric mean | worst | "
              "learners within 1.5x the oracle |", "|---|---|---|---|---|---|"]
    count = len(results)
    for name, s in summary.items():
        misses = ", ".join(str(k) for k in s["item7_misses"]) or (
            "none" if name in ADAPTIVE else "n/a")
        lines.append(f"| {short.get(name, name)} | {s['always_reached']} of {count} | "
                     f"{misses} | {s['oracle_ratio_geomean']:.2f} | "
                     f"{s['oracle_ratio_worst']:.2f} | {s['within_1_5_oracle']} of {count} |")
    d = summary[suite.DEFAULT]
    lines += ["", f"The default against the issue's cells over learners {first}-"
              f"{first + count - 1}: ≤ 1.5x the oracle on {d['within_1_5_oracle']}, "
              f"≤ 0.5x Syllabus on {d['syllabus_cell']}, ≤ 0.25x DAPO with refill on "
              f"{d['dapo_cell']} of {count}."]
    return "\n".join(lines)


def output_name(ks: range) -> str:
    """The table's file: `random_learners.md` for a run from learner 0, else named by its
    range, so that a later draw (learners nobody has looked at) does not overwrite the
    first one."""
    if ks.start == 0:
        return "random_learners.md"
    return f"random_learners_{ks.start}-{ks.stop - 1}.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=40, help="how many learners")
    parser.add_argument("--first-learner", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="2 learners, 1 seed, 10 %% of the steps, one process")
    parser.add_argument("--out", default=None,
                        help="folder for random_learners.md (from learner 0) or "
                             "random_learners_<first>-<last>.md")
    args = parser.parse_args(argv)
    if args.learners < 1 or args.seeds < 1 or args.first_learner < 0:
        parser.error("--learners and --seeds need at least 1, --first-learner >= 0")
    scale = 1.0
    if args.quick:
        args.learners, args.seeds, args.jobs, scale = 2, 1, 1, 0.1
    ks = range(args.first_learner, args.first_learner + args.learners)
    start = time.perf_counter()
    for k in ks:  # calibrate before forking: the workers inherit the cache
        target_of(k, scale)
    jobs = [(r.name, k, seed, scale) for k in ks for r in rows() for seed in range(args.seeds)]
    done = suite.run_jobs(_job, jobs, args.jobs, chunksize=4)
    grouped: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for name, k, _, result in done:
        grouped.setdefault((k, name), []).append(result)
    results = {k: {r.name: summarize(grouped[(k, r.name)]) for r in rows()} for k in ks}
    for k, cells in results.items():
        print(json.dumps({"learner": k, "target": target_of(k, scale), **cells}), flush=True)
    summary = report(results)
    print(json.dumps({"summary": summary}), flush=True)
    text = table(results, summary, args.first_learner, scale)
    print(text)
    if args.out is not None:
        wall = (time.perf_counter() - start) / 60.0
        header = ("# Random learners\n\n`python benchmarks/random_learners.py --learners "
                  f"{args.learners} --first-learner {args.first_learner} --seeds "
                  f"{args.seeds} --jobs {args.jobs}`: {wall:.1f} min wall. Written by the "
                  "script; the analysis is in docs/benchmarks.md (\"Random learners\"). "
                  "Cells: rollouts to target in thousands (mean over seeds; a run that "
                  "never reaches it counts all it generated; seeds that reached it in "
                  "brackets when not all) · final minimum accuracy.\n\n")
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)  # as suite.py does
        (folder / output_name(ks)).write_text(header + text + "\n")


if __name__ == "__main__":
    main()
