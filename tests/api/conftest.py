"""API fixtures: an app on a fresh database (SQLite file, or a fresh PostgreSQL schema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from support import fresh_pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'paceline.db'}"
    else:
        with fresh_pg_schema() as url:
            yield url


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with make_client(database_url, snapshot_every=3) as test_client:
        yield test_client


@pytest.fixture
def sqlite_client(tmp_path: Any) -> Iterator[TestClient]:
    with make_client(f"sqlite:///{tmp_path / 'p.db'}", snapshot_every=3) as test_client:
        yield test_client
