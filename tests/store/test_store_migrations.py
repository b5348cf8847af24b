"""Schema migrations and the schema check at open, on both backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from store_support import Database

from paceline_server.domain.errors import SchemaOutdated, Unavailable
from paceline_server.store import open_store
from paceline_server.store.connection import create_sql_engine
from paceline_server.store.migrate import (
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    migration_connection,
    upgrade,
)
from paceline_server.store.sql import SqlStore
from paceline_server.store.tables import VERSION_TABLE, declared_for, metadata
from support import fresh_pg_schema


def test_fresh_database_gets_head(database: Database) -> None:
    assert current_revision(database.url, schema=database.schema) is None
    assert database.upgrade() == head_revision()
    assert current_revision(database.url, schema=database.schema) == head_revision()
    assert database.upgrade() == head_revision()  # idempotent
    assert check_schema(database.url, schema=database.schema) == head_revision()


def test_migrations_match_the_table_metadata(migrated: Database) -> None:
    """`store/tables.py` and the migration scripts describe the same schema, server
    defaults included (compared only when asked: a migration that left out
    `head_seq`'s default of 0 passed). An index declared for one backend only is compared
    on that backend, as autogenerate does (`declared_for`, in the migrations' env.py)."""
    engine = migrated.engine()
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True,
                            "version_table": VERSION_TABLE,
                            "include_object": declared_for(conn.dialect.name)})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_unmigrated_database_is_refused(database: Database) -> None:
    with pytest.raises(SchemaOutdated) as info:
        database.open()
    assert "paceline-server migrate" in info.value.message
    assert info.value.code == "SCHEMA_OUTDATED"
    assert info.value.details["head"] == head_revision()

    store = database.open(auto_migrate=True)
    try:
        store.create_curriculum("math", {})
    finally:
        store.close()
    reopened = database.open()  # no auto_migrate: the check now passes
    try:
        assert reopened.get_curriculum("math").head_seq == 0
        assert check_schema(database.url, reopened) == head_revision()
    finally:
        reopened.close()


def written_by_a_newer_release(database: Database) -> None:
    """Set the schema's revision to one this release does not know."""
    engine = database.engine()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE paceline_alembic_version SET version_num = '9999_future'"))
    finally:
        engine.dispose()


def test_database_ahead_of_the_code_is_refused(migrated: Database) -> None:
    written_by_a_newer_release(migrated)
    with pytest.raises(SchemaOutdated, match="newer than this Paceline") as info:
        migrated.open()
    assert info.value.details["ahead"] is True


def test_a_database_ahead_of_the_code_is_not_migrated(migrated: Database) -> None:
    """`migrate` and `auto_migrate` (the embedded SQLite default) on a database a newer
    release migrated: refused with the same SCHEMA_OUTDATED that names the cause, not
    Alembic's "Can't locate revision identified by ..." (a CommandError, which the CLI
    printed as an unexpected error and `serve` died of), and nothing written."""
    written_by_a_newer_release(migrated)
    with pytest.raises(SchemaOutdated, match="newer than this Paceline") as info:
        migrated.upgrade()
    assert info.value.details == {"current": "9999_future", "head": head_revision(),
                                  "command": "paceline-server migrate", "ahead": True}
    with pytest.raises(SchemaOutdated, match="newer than this Paceline"):
        migrated.open(auto_migrate=True)
    assert current_revision(migrated.url, schema=migrated.schema) == "9999_future"


def test_downgrades_keep_snapshot_bytes(migrated: Database) -> None:
    """Downgrading below revision 0004 folds each chunked snapshot back into its row's
    `state` (the layout older releases read) before it drops `snapshot_chunks`: it
    dropped the table alone, leaving every snapshot written since as an empty `state`,
    the only copy of a curriculum's state once its events were pruned. Every script
    runs both ways on both backends and the schema comes back as declared."""
    payload = bytes(range(256)) * 40
    store = migrated.open(snapshot_chunk_bytes=4096)
    try:
        store.create_curriculum("math", {})
        with store.writer("math") as writer:
            writer.append("report", "r", 0, None, b"x")
            writer.put_snapshot(1, [payload[:5000], payload[5000:]])
    finally:
        store.close()
    assert downgrade(migrated.url, "0003_batch_parts",
                     schema=migrated.schema) == "0003_batch_parts"
    engine = migrated.engine()
    try:
        with engine.connect() as conn:
            assert bytes(conn.execute(text("SELECT state FROM snapshots")).scalar_one()) \
                == payload
    finally:
        engine.dispose()
    assert migrated.upgrade() == head_revision()
    reopened = migrated.open()
    try:
        snapshot = reopened.latest_snapshot("math")
        assert snapshot is not None and snapshot.state == payload
    finally:
        reopened.close()
    assert downgrade(migrated.url, "base", schema=migrated.schema) is None
    assert migrated.upgrade() == head_revision()
    test_migrations_match_the_table_metadata(migrated)


def indexes(database: Database, table: str) -> dict[str, str]:
    """The indexes of `table` (name: definition), those a constraint implies included on
    PostgreSQL and left out on SQLite (whose autoindexes have no SQL)."""
    engine = database.engine()
    try:
        with engine.connect() as conn:
            if database.backend == "postgresql":
                found = conn.execute(text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table "
                    "AND schemaname = current_schema()"), {"table": table}).all()
            else:
                found = conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = :table AND sql IS NOT NULL"), {"table": table}).all()
        return {name: sql for name, sql in found}
    finally:
        engine.dispose()


def test_the_runs_listing_index_comes_and_goes(migrated: Database) -> None:
    """Revision 0008 indexes runs in the listing's order, run_id in the code-point
    collation it is listed by on PostgreSQL (which reflection, and so the metadata
    comparison, does not see); downgrading to 0007 drops the index and nothing else."""
    index = "ix_runs_curriculum_id_created_at_run_id"
    at_head = indexes(migrated, "runs")
    assert index in at_head
    if migrated.backend == "postgresql":
        assert at_head[index].endswith('(curriculum_id, created_at, run_id COLLATE "C")')
    assert downgrade(migrated.url, "0007", schema=migrated.schema) == "0007"
    assert indexes(migrated, "runs") == {k: v for k, v in at_head.items() if k != index}
    assert migrated.upgrade() == head_revision()
    assert indexes(migrated, "runs") == at_head


def test_the_curricula_listing_index_comes_and_goes(migrated: Database) -> None:
    """Revision 0009 indexes curricula's names by code point on PostgreSQL, the order the
    listing compares them in (the unique index is of the database's collation); SQLite
    gets nothing, its unique index already being in that order. Downgrading to 0008 drops
    the index and nothing else."""
    index = "ix_curricula_name_code_point"
    at_head = indexes(migrated, "curricula")
    if migrated.backend == "postgresql":
        assert at_head[index].endswith('USING btree (name COLLATE "C")')
        assert "uq_curricula_name" in at_head  # still what keeps names unique
    else:
        assert at_head == {}
    assert downgrade(migrated.url, "0008", schema=migrated.schema) == "0008"
    assert indexes(migrated, "curricula") == {k: v for k, v in at_head.items()
                                              if k != index}
    assert migrated.upgrade() == head_revision()
    assert indexes(migrated, "curricula") == at_head


def test_concurrent_auto_migrations(database: Database) -> None:
    """Replicas starting together on an empty database all come up."""
    stores: list[SqlStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def start() -> None:
        try:
            barrier.wait(10)
            stores.append(database.open(auto_migrate=True))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert current_revision(database.url, schema=database.schema) == head_revision()
    finally:
        for store in stores:
            store.close()


def test_a_replica_waits_out_a_long_migration_of_another() -> None:
    """PostgreSQL: a replica starting while another one's upgrade holds the migration
    lock longer than `lock_timeout` (an index built over a large `events` table) waits
    for it and finds the schema at head. The advisory lock's wait was bounded by the
    session's `lock_timeout` (30 s by default), so it failed with UNAVAILABLE
    ("canceling statement due to lock timeout") and the replica did not start. The
    migration's own statements keep the bound."""
    with fresh_pg_schema() as url:
        holding = threading.Event()

        def long_migration() -> None:
            with migration_connection(url):
                holding.set()
                time.sleep(3)

        other = threading.Thread(target=long_migration)
        other.start()
        engine = create_sql_engine(url, lock_timeout=1)
        try:
            assert holding.wait(10)
            started = time.monotonic()
            assert upgrade(engine) == head_revision()
            assert time.monotonic() - started > 1.5  # it did wait past lock_timeout
            with migration_connection(engine) as conn:
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "1s"
        finally:
            other.join()
            engine.dispose()


def test_open_store_entry_point(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}", auto_migrate=True, snapshot_keep=3)
    try:
        assert isinstance(store, SqlStore)
        assert store.snapshot_keep == 3
        store.ping()
    finally:
        store.close()


def test_unreachable_databases_raise_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as info:
        SqlStore("postgresql+psycopg://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(Unavailable):
        SqlStore(f"sqlite:///{tmp_path / 'missing-dir' / 'p.db'}", auto_migrate=True)


def test_url_validation() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        SqlStore("sqlite://")
    with pytest.raises(ValueError, match="in-memory"):
        SqlStore("sqlite:///:memory:")
    with pytest.raises(ValueError, match="unsupported"):
        SqlStore("mysql://localhost/x")
    with pytest.raises(ValueError, match="schema"):
        SqlStore("postgresql://postgres@127.0.0.1/test", schema="Bad Name;")
