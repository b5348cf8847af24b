"""Events carry their history row: a nullable `progress` column on `events`, filled by
the INSERT that appends a report, so the history endpoint of a freshly started server
reads the rows after the last checkpoint instead of folding those reports again. Events
written before it stay NULL and are replayed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:00:00

Written out by hand, like the earlier revisions. Nullable, without a default: adding it
rewrites no row on either backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("progress", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:  # SQLite drops a column by a copy
        batch.drop_column("progress")
