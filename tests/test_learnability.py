"""The `learnability` sampler: hierarchical pass-rate posterior, Thompson selection toward
the informative middle, allocation modes, continuous rewards, state and parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.domain import InvalidParams
from paceline_server.engine import CurriculumEngine
from paceline_server.strategies.registry import available_samplers
from paceline_server.strategies.samplers.learnability import LearnabilitySampler, LearnabilityState
from paceline_server.strategies.state_codec import decode_state, encode_state
from support import hopeless_share_under_a_length_term, report, spec


def engine(sizes: tuple[int, ...] = (40, 60), batch_size: int = 8, seed: int = 0,
           zero_variance: Any = None, objective_names: tuple[str, ...] = ("acc",),
           **params: Any) -> CurriculumEngine:
    return CurriculumEngine(spec(sizes, objective_names=objective_names,
                                 sampler={"kind": "learnability", "params": params},
                                 batch_size=batch_size, seed=seed,
                                 zero_variance=zero_variance))


def sampler_of(e: CurriculumEngine) -> LearnabilitySampler:
    assert isinstance(e.sampler, LearnabilitySampler)
    return e.sampler


def posterior_mean(e: CurriculumEngine, indices: list[int]) -> np.ndarray:
    a, b = sampler_of(e).posterior(e.state.sampler, np.asarray(indices))
    return np.asarray(a / (a + b))


def test_registered() -> None:
    assert "learnability" in available_samplers()


def test_prior_pooling_by_hand() -> None:
    e = engine(prior_strength=4.0, gamma=0.5, pool_gamma=0.9)
    # Index 3 solved 1 of 8 times, index 5 never: d0 pools 1/8 -> mu = 2/10.
    e.apply(report(e.spec, [3], np.array([[1, 0, 0, 0, 0, 0, 0, 0.0]])))
    mu = (1 + 1) / (8 + 2)
    np.testing.assert_allclose(sampler_of(e).pooled_mean(e.state.sampler), [mu, 0.5])
    # Seen: Beta(4 mu + 1, 4 (1 - mu) + 7); unseen of d0 inherits Beta(4 mu, 4 (1 - mu)).
    np.testing.assert_allclose(posterior_mean(e, [3, 5, 50]),
                               [(4 * mu + 1) / 12, mu, 0.5], rtol=1e-6)
    # A second visit forgets half the first (gamma = 0.5 per visit); the pool counts
    # first visits only: index 5's group (0/8) does, index 3's revisit does not.
    e.apply(report(e.spec, [3, 5], np.r_[np.ones((1, 8)), np.zeros((1, 8))], step=1))
    state = e.state.sampler
    assert state.successes[3] == pytest.approx(0.5 * 1 + 8)
    assert state.failures[3] == pytest.approx(0.5 * 7)
    assert state.pool_trials[0] == pytest.approx(0.9 * 8 + 8)
    assert state.pool_successes[0] == pytest.approx(0.9 * 1)


def test_pool_ignores_revisits_until_a_distribution_is_exhausted() -> None:
    e = engine(sizes=(4, 60), prior_strength=4.0, pool_gamma=0.5)
    e.apply(report(e.spec, [0, 1, 2], np.zeros((3, 8))))
    state = e.state.sampler
    # Revisits only: they add nothing while index 3 of d0 is still unseen (the report
    # still fades the pool, as every report does).
    e.apply(report(e.spec, [0, 1], np.ones((2, 8)), step=1))
    assert state.pool_trials[0] == pytest.approx(0.5 * 24)
    assert state.pool_successes[0] == pytest.approx(0.0)
    # Index 3's first visit counts (it was unseen when reported).
    e.apply(report(e.spec, [3], np.ones((1, 8)), step=2))
    assert state.pool_trials[0] == pytest.approx(0.25 * 24 + 8)
    assert int(state.unseen[0]) == 0
    # d0 exhausted: every group counts from now on.
    e.apply(report(e.spec, [0], np.ones((1, 8)), step=3))
    assert state.pool_trials[0] == pytest.approx(0.5 * (0.25 * 24 + 8) + 8)


def test_a_distribution_left_alone_drifts_back_to_the_flat_prior() -> None:
    # d1 looks hopeless (0 of 8 on each first visit); afterwards only d0 is reported.
    # Its pooled evidence fades at every report all the same, so its unseen prompts'
    # prior returns toward Beta(1, 1) (expected score 1/6) and they are worth a try
    # again: a verdict on a policy that has since changed does not stand forever.
    e = engine(sizes=(40, 60), pool_gamma=0.8, allocation="none")
    e.apply(report(e.spec, np.arange(40, 48), np.zeros((8, 8))))
    lr = sampler_of(e)
    state = e.state.sampler
    after_visit = lr.pooled_mean(state)[1]
    _, _, unseen_mass = lr._masses(state)
    hopeless_worth = unseen_mass[1] / state.unseen[1]
    assert after_visit < 0.05
    for step in range(1, 31):
        e.apply(report(e.spec, [step % 40], np.full((1, 8), 0.5), step=step))
    assert state.pool_trials[1] == pytest.approx(64 * 0.8 ** 30)
    assert lr.pooled_mean(state)[1] == pytest.approx(0.5, abs=0.03)
    _, _, unseen_mass = lr._masses(state)
    assert unseen_mass[1] / state.unseen[1] > max(5 * hopeless_worth, 0.15)


def climb(e: CurriculumEngine, first: int, count: int, step: int = 1) -> None:
    """First visits of d0 prompts `first`..`first + count - 1`, all solved: d0's pooled
    pass rate (its level) rises."""
    e.apply(report(e.spec, np.arange(first, first + count), np.ones((count, 8)), step=step))


@pytest.mark.parametrize("shift", [True, False])
def test_level_shift_moves_a_seen_prompt_with_its_distribution(shift: bool) -> None:
    # Index 0 went 2 of 8 while d0 stood at its flat prior (level 0.5 -> after the visit
    # the pool says 3/10); then 16 first visits of d0 all pass and the level climbs.
    e = engine(sizes=(40, 60), prior_strength=4.0, gamma=0.5, pool_gamma=1.0,
               level_shift=shift, revisit_drift=False)
    lr, state = sampler_of(e), e.state.sampler
    e.apply(report(e.spec, [0], np.r_[np.ones(2), np.zeros(6)][None, :]))
    before = float(posterior_mean(e, [0])[0])
    level_then = lr.pooled_mean(state)[0]
    assert level_then == pytest.approx(3 / 10)
    climb(e, 1, 16)
    mu = lr.pooled_mean(state)[0]
    assert mu == pytest.approx((3 + 128) / (8 + 128 + 2))
    a, b = lr.posterior(state, np.array([0, 30]))
    # Unseen index 30 is the current prior whatever the rule.
    assert a[1] / (a[1] + b[1]) == pytest.approx(mu)
    on_current_prior = (4.0 * mu + 2) / 12  # the counts on today's prior, no shift
    if shift:
        # The counts on the prior of their report, then moved by the level's logit step,
        # keeping the total (a + b = 12).
        def logit(p: float) -> float:
            return float(np.log(p / (1 - p)))
        then_mean = (4.0 * level_then + 2) / 12
        expected = 1 / (1 + np.exp(-(logit(then_mean) + logit(mu) - logit(level_then))))
        assert a[0] / (a[0] + b[0]) == pytest.approx(expected, rel=1e-5)
        assert a[0] + b[0] == pytest.approx(12.0)
        assert expected > on_current_prior + 0.2  # 2/8 at level 0.3 ~ 0.75 at level 0.95
    else:
        assert a[0] / (a[0] + b[0]) == pytest.approx(on_current_prior, rel=1e-6)
    assert before == pytest.approx((4.0 * level_then + 2) / 12, rel=1e-6)


def test_level_shift_changes_nothing_right_after_a_report() -> None:
    # Just reported, a prompt's anchor is its distribution's level now: the posterior is
    # the counts on the current prior, as without the shift.
    shifted, plain = (engine(sizes=(40, 60), level_shift=flag, revisit_drift=False)
                      for flag in (True, False))
    rng = np.random.default_rng(3)
    for step in range(5):
        indices = rng.choice(100, 12, replace=False)
        rewards = (rng.random((12, 8)) < 0.4).astype(float)
        for e in (shifted, plain):
            e.apply(report(e.spec, indices, rewards, step=step))
    last = np.unique(indices)
    np.testing.assert_allclose(posterior_mean(shifted, list(last)),
                               posterior_mean(plain, list(last)), rtol=1e-5)
    # Prompts reported earlier have moved with their distribution's level since.
    earlier = np.setdiff1d(np.flatnonzero(shifted.state.sampler.successes
                                          + shifted.state.sampler.failures), last)
    assert not np.allclose(posterior_mean(shifted, list(earlier)),
                           posterior_mean(plain, list(earlier)), rtol=1e-4)


def test_the_expected_ranking_reads_the_shifted_posterior() -> None:
    # Index 0 went 4 of 8 at d0's flat level; after d0 climbs it is expected to pass
    # ~0.9 and no longer promises the most signal. A fresh 4-of-8 prompt does.
    e = engine(sizes=(40,), prior_strength=4.0, pool_gamma=1.0, allocation="none",
               revisit_drift=False, revisit_discount=1.0)
    e.apply(report(e.spec, [0], np.r_[np.ones(4), np.zeros(4)][None, :]))
    climb(e, 1, 16)
    e.apply(report(e.spec, [20], np.r_[np.ones(4), np.zeros(4)][None, :], step=2))
    lr, state = sampler_of(e), e.state.sampler
    rng = np.random.default_rng(0)
    candidates = np.array([0, 20])
    scores = lr._scores(state, candidates, np.zeros(2, dtype=np.int64),
                        np.ones(2, dtype=bool), rng)
    np.testing.assert_allclose(scores, lr.expected_score(*lr.posterior(state, candidates)))
    assert scores[1] > scores[0]
    # Without the shift the stale leaf is read: index 0 still looks as good as when seen.
    plain = engine(sizes=(40,), prior_strength=4.0, pool_gamma=1.0, allocation="none",
                   level_shift=False, revisit_drift=False, revisit_discount=1.0)
    plain.apply(report(plain.spec, [0], np.r_[np.ones(4), np.zeros(4)][None, :]))
    leaf_then = float(plain.state.sampler.tree.leaves[0, 0])
    climb(plain, 1, 16)
    stale = sampler_of(plain)._scores(plain.state.sampler, np.array([0]),
                                      np.zeros(1, dtype=np.int64), np.ones(1, dtype=bool), rng)
    assert stale[0] == pytest.approx(leaf_then)


def test_revisit_drift_by_hand() -> None:
    # d0: prompts 0-7 go 4 of 8 on their first visit, then pass 8 of 8 on a revisit
    # (trained, they got easier than their distribution); prompt 8 went 4 of 8 once and
    # is not revisited. The drift is one Newton step from the revisits' residuals; it
    # moves every seen prompt of d0 (8 too) and no unseen one, and nothing in d1.
    e = engine(sizes=(40, 60), prior_strength=4.0, pool_gamma=0.5)
    lr, state = sampler_of(e), e.state.sampler
    half = np.r_[np.ones(4), np.zeros(4)]
    e.apply(report(e.spec, np.arange(9), np.tile(half, (9, 1))))
    assert not state.drift_information.any()  # first visits teach the drift nothing
    a, b = lr._posterior(state, np.arange(8), np.zeros(8, dtype=np.int64),
                         lr.pooled_mean(state), lr.prior_strength(state), drift=False)
    predicted = a / (a + b)
    before_8 = posterior_mean(e, [8])[0]
    e.apply(report(e.spec, np.arange(8), np.ones((8, 8)), step=1))
    residual = np.sum(8 - 8 * predicted)
    information = np.sum(8 * predicted * (1 - predicted))
    assert state.drift_residual[0] == pytest.approx(residual)
    assert state.drift_information[0] == pytest.approx(information)
    delta = residual / (information + 4.0)
    np.testing.assert_allclose(lr.drift(state), [delta, 0.0])
    assert delta > 1.0
    # Prompt 8: its own counts and level shift, then δ on the logit (total kept).
    a8, b8 = lr._posterior(state, np.array([8]), np.array([0]), lr.pooled_mean(state),
                           lr.prior_strength(state), drift=False)
    undrifted = float(a8[0] / (a8[0] + b8[0]))
    expected = 1 / (1 + np.exp(-(np.log(undrifted / (1 - undrifted)) + delta)))
    drifted, unseen_after = posterior_mean(e, [8, 20])
    assert drifted == pytest.approx(expected, rel=1e-6)
    assert drifted > before_8 + 0.2
    # An unseen prompt is its distribution's prior, drift or not.
    mu = lr.pooled_mean(state)[0]
    assert unseen_after == pytest.approx(mu)
    # The sums fade by pool_gamma at every report, revisits or not.
    e.apply(report(e.spec, [50], np.tile(half, (1, 1)), step=2))
    assert state.drift_residual[0] == pytest.approx(0.5 * residual)


def test_revisit_drift_off_keeps_the_estimates_still() -> None:
    runs = {}
    for flag in (True, False):
        e = engine(sizes=(40, 60), prior_strength=4.0, revisit_drift=flag)
        half = np.r_[np.ones(4), np.zeros(4)]
        e.apply(report(e.spec, np.arange(9), np.tile(half, (9, 1))))
        e.apply(report(e.spec, np.arange(8), np.ones((8, 8)), step=1))
        runs[flag] = e
    off = runs[False].state.sampler
    assert not off.drift_residual.any() and not off.drift_information.any()
    assert posterior_mean(runs[True], [8])[0] > posterior_mean(runs[False], [8])[0] + 0.2
    on = runs[True]
    assert sampler_of(on).describe(on.state.sampler)["revisit_drift"][0] > 1.0
    # The explanation says so for d0 (drift > 0) and not for d1 (none).
    reasons = sampler_of(on).explain(on.state.sampler, on._propose_context(1, np.ones(1)))
    assert "logits easier" in reasons[0].clause and reasons[0].terms["revisit_drift"] > 1.0
    assert "logits easier" not in reasons[1].clause
    assert reasons[1].terms["revisit_drift"] == 0.0
    off = runs[False]
    quiet = sampler_of(off).explain(off.state.sampler, off._propose_context(1, np.ones(1)))
    assert "revisit_drift" not in quiet[0].terms


def test_a_revisit_that_fails_more_than_predicted_does_not_drift_down() -> None:
    # Failing more than predicted is forgetting or noise (the level follows those): the
    # residual is kept, the drift stays at 0 and the estimates do not move.
    e = engine(sizes=(40,), prior_strength=4.0)
    half = np.r_[np.ones(4), np.zeros(4)]
    e.apply(report(e.spec, np.arange(9), np.tile(half, (9, 1))))
    still = engine(sizes=(40,), prior_strength=4.0, revisit_drift=False)
    still.apply(report(still.spec, np.arange(9), np.tile(half, (9, 1))))
    for each in (e, still):
        each.apply(report(each.spec, np.arange(8), np.zeros((8, 8)), step=1))
    state = e.state.sampler
    assert state.drift_residual[0] < -10.0
    assert sampler_of(e).drift(state)[0] == 0.0
    np.testing.assert_allclose(posterior_mean(e, [8, 3]), posterior_mean(still, [8, 3]))


def test_informative_revisits_beat_unseen_prompts() -> None:
    # d0: 8 prompts seen, half of them 4/8 (informative), half all-correct; 992 unseen.
    # Ranked by expected score, the informative revisits fill the batch before any
    # unseen prompt (whose value is the prior's expected score); Thompson ranking lets
    # unseen prompts in by the luck of their draw (shown with c = 2 candidates per slot:
    # the more candidates, the likelier an informative revisit is among them either way).
    rewards = np.zeros((8, 8))
    rewards[:4, :4] = 1.0
    rewards[4:] = 1.0

    def share_informative(ranking: str) -> float:
        e = engine(sizes=(1000,), batch_size=2, ranking=ranking, allocation="none",
                   candidates=2.0, revisit_discount=1.0)
        e.apply(report(e.spec, np.arange(8), rewards))
        picked = np.concatenate([e.next_batch("r", s).indices for s in range(1, 21)])
        return float((picked < 4).mean())

    assert share_informative("expected") > 0.85
    assert share_informative("thompson") < 0.85


def test_revisit_discount_by_hand() -> None:
    """Every report that includes a prompt counts one visit (twice in one report: two);
    a seen prompt's ranking score and its tree leaf are its expected score times ρ^v,
    an unseen prompt's is its prior's, undiscounted."""
    rho = 0.5
    e = engine(sizes=(40,), revisit_discount=rho)
    half = np.r_[np.ones(4), np.zeros(4)]
    e.apply(report(e.spec, [3, 5], np.stack([half, half])))
    e.apply(report(e.spec, [3, 3], np.stack([half, half]), step=1))
    sampler, state = sampler_of(e), e.state.sampler
    assert state.visits[[3, 5, 7]].tolist() == [3, 1, 0]
    candidates = np.array([3, 5, 7])
    a, b = sampler.posterior(state, candidates)
    expected = sampler.expected_score(a, b)
    score = sampler._scores(state, candidates, np.zeros(3, dtype=np.int64),
                            np.array([True, True, False]), np.random.default_rng(0))
    np.testing.assert_allclose(score, [expected[0] * rho**3, expected[1] * rho, expected[2]],
                               rtol=1e-6)
    # The leaf of prompt 3 was written at its last report (same posterior: nothing moved
    # since), discounted by its three visits.
    assert state.tree.leaves[0, 3] == pytest.approx(expected[0] * rho**3, rel=1e-5)
    # rho = 1 (no discount): the same prompts score their expectation.
    plain = engine(sizes=(40,), revisit_discount=1.0)
    plain.apply(report(plain.spec, [3, 5], np.stack([half, half])))
    plain.apply(report(plain.spec, [3, 3], np.stack([half, half]), step=1))
    np.testing.assert_allclose(sampler_of(plain).novelty(plain.state.sampler, candidates), 1.0)


def test_revisit_discount_spreads_the_batch_over_more_prompts() -> None:
    """Four informative prompts (4/8) among 1 000: without a discount they fill every
    batch; with one, unseen prompts come in once the informative ones have been
    revisited a few times, and the run trains on many more distinct prompts."""
    rewards = np.zeros((8, 8))
    rewards[:4, :4] = 1.0
    rewards[4:] = 1.0

    def picks(rho: float) -> np.ndarray:
        e = engine(sizes=(1000,), batch_size=4, allocation="none", revisit_discount=rho)
        e.apply(report(e.spec, np.arange(8), rewards))
        out = []
        for step in range(1, 21):
            batch = e.next_batch("r", step).indices
            out.append(batch)
            informative = np.isin(batch, np.arange(4))
            group = np.zeros((batch.size, 8))
            group[informative, :4] = 1.0  # the informative ones stay at 4/8
            e.apply(report(e.spec, batch, group, step=step))
        return np.concatenate(out)

    free, discounted = picks(1.0), picks(0.5)
    assert (free < 4).mean() > 0.9
    assert (discounted < 4).mean() < 0.5
    assert np.unique(discounted).size > 3 * np.unique(free).size


def test_visits_saturate() -> None:
    e = engine(sizes=(10,), batch_size=2, revisit_discount=0.9)
    for step in range(130):
        e.apply(report(e.spec, [1, 1], np.zeros((2, 4)), step=step))
    assert e.state.sampler.visits[1] == 255 and e.state.sampler.visits.dtype == np.uint8


def test_one_visit_moves_the_estimate_far_more_than_a_flat_prior() -> None:
    e = engine()
    e.apply(report(e.spec, [0], np.zeros((1, 8))))
    # Flat Beta(1, 1) per prompt would give 1/10 = 0.1 after 0/8; the pooled prior pulls
    # both the visited prompt and every unseen prompt of d0 down.
    seen, unseen, other = posterior_mean(e, [0, 1, 50])
    assert seen < 0.1
    assert unseen < 0.15
    assert other == pytest.approx(0.5)


def test_solved_and_hopeless_prompts_fall_out_after_one_visit() -> None:
    e = engine(sizes=(100,), batch_size=20)
    solved, hopeless = np.arange(0, 30), np.arange(30, 60)
    e.apply(report(e.spec, solved, np.ones((30, 8))))
    e.apply(report(e.spec, hopeless, np.zeros((30, 8)), step=1))
    picked = np.concatenate([e.next_batch("r", s).indices for s in range(2, 12)])
    # 40 unseen prompts (p ~ 0.5 prior) against 60 visited all-equal ones: uniform
    # would give the unseen 40 %.
    assert (picked >= 60).mean() > 0.75


def test_band_prefers_prompts_inside_it() -> None:
    e = engine(sizes=(60,), batch_size=10, band=[0.6, 0.9], prior_strength=1.0)
    rewards = np.zeros((60, 8))
    for x in range(60):
        rewards[x, : x % 9] = 1.0  # pass rates 0/8 .. 8/8
    for step in range(3):
        e.apply(report(e.spec, np.arange(60), rewards, step=step))
    picked = np.concatenate([e.next_batch("r", s).indices for s in range(3, 13)])
    rate = (picked % 9) / 8
    assert ((rate >= 0.5) & (rate <= 1.0 - 1e-9)).mean() > 0.8
    # p(1-p) instead: the middle (0.375-0.625) dominates.
    v = engine(sizes=(60,), batch_size=10, prior_strength=1.0)
    for step in range(3):
        v.apply(report(v.spec, np.arange(60), rewards, step=step))
    picked = np.concatenate([v.next_batch("r", s).indices for s in range(3, 13)])
    rate = (picked % 9) / 8
    assert ((rate >= 0.25) & (rate <= 0.75)).mean() > 0.8


def test_an_allocation_parameter_error_names_allocation_params() -> None:
    with pytest.raises(InvalidParams, match=r"allocation_params \(dump_ucb\): tau"):
        engine(allocation_params={"tau": -1.0})
    with pytest.raises(InvalidParams, match=r"allocation_params \(dump_ucb\): unknown"):
        engine(allocation_params={"bogus": 1})


def test_a_seen_prompt_scored_zero_is_not_taken_for_unseen() -> None:
    """Confidently outside a band with `band_floor` 0, a prompt's leaf is exactly 0; the
    candidates read that as unseen and ranked it at its distribution's prior, so a prompt
    known to be useless competed with fresh ones. It is seen: never drawn again."""
    e = engine(sizes=(200,), batch_size=8, band=[0.4, 0.6], band_floor=0.0, gamma=1.0,
               allocation="none", prior_strength=100.0)
    for step in range(30):
        e.apply(report(e.spec, [5], np.ones((1, 8)), step=step))
    state = e.state.sampler
    assert state.tree.leaves[0, 5] == 0.0 and state.visits[5] > 0
    drawn = np.concatenate([e.next_batch("r", s).indices for s in range(30, 330)])
    assert 5 not in drawn  # 2 400 draws among 199 other prompts


def test_continuous_rewards_thresholded_at_the_middle_by_default() -> None:
    """A score counts as a success from the middle of its objective's bounds unless the
    spec says otherwise; `null` reads it as a fractional success."""
    cur_obj = ({"name": "score", "bounds": [0.0, 10.0]},)

    def folded(params: dict[str, object] | None, rewards: list[float]) -> tuple[float, float]:
        sampler: object = "learnability" if params is None else {
            "kind": "learnability", "params": params}
        e = CurriculumEngine(spec((10,), objective_names=cur_obj,  # type: ignore[arg-type]
                                  sampler=sampler))
        e.apply(report(e.spec, [2], np.array([rewards])))
        return float(e.state.sampler.successes[2]), float(e.state.sampler.failures[2])

    assert folded(None, [7.0, 5.0, 4.9, 1.0]) == pytest.approx((2.0, 2.0))
    assert folded({"success_threshold": 0.6}, [7.0, 5.0, 9.0, 1.0]) == pytest.approx((2.0, 2.0))
    assert folded({"success_threshold": None}, [7.0] * 4) == pytest.approx((4 * 0.7, 4 * 0.3))


def served_batches(seed: int, steps: int, pass_rate: float, **params: Any) -> list[list[int]]:
    """The batches of `steps` steps, each reported with binary rewards drawn at
    `pass_rate` (numpy seed 1)."""
    e = engine(sizes=(200, 300), batch_size=16, seed=seed, **params)
    rng = np.random.default_rng(1)
    out = []
    for step in range(steps):
        batch = e.next_batch("r", step)
        out.append(batch.indices.tolist())
        e.apply(report(e.spec, batch.indices,
                       (rng.random((16, 4)) < pass_rate).astype(float), step=step))
    return out


def test_binary_rewards_are_the_same_under_the_default_threshold() -> None:
    assert served_batches(5, 6, 0.4) == served_batches(5, 6, 0.4, success_threshold=None)


def test_deterministic_given_seed_and_differs_across_seeds() -> None:
    assert served_batches(3, 5, 0.5) == served_batches(3, 5, 0.5)
    assert served_batches(3, 5, 0.5) != served_batches(4, 5, 0.5)


@pytest.mark.parametrize("params", [{}, {"allocation": "dump_ucb"},
                                    {"allocation": "learning_progress",
                                     "allocation_params": {"epsilon": 0.2}}])
def test_state_round_trip_exact(params: dict[str, Any]) -> None:
    e = engine(sizes=(30, 50), batch_size=12, **params)
    rng = np.random.default_rng(0)
    for step in range(4):
        batch = e.next_batch("r", step)
        e.apply(report(e.spec, batch.indices, (rng.random((12, 4)) < 0.3).astype(float),
                       step=step))
    data = encode_state(e.state.sampler)
    back = decode_state(LearnabilityState, data)
    assert encode_state(back) == data
    resumed = CurriculumEngine.from_bytes(e.spec, e.to_bytes())
    assert np.array_equal(resumed.next_batch("r", 9).indices, e.next_batch("r", 9).indices)


@pytest.mark.parametrize(("params", "fragment"), [
    ({"band": [0.8, 0.2]}, "lo < hi"),
    ({"band": [0.5, 0.5]}, "lo < hi"),
    ({"band": [0.1, 1.5]}, r"\[0, 1\]"),
    ({"band": [0.1]}, r"\[lo, hi\]"),
    ({"success_threshold": 1.2}, "success_threshold"),
    ({"success_threshold": -0.1}, "success_threshold"),
    ({"gamma": 1.5}, "gamma"),
    ({"pool_gamma": -0.5}, "pool_gamma"),
    ({"prior_strength": 0}, "prior_strength"),
    ({"candidates": 0.5}, "candidates"),
    ({"ranking": "greedy"}, "ranking"),
    ({"band_floor": 2.0}, "band_floor"),
    ({"allocation": "spard"}, "allocation"),
    ({"allocation": "none", "allocation_params": {"tau": 0.2}}, "need an allocation"),
    ({"allocation": "dump_ucb", "allocation_params": {"nope": 1}}, "unknown"),
    ({"allocation": "dump_ucb", "allocation_params": {"tau": -1}}, "tau"),
    ({"temperature": 1.0}, "unknown"),
    ({"level_shift": "yes"}, "level_shift"),
    ({"revisit_drift": 1}, "revisit_drift"),
    ({"revisit_discount": 0}, "revisit_discount"),
    ({"revisit_discount": 1.5}, "revisit_discount"),
    ({"revisit_discount": -0.2}, "revisit_discount"),
    ({"gap_share": -0.1}, "gap_share"),
    ({"gap_share": 1.5}, "gap_share"),
    ({"allocation": "none", "gap_share": 0.5}, "gap_share"),
])
def test_bad_params_are_invalid_params(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        engine(**params)


@pytest.mark.parametrize("allocation", ["dump_ucb", "learning_progress"])
def test_allocation_decides_the_shares_and_the_posterior_the_prompts(allocation: str) -> None:
    e = engine(sizes=(50, 50), batch_size=10, allocation=allocation,
               allocation_params={"allocation": "largest_remainder"})
    probabilities = e.next_batch("r", 0).probabilities
    np.testing.assert_allclose(probabilities, [0.5, 0.5])
    # Inside d0: prompts 0-24 solved, 25-49 half solved; d1 all failed (no signal).
    rewards = np.zeros((100, 8))
    rewards[:25] = 1.0
    rewards[25:50, :4] = 1.0
    e.apply(report(e.spec, np.arange(100), rewards))
    batch = e.next_batch("r", 1)
    shares = np.bincount(batch.indices // 50, minlength=2)
    expected = np.floor(batch.probabilities * 10 + 1e-9)
    assert (shares >= expected).all() and shares.sum() == 10
    d0 = batch.indices[batch.indices < 50]
    assert (d0 >= 25).mean() >= 0.75
    assert "allocation" in e.inspect().sampler


@pytest.mark.parametrize("kind", ["learnability", "prioritized"])
def test_allocation_reads_the_primary_objective_when_there_are_several(kind: str) -> None:
    """Per-sample samplers give `dump_ucb` `advantage_source: auto` unless told: with a
    length term beside correctness, a distribution nobody solves gets almost nothing
    (the scalarised advantages kept it near half the batch)."""
    def hopeless_share(allocation_params: dict[str, Any]) -> float:
        return hopeless_share_under_a_length_term({"kind": kind, "params": {
            "allocation": "dump_ucb", "allocation_params": allocation_params}})

    default = hopeless_share({})
    assert default == hopeless_share({"advantage_source": "primary"})
    assert default < 0.05
    assert hopeless_share({"advantage_source": "scalarized"}) > 0.25


def test_allocation_keeps_the_papers_rule_with_one_objective() -> None:
    def ring(allocation_params: dict[str, Any]) -> np.ndarray:
        e = engine(allocation_params=allocation_params)
        rewards = np.array([[1.0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
        advantages = np.linspace(-1.0, 1.0, 16).reshape(2, 8)
        e.apply(report(e.spec, [0, 50], rewards, advantages=advantages))
        dump = e.state.sampler.dump
        assert dump is not None
        return np.asarray(dump.advantages)

    np.testing.assert_array_equal(ring({}), ring({"advantage_source": "scalarized"}))
    assert not np.array_equal(ring({}), ring({"advantage_source": "primary"}))


def test_label_layout_ranges_follow_the_member_order() -> None:
    labels = np.tile([1, 0, 1], 30)  # d0 = 30 scattered indices, d1 = 60
    from paceline_server.domain import CurriculumSpec

    cur = CurriculumSpec.from_dict({
        "name": "labels", "layout": {"names": ["d0", "d1"], "labels": labels.tolist()},
        "objectives": ["acc"], "sampler": {"kind": "learnability",
                                           "params": {"allocation": "dump_ucb"}},
        "batch_size": 12})
    e = CurriculumEngine(cur)
    d0 = np.flatnonzero(labels == 0)
    e.apply(report(cur, d0[:10], np.ones((10, 4))))
    for step in range(1, 6):
        batch = e.next_batch("r", step)
        assert np.unique(batch.indices).size == 12
        owners = cur.layout.distribution_of(batch.indices)
        assert np.bincount(owners, minlength=2).sum() == 12
    s = sampler_of(e)
    np.testing.assert_array_equal(s._to_global(s._to_leaf(np.arange(90))), np.arange(90))


def test_tiny_dataset_batches_are_full_and_distinct() -> None:
    e = engine(sizes=(3, 4), batch_size=7, allocation="none")
    e.apply(report(e.spec, np.arange(7), np.ones((7, 4))))
    assert sorted(e.next_batch("r", 1).indices.tolist()) == list(range(7))
    # With an allocation, a distribution smaller than its slots repeats its prompts (the
    # rule of every distribution-level sampler); the others stay distinct.
    alloc = engine(sizes=(2, 20), batch_size=10, allocation="dump_ucb",
                   allocation_params={"allocation": "largest_remainder"})
    batch = alloc.next_batch("r", 0)
    assert batch.indices.size == 10
    big = batch.indices[batch.indices >= 2]
    assert np.unique(big).size == big.size == 5
    assert set(batch.indices[batch.indices < 2].tolist()) == {0, 1}


def test_prior_strength_is_estimated_by_moments() -> None:
    e = engine(sizes=(10, 10), gamma=1.0, pool_gamma=1.0)
    rewards = np.zeros((4, 8))
    rewards[0] = 1.0  # d0: one solved, one hopeless prompt -> no signal in either group
    rewards[2:, :4] = 1.0  # d1: two prompts at 4/8 -> s (G - s) / (G (G - 1)) = 16/56
    e.apply(report(e.spec, [0, 1, 10, 11], rewards))
    kappa = sampler_of(e).prior_strength(e.state.sampler)
    # d0: mu = 9/18, V = (0 + 0 + 1/6) / 3; d1: mu = 9/18, V = (2 * 16/56 + 1/6) / 3.
    for d, signal in enumerate([(1 / 6) / 3, (2 * 16 / 56 + 1 / 6) / 3]):
        ratio = signal / 0.25
        assert kappa[d] == pytest.approx(ratio / (1 - ratio))
    assert kappa[0] < 0.5 < 50 < kappa[1]  # heterogeneous: weak prior; homogeneous: strong
    fixed = engine(sizes=(10, 10), prior_strength=4.0)
    np.testing.assert_allclose(sampler_of(fixed).prior_strength(fixed.state.sampler), 4.0)
    assert "prior_strength" in e.inspect().sampler


def test_zero_variance_prediction_uses_the_hierarchical_posterior() -> None:
    zv = {"threshold": 0.5, "explore": 1.0}
    e = engine(sizes=(20, 20), batch_size=4, prior_strength=4.0, zero_variance=zv)
    e.apply(report(e.spec, np.arange(10), np.ones((10, 8))))
    mu = 81 / 82  # d0: 80 of 80 rollouts solved, Beta(1, 1) pooled
    a, b = 4 * mu, 4 * (1 - mu)
    all_pass = np.prod([(a + j) / (a + b + j) for j in range(8)])
    all_fail = np.prod([(b + j) / (a + b + j) for j in range(8)])
    q = sampler_of(e).agreement(e.state.sampler, np.array([15, 25]), 8)
    assert q[0] == pytest.approx(all_pass + all_fail)
    # d1 has no data: Beta(2, 2), q = 2 P(8 of 8) ~ 0.04, far below the threshold.
    assert q[1] == pytest.approx(2 * np.prod([(2 + j) / (4 + j) for j in range(8)]))
    # An unseen prompt of the solved distribution is predicted solved and skipped; under
    # a flat per-prompt table (uniform sampler) it is a coin flip and kept.
    ctx = e._propose_context(1, np.ones(1))
    assert ctx.accept is not None
    assert ctx.accept(np.array([15, 25])).tolist() == [False, True]
    flat = CurriculumEngine(spec((20, 20), sampler="uniform", batch_size=4,
                                 zero_variance=zv))
    flat.apply(report(flat.spec, np.arange(10), np.ones((10, 8))))
    flat_ctx = flat._propose_context(1, np.ones(1))
    assert flat_ctx.accept is not None
    assert flat_ctx.accept(np.array([15, 25])).tolist() == [True, True]


@pytest.mark.parametrize("allocation", ["none", "dump_ucb"])
def test_explanations_name_the_allocation_and_the_posterior(allocation: str) -> None:
    e = engine(sizes=(30, 50), batch_size=8, allocation=allocation)
    e.apply(report(e.spec, np.arange(10), np.ones((10, 4))))
    reasons = sampler_of(e).explain(e.state.sampler, e._propose_context(1, np.ones(1)))
    assert len(reasons) == 2
    # The default ranks by the posterior's expectation; `thompson` says so instead.
    assert all("the expected p(1-p)" in r.clause and "Thompson" not in r.clause
               for r in reasons)
    thompson = engine(sizes=(30, 50), batch_size=8, allocation=allocation,
                      ranking="thompson", band=[0.2, 0.8])
    drawn = sampler_of(thompson).explain(thompson.state.sampler,
                                         thompson._propose_context(0, np.ones(1)))
    assert all("a Thompson draw of the band score" in r.clause for r in drawn)
    assert reasons[0].terms["unseen"] == 20.0 and reasons[1].terms["unseen"] == 50.0
    if allocation == "dump_ucb":
        assert "ucb" in " ".join(reasons[0].terms).lower()
    else:
        assert "expected-score mass" in reasons[0].clause


@pytest.mark.parametrize("params", [{"band": [0.8, 0.2]}, {"success_threshold": 2.0},
                                    {"no_such_param": 1},
                                    {"revisit_discount": 0.0}, {"revisit_discount": 1.2},
                                    {"gap_share": 2.0}])
def test_bad_params_over_rest_are_422_and_create_nothing(tmp_path: Any,
                                                         params: dict[str, Any]) -> None:
    from api_support import make_client

    body = {"name": "lrn", "layout": {"distributions": [{"name": "d0", "size": 10}]},
            "objectives": ["acc"], "batch_size": 4,
            "sampler": {"kind": "learnability", "params": params}}
    with make_client(f"sqlite:///{tmp_path / 'l.db'}") as client:
        response = client.post("/v1/curricula", json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "INVALID_PARAMS"
        assert client.get("/v1/curricula/lrn").status_code == 404


def test_descents_in_chunks_give_the_same_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import paceline_server.strategies.sumtree as module

    def batches() -> list[list[int]]:
        e = engine(sizes=(300, 500), batch_size=32, seed=5)
        rng = np.random.default_rng(2)
        out = []
        for step in range(4):
            batch = e.next_batch("r", step)
            out.append(batch.indices.tolist())
            e.apply(report(e.spec, batch.indices,
                           (rng.random((32, 4)) < 0.4).astype(float), step=step))
        return out

    whole = batches()
    monkeypatch.setattr(module, "DESCENT_CHUNK", 3)
    assert batches() == whole


def _half_solved_and_failing(e: CurriculumEngine) -> None:
    """d0 (0-49): every prompt passes 4 of 8 (large |A|); d1 (50-99): every prompt fails."""
    rewards = np.zeros((100, 8))
    rewards[:50, :4] = 1.0
    e.apply(report(e.spec, np.arange(100), rewards))


def test_gap_share_by_hand() -> None:
    """P = (1 - ε) P_alloc + ε (1 - μ) / Σ (1 - μ); ε = 0 is the allocator's P exactly."""
    lr = {"allocation": "largest_remainder"}
    plain = engine(sizes=(50, 50), batch_size=20, allocation_params=lr)
    mixed = engine(sizes=(50, 50), batch_size=20, allocation_params=lr, gap_share=0.5)
    for e in (plain, mixed):
        _half_solved_and_failing(e)
    s = sampler_of(mixed)
    state = mixed.state.sampler
    assert state.dump is not None and plain.state.sampler.dump is not None
    allocator = sampler_of(plain).allocator
    assert allocator is not None
    ctx = plain._propose_context(1, np.ones(1))
    dump = allocator.probabilities(plain.state.sampler.dump, ctx)
    np.testing.assert_array_equal(plain.next_batch("r", 1).probabilities, dump)
    mu = s.pooled_mean(state)
    np.testing.assert_allclose(mu, [(200 + 1) / (400 + 2), 1 / (400 + 2)])
    gap = (1 - mu) / (1 - mu).sum()
    np.testing.assert_allclose(s.gap_shares(state), gap)
    batch = mixed.next_batch("r", 1)
    np.testing.assert_allclose(batch.probabilities, 0.5 * dump + 0.5 * gap)
    # The failing distribution: almost nothing from the allocator (its groups carry no
    # advantage), about a third of the batch with the gap share.
    assert dump[1] < 0.01
    assert batch.probabilities[1] > 0.3
    assert np.count_nonzero(batch.indices >= 50) >= np.floor(batch.probabilities[1] * 20)
    details = mixed.inspect().sampler
    np.testing.assert_allclose(details["gap_shares"], gap)


def test_gap_share_mixes_into_learning_progress_allocation_too() -> None:
    e = engine(sizes=(50, 50), batch_size=20, allocation="learning_progress",
               gap_share=1.0)
    _half_solved_and_failing(e)
    s = sampler_of(e)
    np.testing.assert_allclose(e.next_batch("r", 1).probabilities,
                               s.gap_shares(e.state.sampler))


def test_gap_share_is_explained() -> None:
    e = engine(sizes=(50, 50), batch_size=20, gap_share=0.25)
    _half_solved_and_failing(e)
    reasons = sampler_of(e).explain(e.state.sampler, e._propose_context(1, np.ones(1)))
    assert all("0.25 of the shares follow the estimated failure rates" in r.clause
               for r in reasons)
    assert reasons[1].terms["gap_weight"] > reasons[0].terms["gap_weight"]
    off = engine(sizes=(50, 50), batch_size=20)
    _half_solved_and_failing(off)
    quiet = sampler_of(off).explain(off.state.sampler, off._propose_context(1, np.ones(1)))
    assert not any("failure rates" in r.clause or "gap_weight" in r.terms for r in quiet)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(6, 30), min_size=1, max_size=5),
       share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       allocation=st.sampled_from(["dump_ucb", "learning_progress"]))
def test_gap_share_keeps_every_distribution_its_part(sizes: list[int], share: float,
                                                      seed: int, allocation: str) -> None:
    """Whatever was reported: the shares sum to 1, every distribution keeps at least
    ε (1 - μ_d) / Σ (1 - μ) of them, and the batch has its size."""
    e = engine(sizes=tuple(sizes), batch_size=6, allocation=allocation, gap_share=share,
               seed=seed)
    rng = np.random.default_rng(seed)
    for step in range(3):
        batch = e.next_batch("r", step)
        assert batch.indices.size == 6
        p = rng.random(batch.indices.size)
        rewards = (rng.random((batch.indices.size, 4)) < p[:, None]).astype(float)
        e.apply(report(e.spec, batch.indices, rewards, step=step))
    probabilities = e.next_batch("r", 3).probabilities
    assert probabilities.sum() == pytest.approx(1.0)
    floor = share * sampler_of(e).gap_shares(e.state.sampler)
    assert np.all(probabilities >= floor - 1e-12)


def test_label_layout_unseen_candidates_are_never_reported() -> None:
    # The uniform draws for unseen candidates are leaf positions; whether a prompt was
    # reported is kept by dataset index. Under a label layout the two differ, and reading
    # the counts at the position flagged seen prompts as unseen (ranked at the prior).
    labels = np.tile([0, 1], 50)  # d0 = even indices, d1 = odd ones
    from paceline_server.domain import CurriculumSpec

    cur = CurriculumSpec.from_dict({
        "name": "labels", "layout": {"names": ["d0", "d1"], "labels": labels.tolist()},
        "objectives": ["acc"], "sampler": "learnability", "batch_size": 8})
    e = CurriculumEngine(cur)
    d0 = np.flatnonzero(labels == 0)
    e.apply(report(cur, d0[:25], np.ones((25, 8))))
    s, state = sampler_of(e), e.state.sampler
    prefix, seen, _ = s._masses(state)
    rng = np.random.default_rng(0)
    unseen_total = 0
    for _ in range(20):
        candidates, owners, was_seen = s._candidates(state, np.array([8, 0]), prefix,
                                                     seen, rng)
        reported = (state.successes[candidates] + state.failures[candidates]) > 0
        assert not (reported & ~was_seen).any()
        assert (cur.layout.distribution_of(candidates) == owners).all()
        unseen_total += int((~was_seen).sum())
    assert unseen_total > 0
