"""Paceline against what users would otherwise pick, on simulate.py's learner (issue 8).

One run, one machine, one simulated GRPO learner (`benchmarks/simulate.py`: five
distributions, batch 128 prompts x 8 rollouts, Dr.GRPO advantages, rewards (correct,
brief) with fixed equal weights). Rows:

- peers, in this process: Syllabus's learning-progress curriculum (`syllabus-rl`,
  `OnlineLearningProgress`, fed every rollout's correctness); DAPO-style dynamic sampling
  (uniform prompts, roll out, drop groups whose correctness is constant, roll out more
  until 128 groups remain, at most 10 rounds, as verl / TRL do *after* rollout), and the
  same filter without refill (train on the informative groups of one round); static
  temperature mixing P_d ∝ n_d^(1/T) for T = 2 and 5;
- Paceline's samplers through its in-process engine, exactly as simulate.py runs them
  (schedules set to the planned steps), with predicted zero-variance skipping (*before*
  rollout) on `uniform` and `prioritized`; and `learning_progress` with DAPO's filter
  (no refill: Paceline serves one batch per step), reporting every generated group.

Per row: steps and generated rollouts until the mean held-out accuracy reaches 70 %;
final minimum / mean accuracy; zero-variance rollouts (generated in groups whose
correctness is constant: discarded by DAPO, trained on without accuracy signal by the
others); rollouts generated per step; the strategy's own time per step.

Overhead: the Paceline `learning_progress` row again, through a real
`paceline-server serve` process on loopback (temporary SQLite file) driven with
`paceline.Client` (`report` + `next_batch` per step), timed per step against Syllabus's
in-process update + sample and Paceline's in-process engine. The loopback run must give
the same learning curve as the in-process one, and the learner must reproduce
`simulate.run()`; both checks are printed.

Prints one JSON object per row, an `overhead` object, a `checks` object and the markdown
tables; writes `<out>/peers.png` (with matplotlib).

    python benchmarks/peers/compare.py [--seeds 5] [--steps 400] [--loopback-seeds 3]
                                       [--quick] [--out docs] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # learner, strategies
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # simulate

from learner import Learner, Rollouts, distribution_of
from strategies import (
    PacelineEngine,
    PacelineLoopback,
    StaticTemperature,
    Strategy,
    SyllabusLearningProgress,
    UniformEpochs,
    paceline_server,
    temperature_probabilities,
)

import simulate
from paceline_server.strategies.samplers.temperature import log_temperature_probabilities
from simulate import BATCH, DISTRIBUTIONS, LEARNABLE, TARGET, G

ROOT = Path(__file__).resolve().parents[2]

#: DAPO's cap on generation rounds per step (verl's `max_num_gen_batches`); after it the
#: step trains on the groups it has.
MAX_GEN_ROUNDS = 10
#: Paceline rows: simulate.py's configurations of the same names.
PACELINE_ROWS = ["uniform", "temperature", "dump_ucb", "learning_progress", "prioritized",
                 "spard", "uniform + zero_variance (threshold 0.5)",
                 "prioritized + zero_variance (threshold 0.5)"]
SYLLABUS = "Syllabus learning progress"
DAPO = "DAPO dynamic sampling (uniform)"
DAPO_FILTER_ONLY = "DAPO filter, no refill (uniform)"
#: The Paceline row timed over loopback: the same algorithm family as the Syllabus peer.
LOOPBACK_CONFIG = "learning_progress"


@dataclass(frozen=True)
class Row:
    """One strategy of the table: `make(seed, steps)` builds a fresh one per run.

    `filter_rounds` > 0 applies DAPO's filter after rollout: groups whose correctness is
    constant are dropped and, while fewer than a batch remain, up to `filter_rounds`
    generation rounds are made in all (1: filter only, no refill). The strategy still
    hears about every generated group, as a trainer would report them."""

    name: str
    who: str  # "peer", "Paceline" or "Paceline + peer"
    make: Callable[[int, int], Strategy]
    filter_rounds: int = 0


def paceline_config(name: str, steps: int) -> simulate.Config:
    return {c.name: c for c in simulate.configs(steps)}[name]


def paceline(name: str) -> Callable[[int, int], Strategy]:
    return lambda seed, steps: PacelineEngine(paceline_config(name, steps), seed)


def rows() -> list[Row]:
    """Peers first, then Paceline's samplers, then Paceline with DAPO's filter."""
    peers = [
        Row(SYLLABUS, "peer", lambda seed, steps: SyllabusLearningProgress(seed)),
        Row(DAPO, "peer", lambda seed, steps: UniformEpochs(seed), MAX_GEN_ROUNDS),
        Row(DAPO_FILTER_ONLY, "peer", lambda seed, steps: UniformEpochs(seed), 1),
        Row("static temperature T=2", "peer", lambda seed, steps: StaticTemperature(seed, 2.0)),
        Row("static temperature T=5", "peer", lambda seed, steps: StaticTemperature(seed, 5.0)),
    ]
    ours = [Row(name, "Paceline", paceline(name)) for name in PACELINE_ROWS]
    combined = [Row(f"{LOOPBACK_CONFIG} + DAPO filter, no refill", "Paceline + peer",
                    paceline(LOOPBACK_CONFIG), 1)]
    return peers + ours + combined


def run(row: Row, seed: int, steps: int) -> dict[str, Any]:
    """One training run of the simulated learner with `row` choosing the batches."""
    learner = Learner(seed)
    strategy = row.make(seed, steps)
    timings: list[float] = []
    generated = wasted = trained_wasted = surplus = skipped = short = 0
    served = np.zeros(len(DISTRIBUTIONS))
    curves: dict[str, list[float]] = {"mean": [], "min": [], "generated": []}
    reached: int | None = None
    reached_rollouts: int | None = None
    accuracy = learner.accuracy()
    try:
        for step in range(steps):
            start = time.perf_counter()
            plan = strategy.propose(step, BATCH)
            spent = time.perf_counter() - start
            parts = [learner.rollout(plan.indices)]
            while (row.filter_rounds > len(parts)
                   and sum(int((~r.constant).sum()) for r in parts) < BATCH):
                start = time.perf_counter()
                more = strategy.propose(step, BATCH)
                spent += time.perf_counter() - start
                parts.append(learner.rollout(more.indices))
            roll = Rollouts.concat(parts) if len(parts) > 1 else parts[0]
            generated += roll.n * G
            wasted += int(roll.constant.sum()) * G
            trained = roll
            if row.filter_rounds:
                if plan.loss_weights is not None:
                    raise ValueError("DAPO's filter does not carry loss weights")
                trained = roll.take(~roll.constant)
                if trained.n > BATCH:  # verl keeps the first train-batch groups
                    surplus += (trained.n - BATCH) * G
                    trained = trained.take(np.arange(BATCH))
                short += trained.n < BATCH
            trained_wasted += int(trained.constant.sum()) * G
            learner.train(trained, plan.weights, plan.scale, plan.loss_weights)
            advantages = learner.advantages(roll, plan.weights, plan.scale)
            skipped += plan.skipped
            served += np.bincount(distribution_of(trained.indices), minlength=served.size)
            accuracy = learner.accuracy()
            start = time.perf_counter()
            strategy.observe(step, roll, advantages,
                             [float(accuracy.mean()), learner.brevity_rate()])
            timings.append(spent + time.perf_counter() - start)
            curves["mean"].append(float(accuracy.mean()))
            curves["min"].append(float(accuracy.min()))
            curves["generated"].append(float(generated))
            if reached is None and accuracy.mean() >= TARGET:
                reached, reached_rollouts = step + 1, generated
    finally:
        strategy.close()
    return {"steps_to_target": reached, "rollouts_to_target": reached_rollouts,
            "min_accuracy": float(accuracy.min()), "mean_accuracy": float(accuracy.mean()),
            "per_distribution": accuracy.round(4).tolist(), "generated": generated,
            "wasted": wasted, "trained_wasted": trained_wasted, "surplus": surplus,
            "skipped": skipped, "short_steps": short,
            "batch_share": (served / max(served.sum(), 1)).round(4).tolist(),
            "step_seconds": timings, "curves": curves}


def summarize(results: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Means (± std) over seeds; a run that never reaches the target counts steps + 1 steps
    and all the rollouts it generated (a lower bound)."""
    def stat(values: list[float]) -> list[float]:
        return [float(np.mean(values)), float(np.std(values))]

    timings = np.concatenate([r["step_seconds"] for r in results]) * 1e3
    generated = [r["generated"] for r in results]
    return {
        "seeds": len(results),
        "steps_to_target": stat([r["steps_to_target"] or steps + 1 for r in results]),
        "rollouts_to_target": stat([r["rollouts_to_target"] or r["generated"]
                                    for r in results]),
        "never_reached": sum(r["steps_to_target"] is None for r in results),
        "min_accuracy": stat([r["min_accuracy"] for r in results]),
        "mean_accuracy": stat([r["mean_accuracy"] for r in results]),
        "wasted_share": stat([r["wasted"] / max(r["generated"], 1) for r in results]),
        "wasted_per_step": float(np.mean([r["wasted"] for r in results]) / max(steps, 1)),
        "trained_wasted_per_step": float(np.mean([r["trained_wasted"] for r in results])
                                         / max(steps, 1)),
        "rollouts_per_step": float(np.mean(generated) / max(steps, 1)),
        "surplus": float(np.mean([r["surplus"] for r in results])),
        "skipped": float(np.mean([r["skipped"] for r in results])),
        "short_steps": float(np.mean([r["short_steps"] for r in results])),
        "per_distribution": np.mean([r["per_distribution"] for r in results],
                                    axis=0).round(3).tolist(),
        "batch_share": np.mean([r["batch_share"] for r in results], axis=0).round(3).tolist(),
        "step_ms": {"p50": float(np.percentile(timings, 50)), "mean": float(timings.mean()),
                    "p99": float(np.percentile(timings, 99))},
        "curves": {name: np.mean([r["curves"][name] for r in results], axis=0).tolist()
                   for name in results[0]["curves"]},
    }


def overhead(steps: int, seeds: int) -> dict[str, Any]:
    """Per-step strategy time of Syllabus in process, Paceline's engine in process and a
    Paceline server over loopback (both `learning_progress`), run seed by seed in turn so
    that load from other processes on the machine hits the three alike."""
    config = paceline_config(LOOPBACK_CONFIG, steps)
    cases = {"paceline_in_process": Row(LOOPBACK_CONFIG, "Paceline",
                                        paceline(LOOPBACK_CONFIG))}
    if importlib.util.find_spec("syllabus") is not None:  # the `peers` extra
        cases["syllabus_in_process"] = Row(SYLLABUS, "peer",
                                           lambda seed, n: SyllabusLearningProgress(seed))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in
                                                [*cases, "paceline_loopback"]}
    load_before = os.getloadavg()
    with paceline_server() as url:
        cases["paceline_loopback"] = Row(
            f"{LOOPBACK_CONFIG} (loopback)", "Paceline",
            lambda seed, n: PacelineLoopback(url, config, seed, "lp"))
        for seed in range(seeds):
            for name, row in cases.items():
                results[name].append(run(row, seed, steps))
    load_after = os.getloadavg()
    identical = all(a["curves"] == b["curves"] for a, b in
                    zip(results["paceline_loopback"], results["paceline_in_process"],
                        strict=True))
    ms = {name: summarize(runs, steps)["step_ms"] for name, runs in results.items()}
    ratios = {}
    peer = ms.get("syllabus_in_process")
    for name in ("paceline_loopback", "paceline_in_process"):
        if peer is not None:
            ratios[f"{name}_vs_syllabus_p50"] = ms[name]["p50"] / peer["p50"]
            ratios[f"{name}_vs_syllabus_mean"] = ms[name]["mean"] / peer["mean"]
    return {"overhead": {
        "config": LOOPBACK_CONFIG, "seeds": seeds, "steps": steps, "ms_per_step": ms,
        "ratios": ratios, "loopback_identical_to_in_process": identical,
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)]}}


def checks(steps: int, engine_runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The learner reproduces simulate.run() and the static mix is Paceline's P(T)."""
    matches = {}
    for name, runs in engine_runs.items():
        reference = simulate.run(paceline_config(name, steps), 0, steps)
        mine = runs[0]["curves"]
        matches[name] = (reference["curves"]["mean"] == mine["mean"]
                         and reference["curves"]["min"] == mine["min"])
    log_sizes = np.log([d.size for d in DISTRIBUTIONS])
    static = all(np.allclose(temperature_probabilities(t),
                             np.exp(log_temperature_probabilities(log_sizes, t)))
                 for t in (2.0, 5.0))
    return {"checks": {"learner_matches_simulate": matches,
                       "static_temperature_matches_paceline": static}}


def fmt(pair: list[float], digits: int = 3) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table(summaries: dict[str, dict[str, Any]], who: dict[str, str], steps: int) -> str:
    lines = [f"| strategy | | steps to {TARGET:.0%} | rollouts to {TARGET:.0%} (k) "
             "| final min acc. | final mean acc. | zero-variance rollouts "
             "| rollouts / step | strategy ms / step (p50) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        reached = f"{s['steps_to_target'][0]:.0f} ± {s['steps_to_target'][1]:.0f}"
        rollouts = (f"{s['rollouts_to_target'][0] / 1e3:.0f} ± "
                    f"{s['rollouts_to_target'][1] / 1e3:.0f}")
        if s["never_reached"]:
            reached += f" ({s['never_reached']} never → {steps + 1})"
            rollouts += " (≥)"
        wasted = f"{s['wasted_share'][0]:.1%} ({s['wasted_per_step']:.0f} / step)"
        lines.append(f"| {name} | {who[name]} | {reached} | {rollouts} "
                     f"| {fmt(s['min_accuracy'])} | {fmt(s['mean_accuracy'])} | {wasted} "
                     f"| {s['rollouts_per_step']:.0f} | {s['step_ms']['p50']:.2f} |")
    return "\n".join(lines)


def detail_table(summaries: dict[str, dict[str, Any]]) -> str:
    learnable = " / ".join(DISTRIBUTIONS[d].name for d in LEARNABLE)
    every = " / ".join(d.name for d in DISTRIBUTIONS)
    lines = [f"| strategy | batch share ({every}) | final acc. ({learnable}) "
             "| skipped before rollout | discarded after rollout (surplus) |",
             "|---|---|---|---|---|"]
    for name, s in summaries.items():
        share = " / ".join(f"{v:.0%}" for v in s["batch_share"])
        accuracy = " / ".join(f"{v:.2f}" for v in s["per_distribution"])
        lines.append(f"| {name} | {share} | {accuracy} | {s['skipped']:.0f} "
                     f"| {s['surplus']:.0f} |")
    return "\n".join(lines)


def overhead_table(result: dict[str, Any]) -> str:
    labels = {"syllabus_in_process": "Syllabus `OnlineLearningProgress`, in process",
              "paceline_in_process": "Paceline engine (`learning_progress`), in process",
              "paceline_loopback": "Paceline server over loopback (`paceline.Client`, "
                                   "`learning_progress`)"}
    cases = result["ms_per_step"]
    peer = cases.get("syllabus_in_process")
    lines = ["| per step (report + next batch) | p50 ms | mean ms | p99 ms "
             "| ratio to Syllabus (p50 / mean) |", "|---|---|---|---|---|"]
    for key, label in labels.items():
        if key not in cases:
            continue
        c = cases[key]
        ratio = (f"{c['p50'] / peer['p50']:.1f}× / {c['mean'] / peer['mean']:.1f}×"
                 if peer is not None else "–")
        lines.append(f"| {label} | {c['p50']:.2f} | {c['mean']:.2f} | {c['p99']:.2f} "
                     f"| {ratio} |")
    return "\n".join(lines)


def plot(summaries: dict[str, dict[str, Any]], who: dict[str, str],
         result: dict[str, Any] | None, path: Path) -> None:
    """Accuracy per step and per generated rollout; per-step strategy time."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: {path.name} not written", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.4))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold", "navy",
               "magenta", "lime"]
    styles = {"peer": "--", "Paceline": "-", "Paceline + peer": "-."}
    for i, (name, s) in enumerate(summaries.items()):
        style = styles.get(who[name], "-")
        color = palette[i % len(palette)]
        curves = s["curves"]
        axes[0].plot(np.arange(1, len(curves["mean"]) + 1), curves["mean"], style,
                     color=color, label=name)
        axes[1].plot(np.asarray(curves["generated"]) / 1e3, curves["mean"], style,
                     color=color, label=name)
    for ax, xlabel in ((axes[0], "step"), (axes[1], "generated rollouts (thousands)")):
        ax.axhline(TARGET, color="grey", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_title("mean held-out accuracy by step\n(-- peer, — Paceline, -. both)")
    # One batch per step is the budget of every row but DAPO's refill: show that range.
    budget = max(len(next(iter(summaries.values()))["curves"]["mean"]), 1) * BATCH * G
    axes[1].set_xlim(0, 1.1 * budget / 1e3)
    axes[1].set_title("mean held-out accuracy by generated rollouts\n(DAPO with refill "
                      "runs on past the right edge)")
    axes[0].legend(fontsize=7)
    if result is not None:
        cases = result["ms_per_step"]
        labels = {"syllabus_in_process": "Syllabus\nin process",
                  "paceline_in_process": "Paceline engine\nin process",
                  "paceline_loopback": "Paceline server\nloopback"}
        keys = [k for k in labels if k in cases]
        values = [cases[k]["p50"] for k in keys]
        bars = axes[2].bar([labels[k] for k in keys], values,
                           color=["tab:orange", "tab:blue", "tab:cyan"][:len(keys)])
        axes[2].bar_label(bars, labels=[f"{v:.2f} ms" for v in values])
        axes[2].set_yscale("log")
        axes[2].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axes[2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[2].set_ylabel("ms per step: report + next batch")
        axes[2].set_title("strategy time per step, p50\n(learning-progress curricula)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--loopback-seeds", type=int, default=3,
                        help="seeds of the loopback run (0: skip the overhead measurement)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these rows")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed x 10 steps; writes the plot only when --out is given")
    parser.add_argument("--out", default=None,
                        help="folder for peers.png (default docs/, none with --quick)")
    args = parser.parse_args(argv)
    out = args.out
    if args.quick:
        args.seeds, args.steps, args.loopback_seeds = 1, 10, 1
    elif out is None:
        out = str(ROOT / "docs")
    selected = [r for r in rows() if args.only is None or r.name in args.only]
    summaries: dict[str, dict[str, Any]] = {}
    who: dict[str, str] = {}
    engine_runs: dict[str, dict[int, dict[str, Any]]] = {}
    for row in selected:
        start = time.perf_counter()
        try:
            results = [run(row, seed, args.steps) for seed in range(args.seeds)]
        except Exception as exc:  # a missing peer must not hide the other rows
            print(json.dumps({"row": row.name, "who": row.who, "error": repr(exc)}),
                  flush=True)
            continue
        summaries[row.name] = summarize(results, args.steps)
        who[row.name] = row.who
        if row.name in ("uniform", LOOPBACK_CONFIG):
            engine_runs[row.name] = dict(enumerate(results))
        print(json.dumps({"row": row.name, "who": row.who,
                          "seconds": round(time.perf_counter() - start, 1),
                          **{k: v for k, v in summaries[row.name].items() if k != "curves"}}),
              flush=True)
    result = None
    if args.loopback_seeds > 0:
        result = overhead(args.steps, args.loopback_seeds)
        print(json.dumps(result), flush=True)
        result = result["overhead"]
    print(json.dumps(checks(args.steps, engine_runs)), flush=True)
    text = table(summaries, who, args.steps) + "\n\n" + detail_table(summaries)
    if result is not None:
        text += "\n\n" + overhead_table(result)
    print(text, flush=True)
    if out is not None and summaries:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        plot(summaries, who, result, folder / "peers.png")


if __name__ == "__main__":
    main()
