"""Initial schema: curricula, runs, events, snapshots, batches.

Revision ID: 0001_initial
Revises:
Create Date: 2024-06-01 00:00:00

Written out by hand (not imported from `store/tables.py`) so this revision stays what it
was when later revisions change the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _curriculum_id(table: str) -> sa.Column[Any]:
    return sa.Column("curriculum_id", _ID,
                     sa.ForeignKey("curricula.id", ondelete="CASCADE",
                                   name=f"fk_{table}_curriculum_id_curricula"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "curricula",
        sa.Column("id", _ID, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.Column("head_seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_curricula"),
        sa.UniqueConstraint("name", name="uq_curricula_name"),
    )
    op.create_table(
        "runs",
        _curriculum_id("runs"),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("last_heartbeat"),
        sa.PrimaryKeyConstraint("curriculum_id", "run_id", name="pk_runs"),
    )
    op.create_table(
        "events",
        _curriculum_id("events"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("curriculum_id", "seq", name="pk_events"),
        sa.UniqueConstraint("curriculum_id", "idempotency_key",
                            name="uq_events_curriculum_id_idempotency_key"),
    )
    op.create_table(
        "snapshots",
        _curriculum_id("snapshots"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("curriculum_id", "seq", name="pk_snapshots"),
    )
    op.create_table(
        "batches",
        _curriculum_id("batches"),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("curriculum_id", "run_id", "step", name="pk_batches"),
    )


def downgrade() -> None:
    for table in ("batches", "snapshots", "events", "runs", "curricula"):
        op.drop_table(table)
