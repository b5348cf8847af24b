"""Store fixtures: every contract test runs on SQLite (a temporary file) and on
PostgreSQL (a fresh schema per test, migrated into, dropped with CASCADE afterwards).

PostgreSQL is the real server at PACELINE_TEST_PG_URL (default: the CI service at
127.0.0.1:5432, database `test`); there are no mocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from store_support import Database

from paceline_server.store.sql import SqlStore
from support import PG_URL


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty (unmigrated) database."""
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path / 'paceline.db'}")
        return
    admin: Engine = request.getfixturevalue("pg_admin")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield Database("postgresql", PG_URL, {"schema": schema})
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def migrated(database: Database) -> Database:
    database.upgrade()
    return database


@pytest.fixture
def store(migrated: Database) -> Iterator[SqlStore]:
    opened = migrated.open()
    yield opened
    opened.close()
