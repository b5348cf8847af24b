"""Predicted zero-variance skipping: agreement probabilities by hand, and skipping through
the engine for a distribution-level and the per-sample sampler."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.posteriors import PosteriorConfig, init_posteriors
from paceline_server.strategies.zero_variance import agreement_probability
from support import report, spec


def test_plug_in_and_exact_agreement_by_hand() -> None:
    table = init_posteriors(2, PosteriorConfig())
    table.alpha[1], table.beta[1] = 3.0, 1.0  # mean 0.75
    plug_in = agreement_probability(table, np.array([0, 1]), 2, exact=False)
    np.testing.assert_allclose(plug_in, [0.5, 0.75**2 + 0.25**2])
    exact = agreement_probability(table, np.array([0, 1]), 2, exact=True)
    # Beta(1,1): P(2 of 2) = 1/2 * 2/3 = 1/3, twice -> 2/3.
    # Beta(3,1): P(all pass) = 3/4 * 4/5 = 3/5; P(all fail) = 1/4 * 2/5 = 1/10.
    np.testing.assert_allclose(exact, [2 / 3, 0.7])


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_solved_samples_are_skipped(sampler: str) -> None:
    cur = spec((50, 50), sampler=sampler, batch_size=10,
               zero_variance={"threshold": 0.5, "max_redraws": 5})
    e = CurriculumEngine(cur)
    # Half of d0 solved 8/8 three times: p ~ 0.96, q ~ 0.73 > 0.5. Redraws stay inside
    # the distribution (the mix is the sampler's choice), so d0's slots go to its
    # unsolved half.
    solved = np.arange(25)
    for step in range(3):
        e.apply(report(cur, solved, np.ones((25, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == 10
    if sampler == "uniform":
        assert batch.skipped_zero_variance > 0
    assert (batch.indices < 25).sum() <= 1


def test_skipping_off_keeps_batches_unchanged() -> None:
    plain = CurriculumEngine(spec((50, 50), batch_size=10))
    assert plain.next_batch("r", 0).skipped_zero_variance == 0
    assert plain.state.posteriors is None


def test_batch_near_the_accepted_count_never_hangs() -> None:
    """Issue 14's hang: 5 of 10 indices predicted all-equal, a batch of 9. The sampler
    may skip at most the surplus; the batch is full and distinct, and the rejected
    indices that had to fill it are not counted as skipped."""
    cur = spec((10,), sampler="prioritized", batch_size=9,
               zero_variance={"threshold": 0.3, "max_redraws": 3})
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(5), np.ones((5, 4)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == 9
    assert set(range(5, 10)) <= set(batch.indices.tolist())
    assert batch.skipped_zero_variance == 1  # only one solved index could stay out


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "spard"])
@pytest.mark.parametrize("size", [1, 7, 10])
def test_every_index_rejected_still_fills_the_batch(sampler: str, size: int) -> None:
    cur = spec((10,), sampler=sampler, batch_size=size,
               zero_variance={"threshold": 0.05, "max_redraws": 100})
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(10), np.ones((10, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert np.unique(batch.indices).size == size
    assert batch.skipped_zero_variance <= 10 - size


def test_streak_counts_consecutive_all_equal_groups() -> None:
    from paceline_server.strategies.posteriors import update_posteriors

    table = init_posteriors(4, PosteriorConfig())
    idx = np.array([0, 1, 2, 3])
    trials = np.full(4, 8)
    update_posteriors(table, PosteriorConfig(), idx, np.array([8, 0, 4, 8.0]), trials, 0)
    update_posteriors(table, PosteriorConfig(), idx, np.array([8, 0, 8, 3.0]), trials, 1)
    assert table.streak is not None
    assert table.streak.tolist() == [2, -2, 1, 0]
    update_posteriors(table, PosteriorConfig(), idx, np.array([0, 8, 8, 8.0]), trials, 2)
    assert table.streak.tolist() == [-1, 1, 2, 1]


def test_a_snapshot_saved_before_streaks_resumes_with_fresh_streaks() -> None:
    from paceline_server.domain.npz import load_npz, save_npz

    cur = spec((20,), sampler="prioritized", zero_variance=True, batch_size=4)
    e = CurriculumEngine(cur)
    e.apply(report(cur, [1], np.ones((1, 4))))
    sections = load_npz(e.to_bytes(), "test")
    table = load_npz(sections["posteriors"].tobytes(), "test")
    assert "streak" in table
    del table["streak"]  # as written before the streak existed
    sections["posteriors"] = np.frombuffer(save_npz(table), dtype=np.uint8)
    old = CurriculumEngine.from_bytes(e.spec, save_npz(sections))
    assert old.state.posteriors is not None and old.state.posteriors.streak is not None
    assert old.state.posteriors.streak.tolist() == [0] * 20
    np.testing.assert_array_equal(old.state.posteriors.alpha, e.state.posteriors.alpha)


def test_the_table_keeps_only_what_is_read() -> None:
    # prioritized without skipping: rates, no streak.
    plain = CurriculumEngine(spec((20,), sampler="prioritized")).state.posteriors
    assert plain is not None and plain.alpha.size == 20 and plain.streak is None
    # learnability predicts agreement itself: streaks only (1 byte per sample).
    own = CurriculumEngine(spec((20,), sampler="learnability", zero_variance=True))
    table = own.state.posteriors
    assert table is not None and table.alpha.size == 0 and table.streak is not None
    own.apply(report(own.spec, [3], np.ones((1, 4))))
    assert table.streak[3] == 1
    assert own.next_batch("r", 1).indices.size == 16


def test_coins_are_uniform_and_fixed_per_salt() -> None:
    from paceline_server.strategies.zero_variance import coin

    values = coin(np.arange(100_000), 7)
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
    assert np.array_equal(values[:10], coin(np.arange(10), 7))
    assert not np.array_equal(values[:10], coin(np.arange(10), 8))


def solved_half(sampler: Any, visits: int, zero_variance: Any = True,
                group: int = 8) -> tuple[CurriculumEngine, np.ndarray]:
    """d0 = 300 prompts: 0-99 reported all-correct and 100-199 half-correct `visits`
    times, 200-299 unseen; 20 batches of 20."""
    cur = spec((300,), sampler=sampler, batch_size=20, zero_variance=zero_variance)
    e = CurriculumEngine(cur)
    rewards = np.ones((200, group))
    rewards[100:, : group // 2] = 0.0
    for step in range(visits):
        e.apply(report(cur, np.arange(200), rewards, step=step))
    return e, np.concatenate([e.next_batch("r", visits + s).indices for s in range(20)])


@pytest.mark.parametrize("sampler", [
    "uniform", "dump_ucb", "prioritized",
    # learnability already ranks solved prompts last; a band that wants them shows
    # skipping acting on top of its own choice (c = 2 candidates per slot: with more,
    # a rejected solved prompt is mostly replaced by another solved one, as the band
    # asks, and the share below moves less; no revisit discount, which would rank the
    # thrice-seen solved prompts below the unseen ones by itself).
    {"kind": "learnability", "params": {"band": [0.7, 1.0], "candidates": 2.0,
                                        "revisit_discount": 1.0}}])
@pytest.mark.parametrize("visits", [1, 2, 3])
def test_skipping_triggers_at_the_defaults_within_three_visits(sampler: Any,
                                                               visits: int) -> None:
    e, picked = solved_half(sampler, visits)
    plain, plain_picked = solved_half(sampler, visits, zero_variance=None)
    share = (picked < 100).mean()
    plain_share = (plain_picked < 100).mean()
    # Kept with probability 1/2, 1/4, 1/8 (redraws may land on solved prompts again).
    assert share < {1: 0.8, 2: 0.6, 3: 0.5}[visits] * plain_share, (share, plain_share)
    batch = e.next_batch("r", 99)
    assert batch.skipped_zero_variance > 0
    assert batch.rollouts_saved == 8 * batch.skipped_zero_variance
    assert plain.next_batch("r", 99).rollouts_saved == 0


def test_explore_one_turns_the_streak_rule_off() -> None:
    # After one visit the posterior alone (q = 0.9^8 + 0.1^8 = 0.43) predicts nothing.
    e, _ = solved_half("uniform", 1, zero_variance={"explore": 1.0})
    assert all(e.next_batch("r", s).skipped_zero_variance == 0 for s in range(10))


@pytest.mark.parametrize("sampler", ["uniform", "prioritized", "learnability", "spard"])
def test_skipping_never_starves_a_batch(sampler: str) -> None:
    cur = spec((30,), sampler=sampler, batch_size=30, zero_variance=True)
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(30), np.ones((30, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert sorted(batch.indices.tolist()) == list(range(30))
    assert batch.skipped_zero_variance == 0 and batch.rollouts_saved == 0


def test_skipping_is_deterministic() -> None:
    a, picked_a = solved_half("learnability", 2)
    b, picked_b = solved_half("learnability", 2)
    assert np.array_equal(picked_a, picked_b)
    assert a.next_batch("r", 5).same_as(b.next_batch("r", 5))


@pytest.mark.parametrize("explore", [-0.1, 1.5, "x"])
def test_bad_explore_is_refused(explore: Any) -> None:
    from paceline_server.domain import InvalidSpec

    with pytest.raises(InvalidSpec, match="explore"):
        spec((10,), zero_variance={"explore": explore})


def test_rollouts_saved_over_rest_and_from_a_stored_batch(tmp_path: Any) -> None:
    from api_support import make_client

    body = {"name": "zv", "layout": {"distributions": [{"name": "d0", "size": 300}]},
            "objectives": ["acc"], "sampler": "uniform", "batch_size": 20,
            "zero_variance": True}
    with make_client(f"sqlite:///{tmp_path / 'zv.db'}") as client:
        assert client.post("/v1/curricula", json=body).status_code == 201
        assert client.post("/v1/curricula/zv/runs", json={"run_id": "r"}).status_code == 201
        for step in range(3):
            report_body = {"run_id": "r", "step": step, "indices": list(range(150)),
                           "rewards": np.ones((150, 8)).tolist(), "unserved": "accept"}
            assert client.post("/v1/curricula/zv/reports",
                               json=report_body).status_code == 200
        first = client.post("/v1/curricula/zv/batches", json={"run_id": "r", "step": 3})
        assert first.status_code == 200
        batch = first.json()
        assert batch["skipped_zero_variance"] > 0
        assert batch["rollouts_saved"] == 8 * batch["skipped_zero_variance"]
        again = client.post("/v1/curricula/zv/batches", json={"run_id": "r", "step": 3})
        assert again.json() == batch  # the stored batch keeps the figure


def test_a_batch_stored_before_rollouts_saved_decodes_with_zero() -> None:
    import msgpack

    from paceline_server.app.codec import MAGIC, decode_batch, encode_batch

    cur = spec((50,), zero_variance=True, batch_size=5)
    batch = CurriculumEngine(cur).next_batch("r", 0)
    fields = msgpack.unpackb(encode_batch(batch)[len(MAGIC):], raw=False)
    assert "rollouts_saved" in fields
    del fields["rollouts_saved"]
    old = decode_batch(MAGIC + msgpack.packb(fields, use_bin_type=True))
    assert old.rollouts_saved == 0 and np.array_equal(old.indices, batch.indices)


def test_rollouts_saved_crosses_grpc_into_the_client_model() -> None:
    from paceline import Batch as ClientBatch
    from paceline import _grpc_codec
    from paceline_server.grpc import convert

    cur = spec((300,), batch_size=20, zero_variance=True)
    e = CurriculumEngine(cur)
    for step in range(3):
        e.apply(report(cur, np.arange(150), np.ones((150, 8)), step=step))
    batch = e.next_batch("r", 3)
    assert batch.rollouts_saved == 8 * batch.skipped_zero_variance > 0
    message = convert.batch(batch, cur.objective_names, cur.layout.names)
    wire = type(message).FromString(message.SerializeToString())
    received = ClientBatch(**_grpc_codec.batch(wire))  # type: ignore[arg-type]
    assert received.rollouts_saved == batch.rollouts_saved
    assert received.skipped_zero_variance == batch.skipped_zero_variance


def test_threshold_one_never_rejects_on_rounding() -> None:
    """threshold 1 samples every agreement: q = P(all agree) is at most 1, but with groups
    of 1 the Beta-Binomial sum a/(a+b) + b/(a+b) can round to 1 + 2^-52 (here for two
    prompts of `learnability`'s posterior), which `q > threshold` rejected."""
    cur = spec((2000, 2000), sampler="learnability", batch_size=256,
               zero_variance={"threshold": 1.0, "group_size": 1, "explore": 1.0})
    e = CurriculumEngine(cur)
    rng = np.random.default_rng(1)
    p = rng.random(4000)
    for step in range(60):
        batch = e.next_batch("r", step)
        rewards = (rng.random((256, 5)) < p[batch.indices, None]).astype(float)
        e.apply(report(cur, batch.indices, rewards, step=step))
    ctx = e._propose_context(60, e.decision().weights)
    assert ctx.accept is not None
    assert ctx.accept(np.arange(4000)).all()
    # The same through the predicate alone, whatever predicts the agreement.
    from paceline_server.strategies.zero_variance import ZeroVarianceFilter

    above_one = ZeroVarianceFilter(init_posteriors(3, PosteriorConfig()), 1, 1.0, 3, True,
                                   predict=lambda i: np.full(i.size, np.nextafter(1.0, 2.0)))
    assert above_one.accept(np.arange(3)).all()
