"""Pruned events leave their duplicate-check columns behind: `pruned_events` keeps the
seq, kind, (run, step), idempotency key and payload digest of every event that
PACELINE_PRUNE_EVENTS deletes, so a retried or re-sent report is still answered once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 00:00:00

Written out by hand, like the earlier revisions. A new table: no existing row changes;
events pruned before it are gone and stay unrecognised.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pruned_events",
        sa.Column("curriculum_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("curricula.id", ondelete="CASCADE",
                                name="fk_pruned_events_curriculum_id_curricula"),
                  nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("curriculum_id", "seq", name="pk_pruned_events"),
        sa.UniqueConstraint("curriculum_id", "idempotency_key",
                            name="uq_pruned_events_curriculum_id_idempotency_key"),
    )
    op.create_index("ix_pruned_events_curriculum_id_run_id_step", "pruned_events",
                    ["curriculum_id", "run_id", "step", "seq"])


def downgrade() -> None:
    op.drop_index("ix_pruned_events_curriculum_id_run_id_step", table_name="pruned_events")
    op.drop_table("pruned_events")
