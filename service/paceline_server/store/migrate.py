"""Schema migrations: Alembic, shipped inside the package and driven from code.

There is no alembic.ini: the `Config` is built here with `script_location` pointing at
`paceline_server/migrations`, so an installed wheel can migrate any database with
`paceline-server migrate` and no files from a source checkout.

Concurrent migrators are serialised: the whole upgrade runs in one transaction that first
takes the SQLite write lock (`BEGIN IMMEDIATE`) or a PostgreSQL advisory transaction lock
keyed by the current schema. So several replicas (or processes of one) started at once
with `auto_migrate` cannot race; the later ones find the schema at head and do nothing.
On PostgreSQL they wait for the advisory lock however long the first one's upgrade takes
(SQLite waits for its write lock up to the busy timeout, `lock_timeout`).

`check_schema` is what a server without `auto_migrate` runs at start (and /readyz on
each probe): a database behind the code stops the process with a message naming the
command to run; one *ahead* of the code (a newer release migrated it) says to upgrade
Paceline instead, since migrating backwards is not something a server should guess at.
`upgrade` (`migrate`, `auto_migrate`) refuses such a database with that same error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from paceline_server.domain.errors import SchemaOutdated
from paceline_server.store.connection import begin_write, create_sql_engine, translated_errors
from paceline_server.store.tables import VERSION_TABLE

if TYPE_CHECKING:
    from paceline_server.store.base import Store

MIGRATE_COMMAND = "paceline-server migrate"
SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
#: First key of the PostgreSQL advisory lock (the second is a hash of the schema name).
_PG_LOCK_KEY = 0x5061_6365  # "Pace"

Target = str | Engine


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations (no ini file involved)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this code expects (cached: the scripts are parsed once per process)."""
    heads = _script().get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging mistake
        raise RuntimeError(f"the packaged migrations have {len(heads)} heads: {heads}")
    return heads[0]


@contextmanager
def _engine(target: Target, schema: str | None) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = create_sql_engine(target, schema=schema, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def migration_connection(target: Target, *, schema: str | None = None) -> Iterator[Connection]:
    """A connection in one transaction holding the migration lock; commits on exit."""
    with translated_errors(), _engine(target, schema) as engine, engine.connect() as conn:
        begin_write(conn)  # SQLite: BEGIN IMMEDIATE = the database write lock
        with conn.begin():
            if conn.dialect.name == "postgresql":
                current = conn.execute(text("SELECT current_schema()")).scalar()
                if current is None:
                    raise SchemaOutdated(
                        "the PostgreSQL search_path names no existing schema; create the "
                        f"schema, then run `{MIGRATE_COMMAND}`")
                # Waited for without `lock_timeout` (30 s by default): another replica's
                # upgrade (an index over a large `events`) may take longer, and this one
                # must then find the schema at head, not fail. Its DDL keeps the bound.
                bound = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar()
                conn.execute(text("SET LOCAL lock_timeout = 0"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(:schema))"),
                             {"key": _PG_LOCK_KEY, "schema": current})
                conn.execute(text("SELECT set_config('lock_timeout', :bound, true)"),
                             {"bound": bound})
            yield conn


def upgrade(target: Target, revision: str = "head", *, schema: str | None = None) -> str | None:
    """Migrate the database at `target` (URL or engine) to `revision`; returns the
    revision it is at afterwards. Idempotent and safe to run concurrently."""
    with migration_connection(target, schema=schema) as conn:
        current = _revision_of(conn)
        if current is not None and not _known(current):
            # Alembic would stop with "Can't locate revision ..."; say what it means.
            raise _newer_than_code(current)
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return current_revision(target, schema=schema)


def downgrade(target: Target, revision: str, *, schema: str | None = None) -> str | None:
    """Migrate the database at `target` back to `revision` (run by the newer release,
    whose scripts know the way back; see docs/deployment.md for what each step drops)."""
    with migration_connection(target, schema=schema) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
    return current_revision(target, schema=schema)


def current_revision(target: Target, *, schema: str | None = None) -> str | None:
    """The database's schema revision, None when it has none (a fresh database)."""
    with translated_errors(), _engine(target, schema) as engine, engine.connect() as conn:
        return _revision_of(conn)


def _revision_of(conn: Connection) -> str | None:
    heads = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    if not heads:
        return None
    return heads[0] if len(heads) == 1 else ",".join(sorted(heads))


def _known(current: str) -> bool:
    """Whether every revision in `current` is one of this release's scripts (one it does
    not know was written by a newer release)."""
    try:
        return all(_script().get_revision(rev) is not None for rev in current.split(","))
    except CommandError:
        return False


def _newer_than_code(current: str) -> SchemaOutdated:
    head = head_revision()
    return SchemaOutdated(
        f"the database schema is at revision {current}, which is newer than this "
        f"Paceline release knows (its newest is {head}): upgrade Paceline; do not run "
        f"`{MIGRATE_COMMAND}` with this older release",
        {"current": current, "head": head, "command": MIGRATE_COMMAND, "ahead": True})


def check_schema(target: Target, store: Store | None = None, *,
                 schema: str | None = None, allow_newer: bool = False) -> str:
    """Raise SchemaOutdated unless the database is exactly at `head_revision()`.

    `store`, when it is a `SqlStore`, lends its engine (so a readiness probe does not
    build a connection pool each time); otherwise `target` is used. Returns the revision.

    `allow_newer` (the readiness probe of a running server) also accepts a revision a
    newer release wrote: in a rolling upgrade the new release migrates while the old
    replicas still serve, and failing their probes takes every one of them out of
    rotation before a new one is ready. A *start* on such a schema is still refused.
    """
    engine = getattr(store, "engine", None)  # a SqlStore's (not imported: sql imports us)
    if isinstance(engine, Engine):
        target = engine
    head = head_revision()
    current = current_revision(target, schema=schema)
    details = {"current": current, "head": head, "command": MIGRATE_COMMAND}
    if current == head:
        return head
    if current is None:
        raise SchemaOutdated(
            f"the database has no Paceline schema yet (this release needs revision {head}); "
            f"run `{MIGRATE_COMMAND}` to create it", details)
    if not _known(current):
        if allow_newer:
            return current
        raise _newer_than_code(current)
    raise SchemaOutdated(
        f"the database schema is at revision {current} but this Paceline release needs "
        f"{head}: back up the database and run `{MIGRATE_COMMAND}`", details)
