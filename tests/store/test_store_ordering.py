"""Listings are ordered by code point on every backend, whatever collation the
PostgreSQL database was created with. A database initialised with a linguistic locale
(en_US.UTF-8, the default of many images) ordered names case-insensitively and ignoring
punctuation ("a" before "B", "a-c" between "ab" and "ad"): a listing's order, and so
which curricula a page of it holds, depended on the backend and on how its database
was created."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from store_support import Database

from paceline_server.store.base import RunKey

NAMES = ["B", "a", "ab", "a-c", "ad", "Z9", "a.b", "A_"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def spec(name: str) -> dict[str, object]:
    return {"name": name, "layout": {"distributions": [{"name": "d0", "size": 10}]},
            "objectives": ["acc"]}


def linguistic(database: Database) -> None:
    """Give the name columns the collation a database created as en_US would have."""
    if database.backend != "postgresql":
        return
    with database.engine().begin() as conn:
        conn.execute(text('ALTER TABLE curricula ALTER COLUMN name TYPE varchar(256) '
                          'COLLATE "en-US-x-icu"'))
        conn.execute(text('ALTER TABLE runs ALTER COLUMN run_id TYPE varchar(128) '
                          'COLLATE "en-US-x-icu"'))


@pytest.mark.parametrize("collated", [False, True])
def test_listings_are_in_code_point_order(migrated: Database, collated: bool) -> None:
    if collated:
        if migrated.backend != "postgresql":
            pytest.skip("PostgreSQL collations")
        linguistic(migrated)
    store = migrated.open()
    try:
        for name in NAMES:
            store.create_curriculum(name, spec(name))
        for name in NAMES:
            store.add_run("a", name, {}, T0)  # equal created_at: ordered by run id
        listed = [c.name for c in store.list_curricula(limit=100)]
        assert listed == sorted(NAMES)
        paged = [c.name for offset in range(0, len(NAMES), 3)
                 for c in store.list_curricula(limit=3, offset=offset)]
        assert paged == sorted(NAMES)
        assert [r.run_id for r in store.list_runs("a")] == sorted(NAMES)
        # Pages that start after a key compare it in the same order as they list.
        for after in NAMES:
            assert [c.name for c in store.list_curricula(limit=100, after=after)] \
                == [name for name in sorted(NAMES) if name > after], after
            assert [r.run_id for r in store.list_runs("a", after=RunKey(T0, after))] \
                == [name for name in sorted(NAMES) if name > after], after
    finally:
        store.close()
