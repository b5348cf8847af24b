"""PNG plots drawn from the metrics files alone (so `python -m trainer_examples plot DIR`
can redraw them after the fact): one set per run, one comparison across runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from trainer_examples.metrics import Record, column, read_metrics
from trainer_examples.tasks import ALL_OBJECTIVES, OBJECTIVES

DPI = 80  # modest files: they are committed to docs/


def _names(records: list[Record]) -> list[str]:
    return [k[len("p_"):] for k in records[0] if k.startswith("p_")]


def _series(records: list[Record], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records where `key` has a value."""
    xs, ys = [], []
    for step, value in zip(column(records, "step"), column(records, key), strict=True):
        if not math.isnan(value):
            xs.append(step)
            ys.append(value)
    return xs, ys


def _finish(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_run(out: Path) -> list[Path]:
    """accuracy.png, probabilities.png, weights.png, hypervolume.png and training.png
    from `out/metrics.jsonl`; returns the paths written."""
    records = read_metrics(out)
    steps = [r for r in records if not r.get("final")]
    names = _names(records)
    title = _title(out)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.plot(*_series(records, f"eval_{name}"), marker="o", ms=3, label=name)
    ax.plot(*_series(records, "eval_mean"), color="black", lw=2, label="mean")
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, f"held-out accuracy (greedy) — {title}", "accuracy")
    paths.append(out / "accuracy.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.plot(*_series(steps, f"p_{name}"), label=name)
    ax.set_ylim(0, 1)
    _finish(ax, f"sampling probability served — {title}", "P(distribution)")
    paths.append(out / "probabilities.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4))
    objectives = [o for o in ALL_OBJECTIVES if steps and f"w_{o}" in steps[0]] or OBJECTIVES
    for objective in objectives:
        ax.plot(*_series(steps, f"w_{objective}"), label=f"w[{objective}]")
    ax.plot(*_series(steps, "reward_scale"), ls="--", color="gray", label="reward scale")
    _finish(ax, f"reward weights served — {title}", "weight")
    paths.append(out / "weights.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*_series(records, "hypervolume"), label="eval points (local)")
    xs, ys = _series(steps, "service_hypervolume")
    if xs:
        ax.plot(xs, ys, ls="--", label="service (normalised)")
    _finish(ax, f"hypervolume of the evaluation front — {title}", "hypervolume")
    paths.append(out / "hypervolume.png")
    _save(fig, paths[-1])

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(*_series(steps, "nll"), lw=0.8, label="NLL of sampled tokens")
    axes[0].plot(*_series(steps, "zero_variance_fraction"), lw=0.8,
                 label="zero-variance groups")
    _finish(axes[0], "policy sharpness and wasted groups", "per token / fraction")
    axes[1].plot(*_series(steps, "reward"), lw=0.8, label="scalarised reward")
    for objective in objectives:
        axes[1].plot(*_series(steps, f"reward_{objective}"), lw=0.8, label=objective)
    _finish(axes[1], "rollout rewards (training batches)", "mean")
    paths.append(out / "training.png")
    _save(fig, paths[-1])
    return paths


def plot_compare(runs: dict[str, Path], out: Path) -> Path:
    """compare.png: mean held-out accuracy, hypervolume, the probability of each
    distribution and the weight on the first objective, one line per run."""
    data = {label: read_metrics(path) for label, path in runs.items()}
    names = _names(next(iter(data.values())))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for label, records in data.items():
        steps = [r for r in records if not r.get("final")]
        axes[0, 0].plot(*_series(records, "eval_mean"), marker="o", ms=3, label=label)
        axes[0, 1].plot(*_series(records, "hypervolume"), label=label)
        axes[1, 1].plot(*_series(steps, f"w_{OBJECTIVES[0]}"), label=label)
    _finish(axes[0, 0], "held-out accuracy, mean over distributions", "accuracy")
    _finish(axes[0, 1], "hypervolume of the evaluation front", "hypervolume")
    _finish(axes[1, 1], f"reward weight on {OBJECTIVES[0]!r}", "weight")

    width = 0.8 / max(len(data), 1)
    for i, (label, records) in enumerate(data.items()):
        final = records[-1]
        values = [final.get(f"eval_{n}") or 0.0 for n in names]
        axes[1, 0].bar([x + i * width for x in range(len(names))], values, width,
                       label=label)
    axes[1, 0].set_xticks([x + width * (len(data) - 1) / 2 for x in range(len(names))],
                          names)
    axes[1, 0].set_ylim(0, 1.05)
    axes[1, 0].set_title("final held-out accuracy per distribution", fontsize=10)
    axes[1, 0].legend(fontsize=8)
    axes[1, 0].grid(alpha=0.3, axis="y")
    path = out / "compare.png"
    _save(fig, path)
    return path


def _title(out: Path) -> str:
    summary = out / "summary.json"
    if summary.exists():
        config = json.loads(summary.read_text())["config"]
        return f"{config['sampler']} / {config['weighting']}"
    return out.name
