"""The training loop: a supervised warm start, then GRPO steps on what Paceline serves.

Each step asks Paceline for a batch (indices, reward weights and scale, optional loss
weights), samples g completions per prompt, scores them on every objective, scalarises
with the served weights (`batch.scalarize`), computes group-relative advantages, takes
one clipped policy-gradient step with the loss weights, and reports the raw reward
vectors and the advantages back — the report is what Paceline's samplers and weightings
learn from. Every `eval_every` steps the policy is evaluated greedily on held-out
problems; those means go to Paceline as `eval_objectives` (the hypervolume weighting's
points) and into the metrics.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import paceline
from paceline.integrations._gradients import gram_matrix, select_parameters
from paceline.integrations._resume import Fingerprint
from paceline.integrations.torch import train_steps
from trainer_examples import checkpoint
from trainer_examples.gradients import (
    compare,
    objective_advantages,
    objective_gradients,
    proxy_gram,
    unit_rewards,
)
from trainer_examples.grpo import (
    completion_logprobs,
    generate,
    group_advantages,
    grpo_loss,
    supervised_loss,
    zero_variance,
)
from trainer_examples.metrics import MetricsWriter, Record, hypervolume
from trainer_examples.model import LanguageModel, build_model, count_parameters, resolve_device
from trainer_examples.tasks import FORMAT_RATE, OBJECTIVES, TaskSet, check_objectives, score


@dataclass
class Config:
    """Everything a run depends on (saved to `summary.json`)."""

    out: str = "out/grpo"
    url: str | None = None  # None: an embedded service on OUT/paceline.db
    curriculum: str | None = None  # None: derived from sampler, weighting and seed
    reset: bool = False  # delete an existing curriculum of that name first
    # Continue from OUT/checkpoint.pt (or, without one, from step 0 on the reports the
    # curriculum already holds for this run); a checkpoint every `checkpoint_every` steps
    # and at the end (0: none).
    resume: bool = False
    checkpoint_every: int = 10
    sampler: str = "dump_ucb"
    weighting: str = "hypervolume"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    weighting_params: dict[str, Any] = field(default_factory=dict)
    preference: tuple[float, ...] = (0.7, 0.3)  # the user's weights over `objectives`
    # The reward vector: (correct, format) by default; add "brevity" for the 3-objective task.
    objectives: tuple[str, ...] = OBJECTIVES
    steps: int = 150
    batch_size: int = 32  # prompts per step
    group_size: int = 8  # rollouts per prompt
    max_new_tokens: int = 6
    temperature: float = 1.0
    lr: float = 3e-4
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    inner_epochs: int = 1
    sft_steps: int = 400
    sft_batch: int = 64
    sft_lr: float = 2e-3
    sft_format_rate: float = FORMAT_RATE  # share of warm-start targets in the format
    eval_every: int = 5
    eval_size: int = 48
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    model: str | None = None  # None / "tiny", or a local Hugging Face model directory
    dim: int = 128
    layers: int = 3
    progress: bool = True
    # Per-objective policy gradients every `grad_every` steps (0: never), on `grad_layers`
    # ("last": the last block and after, "all", or name prefixes), sent as grad_products.
    grad_every: int = 0
    grad_layers: str = "last"

    def __post_init__(self) -> None:
        # Checked before anything is created or trained: a bad value used to surface as
        # a traceback after the warm start, or to run silently (a negative clip_eps).
        checks = {"steps >= 1": self.steps >= 1, "group_size >= 2": self.group_size >= 2,
                  "batch_size >= 1": self.batch_size >= 1,
                  "inner_epochs >= 1": self.inner_epochs >= 1,
                  "eval_every >= 1": self.eval_every >= 1,
                  "eval_size >= 1": self.eval_size >= 1,
                  "max_new_tokens >= 1": self.max_new_tokens >= 1,
                  "temperature > 0": self.temperature > 0,
                  "lr > 0": self.lr > 0, "sft_lr > 0": self.sft_lr > 0,
                  "clip_eps > 0": self.clip_eps > 0, "kl_coef >= 0": self.kl_coef >= 0,
                  "sft_steps >= 0": self.sft_steps >= 0, "sft_batch >= 1": self.sft_batch >= 1,
                  "0 <= sft_format_rate <= 1": 0 <= self.sft_format_rate <= 1,
                  "seed >= 0": self.seed >= 0,
                  "threads >= 1 (or unset)": self.threads is None or self.threads >= 1,
                  "dim >= 1": self.dim >= 1, "layers >= 1": self.layers >= 1,
                  "grad_every >= 0": self.grad_every >= 0,
                  "checkpoint_every >= 0": self.checkpoint_every >= 0,
                  "not both resume and reset (reset deletes what resume continues)":
                      not (self.resume and self.reset),
                  f"one preference weight per objective {self.objectives}":
                      len(self.preference) == len(self.objectives)}
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            checks[f"a CUDA device for --device {self.device} (torch {torch.__version__} "
                   "sees none; use --device cpu or auto)"] = False
        self.objectives = check_objectives(self.objectives)
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid config: need {', '.join(failed)}")

    def curriculum_name(self) -> str:
        return self.curriculum or f"tiny-grpo-{self.sampler}-{self.weighting}-s{self.seed}"

    def sampler_spec(self) -> dict[str, Any]:
        return {"kind": self.sampler, **self.sampler_params}

    def weighting_spec(self) -> dict[str, Any]:
        """The served weighting, starting from the preference; the hypervolume one steers
        w (`mode: steer`) from the evaluation points, because its reward scale alone
        cancels under GRPO."""
        params: dict[str, Any] = {}
        if self.weighting in ("fixed", "hypervolume", "gradient", "spard"):
            params["weights"] = list(self.preference)
        if self.weighting == "hypervolume":
            params.update(mode="steer", points="eval")
        return {"kind": self.weighting, **params, **self.weighting_params}


@dataclass
class Evaluation:
    accuracy: dict[str, float]  # per distribution
    objectives: list[float]  # mean of each objective over all evaluation problems


def evaluate(model: LanguageModel, tasks: TaskSet, max_new_tokens: int,
             objectives: tuple[str, ...] = OBJECTIVES) -> Evaluation:
    """Greedy decoding on every distribution's held-out problems."""
    accuracy: dict[str, float] = {}
    totals = np.zeros(len(objectives))
    count = 0
    for dist in tasks.distributions:
        rollouts = generate(model, [p.prompt for p in dist.eval], 1, max_new_tokens,
                            greedy=True)
        scores = np.array([
            score(text, done, p.answer, objectives, max_new_tokens)
            for p, text, done in zip(dist.eval, rollouts.texts, rollouts.finished,
                                     strict=True)])
        accuracy[dist.name] = float(scores[:, 0].mean())
        totals += scores.mean(axis=0)
        count += 1
    return Evaluation(accuracy, (totals / count).tolist())


class _Progress:
    """tqdm when installed (and wanted), else a one-line text bar on stderr."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled, self.n = total, label, enabled, 0
        self._bar: Any = None
        if enabled:
            try:
                tqdm: Any = importlib.import_module("tqdm").tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=label, dynamic_ncols=True)

    def update(self, **info: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.3g}" for k, v in info.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        filled = int(30 * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{self.n}/{self.total} {text}")
        if self.n == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def connect(config: Config, out: Path) -> Iterator[paceline.Client]:
    """A client of the service at `config.url`, or of an embedded one (SQLite in OUT)."""
    client = (paceline.Client(config.url) if config.url else
              paceline.Client.embedded(out / "paceline.db"))
    try:
        yield client
    finally:
        client.close()


def open_curriculum(client: paceline.Client, config: Config,
                    tasks: TaskSet) -> paceline.Curriculum:
    """Create the run's curriculum; refuse to continue one that already holds reports
    (its statistics would describe another model) unless `reset` deletes it first or
    `resume` continues this run on it."""
    name = config.curriculum_name()
    if config.reset:
        with suppress(paceline.NotFound):
            client.curriculum(name).delete()
    try:
        cur = client.create_curriculum(
            name, distributions=tasks.layout(), objectives=list(config.objectives),
            sampler=config.sampler_spec(), weighting=config.weighting_spec(),
            batch_size=config.batch_size, seed=config.seed, exist_ok=True)
    except paceline.Conflict as exc:
        raise SystemExit(f"curriculum {name!r} exists with another spec; pass --reset "
                         "(train also takes --curriculum NAME)") from exc
    held = cur.refresh().seq
    if held > 0 and not config.resume:
        raise SystemExit(f"curriculum {name!r} already holds {held} reports; "
                         "pass --resume to continue this run or --reset to start it over "
                         "(train also takes --curriculum NAME); this run's files were left "
                         "as they are")
    return cur


def warm_start(model: LanguageModel, tasks: TaskSet, config: Config,
               rng: np.random.Generator, log: Callable[[Record], object]) -> list[float]:
    """Short supervised phase: the policy must sometimes be right for GRPO to have
    non-zero advantages. Kept short on purpose so RL has something left to teach."""
    if config.sft_steps <= 0:
        return []
    optimizer = torch.optim.AdamW(model.module.parameters(), lr=config.sft_lr,
                                  weight_decay=0.0)
    model.module.train()
    losses = []
    progress = _Progress(config.sft_steps, "warm start", config.progress)
    for step in range(config.sft_steps):
        pairs = tasks.sample_supervised(rng, config.sft_batch, config.sft_format_rate)
        loss = supervised_loss(model, pairs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.module.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        log({"sft_step": step, "loss": losses[-1]})
        progress.update(loss=losses[-1])
    progress.close()
    return losses


def frozen_copy(model: LanguageModel) -> LanguageModel:
    """The warm-started policy, frozen: the reference of the optional KL penalty."""
    reference = copy.copy(model)
    reference.module = copy.deepcopy(model.module).eval().requires_grad_(False)
    return reference


@dataclass
class Learning:
    """What the GRPO loop carries from step to step, and what a checkpoint saves of it
    besides the Paceline position."""

    model: LanguageModel
    optimizer: torch.optim.Optimizer
    reference: LanguageModel | None  # the frozen warm-started policy (KL > 0)
    rng: np.random.Generator
    sft_losses: list[float]
    sft_seconds: float
    eval_points: list[list[float]] = field(default_factory=list)
    first_eval: Evaluation | None = None
    last_eval: Evaluation | None = None

    @classmethod
    def warm_started(cls, model: LanguageModel, tasks: TaskSet, config: Config,
                     rng: np.random.Generator, out: Path) -> Learning:
        started = time.monotonic()
        with (out / "sft.jsonl").open("w") as sft_log:
            losses = warm_start(model, tasks, config, rng,
                                lambda r: sft_log.write(json.dumps(r) + "\n"))
        return cls(model, _optimizer(model, config),
                   frozen_copy(model) if config.kl_coef > 0 else None, rng, losses,
                   time.monotonic() - started)

    @classmethod
    def restored(cls, saved: checkpoint.Checkpoint, model: LanguageModel, config: Config,
                 rng: np.random.Generator) -> Learning:
        """The state `saved` holds, on `model` (built as for a new run) and `rng`; the
        random generators are put back last, after everything that draws from them."""
        model.module.load_state_dict(saved.model)
        reference = None
        if saved.reference is not None:
            reference = frozen_copy(model)
            reference.module.load_state_dict(saved.reference)
        optimizer = _optimizer(model, config)
        optimizer.load_state_dict(saved.optimizer)
        checkpoint.restore_rng(saved.rng, rng)
        return cls(model, optimizer, reference, rng, saved.sft_losses, saved.sft_seconds,
                   saved.eval_points, _evaluation(saved.first_eval),
                   _evaluation(saved.last_eval))

    def evaluate(self, tasks: TaskSet, config: Config) -> Evaluation:
        """Evaluate on the held-out problems and keep the point (the hypervolume's)."""
        evaluation = self.last_eval = evaluate(self.model, tasks, config.max_new_tokens,
                                               config.objectives)
        self.first_eval = self.first_eval or evaluation
        self.eval_points.append(evaluation.objectives)
        return evaluation

    def to_checkpoint(self, step: int, config: Config, run: paceline.Run,
                      started_at: datetime, elapsed_s: float,
                      rows: list[Record]) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            step=step, config=checkpoint.run_fields(config),
            fingerprint=Fingerprint.of(run).to_dict(), run_id=run.run_id,
            model=self.model.module.state_dict(), optimizer=self.optimizer.state_dict(),
            reference=(None if self.reference is None
                       else self.reference.module.state_dict()),
            rng=checkpoint.capture_rng(self.rng), eval_points=self.eval_points,
            first_eval=None if self.first_eval is None else asdict(self.first_eval),
            last_eval=None if self.last_eval is None else asdict(self.last_eval),
            sft_losses=self.sft_losses, sft_seconds=self.sft_seconds, rows=rows,
            elapsed_s=elapsed_s,
            started=started_at.isoformat())


def train(config: Config) -> dict[str, Any]:
    """Run the warm start and the GRPO loop; write metrics, plots and `summary.json` to
    `config.out`; return the summary. With `resume`, go on from the run's checkpoint in
    `config.out` (`trainer_examples.checkpoint`)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = _resumable(config, out)
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    tasks = TaskSet(seed=config.seed, eval_size=config.eval_size)
    model = build_model(config.model, device, dim=config.dim, layers=config.layers)
    started_at = datetime.now(UTC) if saved is None else datetime.fromisoformat(saved.started)
    started = time.monotonic() - (0.0 if saved is None else saved.elapsed_s)
    start = 0 if saved is None else saved.step
    names = tasks.names
    with connect(config, out) as client, ExitStack() as files:
        # The curriculum first: a refused one should not cost a warm start, nor the
        # metrics files of the run that filled it (they were opened, i.e. emptied, first).
        if saved is not None:  # its reports must still be there: do not create it anew
            _require_curriculum(client, config.curriculum_name(), out)
        cur = open_curriculum(client, config, tasks)
        # A run id of the config (the curriculum is new): the same seed serves the same
        # batches (each step's batch is drawn from the seed, run id and step).
        run_id = f"{config.curriculum_name()}-run"
        if saved is None and config.resume:  # no checkpoint to say which run this is
            _check_reports_so_far(cur, run_id, config)
        run = files.enter_context(cur.start_run(
            run_id=run_id, metadata={"example": "trainer_examples", "seed": config.seed,
                                     "config": checkpoint.run_fields(config)}))
        if saved is None:
            writer = files.enter_context(MetricsWriter(out))
            learning = Learning.warm_started(model, tasks, config, rng, out)
        else:  # the steps before the checkpoint keep their rows; later ones are redone
            _check_position(saved, run, out)
            writer = files.enter_context(MetricsWriter(out, keep=saved.rows))
            learning = Learning.restored(saved, model, config, rng)
        progress = _Progress(max(0, config.steps - start), config.curriculum_name(),
                             config.progress)

        def save(step: int) -> None:
            rows = [r for r in writer.records if not r["final"]]
            checkpoint.save(learning.to_checkpoint(step, config, run, started_at,
                                                   time.monotonic() - started, rows), out)

        for served in train_steps(run, max(0, config.steps - start), start_step=start):
            step = served.step
            evaluation = (learning.evaluate(tasks, config) if step % config.eval_every == 0
                          else None)
            record = grpo_step(learning.model, learning.optimizer, learning.reference,
                               served.batch, tasks, config, step)
            record["time_s"] = time.monotonic() - started
            ack = served.report(record.pop("_rewards"), record.pop("_advantages"),
                                grad_products=record.pop("_grad_products"),
                                eval_objectives=(evaluation.objectives if evaluation
                                                 else None))
            # None: a redone step whose first report (before a crash) stands
            record["seq"] = ack.seq if ack is not None else None
            record.update(_eval_columns(names, evaluation, learning.eval_points,
                                        config.objectives))
            record.update(_service_columns(cur, ack))
            writer.write(record)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                save(step + 1)
            last = learning.last_eval
            progress.update(loss=record["loss"], reward=record["reward"],
                            acc=(float(np.mean(list(last.accuracy.values())))
                                 if last else math.nan))
        if config.checkpoint_every:  # a finished run can go on with more --steps
            save(max(start, config.steps))
        progress.close()
        final = evaluate(model, tasks, config.max_new_tokens, config.objectives)
        eval_points = [*learning.eval_points, final.objectives]
        writer.write({"step": max(start, config.steps), "final": True,
                      **_eval_columns(names, final, eval_points, config.objectives)})
        state = cur.state()

    first_eval, sft_losses = learning.first_eval, learning.sft_losses
    summary = {
        "config": asdict(config),
        "curriculum": config.curriculum_name(),
        "run_id": run_id,
        "resumed_from": None if saved is None else saved.step,
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model.module),
        "wall_s": time.monotonic() - started,
        "sft_s": learning.sft_seconds,
        "sft_loss_first": sft_losses[0] if sft_losses else None,
        "sft_loss_last": sft_losses[-1] if sft_losses else None,
        "initial_eval": first_eval.accuracy if first_eval else None,
        "final_eval": final.accuracy,
        "final_objectives": dict(zip(config.objectives, final.objectives, strict=True)),
        "final_hypervolume": hypervolume(eval_points, eval_points[0]),
        "service": {"seq": state.seq, "reward_weights": state.reward_weights,
                    "reward_scale": state.reward_scale,
                    "probabilities": state.probabilities},
        "distributions": {d.name: d.size for d in tasks.distributions},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from trainer_examples.plots import plot_run  # matplotlib only when plotting

    plot_run(out)
    return summary


def _resumable(config: Config, out: Path) -> checkpoint.Checkpoint | None:
    """The checkpoint `resume` continues from (None: none, or not resuming); refuses,
    before anything runs, one written by another configuration."""
    if not config.resume:
        return None
    try:
        saved = checkpoint.load(out)
    except ValueError as exc:
        raise SystemExit(f"--resume: {exc}") from exc
    if saved is not None:
        changed = checkpoint.differing(saved.config, config)
        if changed:
            raise SystemExit(f"--resume: the checkpoint in {out} was written by another "
                             f"configuration ({', '.join(changed)} differ); resume with "
                             "the run's own options, or pass another --out")
    return saved


def _service_columns(cur: paceline.Curriculum, ack: paceline.ReportAck | None) -> Record:
    """The service's view right after this step's report: each distribution's success
    and the hypervolume of the evaluation points so far. A replayed report (a step
    redone after a resume) is read at its own seq from the history, not from the state
    now, so the resumed run's rows are the uninterrupted run's; a redone step whose
    first report stands (other rollouts) has no row of its own: NaN."""
    state = cur.state()
    names = [d.name for d in state.distributions]
    if ack is None:
        return {"service_hypervolume": math.nan, **{f"success_{n}": math.nan for n in names}}
    if ack.replayed:
        history = cur.history(since=ack.seq)
        row = history.seq.index(ack.seq)
        success = [history.per_distribution[n].success[row] for n in names]
    else:
        success = [d.success for d in state.distributions]
    points = [h for h in state.hypervolume_history if h.seq <= ack.seq]
    return {"service_hypervolume": points[-1].hypervolume if points else math.nan,
            **{f"success_{n}": math.nan if v is None else v
               for n, v in zip(names, success, strict=True)}}


def _require_curriculum(client: paceline.Client, name: str, out: Path) -> None:
    try:
        client.curriculum(name)
    except paceline.NotFound:
        raise SystemExit(f"--resume: curriculum {name!r}, which the checkpoint in {out} "
                         "continues, no longer exists (deleted since); run without "
                         "--resume to start over") from None


def _check_reports_so_far(cur: paceline.Curriculum, run_id: str, config: Config) -> None:
    """`--resume` without a checkpoint starts at step 0 on the reports the run made so far
    (their steps are replayed): refuse when they were made by another configuration,
    which the run's metadata names (a re-attach merges new metadata over it, so it is
    read first)."""
    earlier = next((r for r in cur.runs() if r.run_id == run_id), None)
    made_by = None if earlier is None else earlier.metadata.get("config")
    if isinstance(made_by, dict):
        changed = checkpoint.differing(made_by, config)
        if changed:
            raise SystemExit(f"--resume: run {run_id!r} of curriculum {cur.name!r} made its "
                             f"reports with another configuration ({', '.join(changed)} "
                             "differ); resume with the run's own options, or pass --reset")


def _check_position(saved: checkpoint.Checkpoint, run: paceline.Run, out: Path) -> None:
    """The checkpoint's Paceline position must belong to this curriculum and run (the
    integrations' `Fingerprint` check): a recreated curriculum has another log."""
    where = f"--resume from {out / checkpoint.CHECKPOINT}"
    fingerprint = Fingerprint.from_dict(saved.fingerprint)
    try:
        if fingerprint is None:
            raise ValueError(f"{where}: the checkpoint names no curriculum")
        fingerprint.check(run, where)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def _optimizer(model: LanguageModel, config: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.module.parameters(), lr=config.lr, weight_decay=0.0)


def _evaluation(data: dict[str, Any] | None) -> Evaluation | None:
    return None if data is None else Evaluation(**data)


def grpo_step(model: LanguageModel, optimizer: torch.optim.Optimizer,
              reference: LanguageModel | None, batch: paceline.Batch, tasks: TaskSet,
              config: Config, step: int) -> Record:
    """One GRPO step on `batch`, the batch Paceline served for `step`. Returns the
    step's metrics, with the report's payload under the private keys `_rewards`,
    `_advantages` and `_grad_products`."""
    problems = [tasks[i] for i in batch.indices]
    n, g = len(problems), config.group_size
    rollouts = generate(model, [p.prompt for p in problems], g, config.max_new_tokens,
                        temperature=config.temperature)
    rewards = torch.tensor([
        score(rollouts.texts[r], rollouts.finished[r], problems[r // g].answer,
              config.objectives, config.max_new_tokens)
        for r in range(n * g)], dtype=torch.float32).view(n, g, len(config.objectives))
    scalar = batch.scalarize(rewards)  # reward_scale * sum_k w_k u_k, [n, g]
    advantages = group_advantages(scalar)
    loss_weights = (torch.tensor(batch.loss_weights, dtype=torch.float32,
                                 device=model.device)
                    if batch.loss_weights is not None else None)

    model.module.train()
    products: Record = {}
    grad_products = None
    if config.grad_every and step % config.grad_every == 0:
        grad_products, products = objective_gram(model, rollouts, rewards, batch, config)
    elif config.grad_every:  # the same columns on every step (the CSV header is fixed)
        products = {key: math.nan for key in _gram_columns(config.objectives)}
        products["grad_products_computed"] = 0.0
    with torch.no_grad():
        old_logp = completion_logprobs(model, rollouts, config.temperature)
        ref_logp = (completion_logprobs(reference, rollouts, config.temperature)
                    if reference is not None else None)
    mask = rollouts.completion_mask
    # Mean negative log-likelihood of the sampled tokens: an entropy proxy that falls as
    # the policy sharpens (the GRPO loss itself is 0 at ratio 1: advantages sum to 0).
    nll = float(-(old_logp * mask).sum() / mask.sum())
    adv = advantages.to(model.device)
    for _ in range(config.inner_epochs):
        logp = completion_logprobs(model, rollouts, config.temperature)
        parts = grpo_loss(logp, old_logp, adv, mask, loss_weights, config.clip_eps,
                          ref_logp, config.kl_coef)
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.module.parameters(), 1.0))
        optimizer.step()

    labels = tasks.distribution_of(batch.indices)
    correct = rewards[..., 0].mean(-1).numpy()
    record: Record = {
        "step": step, "final": False,
        "loss": float(parts.loss.detach()), "grad_norm": grad_norm, "nll": nll,
        "clip_fraction": parts.clip_fraction, "kl": parts.kl,
        "reward": float(scalar.mean()),
        **{f"reward_{o}": float(rewards[..., k].mean())
           for k, o in enumerate(config.objectives)},
        "zero_variance_fraction": float(zero_variance(scalar).float().mean()),
        "mean_length": float(np.mean(rollouts.lengths)),
        "reward_scale": batch.reward_scale,
        **{f"w_{o}": w for o, w in batch.reward_weights.items()},
        "loss_weight_min": min(batch.loss_weights) if batch.loss_weights else math.nan,
        "loss_weight_max": max(batch.loss_weights) if batch.loss_weights else math.nan,
    }
    for d, name in enumerate(tasks.names):
        chosen = labels == d
        record[f"n_{name}"] = int(chosen.sum())
        record[f"acc_{name}"] = float(correct[chosen].mean()) if chosen.any() else math.nan
        record[f"p_{name}"] = batch.probabilities.get(name, math.nan)
    record.update(products)
    record["_rewards"] = rewards
    record["_advantages"] = advantages
    record["_grad_products"] = grad_products
    return record


def objective_gram(model: LanguageModel, rollouts: Any, rewards: torch.Tensor,
                   batch: paceline.Batch, config: Config) -> tuple[np.ndarray, Record]:
    """The Gram matrix of per-objective policy gradients at the current policy (before
    this step's update), and how the service's rollout proxy compares with it."""
    advantages = objective_advantages(unit_rewards(rewards, batch))
    parameters = select_parameters(model.module, config.grad_layers)
    gradients = objective_gradients(model, rollouts, advantages, parameters,
                                    config.temperature)
    real = gram_matrix(gradients)
    agreement = compare(real, proxy_gram(advantages))
    record: Record = {"grad_products_computed": 1.0, **agreement.to_record()}
    k = len(config.objectives)
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    for key, (i, j) in zip(_gram_columns(config.objectives)[4:], pairs, strict=True):
        record[key] = float(real[i, j])
    return real, record


def _gram_columns(objectives: tuple[str, ...]) -> list[str]:
    """The metrics columns of `objective_gram` (after `grad_products_computed`)."""
    return ["proxy_gram_cosine", "proxy_gram_correlation", "proxy_move_cosine",
            "proxy_conflict_agrees",
            *[f"gram_{a}_{b}" for i, a in enumerate(objectives) for b in objectives[i:]]]


def _eval_columns(names: list[str], evaluation: Evaluation | None,
                  points: list[list[float]],
                  objectives: tuple[str, ...] = OBJECTIVES) -> Record:
    """Evaluation columns (NaN on steps without an evaluation) and the hypervolume of
    the evaluation points so far against the first one — the same quantity for every
    run, whichever weighting it uses."""
    record: Record = {}
    for name in names:
        record[f"eval_{name}"] = evaluation.accuracy[name] if evaluation else math.nan
    record["eval_mean"] = (float(np.mean(list(evaluation.accuracy.values())))
                           if evaluation else math.nan)
    for k, objective in enumerate(objectives):
        record[f"eval_{objective}"] = evaluation.objectives[k] if evaluation else math.nan
    record["hypervolume"] = hypervolume(points, points[0]) if points else math.nan
    return record
