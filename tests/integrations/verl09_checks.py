"""Checks of `paceline.integrations.verl09` against the real verl 0.9 classes.

Run by test_verl09_integration.py in a subprocess whose PYTHONPATH puts verl 0.9.1 (and
what its trainer module imports) ahead of the venv's verl 0.7.1:
`python verl09_checks.py WORKDIR`. Exits non-zero (an assertion) on the first failure.

What is real: verl 0.9.1's `RayPPOTrainer` (its constructor signature, its own
`_create_dataloader` building the `StatefulDataLoader` around our sampler, its
`_update_critic` / `_update_actor` hooks), `DataProto`, `collate_fn` and the GRPO
advantage estimator. What is not: Ray workers and a model; the two update methods of
the base class are replaced by a recorder, so the step loop is the trainer's without
them.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import verl
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils.dataset.rl_dataset import collate_fn

import paceline
from paceline.integrations.verl import ServedWeights
from paceline.integrations.verl09 import PacelineCurriculumSampler, PacelineRayPPOTrainer

ROWS, BATCH, ROLLOUTS, RESPONSE, STEPS = 16, 4, 2, 5, 8
SPEC = {"distributions": [{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
        "objectives": ["correct", "short"], "sampler": "dump_ucb",
        "weighting": {"kind": "fixed", "weights": [3, 1]}, "batch_size": BATCH}
UPDATED: list[str] = []


def _recorded(kind: str) -> Any:
    def update(self: Any, batch: DataProto) -> DataProto:
        UPDATED.append(kind)
        return batch
    return update


# No workers here: the base class's updates only record that they ran.
RayPPOTrainer._update_actor = _recorded("actor")  # type: ignore[method-assign]
RayPPOTrainer._update_critic = _recorded("critic")  # type: ignore[method-assign]


class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """What RLHFDataset hands the collate function: one dict per row, `index` included."""

    def __init__(self, size: int = ROWS) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": torch.tensor([i, i + 1]), "index": i, "data_source": "x"}


def config(db: Path, run_id: str, num_workers: int = 0) -> Any:
    return OmegaConf.create({
        "data": {"train_batch_size": BATCH, "gen_batch_size": None, "val_batch_size": None,
                 "dataloader_num_workers": num_workers, "validation_shuffle": False,
                 "sampler": {"paceline": {"embedded": str(db), "curriculum": "verl09",
                                          "run_id": run_id, "heartbeat_interval": None,
                                          "create": SPEC}}},
        "trainer": {"total_epochs": 2, "total_training_steps": None}})


def trainer(db: Path, run_id: str, dataset: Any = None) -> PacelineRayPPOTrainer:
    """A PacelineRayPPOTrainer as far as it goes without Ray: our constructor's part, then
    verl's own `_create_dataloader` (the base constructor builds workers)."""
    cfg = config(db, run_id)
    made = PacelineRayPPOTrainer.__new__(PacelineRayPPOTrainer)
    made.config = cfg
    made.tokenizer = made.processor = None
    dataset = Rows() if dataset is None else dataset
    made.paceline_sampler = PacelineCurriculumSampler(dataset, cfg.data)
    RayPPOTrainer._create_dataloader(made, dataset, Rows(), collate_fn, made.paceline_sampler)
    return made


def rollout(batch_dict: dict[str, Any], weights: ServedWeights, step: int) -> DataProto:
    """A step's rollouts as fit() builds them: uids, n per prompt, rewards that depend on
    the prompt alone, GRPO advantages, rows shuffled (balance_batch)."""
    batch = DataProto.from_single_dict(batch_dict)
    batch.non_tensor_batch["uid"] = np.array([f"u{step}-{i}" for i in range(len(batch))],
                                             dtype=object)
    batch = batch.repeat(repeat_times=ROLLOUTS, interleave=True)
    index = [int(i) for i in batch.non_tensor_batch["index"]]
    lengths = np.array([1 + (i + k % 2) % RESPONSE for k, i in enumerate(index)])
    results = [weights.score({"correct": float((i * 5 + k) % 3 == 0), "short": 1.0 / n})
               for k, (i, n) in enumerate(zip(index, lengths, strict=True))]
    mask = torch.tensor([[1] * n + [0] * (RESPONSE - n) for n in lengths], dtype=torch.long)
    scores = torch.zeros(len(batch), RESPONSE)
    scores[torch.arange(len(batch)), torch.tensor(lengths - 1)] = torch.tensor(
        [r["score"] for r in results])
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=scores, response_mask=mask, index=batch.non_tensor_batch["uid"])
    batch.batch["response_mask"] = mask
    batch.batch["token_level_scores"] = scores
    batch.batch["advantages"] = advantages
    for key in ("correct", "short"):
        batch.non_tensor_batch[key] = np.array([r[key] for r in results])
    batch.reorder(torch.from_numpy(np.random.default_rng(step).permutation(len(batch))))
    return batch


def train(made: PacelineRayPPOTrainer, first: int, last: int, critic: bool = False,
          save_after: int | None = None) -> dict[str, Any] | None:
    """fit()'s step loop for steps first..last-1; the loader state after `save_after`."""
    weights = ServedWeights(made.paceline_sampler.curriculum, ttl=0.0)
    saved = None
    loader = iter(made.train_dataloader)
    for step in range(first, last):
        try:
            batch_dict = next(loader)
        except StopIteration:  # a new epoch, as fit() does
            loader = iter(made.train_dataloader)
            batch_dict = next(loader)
        assert made.paceline_sampler.batch is not None
        assert made.paceline_sampler.batch.step == step, (made.paceline_sampler.batch.step, step)
        batch = rollout(batch_dict, weights, step)
        if critic:
            made._update_critic(batch)
        made._update_actor(batch)
        if step == save_after:
            saved = made.train_dataloader.state_dict()
    return saved


def check_interfaces() -> None:
    assert verl.__version__.startswith("0.9"), verl.__version__
    params = inspect.signature(RayPPOTrainer.__init__).parameters
    assert "train_sampler" in params and "train_dataset" in params
    assert issubclass(PacelineRayPPOTrainer, RayPPOTrainer)
    try:
        from verl.experimental.dataset.sampler import AbstractCurriculumSampler  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("verl 0.9 was expected to have no AbstractCurriculumSampler")
    assert isinstance(PacelineCurriculumSampler.__mro__[1], type)
    assert issubclass(PacelineCurriculumSampler, torch.utils.data.Sampler)


def check_steps_reported(work: Path) -> None:
    UPDATED.clear()
    made = trainer(work / "steps.db", "steps")
    assert len(made.train_dataloader) == ROWS // BATCH
    assert made.total_training_steps == 2 * (ROWS // BATCH)
    train(made, 0, 3, critic=True)
    assert UPDATED == ["critic", "actor"] * 3  # each step reported once, then updated
    assert made.paceline_sampler.curriculum.state().seq == 3


def check_crash_and_resume(work: Path) -> None:
    straight = trainer(work / "straight.db", "r")
    train(straight, 0, STEPS)
    want = straight.paceline_sampler.curriculum.state()
    first = trainer(work / "resumed.db", "r")
    checkpoint = train(first, 0, 6, save_after=2)  # verl saved after step 2; killed after 5
    assert checkpoint is not None
    first.paceline_sampler.close()
    resumed = trainer(work / "resumed.db", "r")  # a new process
    resumed.train_dataloader.load_state_dict(checkpoint)
    train(resumed, 3, STEPS)
    got = resumed.paceline_sampler.curriculum.state()
    assert got.seq == want.seq == STEPS, (got.seq, want.seq)
    assert got == want


def check_bad_input(work: Path) -> None:
    made = trainer(work / "bad.db", "a")
    checkpoint = train(made, 0, 2, save_after=1)
    assert checkpoint is not None
    seq = made.paceline_sampler.curriculum.state().seq
    other = trainer(work / "bad.db", "b")
    other.train_dataloader.load_state_dict(checkpoint)  # applied when iteration starts
    with pytest.raises(ValueError, match=r"run 'a'.*run 'b'"):
        next(iter(other.train_dataloader))
    with pytest.raises(ValueError, match="has 12 rows but curriculum 'verl09' lays out 16"):
        trainer(work / "bad.db", "c", dataset=Rows(ROWS - 4))
    # Loader workers (verl's default is 8) prefetch: the batches of later steps would be
    # drawn before this step is reported. Seen with verl's own loader, then refused.
    ahead = trainer(work / "ahead.db", "w")
    ahead.config = config(work / "ahead.db", "w", num_workers=2)
    RayPPOTrainer._create_dataloader(ahead, Rows(), Rows(), collate_fn,
                                     ahead.paceline_sampler)
    next(iter(ahead.train_dataloader))
    assert ahead.paceline_sampler.batch is not None
    assert ahead.paceline_sampler.batch.step > 0  # drawn ahead of step 0's report
    ahead.paceline_sampler.close()
    with pytest.raises(ValueError, match=r"data\.dataloader_num_workers=0; got 8"):
        PacelineRayPPOTrainer(config=config(work / "bad.db", "d", num_workers=8),
                              train_dataset=Rows())
    with paceline.Client.embedded(work / "bad.db") as client:
        assert client.curriculum("verl09").state().seq == seq  # nothing was reported


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    check_interfaces()
    check_steps_reported(workdir)
    check_crash_and_resume(workdir)
    check_bad_input(workdir)
    print("verl09 checks passed with verl", verl.__version__)
