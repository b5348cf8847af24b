"""Group commit: reports queued while another request holds the curriculum are committed
together, each keeps its own result, and a failed transaction acknowledges none of them
and leaves the cached engine equal to the log."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import msgpack
import numpy as np
import pytest

from paceline_server.app.codec import MAGIC, decode_report
from paceline_server.app.reports import parse_report
from paceline_server.app.service import NextBatch, PacelineService
from paceline_server.domain.errors import (
    IdempotencyConflict,
    InvalidReport,
    InvalidRequest,
    RunNotFound,
    Unavailable,
)
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import CurriculumWriter, Store
from support import SPEC


class FailingStore:
    """The real store, with a commit that fails on demand (a database that goes away
    mid-transaction), by raising inside the writer block."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail_next = False
        self.writers = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextmanager
    def writer(self, name: str) -> Iterator[CurriculumWriter]:
        self.writers += 1
        with self._store.writer(name) as writer:
            yield writer
            if self.fail_next:
                self.fail_next = False
                raise Unavailable("database unavailable: injected", {})


def body(batch_indices: np.ndarray, step: int, seed: int, run: str = "r") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rewards = np.stack([rng.integers(0, 2, (batch_indices.size, 4)),
                        rng.integers(0, 100, (batch_indices.size, 4))], axis=-1)
    return {"run_id": run, "step": step, "indices": batch_indices.tolist(),
            "rewards": rewards.astype(float).tolist(),
            "unserved": "accept"}  # made-up steps: the served-batch check is not tested here


@pytest.fixture
def setup(tmp_path: Any) -> Iterator[tuple[PacelineService, FailingStore]]:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    store = FailingStore(open_store(url, auto_migrate=True))
    service = PacelineService(store, Settings(database_url=url))  # type: ignore[arg-type]
    service.create_curriculum(SPEC)
    service.attach_run("math", run_id="r")
    yield service, store
    service.close()
    store.close()


def in_one_group(cached: Any, store: FailingStore, calls: list[Callable[[], None]]) -> int:
    """Start `calls` on threads while another request holds the curriculum, so that they
    all queue, then let them go; returns how many transactions committed them."""
    with cached.lock:
        threads = [threading.Thread(target=call) for call in calls]
        for thread in threads:
            thread.start()
        while len(cached.pending) < len(calls):
            threading.Event().wait(0.005)
        writers_before = store.writers
    for thread in threads:
        thread.join()
    return store.writers - writers_before


def replayed(service: PacelineService) -> bytes:
    engine = CurriculumEngine(service.engine("math").spec)
    for event in service.store.events("math"):
        engine.apply(decode_report(event.payload))
    return engine.to_bytes()


def test_queued_reports_commit_in_one_transaction(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")
    acks: dict[int, Any] = {}
    errors: list[BaseException] = []

    def report(i: int, key: str) -> None:
        try:
            acks[i] = service.report("math", body(indices, i, seed=i), key)
        except BaseException as exc:
            errors.append(exc)

    calls = [partial(report, i, f"k{i}") for i in range(6)]
    calls.append(partial(report, 99, "k0"))  # the same key, other content: refused
    assert in_one_group(cached, store, calls) == 1  # one transaction for seven requests
    assert [type(e) for e in errors] == [IdempotencyConflict]
    assert 99 not in acks
    assert sorted(a.seq for a in acks.values()) == [1, 2, 3, 4, 5, 6]
    assert not any(a.replayed for a in acks.values())
    assert cached.engine.to_bytes() == replayed(service)


def test_retry_inside_one_group_is_applied_once(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")
    acks: list[Any] = []

    def report() -> None:
        acks.append(service.report("math", body(indices, 0, seed=0), "same"))

    assert in_one_group(cached, store, [report] * 3) == 1
    assert sorted((a.seq, a.replayed) for a in acks) == [(1, False), (1, True), (1, True)]
    assert [e.seq for e in service.store.events("math")] == [1]


def test_failed_commit_acknowledges_nothing_and_reloads_the_engine(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    service.report("math", body(indices, 0, seed=0), "a")
    before = service.engine("math").engine.to_bytes()
    store.fail_next = True
    with pytest.raises(Unavailable):
        service.report("math", body(indices, 1, seed=1), "b")
    assert [e.seq for e in service.store.events("math")] == [1]
    cached = service.engine("math")  # the engine folded "b"; it is reloaded from the log
    assert cached.seq == 1 and cached.engine.to_bytes() == before
    ack = service.report("math", body(indices, 1, seed=1), "b")  # the client's retry
    assert (ack.seq, ack.replayed) == (2, False)
    assert service.engine("math").engine.to_bytes() == replayed(service)


def test_grouped_reports_get_the_batch_of_their_own_position(
        setup: tuple[PacelineService, FailingStore]) -> None:
    """Each report of a group that asks for its next batch gets the batch proposed right
    after its own fold: what report-then-ask would give one by one in log order."""
    service, store = setup
    service.create_curriculum({**SPEC, "name": "adaptive", "sampler": "prioritized"})
    for run in "abc":
        service.attach_run("adaptive", run_id=run)
    indices = service.next_batch("adaptive", "a", 0).indices
    cached = service.engine("adaptive")
    acks: dict[str, Any] = {}

    def report(run: str) -> None:
        acks[run] = service.report("adaptive", body(indices, 0, seed=ord(run), run=run),
                                   f"{run}/0", NextBatch(step=1))

    assert in_one_group(cached, store, [partial(report, run) for run in "abc"]) == 1
    engine = CurriculumEngine(cached.spec)
    proposals = []
    for event in service.store.events("adaptive"):
        engine.apply(decode_report(event.payload))
        ack = acks[event.run_id]
        assert ack.seq == event.seq and ack.batch is not None
        assert ack.batch.clock == event.seq
        expected = engine.next_batch(event.run_id, 1)
        np.testing.assert_array_equal(ack.batch.indices, expected.indices)
        # ... and it is the batch stored for (run, 1), committed with the report.
        stored = service.next_batch("adaptive", event.run_id, 1)
        np.testing.assert_array_equal(stored.indices, expected.indices)
        proposals.append(engine.next_batch("a", 1).indices)
    # The sampler follows the folds, so the position in the group matters.
    assert not np.array_equal(proposals[0], proposals[-1])


def test_retry_of_a_report_stored_in_the_previous_format_is_replayed(
        setup: tuple[PacelineService, FailingStore]) -> None:
    """A report logged by an earlier release (float64 arrays, group column) and retried
    after an upgrade is the same report: answered as a replay, not a key conflict."""
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    report = parse_report(body(indices, 0, seed=0), service.engine("math").spec)
    old = MAGIC + msgpack.packb({
        "run_id": "r", "step": 0, **{
            name: {"d": value.dtype.str, "s": list(value.shape), "b": value.tobytes()}
            for name, value in (("indices", report.indices), ("group_of", report.group_of),
                                ("rewards", report.rewards))}}, use_bin_type=True)
    with service.store.writer("math") as writer:
        writer.append("report", "r", 0, "key-0", old)
    ack = service.report("math", body(indices, 0, seed=0), "key-0")
    assert (ack.seq, ack.replayed) == (1, True)
    with pytest.raises(IdempotencyConflict):
        service.report("math", body(indices, 0, seed=1), "key-0")


def in_another_process(tmp_path: Any, act: Callable[[PacelineService], object]) -> None:
    """What another service process on the same database does (its own store and cache)."""
    other_store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        other = PacelineService(other_store, Settings(database_url="sqlite:///unused.db"))
        try:
            act(other)
        finally:
            other.close()
    finally:
        other_store.close()


def recreate(other: PacelineService) -> None:
    other.delete_curriculum("math")
    other.create_curriculum({**SPEC, "batch_size": 5})
    other.attach_run("math", run_id="r")


@pytest.mark.parametrize("call", ["report", "report_async"])
def test_report_after_the_curriculum_was_recreated_elsewhere(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any, call: str) -> None:
    """Reports use the cached engine without reading the head first; when another
    process deleted and recreated the curriculum meanwhile, the commit notices (under the
    lock, before writing) and the report is applied to the new curriculum."""
    service, _ = setup

    def report(*args: Any) -> Any:
        if call == "report":
            return service.report("math", *args)
        return asyncio.run(service.report_async("math", *args))

    indices = service.next_batch("math", "r", 0).indices
    report(body(indices, 0, seed=0), "a")
    old = service.engine("math")
    in_another_process(tmp_path, recreate)
    assert service.engines.recent("math") is old  # this process has not noticed yet
    ack = report(body(indices[:3], 0, seed=0), "a", NextBatch(step=1))
    assert (ack.seq, ack.replayed) == (1, False)  # the new curriculum's first report
    assert ack.batch is not None and ack.batch.indices.size == 5  # the new spec
    fresh = service.engine("math")
    assert fresh is not old and fresh.spec.batch_size == 5
    assert fresh.engine.to_bytes() == replayed(service)


@pytest.mark.parametrize("call", ["state", "report"])
def test_a_curriculum_recreated_between_its_head_and_its_load_is_unavailable(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any, call: str) -> None:
    """A request read the head, then another process deleted and recreated the
    curriculum before this one loaded its engine: a race a retry resolves, so 503
    UNAVAILABLE (retryable), not the 500 INTERNAL of a bare RuntimeError; the retry
    finds the new curriculum."""
    service, store = setup
    assert service.engines.recent("math") is None  # not loaded here yet
    real_head = store._store.head

    def head_then_recreated(name: str) -> Any:
        found = real_head(name)
        in_another_process(tmp_path, recreate)
        store.head = real_head  # type: ignore[method-assign]  # once
        return found

    store.head = head_then_recreated  # type: ignore[method-assign]
    request = {"state": lambda: service.state("math"),
               "report": lambda: service.report("math", body(np.arange(3), 0, seed=0))}[call]
    with pytest.raises(Unavailable):
        request()
    assert service.engines.recent("math") is None  # nothing of the old one was cached
    if call == "report":
        assert request().seq == 1  # the new curriculum's first report
    assert service.engine("math").spec.batch_size == 5


def test_a_fold_that_fails_while_catching_up_reloads_the_engine(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read (here a batch) catches the cached engine up with another process's report
    and the fold raises part-way (out of memory, a strategy's error): the engine, which
    may hold part of that fold, is reloaded on next use. (It was kept, so the next
    catch-up folded the event again on top of the partial fold: batches, and snapshots,
    of a state the log does not produce.)"""
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    service.report("math", body(indices, 0, seed=0), "a")
    cached = service.engine("math")
    in_another_process(tmp_path, lambda other: other.report(
        "math", body(indices, 1, seed=1), "b"))
    record_weights = CurriculumEngine._record_weights  # the last part of a fold

    def fails_once(engine: CurriculumEngine, *args: Any) -> None:
        monkeypatch.undo()
        raise MemoryError("injected")

    monkeypatch.setattr(CurriculumEngine, "_record_weights", fails_once)
    with pytest.raises(MemoryError):
        service.next_batch("math", "r", 1)
    assert CurriculumEngine._record_weights is record_weights
    batch = service.next_batch("math", "r", 1)
    assert service.engine("math") is cached and cached.seq == 2
    assert cached.engine.to_bytes() == replayed(service)
    fresh = CurriculumEngine(cached.spec)
    for event in service.store.events("math"):
        fresh.apply(decode_report(event.payload))
    np.testing.assert_array_equal(batch.indices, fresh.next_batch("r", 1).indices)


def test_a_batch_proposed_for_a_curriculum_recreated_meanwhile_is_not_stored(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any) -> None:
    """A batch request read the head and proposed on the cached engine, then another
    process deleted and recreated the curriculum (and attached the run again) before the
    batch was stored: 503 UNAVAILABLE (retryable) and nothing stored, and the retry gets
    the new curriculum's batch. (The old curriculum's batch was stored under the new one's
    (run, step), by name, and served for it from then on: another spec, another state.)"""
    service, store = setup
    service.report("math", body(service.next_batch("math", "r", 0).indices, 0, seed=0))
    real_put_batch = store._store.put_batch

    def recreated_first(*args: Any, **kwargs: Any) -> Any:
        in_another_process(tmp_path, recreate)
        store.put_batch = real_put_batch  # type: ignore[method-assign]  # once
        return real_put_batch(*args, **kwargs)

    store.put_batch = recreated_first  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        service.next_batch("math", "r", 1)
    assert service.store.get_batch("math", "r", 1) is None
    batch = service.next_batch("math", "r", 1)
    assert batch.indices.size == 5  # the new spec's
    fresh = CurriculumEngine(service.engine("math").spec)
    np.testing.assert_array_equal(batch.indices, fresh.next_batch("r", 1).indices)


def test_forgetting_an_outdated_entry_keeps_a_fresh_one(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, _ = setup
    old = service.engine("math")
    service.engines.forget("math")
    fresh = service.engine("math")
    service.engines.forget("math", old)  # a late thread dropping what it had
    assert service.engines.recent("math") is fresh
    service.engines.forget("math", fresh)
    assert service.engines.recent("math") is None


# ------------------------------------------------------------------ report_async
def queued_async(service: PacelineService, store: FailingStore, name: str,
                 requests: list[tuple[dict[str, Any], str | None, NextBatch | None]],
                 ) -> tuple[list[Any], int]:
    """Run `report_async` for each request on one event loop while the curriculum is
    held, so that all queue before the worker thread commits; (results or exceptions, in
    request order; transactions used)."""
    cached = service.engines.recent(name)
    assert cached is not None

    async def main() -> list[Any]:
        cached.lock.acquire()  # this (the loop's) thread holds it until all are queued
        try:
            tasks = [asyncio.create_task(service.report_async(name, b, key, ask))
                     for b, key, ask in requests]
            while len(cached.pending) < len(requests) and not all(t.done() for t in tasks):
                await asyncio.sleep(0.005)
        finally:
            cached.lock.release()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    writers_before = store.writers
    results = asyncio.run(main())
    return results, store.writers - writers_before


def test_async_reports_commit_in_one_transaction(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    requests: list[tuple[dict[str, Any], str | None, NextBatch | None]] = [
        (body(indices, i, seed=i), f"k{i}", NextBatch(i + 1)) for i in range(5)]
    requests.append((body(indices, 9, seed=9), "k0", None))  # same key, other content
    requests.append((body(indices, 0, seed=0), "k0", NextBatch(1)))  # a retry of k0
    results, transactions = queued_async(service, store, "math", requests)
    assert transactions == 1
    assert isinstance(results[5], IdempotencyConflict)
    assert [(r.seq, r.replayed) for r in results[:5]] == [(i, False) for i in range(1, 6)]
    assert (results[6].seq, results[6].replayed) == (1, True)
    np.testing.assert_array_equal(results[6].batch.indices, results[0].batch.indices)
    for step, ack in enumerate(results[:5], start=1):  # each report's own batch, stored
        np.testing.assert_array_equal(ack.batch.indices,
                                      service.next_batch("math", "r", step).indices)
    assert service.engine("math").engine.to_bytes() == replayed(service)
    assert not service.engine("math").pending and not service.engine("math").draining


def test_async_and_threaded_reports_share_a_group(
        setup: tuple[PacelineService, FailingStore]) -> None:
    """A thread's `report` may commit reports queued by `report_async` and the other way
    round; everyone gets their own ack."""
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")
    acks: dict[str, Any] = {}

    def threaded(key: str, step: int) -> None:
        acks[key] = service.report("math", body(indices, step, seed=step), key)

    async def main() -> None:
        cached.lock.acquire()
        threads = [threading.Thread(target=threaded, args=(f"t{i}", 10 + i))
                   for i in range(3)]
        try:
            tasks = [asyncio.create_task(service.report_async(
                "math", body(indices, i, seed=i), f"a{i}")) for i in range(3)]
            for thread in threads:
                thread.start()
            while len(cached.pending) < 6:
                await asyncio.sleep(0.005)
        finally:
            cached.lock.release()
        for key, ack in zip(("a0", "a1", "a2"), await asyncio.gather(*tasks), strict=True):
            acks[key] = ack
        await asyncio.to_thread(lambda: [thread.join() for thread in threads])

    writers_before = store.writers
    asyncio.run(main())
    assert store.writers - writers_before == 1
    assert sorted(a.seq for a in acks.values()) == [1, 2, 3, 4, 5, 6]
    assert cached.engine.to_bytes() == replayed(service)


def test_async_failed_commit_acknowledges_nothing(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices
    before = service.engine("math").engine.to_bytes()
    store.fail_next = True
    results, _ = queued_async(service, store, "math", [
        (body(indices, i, seed=i), f"k{i}", None) for i in range(3)])
    assert all(isinstance(r, Unavailable) for r in results)
    assert list(service.store.events("math")) == []
    assert service.engine("math").engine.to_bytes() == before  # reloaded from the log
    retried, _ = queued_async(service, store, "math", [
        (body(indices, i, seed=i), f"k{i}", None) for i in range(3)])
    assert sorted(a.seq for a in retried) == [1, 2, 3]


def test_async_lease_failure_fails_what_is_queued(
        setup: tuple[PacelineService, FailingStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An error before the group is taken (no write lease) answers every queued report
    with it instead of leaving them waiting."""
    service, store = setup
    indices = service.next_batch("math", "r", 0).indices

    def no_lease(name: str) -> Any:
        raise Unavailable("no write lease: injected", {})

    monkeypatch.setattr(service.coordinator, "exclusive", no_lease)
    results, _ = queued_async(service, store, "math", [
        (body(indices, i, seed=i), f"k{i}", None) for i in range(2)])
    assert all(isinstance(r, Unavailable) for r in results)
    monkeypatch.undo()
    assert list(service.store.events("math")) == []
    cached = service.engine("math")
    assert not cached.pending and not cached.draining
    ack = asyncio.run(service.report_async("math", body(indices, 0, seed=0), "k0"))
    assert (ack.seq, ack.replayed) == (1, False)


def test_lease_failure_takes_the_report_back(
        setup: tuple[PacelineService, FailingStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The threaded path: a report whose commit fails before its group is taken (no
    write lease) is answered with the error and is no longer queued. (It stayed queued,
    and the next report's commit applied it after its client was told it failed.)"""
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")

    def no_lease(name: str) -> Any:
        raise Unavailable("no write lease: injected", {})

    monkeypatch.setattr(service.coordinator, "exclusive", no_lease)
    with pytest.raises(Unavailable):
        service.report("math", body(indices, 0, seed=0), "k0")
    monkeypatch.undo()
    assert not cached.pending
    ack = service.report("math", body(indices, 1, seed=1), "k1")
    assert (ack.seq, ack.replayed) == (1, False)
    assert [e.idempotency_key for e in service.store.events("math")] == ["k1"]


def test_async_bad_input_is_refused_before_anything_is_queued(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")
    bad = body(indices, 0, seed=0)
    bad["rewards"][0][0][0] = float("nan")
    with pytest.raises(InvalidReport):
        asyncio.run(service.report_async("math", bad, "k"))
    with pytest.raises(InvalidRequest):
        asyncio.run(service.report_async("math", body(indices, 0, seed=0), "x" * 201))
    with pytest.raises(InvalidRequest):  # a batch size the curriculum cannot serve
        asyncio.run(service.report_async("math", body(indices, 0, seed=0), "k",
                                         NextBatch(1, size=10**9)))
    assert not cached.pending and not cached.draining
    assert list(service.store.events("math")) == []


def test_async_falls_back_to_a_thread_for_what_it_does_not_know(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any) -> None:
    """A curriculum not cached yet, a run attached by another process, and a run nobody
    attached: each is looked up in the store (off the loop) with the usual results."""
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    service.engines.forget("math")
    ack = asyncio.run(service.report_async("math", body(indices, 0, seed=0), "a"))
    assert (ack.seq, ack.replayed) == (1, False)
    in_another_process(tmp_path, lambda other: other.attach_run("math", run_id="elsewhere"))
    ack = asyncio.run(service.report_async(
        "math", body(indices, 0, seed=1, run="elsewhere"), "b"))
    assert (ack.seq, ack.replayed) == (2, False)
    with pytest.raises(RunNotFound):
        asyncio.run(service.report_async("math", body(indices, 0, seed=2, run="nobody"), "c"))
    assert service.engine("math").engine.to_bytes() == replayed(service)


def test_async_report_while_closing_is_refused_and_not_queued(
        setup: tuple[PacelineService, FailingStore]) -> None:
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    cached = service.engine("math")
    service.close()
    with pytest.raises(Unavailable):
        asyncio.run(service.report_async("math", body(indices, 0, seed=0), "a"))
    assert not cached.pending and not cached.draining
    service.engines.forget("math")  # the other way in: a lookup in a worker thread
    with pytest.raises(Unavailable):
        asyncio.run(service.report_async("math", body(indices, 0, seed=0), "a"))
    assert list(service.store.events("math")) == []
