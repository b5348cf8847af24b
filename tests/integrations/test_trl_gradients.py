"""`GradientProductsCallback`: TRL's real GRPOTrainer on the tiny local Llama sends the
real per-objective gradient Gram matrix with its reports, and the service's `gradient`
weighting moves by exactly those matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("tokenizers")

import torch
from test_trl_integration import Objectives, dataset, grpo_args, tiny_model, tiny_tokenizer

import paceline
from paceline.integrations.trl import PacelineGRPOTrainer
from paceline.integrations.trl_gradients import (
    GradientProductsCallback,
    gram_matrix,
    objective_advantages,
    select_parameters,
    unit_rewards,
)
from paceline.models import weights_view
from paceline_server.app.codec import decode_report
from paceline_server.store import open_store
from paceline_server.strategies.kernels import softmax
from paceline_server.strategies.weightings.gradient import GradientParams, apply_floor

ETA = 2000.0
PREFERENCE = (0.75, 0.25)


def stored_products(db: Path, curriculum: str) -> list[np.ndarray | None]:
    store = open_store(f"sqlite:///{db}")
    try:
        return [decode_report(e.payload).grad_products for e in store.events(curriculum)]
    finally:
        store.close()


def train(tmp_path: Path, every: int, steps: int = 3,
          spy: Any = None) -> tuple[list[int], dict[str, float], Path]:
    db = tmp_path / "paceline.db"
    tokenizer = tiny_tokenizer()
    objectives = Objectives()
    with paceline.Client.embedded(db) as client:
        cur = client.create_curriculum(
            "grads", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
            objectives=["correct", "short"], sampler="uniform",
            weighting={"kind": "gradient", "weights": list(PREFERENCE), "eta": ETA},
            batch_size=4, seed=1)
        with cur.start_run(run_id="grads", heartbeat_interval=None) as run:
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path, max_steps=steps), train_dataset=dataset(),
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
            callback = GradientProductsCallback(trainer, every=every)
            if spy is not None:
                callback.products = spy(callback.products)  # type: ignore[method-assign]
            trainer.add_callback(callback)
            trainer.train()
            weights = cur.state().reward_weights
    return callback.computed, weights, db


def test_reports_carry_real_gram_and_the_gradient_weighting_uses_it(tmp_path: Path) -> None:
    computed, weights, db = train(tmp_path, every=1)
    assert computed == [0, 1, 2]
    products = stored_products(db, "grads")
    assert len(products) == 3
    w = apply_floor(np.array(PREFERENCE), GradientParams().w_min)
    for matrix in products:
        assert matrix is not None and matrix.shape == (2, 2)
        assert np.all(np.isfinite(matrix))
        np.testing.assert_array_equal(matrix, matrix.T)
        assert np.all(np.diag(matrix) >= 0) and np.abs(matrix).max() > 0
        # The service's update with this very matrix (accumulation_steps 1).
        w = apply_floor(softmax(np.log(w) + ETA * matrix.sum(axis=1)), GradientParams().w_min)
    served = np.array([weights["correct"], weights["short"]])
    np.testing.assert_allclose(served, w, rtol=1e-9)
    assert not np.allclose(served, PREFERENCE, atol=1e-6), "the weights did not move"


def test_every_k_steps_and_non_finite_products_are_left_out(tmp_path: Path) -> None:
    def poison(products: Any) -> Any:
        def wrapped(record: Any, output: Any) -> np.ndarray:
            matrix = products(record, output)
            return matrix * np.nan if record.step == 2 else matrix
        return wrapped

    with pytest.warns(RuntimeWarning, match="step 2's gradient products are not finite"):
        computed, _, db = train(tmp_path, every=2, steps=4, spy=poison)
    assert computed == [0]
    products = stored_products(db, "grads")
    assert [p is not None for p in products] == [True, False, False, False]


def test_callback_needs_a_paceline_trainer_and_a_positive_period() -> None:
    with pytest.raises(TypeError, match="PacelineGRPOTrainer"):
        GradientProductsCallback(object(), every=1)
    with pytest.raises(ValueError, match="every must be >= 1"):
        GradientProductsCallback(object(), every=0)


def test_callback_refuses_a_dynamic_sampling_trainer(tmp_path: Path) -> None:
    """With dynamic sampling the round TRL trains on is the merged kept groups, while the
    step's rollouts hold every group generated; products over them would pair rows with
    other groups' advantages, so the combination is refused."""
    tokenizer = tiny_tokenizer()
    with paceline.Client.embedded(tmp_path / "p.db") as client:
        cur = client.create_curriculum(
            "grads", distributions=[{"name": "easy", "size": 12}, {"name": "hard", "size": 4}],
            objectives=["correct", "short"], batch_size=4, seed=1)
        with cur.start_run(heartbeat_interval=None) as run:
            objectives = Objectives()
            trainer = PacelineGRPOTrainer(
                run, model=tiny_model(len(tokenizer)), processing_class=tokenizer,
                args=grpo_args(tmp_path), train_dataset=dataset(), dynamic_sampling=True,
                reward_funcs={"correct": objectives.correct, "short": objectives.short})
            with pytest.raises(ValueError, match="dynamic_sampling"):
                GradientProductsCallback(trainer)


def test_select_parameters_last_block_and_prefixes() -> None:
    model = tiny_model(16)
    last = select_parameters(model, "last")
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = [names[id(p)] for p in last]
    assert chosen[0].startswith("model.layers.0.") and "model.norm.weight" in chosen
    assert "model.embed_tokens.weight" not in chosen
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    assert [names[id(p)] for p in select_parameters(model, "model.norm")] == [
        "model.norm.weight"]
    with pytest.raises(ValueError, match="no trainable parameter name starts with"):
        select_parameters(model, "nothing.here")


def test_advantages_follow_direction_and_bounds() -> None:
    spec = {"objectives": ["acc", {"name": "len", "direction": "minimize",
                                   "bounds": [0, 100]}]}
    batch = weights_view({"acc": 0.5, "len": 0.5}, 1.0, spec)
    # One group of two: the longer completion is the correct one.
    units = unit_rewards([[1.0, 80.0], [0.0, 20.0]], batch)
    np.testing.assert_allclose(units, [[1.0, 0.2], [0.0, 0.8]])
    adv = objective_advantages(units, group=2)
    np.testing.assert_allclose(adv, [[1.0, -1.0], [-1.0, 1.0]])  # they conflict
    # A constant group, or a missing reward, gives no advantage on that objective.
    adv = objective_advantages(np.array([[1.0, np.nan], [1.0, 0.5]]), group=2)
    np.testing.assert_allclose(adv, [[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="do not split into groups"):
        objective_advantages(np.zeros((3, 2)), group=2)
    g = gram_matrix(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    np.testing.assert_allclose(g, [[5.0, 1.0], [1.0, 10.0]])
