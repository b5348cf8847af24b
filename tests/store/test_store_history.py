"""The history part of the `Store` contract (store/base.py: `put_history`,
`last_history_seq`, `event_times`, `history_checkpoints`, and the rows stored with the
events: `append(progress=)`, `event_progress`), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from paceline_server.domain.errors import CurriculumNotFound, Unavailable
from paceline_server.store.sql import SqlStore

SPEC = {"name": "c", "layout": {"distributions": [{"name": "d0", "size": 10}]},
        "objectives": ["acc"], "seed": 3}


def appended(store: SqlStore, n: int, name: str = "c") -> None:
    with store.writer(name) as writer:
        for i in range(n):
            writer.append("report", "r", writer.head_seq, None, f"r:{i}".encode())


def spans(store: SqlStore, name: str = "c", after_seq: int = 0) -> list[tuple[int, int, bytes]]:
    return [(c.first_seq, c.last_seq, c.rows)
            for c in store.history_checkpoints(name, after_seq)]


def test_chunks_commit_with_the_writer_in_last_seq_order(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    assert store.history_checkpoints("c") == []
    with store.writer("c") as writer:
        for _ in range(6):
            writer.append("report", "r", writer.head_seq, None, b"x")
        writer.put_history(4, 6, b"b")
        writer.put_history(1, 3, b"a")
        assert writer.last_history_seq(4) == 3 and writer.last_history_seq(7) == 6
        assert writer.last_history_seq(3) == 0
        times = writer.event_times(2, 4)  # this block's appends are visible
        assert [seq for seq, _ in times] == [2, 3, 4]
        assert all(stamp.tzinfo is not None for _, stamp in times)
    assert spans(store) == [(1, 3, b"a"), (4, 6, b"b")]
    assert spans(store, after_seq=3) == [(4, 6, b"b")]
    stored = store.history_checkpoints("c")[0]
    assert stored.created_at.tzinfo is not None


def test_chunks_are_read_in_batches_bounded_in_bytes(store: SqlStore) -> None:
    """`max_bytes` returns the first chunks whose rows add up to at most that, and at
    least one however big: a history longer than memory is read a batch at a time."""
    store.create_curriculum("c", SPEC)
    appended(store, 8)
    for first, last, size in ((1, 2, 30), (3, 4, 30), (5, 6, 50), (7, 8, 10)):
        store.put_history("c", first, last, bytes(size))
    assert [c.last_seq for c in store.history_checkpoints("c", 0, max_bytes=60)] == [2, 4]
    assert [c.last_seq for c in store.history_checkpoints("c", 0, max_bytes=59)] == [2]
    assert [c.last_seq for c in store.history_checkpoints("c", 4, max_bytes=10)] == [6]
    assert [c.last_seq for c in store.history_checkpoints("c", 4, max_bytes=60)] == [6, 8]
    assert [c.last_seq for c in store.history_checkpoints("c", 3, max_bytes=1)] == [4]
    assert store.history_checkpoints("c", 8, max_bytes=100) == []
    assert spans(store) == [(1, 2, bytes(30)), (3, 4, bytes(30)), (5, 6, bytes(50)),
                            (7, 8, bytes(10))]
    with pytest.raises(CurriculumNotFound):
        store.history_checkpoints("nope", 0, max_bytes=10)


def test_an_equal_last_seq_is_replaced_and_the_range_checked(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    appended(store, 5)
    store.put_history("c", 1, 5, b"old")
    store.put_history("c", 3, 5, b"new")
    assert spans(store) == [(3, 5, b"new")]
    for first, last in ((0, 2), (3, 2), (4, 6)):
        with pytest.raises(ValueError, match=r"outside 1\.\.head_seq"):
            store.put_history("c", first, last, b"x")
        with pytest.raises(ValueError, match=r"outside 1\.\.head_seq"), \
                store.writer("c") as writer:
            writer.put_history(first, last, b"x")
    assert spans(store) == [(3, 5, b"new")]


def test_a_failed_block_stores_no_chunk(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    def failing() -> None:
        with store.writer("c") as writer:
            writer.append("report", "r", 0, None, b"x")
            writer.put_history(1, 1, b"a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert store.history_checkpoints("c") == []


def test_chunks_outlive_pruned_events_and_go_with_the_curriculum(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    with store.writer("c") as writer:
        for _ in range(4):
            writer.append("report", "r", writer.head_seq, None, b"x")
        writer.put_snapshot(4, b"state")
        writer.put_history(1, 4, b"rows")
    assert store.prune_events("c", 4) == 4
    assert spans(store) == [(1, 4, b"rows")]
    with store.writer("c") as writer:
        assert writer.event_times(1, 4) == []  # pruned: no times to read
    store.delete_curriculum("c")
    store.create_curriculum("c", SPEC)
    assert store.history_checkpoints("c") == []


def test_unknown_curriculum(store: SqlStore) -> None:
    with pytest.raises(CurriculumNotFound):
        store.history_checkpoints("nope")
    with pytest.raises(CurriculumNotFound):
        store.event_progress("nope", 0)
    with pytest.raises(CurriculumNotFound):
        store.put_history("nope", 1, 1, b"x")


def test_rows_of_an_earlier_curriculum_of_the_name_are_refused(store: SqlStore) -> None:
    """`put_history(created_at=)`: rows computed from a curriculum that was deleted and
    created again meanwhile are refused (Unavailable, nothing stored), as put_batch's."""
    old = store.create_curriculum("c", SPEC).created_at
    appended(store, 3)
    store.put_history("c", 1, 3, b"ok", created_at=old)
    assert spans(store) == [(1, 3, b"ok")]
    store.delete_curriculum("c")
    store.create_curriculum("c", SPEC)
    appended(store, 5)
    with pytest.raises(Unavailable, match="recreated"):
        store.put_history("c", 1, 3, b"old rows", created_at=old)
    assert spans(store) == []
    store.put_history("c", 1, 5, b"new", created_at=store.head("c").created_at)
    assert spans(store) == [(1, 5, b"new")]


def test_a_chunk_drops_the_chunks_inside_its_range(store: SqlStore) -> None:
    store.create_curriculum("c", SPEC)
    appended(store, 9)
    for first, last in ((1, 3), (4, 6), (7, 9)):
        store.put_history("c", first, last, f"{first}".encode())
    store.put_history("c", 1, 6, b"merged")  # replaces 4..6, drops 1..3
    assert spans(store) == [(1, 6, b"merged"), (7, 9, b"7")]
    with store.writer("c") as writer:
        writer.put_history(2, 9, b"all")  # 1..6 starts before 2: kept
    assert spans(store) == [(1, 6, b"merged"), (2, 9, b"all")]


def test_rows_stored_with_the_events(store: SqlStore) -> None:
    """`append(progress=)` stores the row in the event's INSERT; `event_progress` reads
    them back in seq order (None where none was given), after `after_seq`, at most
    `limit`, and only what committed."""
    store.create_curriculum("c", SPEC)
    with store.writer("c") as writer:
        for i in range(4):
            writer.append("report", "r", 10 + i, None, b"payload",
                          progress=None if i == 2 else f"row{i}".encode())
    rows = store.event_progress("c", 0)
    assert [(r.seq, r.step, r.progress) for r in rows] == [
        (1, 10, b"row0"), (2, 11, b"row1"), (3, 12, None), (4, 13, b"row3")]
    assert all(r.created_at.tzinfo is not None for r in rows)
    events = list(store.events("c"))
    assert [r.created_at for r in rows] == [e.created_at for e in events]
    assert [r.seq for r in store.event_progress("c", 1, limit=2)] == [2, 3]
    assert store.event_progress("c", 4) == [] and store.event_progress("c", 0, limit=0) == []
    with pytest.raises(ValueError, match="non-negative"):
        store.event_progress("c", 0, limit=-1)

    def failing() -> None:
        with store.writer("c") as writer:
            writer.append("report", "r", 20, None, b"x", progress=b"lost")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert [r.seq for r in store.event_progress("c", 0)] == [1, 2, 3, 4]


def test_rows_go_with_pruned_events(store: SqlStore) -> None:
    """Pruning drops an event's row with it: what remains starts after the snapshot,
    whose chunk covers the pruned range."""
    store.create_curriculum("c", SPEC)
    with store.writer("c") as writer:
        for i in range(6):
            writer.append("report", "r", i, None, b"x", progress=bytes([i]))
        writer.put_snapshot(4, b"state")
        writer.put_history(1, 4, b"rows")
    assert store.prune_events("c", 6) == 4
    assert [(r.seq, r.progress) for r in store.event_progress("c", 0)] == [
        (5, b"\x04"), (6, b"\x05")]
    assert spans(store) == [(1, 4, b"rows")]
