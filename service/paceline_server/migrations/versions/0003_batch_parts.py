"""Refill parts of a served step (dynamic sampling): part 0 stays in `batches`, parts
1, 2, ... are stored here under (curriculum, run, step, part), first writer wins.

Revision ID: 0003_batch_parts
Revises: 0002_events_run_step
Create Date: 2026-12-03 00:00:00

Written out by hand, like the earlier revisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_batch_parts"
down_revision: str | Sequence[str] | None = "0002_events_run_step"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_parts",
        sa.Column("curriculum_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("curricula.id", ondelete="CASCADE",
                                name="fk_batch_parts_curriculum_id_curricula"),
                  nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("curriculum_id", "run_id", "step", "part",
                                name="pk_batch_parts"),
    )


def downgrade() -> None:
    op.drop_table("batch_parts")
