"""Group commit: reports queued while another request holds the curriculum are committed
together, each keeps its own result, and a failed transaction acknowledges none of them
and leaves the cached engine equal to the log."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import msgpack
import numpy as np
import pytest

from api_support import SPEC
from paceline_server.app.codec import MAGIC, decode_report
from paceline_server.app.reports import parse_report
from paceline_server.app.service import NextBatch, PacelineService
from paceline_server.domain.errors import IdempotencyConflict, Unavailable
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.store.base import CurriculumWriter, Store


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
            "rewards": rewards.astype(float).tolist()}


@pytest.fixture
def setup(tmp_path: Any) -> Iterator[tuple[PacelineService, FailingStore]]:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    store = FailingStore(open_store(url, auto_migrate=True))
    service = PacelineService(store, Settings(database_url=url))  # type: ignore[arg-type]
    service.create_curriculum(SPEC)
    service.attach_run("math", run_id="r")
    yield service, store
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


def test_report_after_the_curriculum_was_recreated_elsewhere(
        setup: tuple[PacelineService, FailingStore], tmp_path: Any) -> None:
    """Reports use the cached engine without reading the head first; when another
    process deleted and recreated the curriculum meanwhile, the commit notices (under the
    lock, before writing) and the report is applied to the new curriculum."""
    service, _ = setup
    indices = service.next_batch("math", "r", 0).indices
    service.report("math", body(indices, 0, seed=0), "a")
    old = service.engine("math")
    other_store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        other = PacelineService(other_store, Settings(database_url="sqlite:///unused.db"))
        other.delete_curriculum("math")
        other.create_curriculum({**SPEC, "batch_size": 5})
        other.attach_run("math", run_id="r")
    finally:
        other_store.close()
    assert service.engines.recent("math") is old  # this process has not noticed yet
    ack = service.report("math", body(indices[:3], 0, seed=0), "a",
                         NextBatch(step=1))
    assert (ack.seq, ack.replayed) == (1, False)  # the new curriculum's first report
    assert ack.batch is not None and ack.batch.indices.size == 5  # the new spec
    fresh = service.engine("math")
    assert fresh is not old and fresh.spec.batch_size == 5
    assert fresh.engine.to_bytes() == replayed(service)


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
