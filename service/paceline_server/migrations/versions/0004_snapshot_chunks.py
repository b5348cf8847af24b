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

Written out by hand, like the earlier revisions. The downgrade folds the chunks back
into `state` before it drops the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

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
    # Back to the layout before this revision, or the bytes of every chunked snapshot go
    # with the table (its row keeps an empty `state`): each snapshot's chunks are
    # appended to its `state`, one snapshot at a time.
    if context.is_offline_mode():
        raise RuntimeError("downgrading revision 0004 rewrites snapshot rows: run it "
                           "against the database, not as --sql")
    chunks = sa.table("snapshot_chunks", sa.column("curriculum_id"), sa.column("seq"),
                      sa.column("part"), sa.column("data", sa.LargeBinary()))
    snapshots = sa.table("snapshots", sa.column("curriculum_id"), sa.column("seq"),
                         sa.column("state", sa.LargeBinary()))
    bind = op.get_bind()
    keys = bind.execute(sa.select(chunks.c.curriculum_id, chunks.c.seq).distinct()).all()
    for curriculum_id, seq in keys:
        of_chunks = (chunks.c.curriculum_id == curriculum_id) & (chunks.c.seq == seq)
        of_row = (snapshots.c.curriculum_id == curriculum_id) & (snapshots.c.seq == seq)
        tail = b"".join(bind.execute(
            sa.select(chunks.c.data).where(of_chunks).order_by(chunks.c.part)).scalars())
        head = bind.execute(sa.select(snapshots.c.state).where(of_row)).scalar_one()
        bind.execute(sa.update(snapshots).where(of_row).values(state=bytes(head) + tail))
    op.drop_table("snapshot_chunks")
