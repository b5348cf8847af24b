"""Reliability fixtures: databases (a temporary SQLite file, a fresh PostgreSQL schema on
the machine's server; no mocks) and the load generator of `benchmarks/load.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from reliability_support import load_generator

from support import fresh_pg_schema


@pytest.fixture(scope="session")
def load() -> ModuleType:
    return load_generator()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'paceline.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'paceline.db'}"
        return
    with fresh_pg_schema() as url:
        yield url
