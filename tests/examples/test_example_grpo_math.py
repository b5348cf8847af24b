"""The example trainer's GRPO pieces against hand-computed values: advantages, the loss's
gradient (advantage-weighted, loss weights multiplying each prompt, clipping), the
completion mask, padding invariance of the tiny model, rewards and the hypervolume."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer_examples.grpo import (  # noqa: E402
    completion_logprobs,
    completion_mask,
    generate,
    group_advantages,
    grpo_loss,
    supervised_loss,
    zero_variance,
)
from trainer_examples.metrics import hypervolume  # noqa: E402
from trainer_examples.model import TinyModel, left_pad  # noqa: E402
from trainer_examples.tasks import TaskSet, score  # noqa: E402

torch.set_num_threads(1)


def test_group_advantages_normalise_each_group() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards, eps=0.0)
    # group 0: mean 0.5, sample std sqrt(1/3)
    expected0 = (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / math.sqrt(1 / 3)
    assert torch.allclose(adv[0], expected0)
    with_eps = group_advantages(rewards)
    assert torch.equal(with_eps[1], torch.zeros(4))  # zero variance: no signal, no NaN
    assert torch.allclose(with_eps.mean(-1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(adv[2].std(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1))


def test_a_group_of_equal_rewards_has_no_advantage() -> None:
    """Eight equal rewards of 0.3 (wrong but formatted under w = (0.7, 0.3)) or 0.7: their
    float32 mean is an ulp off, and eps turned that into A = +3e-4 / +6e-4 for every
    rollout of the group (the documented A = 0, and a loss of exactly 0, did not hold)."""
    rewards = torch.rand(4, 8, generator=torch.Generator().manual_seed(0))
    rewards[0], rewards[2] = 0.7 * 1.0 + 0.3 * 0.0, 0.7 * 0.0 + 0.3 * 1.0
    assert rewards.dtype == torch.float32
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(8)) and torch.equal(adv[2], torch.zeros(8))
    assert torch.equal(adv[[1, 3]], group_advantages(rewards[[1, 3]]))
    assert zero_variance(rewards).tolist() == [True, False, True, False]


def test_completion_mask_keeps_tokens_through_the_first_eos() -> None:
    eos = 1
    tokens = torch.tensor([[5, 6, 1, 0, 0], [1, 7, 1, 0, 0], [5, 5, 5, 5, 5]])
    assert completion_mask(tokens, eos).tolist() == [
        [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_loss_gradient_is_advantage_times_loss_weight() -> None:
    n, g, m = 2, 2, 3
    old = torch.log(torch.full((n * g, m), 0.5))
    logp = old.clone().requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.0, -1.0], [0.5, -0.5]])
    weights = torch.tensor([2.0, 0.5])
    parts = grpo_loss(logp, old, adv, mask, weights)
    parts.loss.backward()
    # d loss / d logp[r, t] = -A_r * w_i / (n * g * |completion r|) on completion tokens
    lengths = mask.sum(-1, keepdim=True)
    expected = (-adv.reshape(-1, 1) * weights.repeat_interleave(g)[:, None]
                / (n * g * lengths)) * mask
    assert logp.grad is not None
    assert torch.allclose(logp.grad, expected)
    assert parts.clip_fraction == 0.0

    logp.grad = None
    grpo_loss(logp, old, adv, mask, None).loss.backward()
    unweighted = logp.grad
    assert torch.allclose(unweighted * weights.repeat_interleave(g)[:, None], expected)


def test_clipped_ratio_stops_the_gradient() -> None:
    old = torch.zeros(2, 1)
    logp = torch.tensor([[math.log(1.5)], [math.log(1.5)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    parts = grpo_loss(logp, old, adv, torch.ones(2, 1), clip_eps=0.2)
    parts.loss.backward()
    assert logp.grad is not None
    # A > 0 and ratio 1.5 > 1.2: clipped, no gradient; A < 0: min picks the unclipped term.
    assert logp.grad[0, 0] == 0.0
    assert logp.grad[1, 0] == pytest.approx(1.5 / 2)
    assert parts.clip_fraction == pytest.approx(0.5)


def test_kl_term_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    ref = torch.log(torch.full((2, 2), 0.5))
    adv = torch.zeros(1, 2)
    same = grpo_loss(ref, ref, adv, torch.ones(2, 2), ref_logp=ref, kl_coef=0.1)
    moved = grpo_loss(ref + 0.3, ref + 0.3, adv, torch.ones(2, 2), ref_logp=ref,
                      kl_coef=0.1)
    assert same.kl == 0.0
    assert moved.kl > 0
    assert float(moved.loss) == pytest.approx(0.1 * moved.kl)


def test_tiny_model_is_invariant_to_left_padding() -> None:
    torch.manual_seed(0)
    model = TinyModel(torch.device("cpu"), dim=32, layers=1, heads=2)
    tok = model.tokenizer
    alone = left_pad([tok.encode("3+4=")], tok.pad_id, model.device)
    padded = left_pad([tok.encode("3+4="), tok.encode("T&!F|T=")], tok.pad_id, model.device)
    a = model.logits(alone.input_ids, alone.attention_mask)[0, -1]
    b = model.logits(padded.input_ids, padded.attention_mask)[0, -1]
    assert torch.allclose(a, b, atol=1e-5)


def test_generate_groups_and_logprobs_line_up() -> None:
    torch.manual_seed(0)
    model = TinyModel(torch.device("cpu"), dim=32, layers=1, heads=2)
    rollouts = generate(model, ["3+4=", "T&F="], group_size=3, max_new_tokens=4)
    assert rollouts.size == 6
    assert rollouts.completion_mask.shape == (6, 4)
    assert rollouts.lengths == rollouts.completion_mask.sum(-1).int().tolist()
    # Row r is prompt r // g: the prompt columns repeat within a group.
    prompts = rollouts.input_ids[:, : rollouts.prompt_width]
    assert torch.equal(prompts[0], prompts[2])
    assert not torch.equal(prompts[0], prompts[3])
    logp = completion_logprobs(model, rollouts)
    assert logp.shape == (6, 4)
    assert bool((logp <= 0).all())
    assert bool((logp[rollouts.completion_mask == 0] == 0).all())


def test_rollouts_of_some_prompts_keep_each_group_together() -> None:
    torch.manual_seed(0)
    model = TinyModel(torch.device("cpu"), dim=32, layers=1, heads=2)
    rollouts = generate(model, ["3+4=", "T&F=", "12+9="], group_size=2, max_new_tokens=4)
    picked = rollouts.prompts([2, 0], group_size=2)
    rows = [4, 5, 0, 1]  # prompt 2's group, then prompt 0's
    assert picked.size == 4 and picked.prompt_width == rollouts.prompt_width
    assert torch.equal(picked.input_ids, rollouts.input_ids[rows])
    assert torch.equal(picked.attention_mask, rollouts.attention_mask[rows])
    assert torch.equal(picked.completion_mask, rollouts.completion_mask[rows])
    assert picked.texts == [rollouts.texts[r] for r in rows]
    assert picked.finished == [rollouts.finished[r] for r in rows]
    assert picked.lengths == [rollouts.lengths[r] for r in rows]
    torch.testing.assert_close(completion_logprobs(model, picked),
                               completion_logprobs(model, rollouts)[rows])


def test_supervised_loss_falls_when_fitting_one_batch() -> None:
    torch.manual_seed(0)
    model = TinyModel(torch.device("cpu"), dim=32, layers=1, heads=2)
    problems = [(p.prompt, p.target(i % 2 == 0))
                for i, p in enumerate(TaskSet(seed=0, eval_size=4).distributions[0].train[:8])]
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-2)
    first = float(supervised_loss(model, problems).detach())
    for _ in range(30):
        loss = supervised_loss(model, problems)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(supervised_loss(model, problems).detach()) < first / 2


def test_tasks_layout_and_scores() -> None:
    tasks = TaskSet(seed=0, eval_size=16)
    sizes = [d.size for d in tasks.distributions]
    assert len(set(sizes)) == len(sizes)  # different sizes
    assert len(tasks) == sum(sizes)
    assert tasks.distribution_of([0, sizes[0], len(tasks) - 1]).tolist() == [
        0, 1, len(sizes) - 1]
    add2 = tasks.distributions[tasks.names.index("add2")]
    assert not set(add2.eval) & set(add2.train)  # held out
    assert score("7.", True, "7") == (1.0, 1.0)
    assert score("7", True, "7") == (1.0, 0.0)  # right, not in the requested format
    assert score("7.", False, "7") == (0.0, 0.0)  # no EOS: neither
    assert score("8.", True, "7") == (0.0, 1.0)  # wrong but well formed
    assert score("", True, "7") == (0.0, 0.0)  # an immediate EOS earns nothing
    assert score(".", True, "7") == (0.0, 0.0)
    assert score("7..", True, "7") == (0.0, 0.0)
    assert score("12T.", True, "12") == (0.0, 0.0)
    assert score("T.", True, "F") == (0.0, 1.0)
    assert score("7.", True, "F") == (0.0, 0.0)  # a number is no logic answer
    sft = tasks.sample_supervised(np.random.default_rng(0), 400, format_rate=0.25)
    share = sum(target.endswith(".") for _, target in sft) / len(sft)
    assert 0.18 < share < 0.32


@pytest.mark.parametrize(("prompt", "answer"), [
    ("T&!F=", "T"), ("!T|F=", "F"), ("T^T=", "F"), ("T|F&F=", "F"), ("F^T&!F=", "T")])
def test_logic_problems_evaluate_left_to_right(prompt: str, answer: str) -> None:
    tasks = TaskSet(seed=0)
    problems = {p.prompt: p.answer for d in tasks.distributions for p in d.train}
    assert problems[prompt] == answer


def test_hypervolume_of_a_two_point_front() -> None:
    # (0.5, 0.2) and (0.2, 0.6) above (0, 0): 0.5*0.2 + 0.2*0.6 - 0.2*0.2 = 0.18
    assert hypervolume([[0.5, 0.2], [0.2, 0.6]], [0.0, 0.0]) == pytest.approx(0.18)
    assert hypervolume([[0.1, 0.1]], [0.2, 0.0]) == 0.0
    assert hypervolume([[1, 1, 1], [2, 0.5, 0.5]], [0, 0, 0]) == pytest.approx(1.25)


def test_brevity_objective_and_objective_choice() -> None:
    """The opt-in third objective: the closed answer keeps most of it, an immediate EOS
    (the "say nothing" hack) gets all of it and nothing else, no EOS gets nothing."""
    from trainer_examples.loop import Config

    three = ("correct", "format", "brevity")
    assert score("7.", True, "7", three, 6) == pytest.approx((1.0, 1.0, 1 - 2 / 6))
    assert score("7", True, "7", three, 6) == pytest.approx((1.0, 0.0, 1 - 1 / 6))
    assert score("", True, "7", three, 6) == (0.0, 0.0, 1.0)
    assert score("7.", False, "7", three, 6) == (0.0, 0.0, 0.0)
    assert score("123456789", True, "7", three, 6) == (0.0, 0.0, 0.0)  # clipped at 0
    assert score("7.", True, "7", ("correct", "brevity"), 4) == (1.0, 0.5)
    assert Config(objectives=three, preference=(0.6, 0.2, 0.2)).objectives == three
    with pytest.raises(ValueError, match="one preference weight per objective"):
        Config(objectives=three)  # the default preference has two weights
    with pytest.raises(ValueError, match="must start with 'correct'"):
        Config(objectives=("format", "correct"))
    with pytest.raises(ValueError, match="must start with 'correct'"):
        Config(objectives=("correct", "length"))
