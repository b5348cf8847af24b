"""Per-objective policy gradients of the example trainer (`trainer_examples/gradients.py`):
they are the GRPO gradient with one objective's advantages, their Gram matrix follows the
documented sign convention (a minimised objective's gradient points to smaller raw
values), the parameter subset is the last block, and the proxy comparison is right on
hand-made matrices. In-process, a tiny model, no service."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the example trainer needs the `examples` extra")

from trainer_examples.gradients import (  # noqa: E402
    compare,
    objective_advantages,
    objective_gradients,
    proxy_gram,
    unit_rewards,
)
from trainer_examples.grpo import completion_logprobs, generate, grpo_loss  # noqa: E402
from trainer_examples.model import TinyModel  # noqa: E402

import paceline  # noqa: E402
from paceline.integrations._gradients import gram_matrix, select_parameters  # noqa: E402

N, G = 3, 4


def model_and_rollouts() -> tuple[TinyModel, object]:
    torch.manual_seed(0)
    model = TinyModel(torch.device("cpu"), dim=16, layers=2, heads=2)
    rollouts = generate(model, ["1+1=", "2+3=", "T&F="], G, max_new_tokens=3)
    return model, rollouts


def batch(minimize: list[str] | None = None) -> paceline.Batch:
    return paceline.Batch(run_id="r", step=0, indices=[0, 1, 2],
                          reward_weights={"correct": 0.5, "length": 0.5},
                          minimize=minimize or [], bounds={"length": (0.0, 4.0)})


def test_last_block_and_what_follows() -> None:
    model, _ = model_and_rollouts()
    names = {id(p): n for n, p in model.module.named_parameters()}
    chosen = [names[id(p)] for p in select_parameters(model.module, "last")]
    assert chosen and all(n.startswith(("blocks.1.", "norm.")) for n in chosen)
    assert any(n.startswith("norm.") for n in chosen)
    assert len(select_parameters(model.module, "all")) == len(names)
    assert [names[id(p)] for p in select_parameters(model.module, "embed")] == ["embed.weight"]
    with pytest.raises(ValueError, match="no parameter"):
        select_parameters(model.module, "nothing")


def test_gradient_is_the_grpo_gradient_with_that_objectives_advantages() -> None:
    model, rollouts = model_and_rollouts()
    rng = np.random.default_rng(1)
    rewards = torch.tensor(rng.integers(0, 2, (N, G, 2)), dtype=torch.float32)
    advantages = objective_advantages(unit_rewards(rewards, batch()))
    parameters = select_parameters(model.module, "last")
    grads = objective_gradients(model, rollouts, advantages, parameters)
    for i in range(2):
        logp = completion_logprobs(model, rollouts)
        loss = grpo_loss(logp, logp.detach(), advantages[..., i], rollouts.completion_mask)
        expected = torch.autograd.grad(loss.loss, parameters)
        flat = -torch.cat([g.reshape(-1) for g in expected]).double()  # ascent direction
        torch.testing.assert_close(grads[i], flat, rtol=1e-5, atol=1e-8)


def test_minimised_objective_flips_its_row_and_column() -> None:
    model, rollouts = model_and_rollouts()
    rng = np.random.default_rng(2)
    rewards = torch.tensor(np.stack([rng.integers(0, 2, (N, G)),
                                     rng.integers(0, 5, (N, G))], axis=-1),
                           dtype=torch.float32)
    parameters = select_parameters(model.module, "last")
    grams = []
    for minimize in ([], ["length"]):
        adv = objective_advantages(unit_rewards(rewards, batch(minimize)))
        grams.append(gram_matrix(objective_gradients(model, rollouts, adv, parameters)))
    maximised, minimised = grams
    assert maximised[0, 1] != 0
    np.testing.assert_allclose(minimised[0, 1], -maximised[0, 1], rtol=1e-9)
    np.testing.assert_allclose(np.diag(minimised), np.diag(maximised), rtol=1e-9)
    np.testing.assert_array_equal(maximised, maximised.T)


def test_advantages_per_objective() -> None:
    rewards = torch.tensor([[[1.0, 2.0], [0.0, 2.0]]])  # length constant in the group
    adv = objective_advantages(unit_rewards(rewards, batch(["length"])))
    torch.testing.assert_close(adv, torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]))


def test_compare() -> None:
    real = np.array([[4.0, -1.0], [-1.0, 1.0]])
    same = compare(real, real / 4)
    assert same.gram_cosine == pytest.approx(1.0) and same.conflict_agrees
    assert same.gram_correlation == pytest.approx(1.0)
    assert same.move_cosine == pytest.approx(1.0)
    flipped = compare(real, np.array([[1.0, 0.5], [0.5, 0.25]]))
    assert not flipped.conflict_agrees
    # Real row sums (3, 0) -> centred (1.5, -1.5); proxy (1.5, 0.75) -> (0.375, -0.375).
    assert flipped.move_cosine == pytest.approx(1.0)
    opposite = compare(real, np.array([[0.25, 0.0], [0.0, 1.0]]))
    assert opposite.move_cosine == pytest.approx(-1.0)
    assert math.isnan(compare(np.zeros((2, 2)), np.zeros((2, 2))).gram_cosine)
    rewards = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(proxy_gram(objective_advantages(rewards)), [[1, -1], [-1, 1]])


def test_a_constant_group_has_no_objective_advantage() -> None:
    """A brevity of 2/3 on all 8 rollouts: the float32 mean is an ulp off, the std of
    ~6e-8 passed the `std > 1e-12` test and the group got A = ±1 (signs of rounding)."""
    unit = torch.full((1, 8, 1), 1 - 2 / 6)
    assert torch.equal(objective_advantages(unit), torch.zeros(1, 8, 1))
    mixed = torch.tensor([[[0.0], [1.0], [1.0], [0.0]]])
    assert objective_advantages(mixed).flatten().tolist() == [-1.0, 1.0, 1.0, -1.0]
