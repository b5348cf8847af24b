"""Index curricula's names in their listing's order on PostgreSQL: by code point
(COLLATE "C"), so a page of `GET /v1/curricula` (gRPC ListCurricula) reads the names after
its page token off an index instead of sorting every curriculum each page.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:00:00

Written out by hand, like the earlier revisions. An index only: no row changes, and a
release before it ignores it (a rolling upgrade works). The unique index on `name` stays
(it enforces uniqueness and serves lookups by name, which compare in the column's own
collation); the listing orders and compares by COLLATE "C" (`SqlStore._by_code_point`),
which an index of another collation cannot serve. SQLite needs nothing: its unique index
is of BINARY, its default and the listing's order, and a page already reads off it.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_curricula_name_code_point"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        op.create_index(INDEX, "curricula", ["name"],
                        postgresql_ops={"name": 'COLLATE "C"'})


def downgrade() -> None:
    if _postgresql():
        op.drop_index(INDEX, table_name="curricula")
