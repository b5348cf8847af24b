"""Persistence: the `Store` contract (`base`) and its SQL implementation (`sql`).

`open_store(url)` is the one entry point the app and the CLI use; the URL picks the
backend (`sqlite:///path.db`, the embedded default, or `postgresql+psycopg://...`).
"""

from __future__ import annotations

from typing import Any

from paceline_server.store.base import (
    BatchRecord,
    CurriculumRecord,
    CurriculumWriter,
    EventRecord,
    RunRecord,
    SnapshotRecord,
    Store,
)

__all__ = [
    "BatchRecord",
    "CurriculumRecord",
    "CurriculumWriter",
    "EventRecord",
    "RunRecord",
    "SnapshotRecord",
    "Store",
    "open_store",
]


def open_store(url: str, **options: Any) -> Store:
    """Open the store at `url`. Options are those of `SqlStore` (`snapshot_keep`,
    `auto_migrate`, `schema`, `pool_size`, `lock_timeout`, ...).

    Imported lazily so that `paceline_server.store.base` (the contract) can be used
    without loading SQLAlchemy.
    """
    from paceline_server.store.sql import SqlStore

    return SqlStore(url, **options)
