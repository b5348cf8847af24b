"""Index runs in their listing's order: (curriculum, created_at, run_id), so a page of a
curriculum's runs (`GET /v1/curricula/{name}/runs`, gRPC ListRuns) reads the rows after
its page token off the index instead of sorting every run of the curriculum each page.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 00:00:00

Written out by hand, like the earlier revisions. An index only: no row changes, and a
release before it ignores it (a rolling upgrade works). On PostgreSQL `run_id` is
indexed with COLLATE "C", the collation the listing orders and compares it by
(`SqlStore._by_code_point`); an index of the column's own collation cannot serve that
ORDER BY. SQLite's listing orders by BINARY, its default, so it needs no clause.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_runs_curriculum_id_created_at_run_id", "runs",
                    ["curriculum_id", "created_at", "run_id"],
                    postgresql_ops={"run_id": 'COLLATE "C"'})


def downgrade() -> None:
    op.drop_index("ix_runs_curriculum_id_created_at_run_id", table_name="runs")
