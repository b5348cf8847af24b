"""Two `PacelineService`s (two replicas in one process: own stores, own Redis
coordinators) on one PostgreSQL schema and one Redis prefix: what Redis changes in the
use cases, and that it only ever speeds things up."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from replica_support import NAME, SPEC, Pair, redis_prefix, service_pair, wait_for
from replica_support import report_body as body

from paceline_server.app.service import NextBatch
from support import REDIS_URL


@pytest.fixture
def pair() -> Iterator[Pair]:
    with redis_prefix() as prefix, service_pair(REDIS_URL, prefix) as services:
        yield services


def test_other_replicas_commits_are_folded_in_the_background(pair: Pair) -> None:
    a, b = pair
    b.next_batch(NAME, "r", 0)  # b caches the engine at seq 0
    for step in range(3):
        a.report(NAME, body(a, step), f"k{step}")
    cached = b.engines.peek(NAME)
    assert cached is not None
    # No request on b: its listener folded the announced tail.
    wait_for(lambda: cached.seq == 3, 5, "b did not catch up in the background")
    assert cached.engine.to_bytes() == a.engine(NAME).engine.to_bytes()
    assert b.coordinator.stats().caught_up_events >= 1


def test_a_retry_is_answered_from_the_cache_without_any_lock(pair: Pair) -> None:
    a, b = pair
    report = body(a, 0)
    first = a.report(NAME, report, "key-1")
    cached = b.engine(NAME)
    with ThreadPoolExecutor(1) as pool, cached.commit_lock, cached.lock:
        # b's curriculum is locked in every way; the retry still returns.
        retry = pool.submit(b.report, NAME, report, "key-1").result(timeout=10)
    # The retry is the first acknowledgement again (counts included), marked replayed.
    assert retry == dataclasses.replace(first, replayed=True)
    assert b.coordinator.stats().idempotency_hits == 1


def test_a_cached_retry_that_asks_for_its_next_batch_gets_the_stored_one(
        pair: Pair) -> None:
    a, b = pair
    report = body(a, 0)
    first = a.report(NAME, report, "key-1", NextBatch(step=1))
    assert first.batch is not None
    retry = b.report(NAME, report, "key-1", NextBatch(step=1))
    assert (retry.seq, retry.replayed) == (first.seq, True)
    assert b.coordinator.stats().idempotency_hits == 1  # answered from the ack cache
    assert retry.batch is not None and retry.batch.clock == first.batch.clock
    np.testing.assert_array_equal(retry.batch.indices, first.batch.indices)


def test_a_writer_waits_for_the_lease_without_holding_its_engine(pair: Pair) -> None:
    a, b = pair
    report = body(b, 0)
    cached = b.engine(NAME)
    with ThreadPoolExecutor(2) as pool:
        with a.coordinator.exclusive(NAME):  # replica a is committing
            pending = pool.submit(b.report, NAME, report, "waits")
            wait_for(cached.commit_lock.locked, 5, "b's report did not lead a commit")
            threading.Event().wait(0.3)
            assert not pending.done()
            assert list(b.store.events(NAME)) == []  # waiting on Redis, not in the log
            # The engine is free meanwhile: b still serves reads and batches.
            pool.submit(b.state, NAME).result(timeout=2)
        ack = pending.result(timeout=10)
        assert (ack.seq, ack.replayed) == (1, False)
        assert ack.rollouts_generated == ack.rollouts_trained > 0
    assert b.coordinator.stats().leases == {"acquired": 1}


def test_a_recreated_curriculum_is_never_folded_into_the_old_cache(pair: Pair) -> None:
    a, b = pair
    a.report(NAME, body(a, 0), "k0")
    old = b.engine(NAME)
    assert old.seq == 1
    a.delete_curriculum(NAME)
    a.create_curriculum(SPEC)
    a.attach_run(NAME, run_id="r")
    for step in range(2):
        a.report(NAME, body(a, step), f"new{step}")
    threading.Event().wait(0.3)  # the announcements have arrived at b
    assert old.seq == 1  # not folded: another curriculum's log under the same name
    fresh = b.engine(NAME)
    assert fresh is not old and fresh.seq == 2
    assert fresh.engine.to_bytes() == a.engine(NAME).engine.to_bytes()


def test_a_cached_ack_of_a_deleted_curriculum_never_answers_for_its_successor(
        pair: Pair) -> None:
    """b still caches the old curriculum's engine when a replaces it: a report sent
    again under its old key to the new curriculum is applied there, not answered with
    the old curriculum's ack (which Redis still holds under the old stamp)."""
    a, b = pair
    report = body(a, 0)
    first = b.report(NAME, report, "key-1")  # b commits: Redis caches the ack
    assert (first.seq, first.replayed) == (1, False)
    a.delete_curriculum(NAME)
    a.create_curriculum(SPEC)
    a.attach_run(NAME, run_id="r")
    report = {**report, "indices": a.next_batch(NAME, "r", 0).indices.tolist()}
    ack = b.report(NAME, report, "key-1")
    assert (ack.seq, ack.replayed) == (1, False)
    assert [e.idempotency_key for e in a.store.events(NAME)] == ["key-1"]


def test_a_stored_batch_of_a_recreated_curriculum_is_named_by_its_own_spec(
        pair: Pair) -> None:
    """b still caches the old curriculum's engine when a replaces it with another layout
    and serves (run, step): b answering that stored batch named its columns from the old
    spec (REST failed 500 on the lengths; gRPC paired the probabilities with the wrong
    distributions)."""
    from paceline_server.app.operations import Operations, RequestBatch

    a, b = pair
    b.engine(NAME)  # b caches the three-distribution curriculum
    a.delete_curriculum(NAME)
    other = {**SPEC, "layout": {"distributions": [{"name": "left", "size": 50},
                                                  {"name": "right", "size": 50}]},
             "objectives": ["acc"], "weighting": {"kind": "fixed", "weights": [1]}}
    a.create_curriculum(other)
    a.attach_run(NAME, run_id="r")
    served = Operations(a).batch(RequestBatch(NAME, "r", 0))  # stored by a
    view = Operations(b).batch(RequestBatch(NAME, "r", 0))
    assert (view.distributions, view.objectives) == (("left", "right"), ("acc",))
    assert (view.distributions, view.objectives) == (served.distributions,
                                                     served.objectives)
    assert view.batch.probabilities.tolist() == served.batch.probabilities.tolist()
