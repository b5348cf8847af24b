"""Writers are serialised across threads and processes: no lost or duplicated sequence
numbers, every append committed exactly once, readers always see a prefix."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from datetime import UTC, datetime

from store_support import Database
from store_workers import append_events

from paceline_server.domain.errors import InvalidRequest
from paceline_server.store.sql import SqlStore

_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_eight_threads_append_without_gaps(store: SqlStore) -> None:
    store.create_curriculum("math", {})
    threads_n, per_thread = 8, 25
    errors: list[BaseException] = []
    prefix_violations: list[str] = []
    barrier = threading.Barrier(threads_n)
    done = threading.Event()

    def writer(thread: int) -> None:
        try:
            barrier.wait(10)
            for i in range(per_thread):
                with store.writer("math") as handle:
                    head = handle.head_seq
                    seq = handle.append("report", f"t{thread}", i, f"t{thread}/{i}",
                                        f"{thread}:{i}".encode())
                    assert seq == head + 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        """Readers never see a hole or an event beyond the published head."""
        while not done.is_set():
            head = store.get_curriculum("math").head_seq
            seqs = [e.seq for e in store.events("math", limit=head)]
            if seqs != list(range(1, head + 1)):
                prefix_violations.append(f"head {head}: {seqs[:5]}...")

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    watcher.join()

    assert errors == []
    assert prefix_violations == []
    total = threads_n * per_thread
    events = list(store.events("math"))
    assert [e.seq for e in events] == list(range(1, total + 1))
    assert store.get_curriculum("math").head_seq == total
    assert Counter(e.run_id for e in events) == {f"t{i}": per_thread for i in range(threads_n)}
    for i in range(threads_n):  # each thread's appends kept their order
        steps = [e.step for e in events if e.run_id == f"t{i}"]
        assert steps == list(range(per_thread))


def test_processes_append_without_gaps(migrated: Database) -> None:
    """3 spawned processes, each with its own store (engine, pool), append concurrently."""
    setup = migrated.open()
    try:
        setup.create_curriculum("math", {})
    finally:
        setup.close()
    procs_n, per_proc = 3, 20
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=append_events,
                         args=(migrated.url, migrated.options, "math", k, per_proc, start))
             for k in range(procs_n)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * procs_n

    store = migrated.open()
    try:
        events = list(store.events("math"))
        total = procs_n * per_proc
        assert [e.seq for e in events] == list(range(1, total + 1))
        assert store.get_curriculum("math").head_seq == total
        assert sorted((e.run_id, e.step) for e in events) == sorted(
            (f"p{k}", i) for k in range(procs_n) for i in range(per_proc))
        assert len({e.idempotency_key for e in events}) == total
    finally:
        store.close()


def test_two_stores_in_one_process(migrated: Database) -> None:
    """Two independent stores (as two replicas would be) on one database still serialise
    through the database lock, not only the in-process one."""
    first, second = migrated.open(), migrated.open()
    try:
        first.create_curriculum("math", {})
        errors: list[BaseException] = []

        def work(store: SqlStore, tag: str) -> None:
            try:
                for i in range(15):
                    with store.writer("math") as handle:
                        handle.append("report", tag, i, None, b"x")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s, tag))
                   for s, tag in ((first, "a"), (second, "b"), (first, "c"), (second, "d"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [e.seq for e in second.events("math")] == list(range(1, 61))
    finally:
        first.close()
        second.close()


def _reattach_together(stores: list[SqlStore], run_id: str,
                       documents: list[dict[str, object]]) -> list[BaseException]:
    """Re-attach `run_id` once per document, all at once (a barrier), each on the store
    of its index (round robin): what each raised, in document order."""
    errors: list[BaseException | None] = [None] * len(documents)
    barrier = threading.Barrier(len(documents))

    def attach(i: int) -> None:
        try:
            barrier.wait(10)
            stores[i % len(stores)].add_run("math", run_id, documents[i], _T0)
        except BaseException as exc:  # surfaced by the caller
            errors[i] = exc

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(len(documents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [error for error in errors if error is not None]


def test_concurrent_reattaches_keep_every_new_metadata_key(migrated: Database) -> None:
    """Re-attaching merges the given metadata over the stored one. Two replicas
    re-attaching the same run at once each read the stored document, merged their keys
    in and wrote it back (PostgreSQL allows concurrent re-attaches: no lock was taken),
    so the later write dropped the earlier one's keys. Every key must survive."""
    first, second = migrated.open(), migrated.open()
    try:
        first.create_curriculum("math", {})
        threads_n = 6
        for attempt in range(8):
            run_id = f"r{attempt}"
            first.add_run("math", run_id, {"base": attempt}, _T0)
            documents: list[dict[str, object]] = [{f"k{i}": i} for i in range(threads_n)]
            assert _reattach_together([first, second], run_id, documents) == []
            stored = second.get_run("math", run_id).metadata
            assert stored == {"base": attempt, **{f"k{i}": i for i in range(threads_n)}}
    finally:
        first.close()
        second.close()


def test_concurrent_reattaches_are_held_to_the_size_limit_together(
        migrated: Database) -> None:
    """Each of two re-attaches fits the 64 KiB metadata limit over the stored document,
    both together do not: one is refused (nothing of it stored) and the other's key is
    kept, whichever order they commit in."""
    first, second = migrated.open(), migrated.open()
    try:
        first.create_curriculum("math", {})
        for attempt in range(4):
            run_id = f"r{attempt}"
            first.add_run("math", run_id, {"a": "x" * 40_000}, _T0)
            documents: list[dict[str, object]] = [{"b": "y" * 15_000}, {"c": "z" * 15_000}]
            errors = _reattach_together([first, second], run_id, documents)
            assert [type(error) for error in errors] == [InvalidRequest]
            stored = second.get_run("math", run_id).metadata
            assert stored["a"] == "x" * 40_000
            assert len(stored) == 2 and ("b" in stored) != ("c" in stored)
    finally:
        first.close()
        second.close()
