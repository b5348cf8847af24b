"""Shared helpers of the store tests (a database handle for both backends)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine

from paceline_server.store.migrate import upgrade
from paceline_server.store.sql import SqlStore


@dataclass(frozen=True)
class Database:
    """An empty database of one backend: a URL plus the store options that select it."""

    backend: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> str | None:
        schema: str | None = self.options.get("schema")
        return schema

    def open(self, **options: Any) -> SqlStore:
        return SqlStore(self.url, **{**self.options, **options})

    def upgrade(self) -> str | None:
        return upgrade(self.url, schema=self.schema)

    def engine(self) -> Engine:
        """A plain engine on the same database/schema (for raw checks)."""
        if self.schema is None:
            return create_engine(self.url)
        return create_engine(self.url,
                             connect_args={"options": f"-c search_path={self.schema}"})
