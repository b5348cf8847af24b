"""Every sampler and peer on every learner of the suite (issue 14; learners in
`benchmarks/learners/`).

Rows:
- Paceline's samplers through the in-process `CurriculumEngine` (the engine the service
  runs), one objective `correctness`, `fixed` weighting, schedules set to the planned
  steps; each adaptive one also with predicted zero-variance skipping at its defaults
  (`zero_variance: true`). The `default` row names no sampler: what a curriculum created
  without one gets. The `dynamic sampling` rows use Paceline's refill protocol with the
  default sampler, as `paceline.integrations.torch.dynamic_step` does: serve the step's
  batch, drop groups whose rewards all agree, ask for refill parts 1, 2, ... (Paceline
  picks them, never an index already served to the step) over-provisioned by the keep
  rate seen so far, until a batch of kept groups exists or 8 refills were asked for;
  every generated group is reported (the dropped ones too). The `through
  paceline.Client` row runs the default as a trainer does, over `Client.embedded()`
  (the service's application layer, SQLite), one `report` with `next_step` per step:
  its figures must equal the default row's (tested).
- peers in this process: Syllabus's `OnlineLearningProgress` over the distributions (fed
  every rollout: progress = correctness, or reward ≥ 0.5 for partial credit); DAPO
  dynamic sampling (uniform shuffled epochs, roll out, drop groups whose rewards are all
  equal, roll out more until a batch remains, at most 10 rounds) and the same filter
  without refill; uniform shuffled epochs (a plain data loader);
- the oracle, the limit to aim at: it knows every prompt's true pass rate and samples
  uniformly among prompts with pass rate in [0.2, 0.8] (the nearest to 0.5 fill the
  batch when the band has too few); a greedy oracle that takes the B prompts with
  the largest true p(1 - p); and a visited-prompts oracle, the greedy one restricted to
  what a sampler could know from its own visits (true p of the prompts it trained on,
  its distribution's mean for an unseen prompt).

Per (learner, row), mean ± std over seeds: steps and generated rollouts until the mean
held-out accuracy over distributions reaches the learner's target (a run that never
does counts steps + 1 and every rollout it generated), final minimum and mean accuracy,
share of generated rollouts in zero-variance groups, candidates skipped before rollout.

With `--secondary W` Paceline's rows are told about a second objective: every rollout
also gets a `brevity` score drawn uniformly in [0, 1], independent of correctness (a
length term), the curriculum has the objectives [correctness, brevity] with `fixed`
weights [W, 1 - W], and the advantages it is sent are those of that scalarised reward
(normalised as the learner normalises its own). The learner still trains on correctness
and the peers see correctness only: only what Paceline is told changes, so a sampler
that lets the secondary term steer it shows up as more rollouts to the same target.

With `--lr-scale F` every simulated learner's learning rate is multiplied by F (and
`--steps-scale` its step budget): the same structures at another speed, e.g. `--lr-scale
0.5 --steps-scale 1.5` puts `imbalanced` where issue 14's held-back learner is (uniform
ends near 0.56 after 300 steps). `temperature`'s schedule stays planned on the learner's
own steps, unscaled; `spard` runs at its defaults (its pace over 100 reports), as a
trainer that names only the sampler gets it.

Prints one JSON object per (learner, row) and the markdown tables; with --out writes
`learner_suite.md` and `learner_suite.png` there (`learner_suite_secondary.*` with
`--secondary`).

    nice -n 10 python benchmarks/suite.py [--seeds 3] [--first-seed 0] [--jobs 2]
        [--steps-scale 1.0] [--lr-scale 1.0] [--learners NAME ...] [--only ROW ...]
        [--secondary W]
        [--quick] [--out docs]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # learners, simulate
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # peer strategies

from strategies import SyllabusLearningProgress, UniformEpochs  # benchmarks/peers

from learners import LEARNERS, REAL_LEARNERS, Groups, GrpoLearner, learner_class
from paceline_server.app.refill import propose_refill
from paceline_server.domain import CurriculumSpec, Report
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.registry import available_samplers

RUN_ID = "suite"
#: DAPO's cap on generation rounds per step (verl's `max_num_gen_batches`).
MAX_GEN_ROUNDS = 10
#: Refill parts per step of the dynamic-sampling rows (`dynamic_step`'s default).
MAX_REFILL_PARTS = 8
BAND = (0.2, 0.8)
SUCCESS_THRESHOLD = 0.5  # continuous rewards: what counts as a success for Syllabus
SYLLABUS = "Syllabus OnlineLearningProgress"
DAPO = "DAPO filter + refill"
DAPO_NO_REFILL = "DAPO filter, no refill"
UNIFORM_EPOCHS = "uniform epochs (data loader)"
ORACLE = "oracle (true p in [0.2, 0.8])"
GREEDY_ORACLE = "oracle, greedy (top B by true p(1-p))"
VISITED_ORACLE = "oracle, visited prompts only (true p once trained on)"
THOMPSON = "learnability + dump_ucb allocation, Thompson ranking"
#: The default without the two terms that move seen prompts' estimates (ablation).
STATIC = "learnability + dump_ucb allocation, no level shift or revisit drift"
#: The default with half of the allocation's shares by estimated failure rate (opt-in).
GAP_SHARE = "learnability + dump_ucb allocation, gap_share 0.5"
DEFAULT = "default (no sampler named)"
#: The default through `paceline.Client.embedded()`, as a trainer calls it (same curve).
CLIENT = "default through paceline.Client (embedded)"
#: The trainer drops the groups whose rewards all agree and trains on the rest, without
#: refilling (`dynamic_step(..., max_parts=0)`; DAPO's filter on Paceline's batch).
DROP = "default + dropping all-equal groups (no refill)"
DYNAMIC = "default + dynamic sampling (refill)"
SECONDARY = "brevity"  # `--secondary`: the second objective Paceline's rows are told about


class Chooser(Protocol):
    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]: ...

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None: ...


# ---------------------------------------------------------------- Paceline
class PacelineEngine:
    """A curriculum over the learner's distributions in Paceline's engine."""

    def __init__(self, learner: GrpoLearner, seed: int, sampler: Any,
                 zero_variance: Any) -> None:
        spec: dict[str, Any] = {
            "name": "suite", "batch_size": learner.batch, "seed": seed,
            "weighting": "fixed", "objectives": ["correctness"],
            "layout": {"distributions": [{"name": d.name, "size": d.size}
                                         for d in learner.dists]},
            "zero_variance": zero_variance,
        }
        if sampler is not None:
            spec["sampler"] = sampler
        self.spec = CurriculumSpec.from_dict(spec)
        self.learner = learner
        self.secondary: tuple[float, np.random.Generator] | None = None
        self.seed = seed

    @functools.cached_property
    def engine(self) -> CurriculumEngine:
        """Built at first use, from the spec as `add_secondary` left it (the client row,
        which drives the service instead, never builds one)."""
        return CurriculumEngine(self.spec)

    def add_secondary(self, weight: float) -> None:
        """Report a second objective with `fixed` weights [weight, 1 - weight] (see the
        module docstring): the curriculum is rebuilt before its first batch."""
        spec = self.spec.to_dict()
        spec["objectives"] = ["correctness", SECONDARY]
        spec["weighting"] = {"kind": "fixed", "weights": [weight, 1.0 - weight]}
        self.spec = CurriculumSpec.from_dict(spec)
        self.__dict__.pop("engine", None)  # an engine built before is for the old spec
        self.secondary = (weight, np.random.default_rng([self.seed, 99]))

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        batch = self.engine.next_batch(RUN_ID, step, size)
        return batch.indices, batch.skipped_zero_variance

    def refill(self, step: int, part: int, size: int, served: np.ndarray) -> np.ndarray:
        """Refill part `part` of the step (`app/refill.py`, what the service serves)."""
        return propose_refill(self.engine, RUN_ID, step, part, size, served).indices

    def told(self, groups: Groups, advantages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rewards and advantages Paceline is told ([n, G] or, with a secondary
        objective, [n, G, 2] and the scalarised reward's advantages)."""
        rewards = groups.rewards
        if self.secondary is not None:
            weight, rng = self.secondary
            brevity = rng.random(rewards.shape)
            scalar = weight * rewards + (1.0 - weight) * brevity
            advantages = self.learner.advantages(
                Groups(groups.indices, groups.outcomes, scalar, groups.p))
            rewards = np.stack([rewards, brevity], axis=-1)
        return rewards, advantages

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None:
        rewards, advantages = self.told(groups, advantages)
        self.engine.apply(Report.dense(
            run_id=RUN_ID, step=step, indices=groups.indices, rewards=rewards,
            advantages=advantages, layout=self.spec.layout,
            num_objectives=len(self.spec.objectives)))


class PacelineThroughClient(PacelineEngine):
    """The default driven as a trainer drives it: `paceline.Client.embedded()` (the
    service's application layer, SQLite in a temporary folder), a curriculum created
    with the learner's distributions and objectives and no sampler, then one call per
    step (`report` with `next_step`). Its curve must be the engine's default row's,
    run for run: what the suite measures in process is what a user gets."""

    def __init__(self, learner: GrpoLearner, seed: int) -> None:
        super().__init__(learner, seed, None, None)
        self.client: Any = None
        self.run_handle: Any = None
        self.served: dict[int, np.ndarray] = {}

    def _start(self) -> None:
        import paceline

        self.client = paceline.Client.embedded()
        objectives = [o.name for o in self.spec.objectives]
        weighting = None if len(objectives) == 1 else self.spec.weighting.to_dict()
        curriculum = self.client.create_curriculum(
            "suite", [(d.name, d.size) for d in self.learner.dists], objectives=objectives,
            weighting=weighting, batch_size=self.learner.batch, seed=self.seed)
        self.run_handle = curriculum.start_run(run_id=RUN_ID, heartbeat_interval=None)

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        if self.run_handle is None:
            self._start()
        if step not in self.served:
            self.served[step] = np.asarray(self.run_handle.next_batch(step, size).indices)
        return self.served[step], 0

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None:
        rewards, advantages = self.told(groups, advantages)
        ack = self.run_handle.report(step, groups.indices, rewards, advantages,
                                     next_step=step + 1, next_size=self.learner.batch)
        self.served = {step + 1: np.asarray(ack.batch.indices)}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


# ---------------------------------------------------------------- peers
class Syllabus:
    """`benchmarks/peers`' Syllabus wrapper on the learner's layout."""

    def __init__(self, learner: GrpoLearner, seed: int) -> None:
        self.learner = learner
        self.peer = SyllabusLearningProgress(seed, learner.sizes,
                                             learner.batch * learner.group)

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        return self.peer.propose(step, size).indices, 0

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None:
        rewards = groups.rewards
        progress = rewards if self.learner.binary else rewards >= SUCCESS_THRESHOLD
        self.peer.observe_episodes(self.learner.dist_of[groups.indices], progress, rewards)


class Epochs:
    """Shuffled epochs over every prompt (`benchmarks/peers`' UniformEpochs)."""

    def __init__(self, learner: GrpoLearner, seed: int) -> None:
        self.peer = UniformEpochs(seed, learner.num_samples)

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        return self.peer.propose(step, size).indices, 0

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None:
        pass


def top(value: np.ndarray, size: int) -> np.ndarray:
    """The indices of the `size` largest values, in increasing index order: the order
    `argpartition` leaves them in depends on numpy's build and the CPU (SIMD), and a
    learner draws each prompt's rollouts in batch order, so the oracles' figures would
    differ from one machine to the next."""
    return np.sort(np.argpartition(-value, size - 1)[:size]).astype(np.int64)


class Oracle:
    """Knows every prompt's true pass rate; samples uniformly inside the band."""

    def __init__(self, learner: GrpoLearner, seed: int) -> None:
        self.learner = learner
        self.rng = np.random.default_rng([seed, 5])

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        p = self.learner.pass_rate()
        inside = np.flatnonzero((p >= BAND[0]) & (p <= BAND[1]))
        if inside.size >= size:
            return self.rng.choice(inside, size, replace=False), 0
        # Too few in the band: all of it, then the nearest to 0.5 (random among ties).
        distance = np.abs(p - 0.5) + 1e-9 * self.rng.random(p.size)
        distance[inside] = -1.0
        return top(-distance, size), 0

    def observe(self, step: int, groups: Groups, advantages: np.ndarray) -> None:
        pass


class GreedyOracle(Oracle):
    """Knows every prompt's true pass rate; takes the B prompts with the largest
    p(1 - p), the most signal a batch can carry (no allocation): a second limit, to
    show what per-prompt knowledge alone is worth."""

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        p = self.learner.pass_rate()
        value = p * (1.0 - p) + 1e-12 * self.rng.random(p.size)
        return top(value, size), 0


class VisitedOracle(Oracle):
    """The limit of any sampler that learns pass rates from its own visits: it knows the
    true current p of every prompt it has already trained on, and of an unseen prompt
    only its distribution's mean true p(1 - p) over the unseen ones (a generous prior:
    better than any estimate from visits). It takes the B best by that value, unseen
    prompts at random among equals. What it misses against `GreedyOracle` is the price
    of having to find the informative prompts by visiting them."""

    def __init__(self, learner: GrpoLearner, seed: int) -> None:
        super().__init__(learner, seed)
        self.visited = np.zeros(learner.num_samples, dtype=bool)

    def propose(self, step: int, size: int) -> tuple[np.ndarray, int]:
        learner = self.learner
        p = learner.pass_rate()
        signal = p * (1.0 - p)
        unseen = ~self.visited
        d = learner.num_distributions
        count = np.bincount(learner.dist_of[unseen], minlength=d)
        total = np.bincount(learner.dist_of[unseen], weights=signal[unseen], minlength=d)
        prior = total / np.maximum(count, 1)
        value = np.where(self.visited, signal, prior[learner.dist_of])
        value = value + 1e-9 * self.rng.random(p.size)
        chosen = top(value, size)
        self.visited[chosen] = True
        return chosen, 0


# ---------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """One strategy of the table; `make(learner, seed)` builds a fresh one per run.
    `filter_rounds` > 0 applies DAPO's filter after rollout (1 = no refill); `dynamic`
    refills through Paceline's protocol (the chooser's `refill`) instead."""

    name: str
    who: str  # "Paceline", "peer" or "limit"
    make: Callable[[GrpoLearner, int], Chooser]
    filter_rounds: int = 0
    needs: str | None = None  # a sampler that must be registered for the row to run
    dynamic: bool = False


def paceline(sampler: Any, zero_variance: Any = None
             ) -> Callable[[GrpoLearner, int], Chooser]:
    def make(learner: GrpoLearner, seed: int) -> Chooser:
        spec = sampler(learner) if callable(sampler) else sampler
        return PacelineEngine(learner, seed, spec, zero_variance)
    return make


def equal_mix(learner: GrpoLearner) -> dict[str, Any]:
    d = learner.num_distributions
    return {"kind": "fixed_mix", "probabilities": [1.0 / d] * d}


def rows() -> list[Row]:
    """Paceline's samplers (adaptive ones with and without skipping), the default, then
    peers and the oracle."""
    zv = True  # `zero_variance: true`: the shipped defaults of the skipping
    adaptive: list[tuple[str, Any]] = [
        ("dump_ucb", "dump_ucb"),
        ("learning_progress", "learning_progress"),
        ("prioritized", "prioritized"),
        ("spard", "spard"),
        ("learnability, no allocation", {"kind": "learnability", "allocation": "none"}),
        ("learnability + dump_ucb allocation",
         {"kind": "learnability", "allocation": "dump_ucb"}),
        ("learnability + learning_progress allocation",
         {"kind": "learnability", "allocation": "learning_progress"}),
    ]
    ours = [
        Row("uniform", "Paceline", paceline("uniform")),
        Row("uniform + zero_variance", "Paceline", paceline("uniform", zv)),
        Row("fixed_mix (equal)", "Paceline", paceline(equal_mix)),
        Row("temperature", "Paceline",
            paceline(lambda lr: {"kind": "temperature", "steps": lr.steps})),
    ]
    for name, sampler in adaptive:
        needs = "learnability" if name.startswith("learnability") else None
        ours.append(Row(name, "Paceline", paceline(sampler), needs=needs))
        ours.append(Row(f"{name} + zero_variance", "Paceline", paceline(sampler, zv),
                        needs=needs))
    ours.append(Row(THOMPSON, "Paceline",
                    paceline({"kind": "learnability", "allocation": "dump_ucb",
                              "ranking": "thompson"}), needs="learnability"))
    ours.append(Row(STATIC, "Paceline",
                    paceline({"kind": "learnability", "allocation": "dump_ucb",
                              "level_shift": False, "revisit_drift": False}),
                    needs="learnability"))
    ours.append(Row(GAP_SHARE, "Paceline",
                    paceline({"kind": "learnability", "allocation": "dump_ucb",
                              "gap_share": 0.5}), needs="learnability"))
    ours.append(Row(DEFAULT, "Paceline", paceline(None)))
    ours.append(Row(CLIENT, "Paceline", PacelineThroughClient))
    ours.append(Row(DROP, "Paceline", paceline(None), 1))
    ours.append(Row(DYNAMIC, "Paceline", paceline(None), dynamic=True))
    ours.append(Row(f"{DYNAMIC} + zero_variance", "Paceline", paceline(None, zv),
                    dynamic=True))
    peers = [
        Row(SYLLABUS, "peer", Syllabus),
        Row(DAPO, "peer", Epochs, MAX_GEN_ROUNDS),
        Row(DAPO_NO_REFILL, "peer", Epochs, 1),
        Row(UNIFORM_EPOCHS, "peer", Epochs),
        Row(ORACLE, "limit", Oracle),
        Row(GREEDY_ORACLE, "limit", GreedyOracle),
        Row(VISITED_ORACLE, "limit", VisitedOracle),
    ]
    return ours + peers


# ---------------------------------------------------------------- one run
def dynamic_parts(chooser: Chooser, learner: GrpoLearner, step: int, batch: int,
                  first: Groups, served: np.ndarray) -> list[Groups]:
    """The refill loop of `dynamic_step`: refills over-provisioned by the keep rate so
    far (at least 0.1) until `batch` groups with signal exist, at most MAX_REFILL_PARTS
    parts or the whole dataset served."""
    assert isinstance(chooser, PacelineEngine)
    parts = [first]
    served = np.asarray(served, dtype=np.int64)
    for part in range(1, MAX_REFILL_PARTS + 1):
        kept = sum(int((~g.constant).sum()) for g in parts)
        left = learner.num_samples - served.size
        if kept >= batch or left <= 0:
            break
        rate = max(kept / served.size, 0.1)
        ask = min(left, int(np.ceil((batch - kept) / rate)))
        indices = chooser.refill(step, part, ask, served)
        parts.append(learner.rollout(indices))
        served = np.concatenate([served, indices])
    return parts


def run(row: Row, learner_name: str | type[GrpoLearner], seed: int, steps_scale: float = 1.0,
        secondary: float | None = None, lr_scale: float = 1.0) -> dict[str, Any]:
    """One training run of `learner_name` (a suite learner's name, or a learner class:
    `random_learners.py`) with `row` choosing the batches (Paceline's rows told about a
    second objective of weight 1 - `secondary` when given), its learning rate
    multiplied by `lr_scale`."""
    cls = learner_class(learner_name) if isinstance(learner_name, str) else learner_name
    if lr_scale != 1.0:  # the same structures, learning at another speed
        cls = type(cls.__name__, (cls,), {"lr": cls.lr * lr_scale})
    learner = cls(seed)
    steps = max(1, round(learner.steps * steps_scale))
    batch, group = learner.batch, learner.group
    chooser = row.make(learner, seed)
    if secondary is not None and isinstance(chooser, PacelineEngine):
        chooser.add_secondary(secondary)
    generated = wasted = skipped = 0
    curve: list[float] = []
    spent: list[float] = []
    reached: int | None = None
    reached_rollouts: int | None = None
    accuracy = learner.accuracy()
    try:
        for step in range(steps):
            indices, skip = chooser.propose(step, batch)
            skipped += skip
            parts = [learner.rollout(indices)]
            while (row.filter_rounds > len(parts)
                   and sum(int((~g.constant).sum()) for g in parts) < batch):
                parts.append(learner.rollout(chooser.propose(step, batch)[0]))
            if row.dynamic:
                parts = dynamic_parts(chooser, learner, step, batch, parts[0], indices)
            roll = Groups.concat(parts) if len(parts) > 1 else parts[0]
            generated += roll.n * group
            wasted += int(roll.constant.sum()) * group
            trained = roll
            if row.filter_rounds or row.dynamic:
                trained = roll.take(np.flatnonzero(~roll.constant)[:batch])
            learner.train(trained)
            start = time.perf_counter()
            chooser.observe(step, roll, learner.advantages(roll))
            spent.append(time.perf_counter() - start)
            accuracy = learner.accuracy()
            curve.append(float(accuracy.mean()))
            if reached is None and accuracy.mean() >= learner.target:
                reached, reached_rollouts = step + 1, generated
    finally:
        if isinstance(chooser, PacelineThroughClient):
            chooser.close()
    return {"steps": steps, "steps_to_target": reached, "rollouts_to_target": reached_rollouts,
            "generated": generated, "min_accuracy": float(accuracy.min()),
            "mean_accuracy": float(accuracy.mean()),
            "per_distribution": accuracy.round(3).tolist(),
            "zero_variance_share": wasted / max(generated, 1), "skipped": skipped,
            "curve": curve}


def runs_on(row: Row, learner_name: str) -> bool:
    """Whether `row` can run on the learner: the oracle rows need the true pass rates,
    which a real learner (the example trainer, `pass_rates_known = False`) has not."""
    if getattr(learner_class(learner_name), "pass_rates_known", True):
        return True
    return row.who != "limit"


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds; a run that never reaches the target counts steps + 1 and
    all the rollouts it generated (a lower bound)."""
    def stat(values: list[float]) -> list[float]:
        return [float(np.mean(values)), float(np.std(values))]

    return {
        "seeds": len(results),
        "budget": results[0]["steps"],  # steps per run (the learner's, times --steps-scale)
        "steps_to_target": stat([r["steps_to_target"] or r["steps"] + 1 for r in results]),
        "rollouts_to_target": stat([r["rollouts_to_target"] or r["generated"]
                                    for r in results]),
        "never_reached": sum(r["steps_to_target"] is None for r in results),
        # every rollout of the run's whole budget (dynamic rows: refills included)
        "generated": stat([r["generated"] for r in results]),
        "per_seed": [{k: r[k] for k in ("steps_to_target", "rollouts_to_target",
                                        "generated", "mean_accuracy", "min_accuracy")}
                     for r in results],
        "min_accuracy": stat([r["min_accuracy"] for r in results]),
        "mean_accuracy": stat([r["mean_accuracy"] for r in results]),
        "zero_variance_share": stat([r["zero_variance_share"] for r in results]),
        "skipped": float(np.mean([r["skipped"] for r in results])),
        "per_distribution": np.mean([r["per_distribution"] for r in results],
                                    axis=0).round(3).tolist(),
        "curve": np.mean([r["curve"] for r in results], axis=0).round(4).tolist(),
    }


def run_jobs(job: Callable[[Any], Any], jobs: list[Any], processes: int,
             chunksize: int = 1) -> list[Any]:
    """`job` over `jobs` in `processes` workers, or in this process when 1. Forked, so
    the workers inherit what the parent already computed (`random_learners.py`'s
    calibrated targets)."""
    if processes <= 1:
        return [job(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(job, jobs, chunksize=chunksize)


def row_named(name: str, among: list[Row] | None = None) -> Row:
    """The row called `name` among `among` (default: `rows()`). Jobs carry row names,
    not rows: their builders do not pickle."""
    return next(r for r in (rows() if among is None else among) if r.name == name)


def _job(args: tuple[str, str, int, float, float | None, float]
         ) -> tuple[str, str, int, dict[str, Any]]:
    """One run in a worker process (rows are named: their builders do not pickle)."""
    name, learner_name, seed, scale, secondary, lr_scale = args
    row = row_named(name)
    try:
        return row.name, learner_name, seed, run(row, learner_name, seed, scale, secondary,
                                                 lr_scale)
    except Exception as exc:  # a sampler still being written must not hide the rest
        return row.name, learner_name, seed, {"error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------- output
def cell_steps(s: dict[str, Any]) -> str:
    text = f"{s['steps_to_target'][0]:.0f} ± {s['steps_to_target'][1]:.0f}"
    return text + (f" ({s['never_reached']}× never)" if s["never_reached"] else "")


def cell_rollouts(s: dict[str, Any]) -> str:
    text = f"{s['rollouts_to_target'][0] / 1e3:.1f} ± {s['rollouts_to_target'][1] / 1e3:.1f}"
    return text + (" (≥)" if s["never_reached"] else "")


def table(summaries: dict[str, dict[str, dict[str, Any]]], who: dict[str, str]) -> str:
    """One table per learner: every row, mean ± std."""
    out = []
    for name, by_row in summaries.items():
        cls = learner_class(name)
        budget = next(iter(by_row.values())).get("budget", cls.steps)  # older saved runs
        scaled = "" if budget == cls.steps else f"; run here for {budget} steps"
        out.append(f"#### {name} (target: mean accuracy {cls.target:.2f} within "
                   f"{budget} steps; {cls.summary}{scaled})\n")
        out.append("| strategy | | steps to target | rollouts to target (k) "
                   "| final min acc. | final mean acc. | zero-variance rollouts "
                   "| skipped |")
        out.append("|---|---|---|---|---|---|---|---|")
        for row, s in by_row.items():
            out.append(
                f"| {row} | {who[row]} | {cell_steps(s)} | {cell_rollouts(s)} "
                f"| {s['min_accuracy'][0]:.3f} ± {s['min_accuracy'][1]:.3f} "
                f"| {s['mean_accuracy'][0]:.3f} ± {s['mean_accuracy'][1]:.3f} "
                f"| {s['zero_variance_share'][0]:.1%} | {s['skipped']:.0f} |")
        out.append("")
    return "\n".join(out)


def compact_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rollouts to target (k, mean ± std; mean steps) and final minimum accuracy per
    row and learner, in one table ('—': never, 'n/3' when only n of the seeds reached
    it; the mean then counts a missing seed with every rollout it generated)."""
    learners = list(summaries)
    rows_ = list(dict.fromkeys(r for by_row in summaries.values() for r in by_row))
    out = ["| strategy | " + " | ".join(f"{n} rollouts k (steps) · min acc."
                                       for n in learners) + " |",
           "|---|" + "---|" * len(learners)]
    for row in rows_:
        cells = []
        for name in learners:
            s = summaries[name].get(row)
            if s is None:
                cells.append("n/a")
                continue
            done = s["seeds"] - s["never_reached"]
            if done == 0:
                reach = "—"
            else:
                reach = (f"{s['rollouts_to_target'][0] / 1e3:.0f} ± "
                         f"{s['rollouts_to_target'][1] / 1e3:.0f} "
                         f"({s['steps_to_target'][0]:.0f})")
                if done < s["seeds"]:
                    reach += f" {done}/{s['seeds']}"
            cells.append(f"{reach} · {s['min_accuracy'][0]:.2f}")
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(summaries: dict[str, dict[str, dict[str, Any]]], row: str) -> dict[str, Any]:
    """The issue's targets for `row`: its rollouts to target over the oracle's, Syllabus's
    and DAPO-with-refill's, per learner (None where `row` never reached the target)."""
    result: dict[str, Any] = {}
    for name, by_row in summaries.items():
        mine = by_row.get(row)
        if mine is None:
            continue
        ratios: dict[str, Any] = {"reached": mine["seeds"] - mine["never_reached"]}
        for peer, limit in ((ORACLE, 1.5), (SYLLABUS, 0.5), (DAPO, 0.25)):
            other = by_row.get(peer)
            if other is None:
                continue
            ratio = mine["rollouts_to_target"][0] / other["rollouts_to_target"][0]
            ratios[peer] = {"ratio": round(ratio, 3), "limit": limit,
                            "met": bool(ratio <= limit and not mine["never_reached"]),
                            "peer_never_reached": other["never_reached"]}
        result[name] = ratios
    return result


PLOTTED = ["uniform", "dump_ucb", "learning_progress", "prioritized", "spard",
           "learnability, no allocation", "learnability + dump_ucb allocation + zero_variance",
           DEFAULT, SYLLABUS, DAPO, DAPO_NO_REFILL, ORACLE, GREEDY_ORACLE]


def plot(summaries: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Mean held-out accuracy against steps, one panel per learner, four to a line; the
    legend takes a free panel, or a band under the grid when every panel is used."""
    try:
        import matplotlib
    except ImportError:  # the `bench` extra is not installed: tables only
        print(f"matplotlib is not installed: {path.name} not written", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(summaries))
    lines = -(-len(summaries) // columns)
    shown = sum(1 for r in PLOTTED if any(r in by_row for by_row in summaries.values()))
    band = 0.0 if lines * columns > len(summaries) else 0.3 + 0.22 * -(-shown // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.8 * columns, 3.9 * lines + band),
                             squeeze=False)
    panels = axes.ravel()
    palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    for ax, (name, by_row) in zip(panels, summaries.items(), strict=False):
        cls = learner_class(name)
        for i, row in enumerate(r for r in PLOTTED if r in by_row):
            curve = np.asarray(by_row[row]["curve"])
            style = "--" if row in (SYLLABUS, DAPO, ORACLE, GREEDY_ORACLE) else "-"
            width = 2.2 if row in (DEFAULT, ORACLE) else 1.2
            ax.plot(np.arange(1, curve.size + 1), curve, style, color=palette[i % 20],
                    linewidth=width, label=row)
        ax.axhline(cls.target, color="grey", linewidth=0.8)
        ax.set_title(f"{name} (G={cls.group}, B={cls.batch})")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean held-out accuracy")
    handles, labels = panels[0].get_legend_handles_labels()
    free = panels[len(summaries):]
    for ax in free:
        ax.axis("off")
    if len(free):
        free[0].legend(handles, labels, fontsize=8, loc="center")
        fig.tight_layout()
    else:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=columns)
        fig.tight_layout(rect=(0.0, band / (3.9 * lines + band), 1.0, 1.0))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render(path: Path) -> str:
    """The tables again from the JSON lines a run printed (no curves, so no plot)."""
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    who: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        o = json.loads(line)
        if "learner" in o and "row" in o and "error" not in o:
            summaries.setdefault(o["learner"], {})[o["row"]] = o
            who[o["row"]] = o["who"]
    return compact_table(summaries) + "\n\n" + table(summaries, who)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST .. FIRST + SEEDS - 1 (more seeds for a saved run)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every learner's step budget")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="multiply every simulated learner's learning rate (the same "
                             "structures at another speed)")
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS),
                        choices=[*LEARNERS, *REAL_LEARNERS],
                        help="the simulated learners by default; example_trainer "
                             "(torch, ~1 min a run) only when named")
    parser.add_argument("--only", nargs="+", default=None, help="run only these rows")
    parser.add_argument("--secondary", type=float, default=None, metavar="W",
                        help="Paceline's rows also report a brevity objective, weights "
                             "[W, 1 - W] (see above)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 5 %% of the steps, one process")
    parser.add_argument("--out", default=None, help="folder for learner_suite.md/.png")
    parser.add_argument("--table", default=None, metavar="JSONL",
                        help="print the tables of a saved run's output and exit")
    args = parser.parse_args(argv)
    if args.secondary is not None and not 0.0 < args.secondary < 1.0:
        parser.error("--secondary W needs 0 < W < 1")
    if not args.lr_scale > 0.0:
        parser.error("--lr-scale needs a positive factor")
    if args.lr_scale != 1.0 and set(args.learners) & set(REAL_LEARNERS):
        parser.error("--lr-scale applies to the simulated learners only")
    if args.table is not None:
        print(render(Path(args.table)))
        return
    if args.quick:
        args.seeds, args.steps_scale, args.jobs = 1, 0.05, 1
    registered = set(available_samplers())
    selected = [r for r in rows() if (args.only is None or r.name in args.only)]
    for r in selected:
        if r.needs is not None and r.needs not in registered:
            print(json.dumps({"row": r.name, "skipped": f"sampler {r.needs!r} is not "
                              "registered"}), flush=True)
    selected = [r for r in selected if r.needs is None or r.needs in registered]
    jobs = [(r.name, name, seed, args.steps_scale, args.secondary, args.lr_scale)
            for name in args.learners
            for r in selected if runs_on(r, name)
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    start = time.perf_counter()
    done = run_jobs(_job, jobs, args.jobs)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row_name, learner_name, _, result in done:
        results.setdefault((learner_name, row_name), []).append(result)
    who = {r.name: r.who for r in selected}
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.learners:
        for r in selected:
            if not runs_on(r, name):
                continue
            runs = results[(name, r.name)]
            errors = [x["error"] for x in runs if "error" in x]
            if errors:
                print(json.dumps({"learner": name, "row": r.name, "error": errors[0]}),
                      flush=True)
                continue
            s = summarize(runs)
            summaries.setdefault(name, {})[r.name] = s
            print(json.dumps({"learner": name, "row": r.name, "who": r.who,
                              **{k: v for k, v in s.items() if k != "curve"}}), flush=True)
    wall = time.perf_counter() - start
    goals = targets(summaries, DEFAULT)
    print(json.dumps({"targets": {"row": DEFAULT, "learners": goals},
                      "wall_seconds": round(wall, 1)}), flush=True)
    text = compact_table(summaries) + "\n\n" + table(summaries, who)
    print(text, flush=True)
    if args.out is None or not summaries:
        return
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    command = (f"nice -n 10 python benchmarks/suite.py --seeds {args.seeds} "
               f"--jobs {args.jobs}"
               + (f" --first-seed {args.first_seed}" if args.first_seed else "")
               + (f" --steps-scale {args.steps_scale}" if args.steps_scale != 1.0 else "")
               + (f" --lr-scale {args.lr_scale}" if args.lr_scale != 1.0 else "")
               + (f" --secondary {args.secondary}" if args.secondary is not None else ""))
    stem = "learner_suite" if args.secondary is None else "learner_suite_secondary"
    if args.lr_scale != 1.0:  # never over the recorded run's files
        stem += f"_lr{args.lr_scale:g}"
    told = ("" if args.secondary is None else
            f" Paceline's rows also report a `{SECONDARY}` objective, `fixed` weights "
            f"[{args.secondary}, {1 - args.secondary:.2g}] (see the script's docstring).")
    (folder / f"{stem}.md").write_text(
        f"# Learner suite\n\n`{command}`: {args.seeds} seeds, {wall / 60:.1f} min wall."
        f"{told} Written by the script; the analysis is in docs/benchmarks.md (\"Learner "
        "suite\"). Mean ± std over seeds; a run that never reaches the target counts "
        "its step budget + 1 and every rollout it generated.\n\n"
        f"Rollouts to target in thousands (mean steps), final minimum accuracy:\n\n{text}\n\n"
        f"Targets of the default row:\n\n```\n{json.dumps(goals, indent=1)}\n```\n\n"
        f"![learner suite]({stem}.png)\n")
    plot(summaries, folder / f"{stem}.png")


if __name__ == "__main__":
    main()
