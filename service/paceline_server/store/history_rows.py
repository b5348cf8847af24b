"""SQL of the history checkpoints (`tables.history_checkpoints`), used by `store.sql`.

A checkpoint is one chunk of a curriculum's per-report history rows (first_seq..last_seq,
bytes the app packs) stored under (curriculum, last_seq). Chunks are written in the
transaction of the report they end at (so they commit with it or not at all) or, to fill
a range no writer recorded or merge small chunks into one, in a transaction of their own;
an equal `last_seq` is replaced and chunks inside the new one's range are dropped. They
hang off the curriculum (ON DELETE CASCADE) and are never pruned with the events, which
is what lets a history answer for a pruned range without a replay. The rows after the
last chunk are read from the events themselves (`events.progress`, `event_progress`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select

from paceline_server.store import tables as t
from paceline_server.store.base import EventProgress, HistoryCheckpoint

_h, _e = t.history_checkpoints, t.events


def check_range(first_seq: int, last_seq: int, head_seq: int) -> None:
    """A chunk covers committed reports only: 1 <= first_seq <= last_seq <= head_seq."""
    if not 1 <= first_seq <= last_seq <= head_seq:
        raise ValueError(f"history rows {first_seq}..{last_seq} outside 1..head_seq "
                         f"({head_seq})")


def put_checkpoint(conn: Connection, insert: Callable[[Any], Any], cid: int,
                   first_seq: int, last_seq: int, rows: bytes) -> None:
    """Upsert the chunk ending at `last_seq` and drop the chunks inside its range."""
    conn.execute(delete(_h).where(_h.c.curriculum_id == cid, _h.c.first_seq >= first_seq,
                                  _h.c.last_seq < last_seq))
    stmt = insert(_h).values(curriculum_id=cid, last_seq=last_seq, first_seq=first_seq,
                             rows=bytes(rows), created_at=datetime.now(UTC))
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["curriculum_id", "last_seq"],
        set_={"first_seq": stmt.excluded.first_seq, "rows": stmt.excluded.rows,
              "created_at": stmt.excluded.created_at}))


#: chunk sizes looked at per batch when a read is bounded in bytes
_SIZES_PAGE = 1000


def checkpoints(conn: Connection, cid: int, after_seq: int,
                max_bytes: int | None = None) -> list[HistoryCheckpoint]:
    """Chunks ending after `after_seq`, in last_seq order; with `max_bytes`, only the
    first ones whose rows add up to at most that (always at least one), their sizes
    read first without the rows."""
    query = (select(_h.c.first_seq, _h.c.last_seq, _h.c.rows, _h.c.created_at)
             .where(_h.c.curriculum_id == cid, _h.c.last_seq > after_seq)
             .order_by(_h.c.last_seq))
    if max_bytes is not None:
        sizes = conn.execute(
            select(_h.c.last_seq, func.length(_h.c.rows))
            .where(_h.c.curriculum_id == cid, _h.c.last_seq > after_seq)
            .order_by(_h.c.last_seq).limit(_SIZES_PAGE)).all()
        if not sizes:
            return []
        total, upto = 0, int(sizes[0][0])
        for last_seq, size in sizes:
            total += int(size)
            if total > max_bytes and last_seq != sizes[0][0]:
                break
            upto = int(last_seq)
        query = query.where(_h.c.last_seq <= upto)
    result = conn.execute(query)
    return [HistoryCheckpoint(first_seq=int(first), last_seq=int(last), rows=bytes(rows),
                              created_at=created_at)
            for first, last, rows, created_at in result]


def last_before(conn: Connection, cid: int, seq: int) -> int:
    """The last_seq of the newest chunk ending before `seq` (0 when none does)."""
    value = conn.execute(select(func.max(_h.c.last_seq)).where(
        _h.c.curriculum_id == cid, _h.c.last_seq < seq)).scalar_one_or_none()
    return 0 if value is None else int(value)


def event_times(conn: Connection, cid: int, first_seq: int,
                last_seq: int) -> list[tuple[int, datetime]]:
    """(seq, created_at) of the events first_seq..last_seq still in the log, in order."""
    result = conn.execute(
        select(_e.c.seq, _e.c.created_at)
        .where(_e.c.curriculum_id == cid, _e.c.seq >= first_seq, _e.c.seq <= last_seq)
        .order_by(_e.c.seq))
    return [(int(seq), created_at) for seq, created_at in result]


def event_progress(conn: Connection, cid: int, after_seq: int,
                   limit: int | None) -> list[EventProgress]:
    """The events after `after_seq` as (seq, step, created_at, progress), in seq order:
    the history rows stored with them, their payloads left unread."""
    query = (select(_e.c.seq, _e.c.step, _e.c.created_at, _e.c.progress)
             .where(_e.c.curriculum_id == cid, _e.c.seq > after_seq).order_by(_e.c.seq))
    if limit is not None:
        query = query.limit(limit)
    return [EventProgress(seq=int(seq), step=int(step), created_at=created_at,
                          progress=None if progress is None else bytes(progress))
            for seq, step, created_at, progress in conn.execute(query)]
