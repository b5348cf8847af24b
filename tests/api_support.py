"""Helpers for API tests: app clients on fresh databases and a sample spec."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from paceline_server.api.app import create_app
from paceline_server.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_client(url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=url, auto_migrate=True, **settings))
    return TestClient(app)


SPEC: dict[str, Any] = {
    "name": "math",
    "layout": {"distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "sampler": "uniform",
    "weighting": {"kind": "fixed", "weights": [3, 1]},
    "batch_size": 8,
    "seed": 1,
}
