"""What chooses the batch in the peer comparison: Paceline (in process or over loopback)
and the peers users would otherwise pick (Syllabus, DAPO-style uniform sampling, static
temperature mixing), behind one small interface so one loop drives them all alike.

Every strategy answers `propose(step, size)` with the prompts to roll out and hears
`observe(...)` after the policy update with what was trained on. The peers serve the
fixed equal reward weights of simulate's sampler rows (Paceline's `fixed` weighting), so
only batch composition differs between rows.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # learner
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # simulate

from learner import NUM_SAMPLES, SIZES, Rollouts, distribution_of

from local_service import local_service
from paceline_server.domain import Report
from paceline_server.engine import CurriculumEngine
from simulate import BATCH, DISTRIBUTIONS, Config, G, make_spec

EQUAL_WEIGHTS = np.full(2, 0.5)
RUN_ID = "sim"  # the run id simulate.py uses: Paceline seeds each batch by (seed, run, step)


@dataclass
class Plan:
    """One batch as served: prompts, reward weights and scale, optional loss weights."""

    indices: np.ndarray
    weights: np.ndarray = field(default_factory=lambda: EQUAL_WEIGHTS.copy())
    scale: float = 1.0
    loss_weights: np.ndarray | None = None
    skipped: int = 0  # candidates skipped before rollout (Paceline's zero_variance)


class Strategy(Protocol):
    def propose(self, step: int, size: int) -> Plan: ...

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None: ...

    def close(self) -> None: ...


def draw_within(counts: np.ndarray, rng: np.random.Generator,
                 sizes: np.ndarray = SIZES) -> np.ndarray:
    """Global indices for `counts[d]` slots of each distribution: uniform inside it, without
    replacement within the batch (as Paceline's distribution-level samplers draw).
    `sizes`: the distributions' sizes, laid out in order (simulate.py's by default)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    parts = [offsets[d] + rng.choice(sizes[d], int(c), replace=bool(c > sizes[d]))
             for d, c in enumerate(counts) if c > 0]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------------- Paceline
class PacelineEngine:
    """Paceline's `CurriculumEngine` in this process: exactly what simulate.py does."""

    def __init__(self, config: Config, seed: int) -> None:
        self.spec = make_spec(config, seed)
        self.engine = CurriculumEngine(self.spec)

    def propose(self, step: int, size: int) -> Plan:
        batch = self.engine.next_batch(RUN_ID, step)
        return Plan(batch.indices, batch.reward_weights, batch.reward_scale,
                    batch.loss_weights, batch.skipped_zero_variance)

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None:
        self.engine.apply(Report.dense(
            run_id=RUN_ID, step=step, indices=roll.indices, rewards=roll.rewards,
            advantages=advantages, eval_objectives=eval_objectives,
            layout=self.spec.layout, num_objectives=2))

    def close(self) -> None:
        pass


@contextmanager
def paceline_server() -> Iterator[str]:
    """A real `paceline-server serve` process on a free loopback port with a temporary
    SQLite file (default settings otherwise: synchronous=FULL); yields its URL."""
    with tempfile.TemporaryDirectory(prefix="paceline-peers-") as tmp, \
            local_service(f"sqlite:///{tmp}/paceline.db") as service:
        yield service.url


class PacelineClient:
    """The same curriculum driven with a `paceline.Client` (HTTP, gRPC or embedded), as a
    trainer would. With `one_call` each step is one call: the report asks for the next
    step's batch (`next_step`), which the next `propose` takes; otherwise `report` +
    `next_batch` per step. JSON bodies over HTTP (the client's defaults)."""

    def __init__(self, client: Any, config: Config, seed: int, label: str,
                 one_call: bool = False) -> None:
        self.client = client
        self.one_call = one_call
        self.ahead: Any = None  # the batch the last report brought back
        curriculum = self.client.create_curriculum(
            f"peers-{label}-{seed}",
            distributions=[{"name": d.name, "size": d.size} for d in DISTRIBUTIONS],
            objectives=["accuracy", "brevity"], sampler=config.sampler,
            weighting=config.weighting, batch_size=BATCH, seed=seed,
            zero_variance=config.zero_variance)
        self.run = curriculum.start_run(run_id=RUN_ID, heartbeat_interval=None)

    def propose(self, step: int, size: int) -> Plan:
        ahead, self.ahead = self.ahead, None
        batch = ahead if ahead is not None and ahead.step == step \
            else self.run.next_batch(step)
        loss = None if batch.loss_weights is None else np.asarray(batch.loss_weights)
        return Plan(np.asarray(batch.indices, dtype=np.int64),
                    np.asarray(batch.weight_vector, dtype=np.float64), batch.reward_scale,
                    loss, batch.skipped_zero_variance)

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None:
        ack = self.run.report(step, indices=roll.indices, rewards=roll.rewards,
                              advantages=advantages, eval_objectives=eval_objectives,
                              next_step=step + 1 if self.one_call else None)
        self.ahead = ack.batch

    def close(self) -> None:
        self.client.close()


class PacelineLoopback(PacelineClient):
    """`PacelineClient` over HTTP to the server at `url`."""

    def __init__(self, url: str, config: Config, seed: int, label: str,
                 one_call: bool = False) -> None:
        import paceline

        super().__init__(paceline.Client(url), config, seed, label, one_call)


# ---------------------------------------------------------------- peers
def syllabus_curriculum(seed: int, episodes_per_update: int,
                        num_tasks: int = len(DISTRIBUTIONS)) -> Any:
    """Syllabus's `OnlineLearningProgress` over a discrete task space whose tasks are the
    simulator's distributions, updated once per `episodes_per_update` reported episodes.

    Syllabus 0.7's `Curriculum.sample` tests `task_dist != []`, which numpy >= 2 rejects
    for an array ("operands could not be broadcast"); the subclass below makes the same
    draw without that test and changes nothing else. `sample` draws with numpy's global
    RNG, hence the seeding. Importing Syllabus runs `np.seterr(all="raise")` (in its
    PLR module) for the whole process; the error state is put back, so the rows run
    after a Syllabus row in the same process see numpy's usual handling."""
    errors = np.geterr()
    try:
        from syllabus.curricula import OnlineLearningProgress
        from syllabus.task_space import DiscreteTaskSpace
    finally:
        np.seterr(**errors)

    class Numpy2OnlineLearningProgress(OnlineLearningProgress):  # type: ignore[misc]
        def sample(self, k: int = 1) -> list[Any]:
            if self._should_use_startup_sampling():
                return list(self._startup_sample())
            task_dist = self._sample_distribution()
            return list(np.random.choice(  # noqa: NPY002 (Syllabus's own draw)
                list(range(self.num_tasks)), size=k, p=task_dist))

    np.random.seed(seed)  # noqa: NPY002
    return Numpy2OnlineLearningProgress(DiscreteTaskSpace(num_tasks),
                                        update_interval=episodes_per_update)


class SyllabusLearningProgress:
    """Syllabus's learning-progress curriculum (Kanitscheider et al. 2021), in process.

    One Syllabus task per distribution; a slot's task comes from `sample(k)` and its prompt
    uniformly inside the distribution. Each rollout is one episode whose progress is its
    correctness (0/1: `update_task_progress` floors progress, so a group's pass rate
    cannot be sent as one progress value) and whose return is the scalarised reward; the
    curriculum recomputes its EMAs once per step (`update_interval` = rollouts per step).
    Library defaults otherwise: ema_alpha 0.1, p_theta 0.1, uniform_prob 0.25.
    `sizes` and `episodes_per_update` default to simulate.py's layout and batch; the
    learner suite passes its own."""

    def __init__(self, seed: int, sizes: np.ndarray = SIZES,
                 episodes_per_update: int = BATCH * G) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.curriculum = syllabus_curriculum(seed, episodes_per_update, self.sizes.size)
        self.rng = np.random.default_rng([seed, 1])

    def propose(self, step: int, size: int) -> Plan:
        tasks = np.asarray(self.curriculum.sample(k=size), dtype=np.int64)
        counts = np.bincount(tasks, minlength=self.sizes.size)
        return Plan(draw_within(counts, self.rng, self.sizes))

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None:
        self.observe_episodes(distribution_of(roll.indices), roll.correct,
                              roll.rewards @ EQUAL_WEIGHTS)

    def observe_episodes(self, tasks: np.ndarray, progress: np.ndarray,
                         returns: np.ndarray) -> None:
        """One episode per rollout: task [n], progress and return [n, G]."""
        curriculum = self.curriculum
        for task, group, group_returns in zip(tasks.tolist(), progress.tolist(),
                                              returns.tolist(), strict=True):
            for correct, episode_return in zip(group, group_returns, strict=True):
                value = float(correct)
                curriculum.update_task_progress(task, value)
                curriculum.update_on_episode(episode_return, 1, task, value)

    def close(self) -> None:
        pass


class UniformEpochs:
    """Uniform over prompts as a shuffled data loader serves them (epoch by epoch): the
    sampling of verl / TRL before DAPO's filter."""

    def __init__(self, seed: int, num_samples: int = NUM_SAMPLES) -> None:
        self.num_samples = num_samples
        self.rng = np.random.default_rng([seed, 2])
        self.order = self.rng.permutation(num_samples)
        self.position = 0

    def propose(self, step: int, size: int) -> Plan:
        taken: list[np.ndarray] = []
        need = size
        while need > 0:
            if self.position == self.order.size:
                self.order, self.position = self.rng.permutation(self.num_samples), 0
            chunk = self.order[self.position:self.position + need]
            self.position += chunk.size
            need -= chunk.size
            taken.append(chunk)
        return Plan(np.concatenate(taken).astype(np.int64))

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None:
        pass

    def close(self) -> None:
        pass


def temperature_probabilities(temperature: float) -> np.ndarray:
    """P_d ∝ n_d^(1/T), written out as a user would (no Paceline)."""
    weights = SIZES.astype(np.float64) ** (1.0 / temperature)
    return np.asarray(weights / weights.sum())


class StaticTemperature:
    """Static temperature mixing: a fixed P_d ∝ n_d^(1/T) for the whole run."""

    def __init__(self, seed: int, temperature: float) -> None:
        self.rng = np.random.default_rng([seed, 3])
        self.probabilities = temperature_probabilities(temperature)

    def propose(self, step: int, size: int) -> Plan:
        return Plan(draw_within(self.rng.multinomial(size, self.probabilities), self.rng))

    def observe(self, step: int, roll: Rollouts, advantages: np.ndarray,
                eval_objectives: list[float]) -> None:
        pass

    def close(self) -> None:
        pass
