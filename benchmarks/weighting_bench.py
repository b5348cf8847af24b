"""Does dynamic reward weighting beat fixed weights? (issue 15)

Two simulated GRPO learners (model: ours), each with two objectives that truly trade off,
run through the in-process `CurriculumEngine` (the engine the service runs) with the
`uniform` sampler and each weighting:

- `brevity` — Lu et al.'s accuracy-vs-conciseness setting. A rollout is brief with
  probability σ(β) and then correct less often: correct ~ Bern(σ(S_d − δ_x − c·brief)),
  c = 1.5. Objectives: `correct` (maximise) and `length` in tokens (40 if brief, 200 if
  not; *minimise*, bounds [0, 200], so the engine and the trainer work on its unit reward
  (200 − length) / 200). Dr.GRPO advantages (mean-centred), where a reward scale acts.
- `silence` — a secondary reward that can be hacked by saying nothing. A rollout is
  empty with probability σ(η): it then scores 0 on `correct` and 1 on `harmless`; a
  non-empty answer is harmless with σ(φ) (a learnable, hedged style) and correct with
  σ(S_d − δ_x − c·hedged), c = 1: hedging costs correctness. The good policy answers,
  mostly hedged where it is sure; the hack (η up) gives (0, 1) at no effort. GRPO
  advantages (divided by the group std), where a reward scale cancels.

Each learner has three distributions (easy / medium / hard) and parameters θ = (S_d, the
style logits). The trainer scalarises the served weights exactly as `Batch.scalarize`
does (domain.scalarize), computes the group advantages, reports rewards and advantages
and takes an exact REINFORCE step θ += lr · mean A ∇log π (the score of every choice
the rollout made). Every `eval_every` steps it evaluates the policy exactly (expected
objectives over held-out prompts), sends the point as `eval_objectives` and records it.

Rows: `fixed` at the preference (0.7, 0.3) and a small grid (0.5, 0.5), (0.9, 0.1);
`hypervolume` in `scale` and `steer` mode; `gradient` with the rollout proxy and with the
real per-objective gradient Gram matrix (g_i = mean over rollouts of A^i ∇log π with A^i
the group-normalised unit reward of objective i — exact for this model; scaled to max
|entry| 1 and used with `eta=0.5`, the proxy's step, so the two rows differ only in the
estimate); `spard`. Adaptive weightings start from the preference (0.7, 0.3).

Scores, over the evaluation points in unit space (larger is better on both axes,
reference (0, 0)): hypervolume of the front of every point so far, per step; final
point; steps until the front's hypervolume reaches the `fixed (0.7, 0.3)` run's final
one (same seed; never → steps + 1). Mean ± std over seeds.

    nice -n 10 python benchmarks/weighting_bench.py [--seeds 3] [--steps 300]
        [--learners brevity silence] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from paceline_server.domain import CurriculumSpec, Report
from paceline_server.domain.scalarize import scalarize, unit_rewards
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.pareto import hypervolume

RUN = "bench"
PREFERENCE = (0.7, 0.3)
EVAL_SIZE = 256


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64))))


# ---------------------------------------------------------------------------- learners
class Learner:
    """Shared machinery: prompts with a difficulty per distribution, skills S_d, group
    advantages, the exact REINFORCE step; subclasses define the rollout and the eval."""

    name: ClassVar[str] = ""
    objectives: ClassVar[list[Any]] = []
    sizes: ClassVar[tuple[int, ...]] = (3000, 1500, 500)
    means: ClassVar[tuple[float, ...]] = (-1.0, 1.0, 2.5)
    spread: ClassVar[float] = 1.0
    batch: ClassVar[int] = 64
    group: ClassVar[int] = 8
    std_normalised: ClassVar[bool] = False
    lr: ClassVar[float] = 2.0
    styles: ClassVar[int] = 1  # style logits after the skills

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([20_261_203, seed])
        self.dist_of = np.repeat(np.arange(len(self.sizes)), self.sizes)
        self.difficulty = np.concatenate([rng.normal(m, self.spread, n)
                                          for m, n in zip(self.means, self.sizes,
                                                          strict=True)])
        self.eval_difficulty = np.stack([rng.normal(m, self.spread, EVAL_SIZE)
                                         for m in self.means])
        self.theta = np.zeros(len(self.sizes) + self.styles)
        self.theta[len(self.sizes):] = self.initial_styles()
        self.rng = np.random.default_rng([seed, 11])

    @property
    def spec_objectives(self) -> list[Any]:
        return list(self.objectives)

    def initial_styles(self) -> np.ndarray:
        return np.zeros(self.styles)

    def layout(self) -> list[dict[str, Any]]:
        return [{"name": f"d{i}", "size": n} for i, n in enumerate(self.sizes)]

    def rollout(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw rewards [n, G, 2] and the score ∇log π of every rollout [n, G, P]."""
        raise NotImplementedError

    def evaluate(self) -> np.ndarray:
        """Expected raw objectives over the held-out prompts (mean over distributions)."""
        raise NotImplementedError

    def advantages(self, scalar: np.ndarray) -> np.ndarray:
        a = scalar - scalar.mean(axis=1, keepdims=True)
        if self.std_normalised:
            a = a / (scalar.std(axis=1, keepdims=True) + 1e-6)
        return np.asarray(a)

    def step(self, advantages: np.ndarray, score: np.ndarray) -> None:
        self.theta += self.lr * np.einsum("ng,ngp->p", advantages, score) / advantages.size


class Brevity(Learner):
    name = "brevity"
    objectives: ClassVar[list[Any]] = [
        "correct", {"name": "length", "direction": "minimize", "bounds": [0, 200]}]
    cost = 1.5  # logit penalty of a brief answer on correctness

    def rollout(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, g, d = indices.size, self.group, len(self.sizes)
        skill = self.theta[self.dist_of[indices]] - self.difficulty[indices]
        p_brief = float(sigmoid(self.theta[d]))
        brief = self.rng.random((n, g)) < p_brief
        p = sigmoid(skill[:, None] - self.cost * brief)
        correct = self.rng.random((n, g)) < p
        rewards = np.stack([correct, np.where(brief, 40.0, 200.0)], axis=-1).astype(float)
        score = np.zeros((n, g, d + 1))
        rows = np.repeat(np.arange(n), g).reshape(n, g)
        score[rows, np.arange(g)[None, :], self.dist_of[indices][:, None]] = correct - p
        score[..., d] = brief - p_brief
        return rewards, score

    def evaluate(self) -> np.ndarray:
        d = len(self.sizes)
        p_brief = float(sigmoid(self.theta[d]))
        skill = self.theta[:d, None] - self.eval_difficulty
        acc = ((1 - p_brief) * sigmoid(skill) + p_brief * sigmoid(skill - self.cost)).mean()
        return np.array([acc, 40.0 * p_brief + 200.0 * (1 - p_brief)])


class Silence(Learner):
    name = "silence"
    objectives: ClassVar[list[Any]] = ["correct", "harmless"]
    std_normalised = True
    lr = 0.5
    styles = 2  # η (silence), φ (harmless style)
    cost = 1.0  # logit penalty of a hedged answer on correctness

    def initial_styles(self) -> np.ndarray:
        return np.array([-2.0, -1.0])

    def rollout(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, g, d = indices.size, self.group, len(self.sizes)
        eta, phi = self.theta[d], self.theta[d + 1]
        p_silent, p_style = float(sigmoid(eta)), float(sigmoid(phi))
        silent = self.rng.random((n, g)) < p_silent
        styled = self.rng.random((n, g)) < p_style
        p = sigmoid((self.theta[self.dist_of[indices]] - self.difficulty[indices])[:, None]
                    - self.cost * styled)
        correct = (self.rng.random((n, g)) < p) & ~silent
        harmless = silent | styled
        rewards = np.stack([correct, harmless], axis=-1).astype(float)
        score = np.zeros((n, g, d + 2))
        rows = np.repeat(np.arange(n), g).reshape(n, g)
        score[rows, np.arange(g)[None, :], self.dist_of[indices][:, None]] = np.where(
            silent, 0.0, correct - p)
        score[..., d] = silent - p_silent
        score[..., d + 1] = np.where(silent, 0.0, styled - p_style)
        return rewards, score

    def evaluate(self) -> np.ndarray:
        d = len(self.sizes)
        p_silent, p_style = float(sigmoid(self.theta[d])), float(sigmoid(self.theta[d + 1]))
        skill = self.theta[:d, None] - self.eval_difficulty
        acc = (1 - p_silent) * ((1 - p_style) * sigmoid(skill)
                                + p_style * sigmoid(skill - self.cost)).mean()
        return np.array([acc, p_silent + (1 - p_silent) * p_style])


LEARNERS: dict[str, type[Learner]] = {cls.name: cls for cls in (Brevity, Silence)}


# ---------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    label: str
    weighting: dict[str, Any]
    real_grads: bool = False


ROWS = [
    Row("fixed (0.7, 0.3)", {"kind": "fixed", "weights": list(PREFERENCE)}),
    Row("fixed (0.5, 0.5)", {"kind": "fixed", "weights": [0.5, 0.5]}),
    Row("fixed (0.9, 0.1)", {"kind": "fixed", "weights": [0.9, 0.1]}),
    Row("hypervolume scale", {"kind": "hypervolume", "weights": list(PREFERENCE),
                              "mode": "scale", "points": "eval"}),
    Row("hypervolume steer", {"kind": "hypervolume", "weights": list(PREFERENCE),
                              "mode": "steer", "points": "eval"}),
    Row("gradient (proxy)", {"kind": "gradient", "weights": list(PREFERENCE)}),
    Row("gradient (real)", {"kind": "gradient", "weights": list(PREFERENCE), "eta": 0.5},
        real_grads=True),
    Row("spard", {"kind": "spard", "weights": list(PREFERENCE)}),
]
BASELINE = ROWS[0].label


def real_gram(unit: np.ndarray, score: np.ndarray) -> np.ndarray:
    """[⟨g_i, g_j⟩] with g_i = mean A^i ∇log π, A^i the group-normalised unit reward of
    objective i; scaled to max |entry| 1 (all zeros stays zeros)."""
    centred = unit - unit.mean(axis=1, keepdims=True)
    std = unit.std(axis=1, keepdims=True)
    adv = np.where(std > 1e-12, centred / np.where(std > 1e-12, std, 1.0), 0.0)
    grads = np.einsum("ngk,ngp->kp", adv, score) / (unit.shape[0] * unit.shape[1])
    gram = grads @ grads.T
    gram = (gram + gram.T) / 2
    largest = float(np.abs(gram).max())
    return gram / largest if largest > 0 else gram


def run(learner_name: str, row: Row, seed: int, steps: int, eval_every: int
        ) -> dict[str, Any]:
    learner = LEARNERS[learner_name](seed)
    spec = CurriculumSpec.from_dict({
        "name": "bench", "layout": {"distributions": learner.layout()},
        "objectives": learner.spec_objectives, "sampler": "uniform",
        "weighting": row.weighting, "batch_size": learner.batch, "seed": seed})
    engine = CurriculumEngine(spec)
    objectives = spec.objectives
    points: list[np.ndarray] = []
    curve: list[float] = []
    weights: list[float] = []
    for step in range(steps + 1):
        evaluation = None
        if step % eval_every == 0:
            evaluation = learner.evaluate()
            points.append(unit_rewards(evaluation, objectives, clip=True))
            curve.append(hypervolume(np.array(points), np.zeros(2)))
        if step == steps:
            break
        batch = engine.next_batch(RUN, step)
        rewards, score = learner.rollout(batch.indices)
        scalar = scalarize(rewards, batch.reward_weights, objectives, batch.reward_scale)
        advantages = learner.advantages(scalar)
        gram = (real_gram(unit_rewards(rewards, objectives), score)
                if row.real_grads else None)
        learner.step(advantages, score)
        engine.apply(Report.dense(
            run_id=RUN, step=step, indices=batch.indices, rewards=rewards,
            advantages=advantages, grad_products=gram,
            eval_objectives=evaluation, layout=spec.layout, num_objectives=2))
        weights.append(float(batch.reward_weights[0]))
    return {"learner": learner_name, "row": row.label, "seed": seed, "steps": steps,
            "eval_every": eval_every, "curve": curve, "final_point": points[-1].tolist(),
            "final_hv": curve[-1], "w_first_final": [weights[0], weights[-1]],
            "w_first_mean": float(np.mean(weights))}


def steps_to(curve: Sequence[float], target: float, eval_every: int, steps: int) -> int:
    for i, value in enumerate(curve):
        if value >= target - 1e-12:
            return i * eval_every
    return steps + 1


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (learner, row): final HV, final point, steps to the baseline's final HV
    (same seed), HV ratio to the baseline; mean ± std over seeds."""
    baseline = {(r["learner"], r["seed"]): r for r in results if r["row"] == BASELINE}
    table = []
    for learner in dict.fromkeys(r["learner"] for r in results):
        for row in dict.fromkeys(r["row"] for r in results if r["learner"] == learner):
            runs = [r for r in results if r["learner"] == learner and r["row"] == row]
            reach = [steps_to(r["curve"], baseline[(learner, r["seed"])]["final_hv"],
                              r["eval_every"], r["steps"]) for r in runs]
            ratio = [r["final_hv"] / baseline[(learner, r["seed"])]["final_hv"]
                     for r in runs]
            base_steps = [steps_to(b["curve"], b["final_hv"], b["eval_every"], b["steps"])
                          for b in (baseline[(learner, r["seed"])] for r in runs)]
            table.append({
                "learner": learner, "row": row, "seeds": len(runs),
                "final_hv": _ms([r["final_hv"] for r in runs]),
                "hv_ratio": _ms(ratio),
                "steps_to_baseline": _ms(reach),
                "step_ratio": _ms([_ratio(a, b) for a, b in zip(reach, base_steps,
                                                                strict=True)]),
                "final_point": np.mean([r["final_point"] for r in runs], axis=0).tolist(),
                "w_first_final": float(np.mean([r["w_first_final"][1] for r in runs])),
            })
    return table


def _ratio(steps: int, base: int) -> float:
    """Steps over the baseline's; a baseline already at its final HV at step 0 (nothing
    improved it) gives 1 for a row there too and infinity for one that got there later."""
    if base:
        return steps / base
    return 1.0 if steps == 0 else math.inf


def _ms(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def verdict(table: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per learner: the dynamic rows that meet the issue's target (≤ 0.7× the steps to
    the fixed-preference run's final hypervolume, or ≥ 5 % higher at the end)."""
    met: dict[str, list[str]] = {}
    for entry in table:
        if entry["row"].startswith("fixed"):
            continue
        ok = entry["step_ratio"][0] <= 0.7 or entry["hv_ratio"][0] >= 1.05
        met.setdefault(entry["learner"], [])
        if ok:
            met[entry["learner"]].append(entry["row"])
    return met


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| learner | weighting | final HV | HV / fixed (0.7, 0.3) | steps to fixed's "
             "final HV | step ratio | final point (unit) | final w_1 |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        point = ", ".join(f"{v:.3f}" for v in e["final_point"])
        lines.append(
            f"| {e['learner']} | {e['row']} | {e['final_hv'][0]:.3f} ± {e['final_hv'][1]:.3f}"
            f" | {e['hv_ratio'][0]:.3f} ± {e['hv_ratio'][1]:.3f}"
            f" | {e['steps_to_baseline'][0]:.0f} ± {e['steps_to_baseline'][1]:.0f}"
            f" | {e['step_ratio'][0]:.2f} | ({point}) | {e['w_first_final']:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learners = list(dict.fromkeys(r["learner"] for r in results))
    fig, axes = plt.subplots(1, len(learners), figsize=(6 * len(learners), 4.2),
                             squeeze=False)
    for ax, learner in zip(axes[0], learners, strict=True):
        for row in dict.fromkeys(r["row"] for r in results if r["learner"] == learner):
            runs = [r for r in results if r["learner"] == learner and r["row"] == row]
            curve = np.mean([r["curve"] for r in runs], axis=0)
            x = np.arange(curve.size) * runs[0]["eval_every"]
            ax.plot(x, curve, label=row, lw=2.2 if row == BASELINE else 1.3,
                    ls="-" if not row.startswith("fixed") or row == BASELINE else ":")
        ax.set_title(f"{learner}: hypervolume of the evaluation front")
        ax.set_xlabel("step")
        ax.set_ylabel("hypervolume (unit space, ref (0, 0))")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS),
                        choices=list(LEARNERS))
    parser.add_argument("--only", nargs="+", default=None, help="row labels to run")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for weighting_bench.json / .md / .png")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - {r.label for r in ROWS}
    if unknown:
        parser.error(f"--only: no such row {sorted(unknown)}; rows: "
                     f"{[r.label for r in ROWS]}")
    if args.seeds < 1 or args.eval_every < 1 or args.steps < args.eval_every \
            or args.steps % args.eval_every:
        # The final point and HV are those of the last evaluation, and the steps to the
        # baseline's final HV count evaluations: the run must end on one, after step 0.
        parser.error("--seeds and --eval-every must be positive and --steps a positive "
                     "multiple of --eval-every")
    rows = [r for r in ROWS if args.only is None or r.label in args.only
            or r.label == BASELINE]
    started = time.monotonic()
    results = []
    for learner in args.learners:
        for row in rows:
            for seed in range(args.seeds):
                result = run(learner, row, seed, args.steps, args.eval_every)
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "curve"}),
                      flush=True)
    table = summarise(results)
    text = markdown(table)
    met = verdict(table)
    print(text)
    print("dynamic rows meeting the target per learner:", json.dumps(met))
    print(f"wall {time.monotonic() - started:.1f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "weighting_bench.json").write_text(json.dumps(
            {"results": results, "table": table, "met": met}, indent=1))
        (args.out / "weighting_bench.md").write_text(text + "\n")
        plot(results, args.out / "weighting_bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
