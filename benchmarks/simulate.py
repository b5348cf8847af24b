"""A simulated GRPO-style learner to compare every sampler and weighting (model: ours).

The script plays the trainer: `next_batch` -> roll out -> `Report.dense` -> `apply`, the
calls a real trainer makes, around a toy policy whose parameters move with the policy
gradient the served batch produces. Nothing in it knows which strategy is running.

Data: 11 400 training samples in five distributions of very different sizes.

    name     size   latent difficulty δ   skill   unlearnable share
    easy     6 000  N(-3.0, 1.0)          0       0 %
    medium   3 000  N( 0.5, 1.5)          1       5 %
    hard_a     600  N( 3.0, 1.0)          1       10 %
    hard_b     300  N( 3.5, 1.0)          2       10 %
    noise    1 500  -                     -       100 %

Policy: three latent skills S (start 0), a per-sample memorisation offset m_x (start 0)
and one brevity logit b (start -1). Each of the G = 8 rollouts of prompt x first picks a
brief answer with probability sigmoid(b), then is correct with probability
sigmoid(S[skill(x)] + m_x - δ_x - LENGTH_COST · brief): brief answers are cheaper but
less often right, so accuracy and brevity conflict. Unlearnable samples (wrong reference
answers; all of `noise`) are never correct. `easy` is solved from the start and `noise`
never: both give groups whose correctness is constant, the rollouts a curriculum should
not pay for.

Learning: rewards r = (correct, brief); the trainer scalarises them with the served
weights w and scale c, computes group advantages A = c·Σ_i w_i r_i - group mean
(`dr_grpo`, the default: expected signal ∝ p(1-p), and c matters) or the same divided by
the group std (`grpo`: c cancels), reports them with the rewards, and takes a REINFORCE
step with the exact score functions of this policy, averaged over rollouts and prompts
and multiplied by the served loss weights:

    g_x  = λ_x · mean_j A_j (correct_j - p_j)     (per prompt; 0 in expectation when the
                                                    group's correctness is constant)
    S   += LR · TRANSFER @ (Σ_x g_x by skill of x) / B
    m_x += LR_MEMO · g_x
    b   += LR_BREV · mean_x λ_x · mean_j A_j (brief_j - sigmoid(b))

TRANSFER couples related skills (learning `medium` helps `hard_a` fully and `hard_b` a
half). The objectives conflict through the policy itself: correct answers are more often
long, so the accuracy part of A pushes b down and the brevity part pushes it up; the
weights served decide the balance. Learning rates are per estimator (LEARNING_RATES),
set once so that `uniform` reaches the target at about two thirds of a 400-step run.

Evaluation (every step, noiseless): the accuracy of each learnable distribution is the
expected pass rate over 256 fixed held-out difficulties of that distribution (no
memorisation: those problems are never trained on), at the current brevity; brevity is
sigmoid(b). The trainer sends (mean held-out accuracy, brevity) as `eval_objectives`
with every report (what the hypervolume weighting evaluates).

Metrics per (configuration, seed): steps until the mean held-out accuracy over the four
learnable distributions reaches TARGET; the final minimum and mean of those accuracies;
final brevity; final hypervolume of the point (mean accuracy, brevity) above the
reference (0, 0) (moocore through `paceline_server.strategies.pareto`; for one point it
is the product); the share of rollouts spent in groups whose correctness is constant
(all right or all wrong: no accuracy gradient); where the batches went.

Configurations: every sampler with the `fixed` weighting (equal weights), predicted
zero-variance skipping on `uniform` (default threshold and 0.5) and on `prioritized`,
every weighting with the `uniform` sampler, and `spard` + `spard`. Schedules are set to
the planned run as a user would: Cooldown's temperature switches at half the steps,
SPARD's pace spans the first half; `fixed_mix` uses equal probabilities.

Writes `<out>/simulation*.md` and `.png` (mean ± std over seeds), prints one JSON object
per configuration and the markdown tables.

    python benchmarks/simulate.py [--seeds 5] [--steps 400] [--advantages dr_grpo|grpo]
                                  [--accuracy-only] [--quick] [--out docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.pareto import hypervolume

G = 8
BATCH = 128
TARGET = 0.7
EVAL_SIZE = 256
# (skill, brevity) learning rates per advantage estimator, set so that `uniform` reaches
# the target at about two thirds of a 400-step run (std-normalised advantages are larger).
LEARNING_RATES = {"dr_grpo": (1.0, 0.05), "grpo": (0.35, 0.012)}
LENGTH_COST = 1.0
LR_MEMO = 2.0
BREVITY_START = -1.0
NUM_SKILLS = 3
TRANSFER = np.array([[1.0, 0.1, 0.1],
                     [0.1, 1.0, 0.3],
                     [0.1, 0.5, 1.0]])
HV_REFERENCE = np.zeros(2)
GRPO_EPS = 1e-6


@dataclass(frozen=True)
class Distribution:
    """One source of training data."""

    name: str
    size: int
    mean: float  # latent difficulty ~ N(mean, spread)
    spread: float
    skill: int
    broken: float  # share of unlearnable samples (pass rate 0 for ever)


DISTRIBUTIONS = [
    Distribution("easy", 6_000, -3.0, 1.0, 0, 0.0),
    Distribution("medium", 3_000, 0.5, 1.5, 1, 0.05),
    Distribution("hard_a", 600, 3.0, 1.0, 1, 0.10),
    Distribution("hard_b", 300, 3.5, 1.0, 2, 0.10),
    Distribution("noise", 1_500, 0.0, 0.0, 0, 1.0),
]
LEARNABLE = [d for d, dist in enumerate(DISTRIBUTIONS) if dist.broken < 1.0]


@dataclass
class World:
    """The fixed data of one seed: difficulties (inf = unlearnable) and skills."""

    difficulty: np.ndarray  # float64 [N]
    skill_of: np.ndarray  # int64 [N]
    eval_difficulty: list[np.ndarray]  # per learnable distribution, held out
    eval_skill: list[int]

    @classmethod
    def build(cls, seed: int) -> World:
        rng = np.random.default_rng(10_000 + seed)
        difficulty, skill_of = [], []
        for dist in DISTRIBUTIONS:
            values = rng.normal(dist.mean, dist.spread, dist.size)
            values[rng.random(dist.size) < dist.broken] = np.inf
            difficulty.append(values)
            skill_of.append(np.full(dist.size, dist.skill, dtype=np.int64))
        eval_difficulty = [rng.normal(DISTRIBUTIONS[d].mean, DISTRIBUTIONS[d].spread,
                                      EVAL_SIZE) for d in LEARNABLE]
        return cls(np.concatenate(difficulty), np.concatenate(skill_of), eval_difficulty,
                   [DISTRIBUTIONS[d].skill for d in LEARNABLE])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


@dataclass(frozen=True)
class Config:
    """One row of the comparison."""

    name: str
    sampler: Any
    weighting: Any
    zero_variance: Any = None  # the spec's `zero_variance` field
    group: str = "sampler"  # "sampler" rows are plotted as learning curves


def configs(steps: int, accuracy_only: bool = False) -> list[Config]:
    """Every sampler (fixed weighting), zero-variance skipping, every weighting (uniform
    sampler) and spard + spard, with schedules set to the planned `steps`. With
    `accuracy_only`, the sampler rows with fixed reward weights (1, 0)."""
    half = max(1, steps // 2)
    equal = [1.0 / len(DISTRIBUTIONS)] * len(DISTRIBUTIONS)
    spard = {"kind": "spard", "pace_steps": half}
    rows = [
        Config("uniform", "uniform", "fixed"),
        Config("fixed_mix (equal)", {"kind": "fixed_mix", "probabilities": equal}, "fixed"),
        Config("temperature", {"kind": "temperature", "steps": steps}, "fixed"),
        Config("temperature (upweight)",
               {"kind": "temperature", "steps": steps, "mode": "upweight"}, "fixed"),
        Config("dump_ucb", "dump_ucb", "fixed"),
        Config("learning_progress", "learning_progress", "fixed"),
        Config("prioritized", "prioritized", "fixed"),
        Config("spard", spard, "fixed"),
        Config("uniform + zero_variance", "uniform", "fixed", True, "zero_variance"),
        Config("uniform + zero_variance (threshold 0.5)", "uniform", "fixed",
               {"threshold": 0.5}, "zero_variance"),
        Config("prioritized + zero_variance (threshold 0.5)", "prioritized", "fixed",
               {"threshold": 0.5}, "zero_variance"),
        Config("weighting hypervolume", "uniform", {"kind": "hypervolume", "mode": "scale"},
               group="weighting"),
        Config("weighting hypervolume (steer)", "uniform",
               {"kind": "hypervolume", "mode": "steer"}, group="weighting"),
        Config("weighting gradient", "uniform", "gradient", group="weighting"),
        Config("weighting spard", "uniform", "spard", group="weighting"),
        Config("spard + spard", spard, "spard", group="weighting"),
    ]
    if accuracy_only:
        only = {"kind": "fixed", "weights": [1.0, 0.0]}
        return [dataclasses.replace(c, weighting=only) for c in rows if c.group != "weighting"]
    return rows


def make_spec(config: Config, seed: int) -> CurriculumSpec:
    return CurriculumSpec.from_dict({
        "name": "sim", "batch_size": BATCH, "seed": seed,
        "sampler": config.sampler, "weighting": config.weighting,
        "layout": {"distributions": [{"name": d.name, "size": d.size}
                                     for d in DISTRIBUTIONS]},
        "objectives": ["accuracy", "brevity"],
        "zero_variance": config.zero_variance,
    })


def evaluate(world: World, skill: np.ndarray, brevity: float) -> np.ndarray:
    """Noiseless held-out accuracy of each learnable distribution (expected over the
    answer length: brief with probability sigmoid(b))."""
    q = float(sigmoid(np.array(brevity)))
    return np.array([(q * sigmoid(skill[s] - diff - LENGTH_COST)
                      + (1.0 - q) * sigmoid(skill[s] - diff)).mean()
                     for s, diff in zip(world.eval_skill, world.eval_difficulty, strict=True)])


def policy_logits(world: World, skill: np.ndarray, memo: np.ndarray,
                  idx: np.ndarray) -> np.ndarray:
    """Correctness logit of a long answer for each index (-inf when unlearnable)."""
    return np.asarray(skill[world.skill_of[idx]] + memo[idx] - world.difficulty[idx])


def run(config: Config, seed: int, steps: int, estimator: str = "dr_grpo") -> dict[str, Any]:
    """One simulated training run; returns final metrics and per-step curves."""
    lr, lr_brevity = LEARNING_RATES[estimator]
    world = World.build(seed)
    rng = np.random.default_rng(seed)
    spec = make_spec(config, seed)
    engine = CurriculumEngine(spec)
    skill = np.zeros(NUM_SKILLS)
    brevity = BREVITY_START
    memo = np.zeros(world.difficulty.size)
    curves: dict[str, list[float]] = {"mean": [], "min": [], "brevity": [], "w_accuracy": []}
    wasted = rollouts = skipped = 0
    served = np.zeros(len(DISTRIBUTIONS))
    reached: int | None = None
    accuracy = evaluate(world, skill, brevity)
    for step in range(steps):
        batch = engine.next_batch("sim", step)
        idx = batch.indices
        n = idx.size
        weights = batch.reward_weights
        loss_w = np.ones(n) if batch.loss_weights is None else batch.loss_weights
        # Rollouts: a brief answer with probability sigmoid(b), then correctness.
        q_brief = float(sigmoid(np.array(brevity)))
        brief = rng.random((n, G)) < q_brief
        logit = policy_logits(world, skill, memo, idx)[:, None] - LENGTH_COST * brief
        p = sigmoid(logit)  # exactly 0 where the logit is -inf (unlearnable)
        correct = rng.random((n, G)) < p
        rewards = np.stack([correct, brief], axis=-1).astype(np.float64)
        # Dr.GRPO advantages of the scalarised reward; REINFORCE with score functions.
        scalar = batch.reward_scale * (rewards @ weights)
        advantages = scalar - scalar.mean(axis=1, keepdims=True)
        if estimator == "grpo":
            advantages /= scalar.std(axis=1, keepdims=True) + GRPO_EPS
        grad_logit = (advantages * (correct - p)).mean(axis=1) * loss_w  # per prompt
        grad_brevity = float(((advantages * (brief - q_brief)).mean(axis=1) * loss_w).mean())
        per_skill = np.bincount(world.skill_of[idx], weights=grad_logit,
                                minlength=NUM_SKILLS) / n
        skill += lr * TRANSFER @ per_skill
        brevity += lr_brevity * grad_brevity
        np.add.at(memo, idx, LR_MEMO * grad_logit)
        constant = correct.all(axis=1) | ~correct.any(axis=1)
        wasted += int(constant.sum()) * G
        rollouts += n * G
        skipped += batch.skipped_zero_variance
        served += np.bincount(spec.layout.distribution_of(idx), minlength=served.size)
        accuracy = evaluate(world, skill, brevity)
        brevity_now = float(sigmoid(np.array(brevity)))
        engine.apply(Report.dense(
            run_id="sim", step=step, indices=idx, rewards=rewards, advantages=advantages,
            eval_objectives=[float(accuracy.mean()), brevity_now],
            layout=spec.layout, num_objectives=2))
        curves["mean"].append(float(accuracy.mean()))
        curves["min"].append(float(accuracy.min()))
        curves["brevity"].append(brevity_now)
        curves["w_accuracy"].append(float(weights[0]))
        if reached is None and accuracy.mean() >= TARGET:
            reached = step + 1
    final = np.array([accuracy.mean(), sigmoid(np.array(brevity))])
    return {"steps_to_target": reached, "min_accuracy": float(accuracy.min()),
            "mean_accuracy": float(final[0]), "brevity": float(final[1]),
            "per_distribution": accuracy.round(4).tolist(),
            "hypervolume": hypervolume(final[None, :], HV_REFERENCE),
            "wasted_share": wasted / rollouts, "skipped": skipped,
            "batch_share": (served / max(served.sum(), 1)).round(4).tolist(),
            "final_w_accuracy": curves["w_accuracy"][-1] if steps else 0.5,
            "curves": curves}


def summarize(results: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Mean and std over seeds; a run that never reaches the target counts steps + 1."""
    def stat(values: list[float]) -> list[float]:
        return [float(np.mean(values)), float(np.std(values))]

    reached = [r["steps_to_target"] if r["steps_to_target"] is not None else steps + 1
               for r in results]
    keys = ["min_accuracy", "mean_accuracy", "brevity", "hypervolume", "wasted_share",
            "final_w_accuracy", "skipped"]
    summary: dict[str, Any] = {
        "steps_to_target": stat(reached),
        "never_reached": sum(r["steps_to_target"] is None for r in results),
        **{key: stat([r[key] for r in results]) for key in keys},
        "per_distribution": np.mean([r["per_distribution"] for r in results],
                                    axis=0).round(3).tolist(),
        "batch_share": np.mean([r["batch_share"] for r in results], axis=0).round(3).tolist(),
    }
    summary["curves"] = {name: np.mean([r["curves"][name] for r in results], axis=0).tolist()
                         for name in results[0]["curves"]}
    return summary


def table(rows: dict[str, dict[str, Any]], steps: int) -> str:
    """The main markdown table, mean ± std over seeds."""
    lines = [f"| configuration | steps to {TARGET:.0%} mean acc. | final min acc. "
             "| final mean acc. | final brevity | final HV | constant-correctness rollouts |",
             "|---|---|---|---|---|---|---|"]
    def cell(s: dict[str, Any], key: str) -> str:
        mean, std = s[key]
        return f"{mean:.3f} ± {std:.3f}"

    for name, s in rows.items():
        steps_cell = f"{s['steps_to_target'][0]:.0f} ± {s['steps_to_target'][1]:.0f}"
        if s["never_reached"]:
            steps_cell += f" ({s['never_reached']} never → {steps + 1})"
        wasted = f"{s['wasted_share'][0]:.1%} ± {s['wasted_share'][1]:.1%}"
        lines.append(f"| {name} | {steps_cell} | {cell(s, 'min_accuracy')} "
                     f"| {cell(s, 'mean_accuracy')} | {cell(s, 'brevity')} "
                     f"| {cell(s, 'hypervolume')} "
                     f"| {wasted} |")
    return "\n".join(lines)


def detail_table(rows: dict[str, dict[str, Any]]) -> str:
    """Where the batches went and where accuracy ended (means over seeds)."""
    learnable = " / ".join(DISTRIBUTIONS[d].name for d in LEARNABLE)
    every = " / ".join(d.name for d in DISTRIBUTIONS)
    lines = [f"| configuration | final acc. ({learnable}) | batch share ({every}) "
             "| final w_accuracy | indices skipped |", "|---|---|---|---|---|"]
    for name, s in rows.items():
        accuracy = " / ".join(f"{v:.2f}" for v in s["per_distribution"])
        share = " / ".join(f"{v:.0%}" for v in s["batch_share"])
        lines.append(f"| {name} | {accuracy} | {share} | {s['final_w_accuracy'][0]:.2f} "
                     f"| {s['skipped'][0]:.0f} |")
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, Any]], groups: dict[str, str], path: Path) -> None:
    """Learning curves: mean and min accuracy per sampler; accuracy and brevity per
    weighting."""
    try:
        import matplotlib
    except ImportError:  # the `bench` extra is not installed: tables only
        print(f"matplotlib is not installed: {path.name} not written", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    colors: dict[str, Any] = {}
    for name in [n for n in rows if groups[n] == "sampler"]:
        colors[name] = palette[len(colors) % len(palette)]
    for name in [n for n in rows if groups[n] in ("sampler", "zero_variance")]:
        base = name.split(" + ")[0]  # skipping rows: dotted, in their sampler's colour
        color = colors.get(base, "black")
        style = "-" if groups[name] == "sampler" else ":"
        for ax, curve in ((axes[0], "mean"), (axes[1], "min")):
            ax.plot(rows[name]["curves"][curve], style, color=color, label=name)
    axes[0].axhline(TARGET, color="grey", linewidth=0.8)
    axes[0].set_title("samplers (fixed weights): mean held-out accuracy")
    axes[1].set_title("samplers: minimum accuracy over learnable distributions")
    weightings = ["uniform"] + [n for n in rows if groups[n] == "weighting"]
    for i, name in enumerate(n for n in weightings if n in rows):
        color = palette[i % len(palette)]
        axes[2].plot(rows[name]["curves"]["mean"], "-", color=color,
                     label=f"{name}: accuracy")
        axes[2].plot(rows[name]["curves"]["brevity"], "--", color=color,
                     label=f"{name}: brevity")
    axes[2].set_title("weightings (uniform sampler): accuracy (—) and brevity (--)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--advantages", choices=sorted(LEARNING_RATES), default="dr_grpo",
                        help="the simulated trainer's advantage estimator")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="samplers only, fixed reward weights (1, 0)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only the configurations with these names")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed x 10 steps; writes files only when --out is given")
    parser.add_argument("--out", default=None, help="folder for the .md/.png results "
                        "(default docs/, none with --quick)")
    args = parser.parse_args(argv)
    out = args.out
    if args.quick:
        args.seeds, args.steps = 1, 10
    elif out is None:
        out = str(Path(__file__).resolve().parents[1] / "docs")
    selected = configs(args.steps, args.accuracy_only)
    if args.only:
        selected = [c for c in selected if c.name in args.only]
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}
    for config in selected:
        start = time.perf_counter()
        try:
            results = [run(config, seed, args.steps, args.advantages)
                       for seed in range(args.seeds)]
        except Exception as exc:  # a strategy still being written must not hide the rest
            print(json.dumps({"configuration": config.name, "error": repr(exc)}), flush=True)
            continue
        rows[config.name] = summarize(results, args.steps)
        groups[config.name] = config.group
        print(json.dumps({"configuration": config.name, "group": config.group,
                          "seconds": round(time.perf_counter() - start, 1),
                          **{k: v for k, v in rows[config.name].items() if k != "curves"}}),
              flush=True)
    text = table(rows, args.steps) + "\n\n" + detail_table(rows)
    print(text, flush=True)
    if out is None or not rows:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "simulation" + ("_grpo" if args.advantages == "grpo" else "") \
        + ("_accuracy_only" if args.accuracy_only else "")
    command = " ".join(["python benchmarks/simulate.py", f"--seeds {args.seeds}",
                        f"--steps {args.steps}", f"--advantages {args.advantages}"]
                       + (["--accuracy-only"] if args.accuracy_only else []))
    reward = ("accuracy only (fixed weights (1, 0))" if args.accuracy_only
              else "objectives (accuracy, brevity)")
    (folder / f"{stem}.md").write_text(
        f"# Simulated GRPO learner ({args.advantages} advantages)\n\n`{command}`: "
        f"{args.seeds} seeds × {args.steps} steps, batch {BATCH} prompts × {G} rollouts, "
        f"{reward}. The model is described in `benchmarks/simulate.py`; mean ± std over "
        f"seeds (a run that never reaches the target counts as {args.steps + 1} steps). "
        f"Written by the script; see docs/benchmarks.md for the analysis.\n\n{text}\n\n"
        f"![learning curves]({stem}.png)\n")
    plot(rows, groups, folder / f"{stem}.png")


if __name__ == "__main__":
    main()
