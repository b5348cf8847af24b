"""Upgrading in place keeps what an older release stored, on SQLite and PostgreSQL.

A database at an old revision is filled with the rows a curriculum in use leaves (runs,
reports, snapshots - one blob each before revision 0004 - served batches, refill parts,
history checkpoints and a pruned log where the revision has them), by copying them
from a current database into the columns that revision has. After `migrate`, the
service answers as it did before: the same state, history, runs and served batches,
and it goes on taking reports and creating curricula.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, insert, inspect, select, text
from store_support import Database

from cli_support import populated
from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import tables as t
from paceline_server.store.migrate import head_revision, upgrade
from support import SPEC


def copy_at_revision(source_url: str, target: Database, revision: str) -> None:
    """`target` migrated to `revision`, holding the rows of `source_url` that revision
    has tables and columns for (a chunked snapshot joined into its `state` before 0004)."""
    upgrade(target.url, revision, schema=target.schema)
    source, engine = create_engine(source_url), target.engine()
    tables = set(inspect(engine).get_table_names())
    try:
        with source.connect() as read, engine.begin() as write:
            for table in t.metadata.sorted_tables:
                if table.name not in tables:
                    continue
                columns = {c["name"] for c in inspect(engine).get_columns(table.name)}
                rows: list[dict[str, Any]] = []
                for row in read.execute(table.select()):
                    values = {k: v for k, v in row._mapping.items() if k in columns}
                    if table is t.snapshots and "snapshot_chunks" not in tables:
                        k = t.snapshot_chunks
                        values["state"] += b"".join(read.execute(
                            select(k.c.data).where(k.c.curriculum_id == row.curriculum_id,
                                                   k.c.seq == row.seq)
                            .order_by(k.c.part)).scalars())
                    rows.append(values)
                if rows:
                    write.execute(insert(table), rows)
            if target.backend == "postgresql":  # ids were given, not drawn
                write.execute(text("SELECT setval(pg_get_serial_sequence('curricula', 'id'), "
                                   "(SELECT max(id) FROM curricula))"))
    finally:
        source.dispose()
        engine.dispose()


def stored_batches(service: PacelineService) -> list[tuple[int, int, bytes]]:
    """(step, part, payload) of every batch and refill part run-1 was served."""
    found: list[tuple[int, int, bytes]] = []
    with service.store.writer("math") as writer:
        for step in range(13):
            first = writer.get_batch("run-1", step)
            assert first is not None
            found.append((step, 0, first.payload))
            found += [(step, p.part, p.payload) for p in writer.get_parts("run-1", step)]
    return found


@pytest.mark.parametrize("revision", ["0001_initial", "0005"])
def test_an_upgraded_database_serves_what_it_held(database: Database, tmp_path: Path,
                                                  revision: str) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    before = populated(source, reports=12)  # snapshots at 5 and 10
    before.next_batch("math", "run-1", 12)
    if revision >= "0003":
        before.refill("math", "run-1", 12, 1, 4)
    if revision >= "0005":
        assert before.store.prune_events("math", 5) == 5
    history, (_, state) = before.history("math"), before.inspect("math")
    served, runs = stored_batches(before), before.list_runs("math")
    before.close()
    before.store.close()

    copy_at_revision(source, database, revision)
    assert database.upgrade() == head_revision()
    store = database.open()
    after = PacelineService(store, Settings(database_url=database.url, snapshot_every=5))
    try:
        upgraded = after.history("math")
        for field in dataclasses.fields(history):
            if field.name != "replayed_seq":  # how much was folded, not what
                np.testing.assert_equal(getattr(upgraded, field.name),
                                        getattr(history, field.name), err_msg=field.name)
        assert repr(after.inspect("math")[1]) == repr(state)
        assert stored_batches(after) == served
        assert [r.record for r in after.list_runs("math")] == [r.record for r in runs]
        populated(database.url, reports=3, start=12, service=after)  # k12 is new
        assert after.store.get_curriculum("math").head_seq == 15
        assert after.create_curriculum({**SPEC, "name": "other"}).created
    finally:
        after.close()
        store.close()
