"""The `Store` contract (store/base.py), run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from store_support import Database

from paceline_server.domain.errors import (
    Conflict,
    CurriculumExists,
    CurriculumNotFound,
    IdempotencyConflict,
    RunNotFound,
    Unavailable,
)
from paceline_server.store import sql as sql_module
from paceline_server.store import tables as t
from paceline_server.store.base import (
    BatchRecord,
    CurriculumWriter,
    RunKey,
    RunSummary,
    payload_digest,
)
from paceline_server.store.sql import SqlStore

SPEC = {"name": "c", "layout": {"distributions": [{"name": "d0", "size": 10}]},
        "objectives": ["acc"], "seed": 3}
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def append_n(store: SqlStore, name: str, n: int, run: str = "r", key_prefix: str | None = None,
             ) -> list[int]:
    seqs = []
    with store.writer(name) as writer:
        for i in range(n):
            key = None if key_prefix is None else f"{key_prefix}{i}"
            seqs.append(writer.append("report", run, i, key, f"{run}:{i}".encode()))
    return seqs


class TestCurricula:
    def test_create_get_list(self, store: SqlStore) -> None:
        before = datetime.now(UTC)
        created = store.create_curriculum("math", SPEC)
        assert created.name == "math"
        assert created.spec == SPEC
        assert created.head_seq == 0
        assert created.created_at.tzinfo is not None
        assert before - timedelta(seconds=1) <= created.created_at <= datetime.now(UTC)
        # Round-trips exactly: the app tells recreated curricula apart by created_at.
        assert store.get_curriculum("math") == created
        store.create_curriculum("code", {"n": 1})
        store.create_curriculum("art", {})
        assert [c.name for c in store.list_curricula()] == ["art", "code", "math"]
        assert [c.name for c in store.list_curricula(limit=1, offset=1)] == ["code"]
        assert store.list_curricula(offset=5) == []

    def test_curricula_after_a_name_are_the_rest_of_the_listing(self, store: SqlStore) -> None:
        """`after` starts a page strictly after a name (by code point): pages chained by
        their last name are the unpaged listing, and a curriculum that exists throughout
        is listed exactly once while others are created or deleted between pages (an
        offset skipped one per deletion before it and repeated one per creation)."""
        names = ["b", "d", "f", "h", "j", "l"]
        for name in names:
            store.create_curriculum(name, {})
        every = store.list_curricula(limit=100)
        for limit in (1, 2, 4, 6):
            paged, after = [], None
            while page := store.list_curricula(limit, after=after):
                paged += page
                after = page[-1].name
            assert paged == every, limit
        assert store.list_curricula(after="l") == []
        assert [c.name for c in store.list_curricula(after="c")] == names[1:]
        first = store.list_curricula(limit=3)  # b d f
        store.delete_curriculum("b")
        store.delete_curriculum("f")
        store.create_curriculum("a", {})
        store.create_curriculum("e", {})
        store.create_curriculum("k", {})
        rest, after = [], first[-1].name
        while page := store.list_curricula(2, after=after):
            rest += page
            after = page[-1].name
        assert [c.name for c in first + rest] == ["b", "d", "f", "h", "j", "k", "l"]

    def test_head_follows_appends_without_the_spec(self, store: SqlStore) -> None:
        created = store.create_curriculum("math", SPEC)
        head = store.head("math")
        assert (head.name, head.created_at, head.head_seq) == ("math", created.created_at, 0)
        append_n(store, "math", 3)
        assert store.head("math").head_seq == 3
        with pytest.raises(CurriculumNotFound):
            store.head("nope")

    def test_heads_reads_those_that_exist_in_chunks(self, store: SqlStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(SqlStore, "HEADS_PER_QUERY", 2)
        created = {name: store.create_curriculum(name, SPEC) for name in ("a", "b", "c", "d")}
        append_n(store, "c", 2)
        store.delete_curriculum("b")
        heads = store.heads(["a", "b", "c", "d", "nope", "a", "A"])
        assert sorted(heads) == ["a", "c", "d"]
        for name, head in heads.items():
            assert (head.name, head.created_at) == (name, created[name].created_at)
        assert heads["c"].head_seq == 2
        assert store.heads([]) == {}

    def test_errors(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        with pytest.raises(CurriculumExists) as info:
            store.create_curriculum("math", {"other": True})
        assert info.value.code == "CURRICULUM_EXISTS"
        assert store.get_curriculum("math").spec == SPEC
        with pytest.raises(CurriculumNotFound):
            store.get_curriculum("nope")
        with pytest.raises(CurriculumNotFound):
            store.delete_curriculum("nope")
        calls: list[Callable[[], object]] = [
            lambda: store.events("nope"), lambda: store.latest_snapshot("nope"),
            lambda: store.get_batch("nope", "r", 0), lambda: store.list_runs("nope"),
            lambda: store.prune_events("nope", 1)]
        for call in calls:
            with pytest.raises(CurriculumNotFound):
                call()
        with pytest.raises(CurriculumNotFound), store.writer("nope"):
            pass

    def test_delete_cascades(self, store: SqlStore, migrated: Database) -> None:
        store.create_curriculum("math", SPEC)
        store.add_run("math", "r", {}, T0)
        with store.writer("math") as writer:
            writer.append("report", "r", 0, "k", b"x")
            writer.put_snapshot(1, b"state")
        store.put_batch("math", BatchRecord("r", 0, 1, b"batch"))
        store.create_curriculum("keep", {})
        store.add_run("keep", "r", {}, T0)

        store.delete_curriculum("math")
        with pytest.raises(CurriculumNotFound):
            store.get_curriculum("math")
        engine = migrated.engine()
        try:
            with engine.connect() as conn:
                for table in (t.events, t.snapshots, t.batches):
                    assert conn.execute(select(func.count()).select_from(table)).scalar() == 0
                assert conn.execute(select(func.count()).select_from(t.runs)).scalar() == 1
        finally:
            engine.dispose()
        # The name is free again, and nothing of the old curriculum shows through.
        recreated = store.create_curriculum("math", SPEC)
        assert recreated.head_seq == 0
        assert store.list_runs("math") == []
        assert list(store.events("math")) == []
        assert store.latest_snapshot("math") is None
        assert store.get_batch("math", "r", 0) is None


class TestRuns:
    def test_run_summary_counts_in_the_database(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        store.create_curriculum("other", SPEC)
        assert store.run_summary("math", T0) == RunSummary(0, 0, None)
        for i in range(5):
            store.add_run("math", f"r{i}", {}, T0 + timedelta(minutes=i))
        store.add_run("other", "x", {}, T0 + timedelta(hours=1))
        # Stale: a last heartbeat at or before the cutoff (minutes 0, 1 and 2).
        summary = store.run_summary("math", T0 + timedelta(minutes=2))
        assert summary == RunSummary(5, 3, T0 + timedelta(minutes=4))
        store.heartbeat("math", "r0", T0 + timedelta(minutes=9))
        assert store.run_summary("math", T0 + timedelta(minutes=2)) == RunSummary(
            5, 2, T0 + timedelta(minutes=9))
        with pytest.raises(CurriculumNotFound):
            store.run_summary("missing", T0)
        with pytest.raises(ValueError, match="timezone-aware"):
            store.run_summary("math", datetime(2024, 5, 1))  # naive: refused

    def test_add_get_list_heartbeat(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        run = store.add_run("math", "r1", {"gpu": "h100"}, T0)
        assert (run.curriculum, run.run_id, run.metadata) == ("math", "r1", {"gpu": "h100"})
        assert run.created_at == run.last_heartbeat == T0
        store.add_run("math", "r2", {}, T0 + timedelta(seconds=1))
        assert store.get_run("math", "r1") == run
        assert [r.run_id for r in store.list_runs("math")] == ["r1", "r2"]

        later = T0 + timedelta(minutes=5)
        beat = store.heartbeat("math", "r1", later)
        assert beat.last_heartbeat == later
        assert beat.created_at == T0
        assert store.get_run("math", "r1").last_heartbeat == later

    def test_reattach_is_idempotent(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        store.add_run("math", "r1", {"gpu": "h100", "host": "a"}, T0)
        again = store.add_run("math", "r1", {"host": "b"}, T0 + timedelta(seconds=9))
        assert again.created_at == T0
        assert again.last_heartbeat == T0 + timedelta(seconds=9)
        assert again.metadata == {"gpu": "h100", "host": "b"}
        assert len(store.list_runs("math")) == 1

    def test_runs_are_listed_a_page_at_a_time(self, store: SqlStore) -> None:
        """Oldest first, a tie broken by id; `limit` runs from `offset` (None: all)."""
        store.create_curriculum("math", SPEC)
        for run_id, seconds in (("e", 3), ("b", 1), ("a", 0), ("d", 1), ("c", 1)):
            store.add_run("math", run_id, {}, T0 + timedelta(seconds=seconds))
        assert [r.run_id for r in store.list_runs("math")] == list("abcde")
        assert [r.run_id for r in store.list_runs("math", limit=2)] == ["a", "b"]
        assert [r.run_id for r in store.list_runs("math", 2, offset=2)] == ["c", "d"]
        assert [r.run_id for r in store.list_runs("math", None, 3)] == ["d", "e"]
        assert store.list_runs("math", 2, offset=5) == []
        assert store.list_runs("math", 0) == []
        for limit, offset in ((-1, 0), (1, -1)):
            with pytest.raises(ValueError, match="non-negative"):
                store.list_runs("math", limit, offset)

    def test_runs_after_a_key_are_the_rest_of_the_listing(self, store: SqlStore) -> None:
        """`after` starts a page strictly after a run's key (created_at, then run id by
        code point): pages chained by their last key are the unpaged listing, ties in
        created_at included, and a run that exists throughout is listed exactly once
        while others are attached or deleted between pages."""
        store.create_curriculum("math", SPEC)
        ids = ["B", "a", "a-c", "ab", "Z9", "r\u00e9", "r\U0001f600", "a.b"]
        for i, run_id in enumerate(ids):
            store.add_run("math", run_id, {}, T0 + timedelta(seconds=i % 3))
        every = store.list_runs("math")
        assert [r.key for r in every] == sorted(r.key for r in every)
        for limit in (1, 2, 3, len(ids)):
            paged, after = [], None
            while page := store.list_runs("math", limit, after=after):
                paged += page
                after = page[-1].key
            assert paged == every, limit
        assert store.list_runs("math", 2, after=every[-1].key) == []
        assert store.list_runs("math", 2, offset=1, after=every[1].key) == every[3:5]
        # Changes between pages: before the key, at it, and after it.
        first = store.list_runs("math", 3)
        store.add_run("math", "0-early", {}, T0 - timedelta(seconds=5))
        store.add_run("math", "A-tie", {}, first[-1].created_at)  # same time, id before
        store.add_run("math", "z-late", {}, T0 + timedelta(days=1))
        with store.engine.begin() as conn:  # runs have no delete of their own
            conn.execute(t.runs.delete().where(t.runs.c.run_id.in_(
                [first[0].run_id, first[-1].run_id])))
        rest, after = [], first[-1].key
        while page := store.list_runs("math", 2, after=after):
            rest += page
            after = page[-1].key
        listed = [r.run_id for r in first + rest]
        assert listed == [r.run_id for r in every] + ["z-late"]
        with pytest.raises(ValueError, match="aware"):
            store.list_runs("math", after=RunKey(T0.replace(tzinfo=None), "a"))

    def test_runs_of_one_creation_of_a_curriculum(self, store: SqlStore) -> None:
        """With `created_at`, the runs of the curriculum created then: one of the same
        name created since is refused (Conflict), not listed in its place."""
        first = store.create_curriculum("math", SPEC)
        store.add_run("math", "r", {}, T0)
        assert [r.run_id for r in store.list_runs("math", created_at=first.created_at)] \
            == ["r"]
        store.delete_curriculum("math")
        second = store.create_curriculum("math", SPEC)
        store.add_run("math", "r", {}, T0)
        assert second.created_at != first.created_at
        with pytest.raises(Conflict) as info:
            store.list_runs("math", 10, after=RunKey(T0, "a"), created_at=first.created_at)
        assert info.value.code == "CONFLICT"
        assert info.value.details == {"curriculum": "math"}
        assert [r.run_id for r in store.list_runs("math", created_at=second.created_at)] \
            == ["r"]

    def test_errors(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        with pytest.raises(RunNotFound) as info:
            store.get_run("math", "ghost")
        assert info.value.code == "RUN_NOT_FOUND"
        with pytest.raises(RunNotFound):
            store.heartbeat("math", "ghost", T0)
        with pytest.raises(CurriculumNotFound):
            store.add_run("nope", "r", {}, T0)
        with pytest.raises(CurriculumNotFound):
            store.get_run("nope", "r")
        with pytest.raises(ValueError, match="timezone"):
            store.add_run("math", "r", {}, datetime(2024, 1, 1))

    def test_runs_are_per_curriculum(self, store: SqlStore) -> None:
        store.create_curriculum("a", {})
        store.create_curriculum("b", {})
        store.add_run("a", "r", {"x": 1}, T0)
        with pytest.raises(RunNotFound):
            store.get_run("b", "r")


class TestEvents:
    def test_append_and_read_in_order(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        with store.writer("math") as writer:
            assert isinstance(writer, CurriculumWriter)
            assert writer.head_seq == 0
            assert writer.append("report", "r", 0, "k0", b"p0") == 1
            assert writer.append("report", "r", 1, None, b"p1") == 2
            assert writer.head_seq == 2
        assert store.get_curriculum("math").head_seq == 2
        with store.writer("math") as writer:
            assert writer.head_seq == 2
            assert writer.append("report", "s", 7, None, b"p2") == 3
        events = list(store.events("math"))
        assert [e.seq for e in events] == [1, 2, 3]
        assert [(e.kind, e.run_id, e.step, e.idempotency_key, e.payload) for e in events] == [
            ("report", "r", 0, "k0", b"p0"), ("report", "r", 1, None, b"p1"),
            ("report", "s", 7, None, b"p2")]
        assert all(e.created_at.tzinfo is not None for e in events)
        assert [e.seq for e in store.events("math", after_seq=1)] == [2, 3]
        assert [e.seq for e in store.events("math", after_seq=1, limit=1)] == [2]
        assert list(store.events("math", after_seq=3)) == []
        assert list(store.events("math", limit=0)) == []

    def test_paged_reads(self, store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sql_module, "EVENT_PAGE_SIZE", 4)
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 10)
        assert [e.seq for e in store.events("math")] == list(range(1, 11))
        assert [e.seq for e in store.events("math", after_seq=2, limit=5)] == [3, 4, 5, 6, 7]
        assert [e.seq for e in store.events("math", after_seq=2, limit=8)] == list(range(3, 11))

    def test_sequences_are_per_curriculum(self, store: SqlStore) -> None:
        store.create_curriculum("a", {})
        store.create_curriculum("b", {})
        assert append_n(store, "a", 3) == [1, 2, 3]
        assert append_n(store, "b", 2) == [1, 2]
        assert store.get_curriculum("a").head_seq == 3
        assert store.get_curriculum("b").head_seq == 2

    def test_idempotency_keys(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        store.create_curriculum("other", {})
        append_n(store, "math", 3, key_prefix="k")
        with store.writer("math") as writer:
            found = writer.find_by_key("k1")
            assert found is not None
            assert (found.seq, found.step, found.payload) == (2, 1, b"r:1")
            assert writer.find_by_key("missing") is None
            seq = writer.append("report", "r", 9, "fresh", b"x")
            # Keys appended earlier in the same block are visible too.
            fresh = writer.find_by_key("fresh")
            assert fresh is not None
            assert fresh.seq == seq
            with pytest.raises(IdempotencyConflict):
                writer.append("report", "r", 10, "k0", b"dup")
            # The transaction is still usable after the refused append.
            assert writer.append("report", "r", 11, None, b"y") == seq + 1
        assert store.get_curriculum("math").head_seq == 5
        # Keys are unique per curriculum, not globally; None never collides.
        with store.writer("other") as writer:
            assert writer.find_by_key("k0") is None
            writer.append("report", "r", 0, "k0", b"z")
            writer.append("report", "r", 1, None, b"z")
            writer.append("report", "r", 2, None, b"z")

    def test_exception_rolls_back_everything(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 2)

        def fail_inside_writer() -> None:
            with store.writer("math") as writer:
                writer.append("report", "r", 5, "lost", b"x")
                writer.append("report", "r", 6, None, b"y")
                writer.put_snapshot(3, b"state")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            fail_inside_writer()
        assert store.get_curriculum("math").head_seq == 2
        assert [e.seq for e in store.events("math")] == [1, 2]
        assert store.latest_snapshot("math") is None
        with store.writer("math") as writer:
            assert writer.head_seq == 2
            assert writer.find_by_key("lost") is None
            assert writer.append("report", "r", 5, "lost", b"x") == 3

    def test_writer_is_dead_after_block(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        with store.writer("math") as writer:
            pass
        with pytest.raises(RuntimeError, match="outside"):
            writer.append("report", "r", 0, None, b"x")

    def test_reader_inside_writer_sees_committed_prefix(self, store: SqlStore) -> None:
        """The app catches its engine up from `events()` while holding the writer."""
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 3)
        with store.writer("math") as writer:
            writer.append("report", "r", 9, None, b"uncommitted")
            assert [e.seq for e in store.events("math")] == [1, 2, 3]
            assert store.get_curriculum("math").head_seq == 3
        assert store.get_curriculum("math").head_seq == 4


class TestSnapshots:
    def test_keep_newest(self, migrated: Database) -> None:
        store = migrated.open(snapshot_keep=2)
        try:
            store.create_curriculum("math", SPEC)
            assert store.latest_snapshot("math") is None
            for seq in range(1, 9):
                with store.writer("math") as writer:
                    writer.append("report", "r", seq, None, b"e")
                    if seq % 2 == 0:
                        writer.put_snapshot(seq, f"state{seq}".encode())
            latest = store.latest_snapshot("math")
            assert latest is not None
            assert (latest.seq, latest.state) == (8, b"state8")
            older = store.latest_snapshot("math", at_most=7)
            assert older is not None
            assert older.seq == 6
            # 2 and 4 were dropped (keep=2).
            assert store.latest_snapshot("math", at_most=5) is None
        finally:
            store.close()

    def test_replace_and_validate(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        with store.writer("math") as writer:
            writer.append("report", "r", 0, None, b"e")
            writer.put_snapshot(1, b"a")
            writer.put_snapshot(1, b"b")
            with pytest.raises(ValueError, match="outside"):
                writer.put_snapshot(2, b"future")
            with pytest.raises(ValueError, match="outside"):
                writer.put_snapshot(0, b"nothing")
        snap = store.latest_snapshot("math")
        assert snap is not None
        assert (snap.seq, snap.state) == (1, b"b")
        assert snap.created_at.tzinfo is not None

    def test_keep_one(self, migrated: Database) -> None:
        store = migrated.open(snapshot_keep=1)
        try:
            store.create_curriculum("math", SPEC)
            with store.writer("math") as writer:
                for i in range(3):
                    writer.append("report", "r", i, None, b"e")
                    writer.put_snapshot(i + 1, b"s")
            assert store.latest_snapshot("math", at_most=2) is None
        finally:
            store.close()


class TestPrune:
    def test_prune_only_what_a_snapshot_covers(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 8)
        assert store.prune_events("math", 8) == 0  # no snapshot: nothing is covered
        with store.writer("math") as writer:
            writer.put_snapshot(5, b"s5")
        assert store.prune_events("math", 3) == 3
        assert [e.seq for e in store.events("math")] == [4, 5, 6, 7, 8]
        assert store.prune_events("math", 8) == 2  # clamped at the snapshot (5)
        assert [e.seq for e in store.events("math")] == [6, 7, 8]
        assert store.prune_events("math", 5) == 0
        # The head does not move, and appends continue after it.
        assert store.get_curriculum("math").head_seq == 8
        assert append_n(store, "math", 1) == [9]

    def test_pruned_events_still_answer_the_duplicate_checks(self, store: SqlStore) -> None:
        """A pruned event leaves its seq, (run, step), key and payload digest: a retry
        whose answer was lost, or a resumed trainer's re-report, is still found (the
        payload is gone: empty, with `digest` set); what is still in the log is found
        whole; deleting the curriculum takes what pruning left."""
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 6, key_prefix="k")
        with store.writer("math") as writer:
            writer.put_snapshot(4, b"s4")
        assert store.prune_events("math", 4) == 4
        with store.writer("math") as writer:
            by_key = writer.find_by_key("k2")
            by_step = writer.find_report("r", 2)
            live = writer.find_report("r", 5)
            assert writer.find_by_key("k9") is None and writer.find_report("r", 9) is None
            assert writer.find_report("other", 2) is None
        assert by_key == by_step
        assert by_key is not None and (by_key.seq, by_key.run_id, by_key.step) == (3, "r", 2)
        assert (by_key.payload, by_key.digest) == (b"", payload_digest(b"r:2"))
        assert by_key.idempotency_key == "k2" and by_key.created_at.tzinfo is not None
        assert live is not None and (live.payload, live.digest) == (b"r:5", None)
        store.delete_curriculum("math")
        with store._read() as conn:
            assert conn.execute(select(func.count()).select_from(t.pruned_events)).scalar() == 0


class TestBatches:
    def test_first_writer_wins(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        assert store.get_batch("math", "r", 0) is None
        first = BatchRecord(run_id="r", step=0, seq=3, payload=b"first")
        assert store.put_batch("math", first) == first
        second = BatchRecord(run_id="r", step=0, seq=4, payload=b"second")
        assert store.put_batch("math", second) == first
        assert store.get_batch("math", "r", 0) == first
        other = BatchRecord(run_id="r", step=1, seq=4, payload=b"other")
        assert store.put_batch("math", other) == other
        assert store.get_batch("math", "s", 0) is None

    def test_concurrent_put_batch(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        steps = 10
        results: dict[tuple[int, int], BatchRecord] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def worker(thread: int) -> None:
            try:
                for step in range(steps):
                    barrier.wait(10)
                    record = BatchRecord("r", step, thread, f"t{thread}".encode())
                    results[thread, step] = store.put_batch("math", record)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for step in range(steps):
            stored = store.get_batch("math", "r", step)
            assert stored is not None
            assert results[0, step] == results[1, step] == stored


    def test_lookup_batch_reads_head_and_batch_together(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        append_n(store, "math", 2)
        head, stored = store.lookup_batch("math", "r", 0)
        assert (head.name, head.head_seq, stored) == ("math", 2, None)
        assert head.created_at == store.get_curriculum("math").created_at
        record = BatchRecord(run_id="r", step=0, seq=2, payload=b"p")
        store.put_batch("math", record)
        assert store.lookup_batch("math", "r", 0) == (head, record)
        assert store.lookup_batch("math", "r", 1) == (head, None)
        assert store.lookup_batch("math", "other", 0) == (head, None)
        with pytest.raises(CurriculumNotFound):
            store.lookup_batch("nope", "r", 0)

    def test_writer_stores_batches_in_its_transaction(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        first = BatchRecord(run_id="r", step=1, seq=1, payload=b"with-report")
        with store.writer("math") as writer:
            assert writer.created_at == store.get_curriculum("math").created_at
            assert writer.get_batch("r", 1) is None
            writer.append("report", "r", 0, "k0", b"e")
            assert writer.put_batch(first) == first
            assert writer.get_batch("r", 1) == first
            # First writer wins inside the transaction too.
            assert writer.put_batch(BatchRecord("r", 1, 1, b"again")) == first
        assert store.lookup_batch("math", "r", 1)[1] == first
        assert store.put_batch("math", BatchRecord("r", 1, 2, b"later")) == first
        with pytest.raises(RuntimeError, match="outside"):
            writer.get_batch("r", 1)

    def test_writer_batch_rolls_back_with_the_block(self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)

        def abort() -> None:
            with store.writer("math") as writer:
                writer.append("report", "r", 0, None, b"e")
                writer.put_batch(BatchRecord("r", 1, 1, b"lost"))
                raise KeyError("abort")

        with pytest.raises(KeyError):
            abort()
        assert store.get_batch("math", "r", 1) is None
        assert store.head("math").head_seq == 0

    def test_batch_for_a_recreated_curriculum_is_refused(self, store: SqlStore) -> None:
        old = store.create_curriculum("math", SPEC).created_at
        store.delete_curriculum("math")
        new = store.create_curriculum("math", SPEC).created_at
        record = BatchRecord(run_id="r", step=0, seq=0, payload=b"old")
        with pytest.raises(Unavailable):
            store.put_batch("math", record, durable=False, created_at=old)
        assert store.get_batch("math", "r", 0) is None
        assert store.put_batch("math", record, created_at=new) == record

    def test_non_durable_batch_is_stored_and_restores_durability(
            self, store: SqlStore) -> None:
        store.create_curriculum("math", SPEC)
        record = BatchRecord(run_id="r", step=0, seq=0, payload=b"fast")
        assert store.put_batch("math", record, durable=False) == record
        assert store.put_batch("math", BatchRecord("r", 0, 1, b"late"),
                               durable=False) == record
        assert store.get_batch("math", "r", 0) == record
        if store.dialect == "sqlite":  # the pooled connection is back to FULL (2)
            for _ in range(3):
                with store.engine.connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        else:  # SET LOCAL ended with the transaction
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


class TestOperations:
    def test_ping_and_close(self, store: SqlStore) -> None:
        store.ping()
        store.close()

    def test_sqlite_connection_settings(self, store: SqlStore) -> None:
        if store.dialect != "sqlite":
            pytest.skip("SQLite only")
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
