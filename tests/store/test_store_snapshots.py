"""Chunked snapshots (revision 0004), on SQLite and PostgreSQL: a snapshot given as pieces
is stored in chunks of at most `snapshot_chunk_bytes`, reads back whole or as a stream,
replaces and is pruned like a single-blob one (no orphan chunks), rolls back alone when
its pieces fail, and single-blob snapshots written by older versions still read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from store_support import Database

from paceline_server.store import tables as t
from paceline_server.store.sql import SqlStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes


def pieces(data: bytes, sizes: tuple[int, ...] = (1, 999, 5000)) -> Iterator[memoryview]:
    """`data` in pieces of uneven sizes (cycling through `sizes`)."""
    view, i, at = memoryview(data), 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        yield view[at:at + size]
        at += size
        i += 1


def chunk_rows(migrated: Database) -> list[tuple[int, int, int]]:
    """(seq, part, length) of every stored chunk."""
    engine = migrated.engine()
    try:
        with engine.connect() as conn:
            k = t.snapshot_chunks
            return [(int(seq), int(part), int(size)) for seq, part, size in conn.execute(
                select(k.c.seq, k.c.part, func.length(k.c.data)).order_by(k.c.seq, k.c.part))]
    finally:
        engine.dispose()


def appended(store: SqlStore, count: int) -> None:
    with store.writer("math") as writer:
        for _ in range(count):
            writer.append("report", "r", writer.head_seq, None, b"x")


@pytest.fixture
def chunky(migrated: Database) -> Iterator[SqlStore]:
    opened = migrated.open(snapshot_chunk_bytes=4096, snapshot_keep=2)
    opened.create_curriculum("math", {})
    yield opened
    opened.close()


def test_pieces_are_stored_in_bounded_chunks_and_read_back(chunky: SqlStore,
                                                           migrated: Database) -> None:
    appended(chunky, 3)
    with chunky.writer("math") as writer:
        writer.put_snapshot(3, pieces(PAYLOAD))
    assert chunk_rows(migrated) == [(3, 0, 4096), (3, 1, 4096), (3, 2, 2048)]
    record = chunky.latest_snapshot("math")
    assert record is not None and record.seq == 3 and record.state == PAYLOAD
    with chunky.snapshot_stream("math") as stream:
        assert stream is not None and stream.seq == 3
        assert stream.created_at == record.created_at
        assert [len(c) for c in stream.chunks] == [4096, 4096, 2048]
    with chunky.snapshot_stream("math", at_most=2) as stream:
        assert stream is None


def test_single_blob_snapshots_of_older_versions_still_read(chunky: SqlStore,
                                                           migrated: Database) -> None:
    """A row written as before revision 0004 (everything in `state`, no chunks)."""
    appended(chunky, 2)
    engine = migrated.engine()
    try:
        with engine.begin() as conn:
            cid = conn.execute(select(t.curricula.c.id)).scalar_one()
            conn.execute(t.snapshots.insert().values(curriculum_id=cid, seq=2, state=PAYLOAD,
                                                     created_at=T0))
    finally:
        engine.dispose()
    record = chunky.latest_snapshot("math")
    assert record is not None and record.state == PAYLOAD and record.created_at == T0
    with chunky.snapshot_stream("math") as stream:
        assert stream is not None and b"".join(stream.chunks) == PAYLOAD
    # `bytes` are still stored whole, in either place a snapshot can be replaced from.
    with chunky.writer("math") as writer:
        writer.put_snapshot(2, pieces(PAYLOAD[:5000]))
    assert chunk_rows(migrated) == [(2, 0, 4096), (2, 1, 904)]
    with chunky.writer("math") as writer:
        writer.put_snapshot(2, b"whole")
    assert chunk_rows(migrated) == []  # replaced: no chunk of the old one left behind
    record = chunky.latest_snapshot("math")
    assert record is not None and record.state == b"whole"


def test_pruned_and_deleted_snapshots_take_their_chunks(chunky: SqlStore,
                                                        migrated: Database) -> None:
    appended(chunky, 4)
    for seq in (1, 2, 3):
        with chunky.writer("math") as writer:
            writer.put_snapshot(seq, pieces(PAYLOAD))
    assert sorted({seq for seq, _, _ in chunk_rows(migrated)}) == [2, 3]  # keep=2
    older = chunky.latest_snapshot("math", at_most=2)
    assert older is not None and older.seq == 2 and older.state == PAYLOAD
    chunky.delete_curriculum("math")
    assert chunk_rows(migrated) == []


def test_failing_pieces_roll_back_the_snapshot_only(chunky: SqlStore,
                                                    migrated: Database) -> None:
    appended(chunky, 1)
    with chunky.writer("math") as writer:
        writer.put_snapshot(1, b"kept")

    def failing() -> Iterator[bytes]:
        yield PAYLOAD  # two chunks stored before the failure
        raise MemoryError

    with chunky.writer("math") as writer:
        writer.append("report", "r", 1, None, b"y")
        with pytest.raises(MemoryError):
            writer.put_snapshot(2, failing())
        with pytest.raises(MemoryError):
            writer.put_snapshot(1, failing())  # a replacement that fails keeps the old one
    assert chunky.head("math").head_seq == 2  # the block's event committed
    assert chunk_rows(migrated) == []
    record = chunky.latest_snapshot("math")
    assert record is not None and record.seq == 1 and record.state == b"kept"


def test_a_stream_reads_whole_while_writers_prune_it(chunky: SqlStore) -> None:
    """Snapshots written (and the streamed one pruned) mid-read do not tear it."""
    appended(chunky, 3)
    with chunky.writer("math") as writer:
        writer.put_snapshot(1, pieces(PAYLOAD))
    errors: list[BaseException] = []

    def write_two_more() -> None:
        try:
            for seq in (2, 3):
                with chunky.writer("math") as writer:
                    writer.put_snapshot(seq, pieces(PAYLOAD[::-1]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with chunky.snapshot_stream("math") as stream:
        assert stream is not None and stream.seq == 1
        got = [next(stream.chunks)]
        writer_thread = threading.Thread(target=write_two_more)
        writer_thread.start()
        writer_thread.join(timeout=30)
        got.extend(stream.chunks)
    assert not writer_thread.is_alive() and errors == []
    assert b"".join(got) == PAYLOAD
    latest = chunky.latest_snapshot("math")
    assert latest is not None and latest.seq == 3 and latest.state == PAYLOAD[::-1]


def test_chunk_size_must_be_positive(migrated: Database) -> None:
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        migrated.open(snapshot_chunk_bytes=0)
