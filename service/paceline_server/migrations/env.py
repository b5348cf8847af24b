"""Alembic environment of the Paceline store.

Paceline drives Alembic programmatically (`paceline_server.store.migrate`): it opens the
connection, takes the migration lock (SQLite write lock / PostgreSQL advisory lock) and
passes the connection in `config.attributes["connection"]`, so concurrent starters of
`auto_migrate` servers cannot race each other. The whole upgrade then runs inside that
one external transaction, which commits or rolls back as a unit (both backends support
transactional DDL once pysqlite's implicit transaction handling is switched off).

Without a connection (plain `alembic` against `sqlalchemy.url`) it connects itself, and
`--sql` (offline) mode renders the DDL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from paceline_server.store.tables import VERSION_TABLE, declared_for, metadata

config = context.config
target_metadata = metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode recreates tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # An index declared for the other backend only is not missing here.
        include_object=declared_for(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, version_table=VERSION_TABLE,
                      literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from paceline_server.store.migrate import migration_connection

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url in the Alembic config")
    # The store's own engine setup and migration lock apply to plain `alembic` runs too.
    with migration_connection(url) as connection:
        _configure_and_run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
