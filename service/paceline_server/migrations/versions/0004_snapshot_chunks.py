"""Snapshots stored in bounded chunks: `snapshot_chunks` holds the bytes of a snapshot as
parts 0, 1, 2, ... under (curriculum, seq, part), so writing or reading one never needs
the whole encoded state in memory at once.

A snapshot's bytes are its `snapshots.state` followed by its chunks in part order: rows
written before this revision keep everything in `state` and have no chunks, so they read
exactly as before; new snapshots leave `state` empty. Chunks hang off their snapshot row
(ON DELETE CASCADE), so pruning a snapshot or deleting a curriculum removes them too.

Revision ID: 0004
Revises: 0003_batch_parts
Create Date: 2026-12-03 00:00:00

Written out by hand, like the earlier revisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003_batch_parts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "snapshot_chunks",
        sa.Column("curriculum_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["curriculum_id", "seq"],
                                ["snapshots.curriculum_id", "snapshots.seq"],
                                ondelete="CASCADE",
                                name="fk_snapshot_chunks_curriculum_id_snapshots"),
        sa.PrimaryKeyConstraint("curriculum_id", "seq", "part", name="pk_snapshot_chunks"),
    )


def downgrade() -> None:
    op.drop_table("snapshot_chunks")
