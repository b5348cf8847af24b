"""History checkpoints: a curriculum's per-report history rows stored in compact chunks
under (curriculum, last_seq), written when snapshots are, so the history endpoint of a
freshly started server reads them instead of replaying the event log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 00:00:00

Written out by hand, like the earlier revisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "history_checkpoints",
        sa.Column("curriculum_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("curricula.id", ondelete="CASCADE",
                                name="fk_history_checkpoints_curriculum_id_curricula"),
                  nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("curriculum_id", "last_seq", name="pk_history_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("history_checkpoints")
