"""SQL of snapshots (`tables.snapshots` + `tables.snapshot_chunks`), used by `store.sql`.

A snapshot's bytes are its row's `state` followed by its chunks in part order. A snapshot
handed over as one `bytes` is stored in `state` alone (what every version before
revision 0004 wrote, and still the cheapest form for a small state); one handed over as
pieces is cut into chunks of at most `chunk_bytes` and stored one chunk per row with an
empty `state`, so neither writing nor reading it holds the encoded whole. Both forms read
back the same way, which is what keeps old snapshots loadable after an upgrade.

A chunked write runs inside a SAVEPOINT: if producing or storing a piece fails (say,
MemoryError), the half-written snapshot is rolled back while the surrounding
transaction, the reports it commits, carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from paceline_server.domain.array_stream import chunked
from paceline_server.store import tables as t

_s, _k = t.snapshots, t.snapshot_chunks
Insert = Callable[[Any], Any]


def put(conn: Connection, insert: Insert, cid: int, seq: int,
        state: bytes | Iterable[bytes | memoryview], *, chunk_bytes: int, keep: int) -> None:
    """Upsert the snapshot at `seq` (replacing one stored there in either form), then
    drop all but the newest `keep` of the curriculum (their chunks cascade)."""
    with conn.begin_nested():
        conn.execute(delete(_k).where(_k.c.curriculum_id == cid, _k.c.seq == seq))
        whole = bytes(state) if isinstance(state, bytes | bytearray) else None
        stmt = insert(_s).values(curriculum_id=cid, seq=seq,
                                 state=b"" if whole is None else whole,
                                 created_at=datetime.now(UTC))
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["curriculum_id", "seq"],
            set_={"state": stmt.excluded.state, "created_at": stmt.excluded.created_at}))
        if not isinstance(state, bytes | bytearray):
            # One row per statement: an executemany would gather every chunk first.
            for part, chunk in enumerate(chunked(state, chunk_bytes)):
                conn.execute(_k.insert().values(curriculum_id=cid, seq=seq, part=part,
                                                data=chunk))
    oldest_kept = (select(_s.c.seq).where(_s.c.curriculum_id == cid)
                   .order_by(_s.c.seq.desc()).limit(1).offset(keep - 1)).scalar_subquery()
    conn.execute(delete(_s).where(_s.c.curriculum_id == cid, _s.c.seq < oldest_kept))


def newest(conn: Connection, cid: int,
           at_most: int | None) -> tuple[int, bytes, datetime] | None:
    """(seq, state column, created_at) of the newest snapshot (seq <= at_most)."""
    query = select(_s.c.seq, _s.c.state, _s.c.created_at).where(_s.c.curriculum_id == cid)
    if at_most is not None:
        query = query.where(_s.c.seq <= at_most)
    row = conn.execute(query.order_by(_s.c.seq.desc()).limit(1)).one_or_none()
    if row is None:
        return None
    return int(row.seq), bytes(row.state), row.created_at


def chunks(conn: Connection, cid: int, seq: int, head: bytes) -> Iterator[bytes]:
    """The snapshot's bytes as stored: `head` (its `state` column), then its chunks,
    fetched one row at a time (a server-side cursor on PostgreSQL) from one statement,
    so a snapshot pruned meanwhile is still read whole."""
    if head:
        yield head
    result = conn.execution_options(stream_results=True, yield_per=1).execute(
        select(_k.c.data).where(_k.c.curriculum_id == cid, _k.c.seq == seq)
        .order_by(_k.c.part))
    try:
        for (data,) in result:
            yield bytes(data)
    finally:
        result.close()
