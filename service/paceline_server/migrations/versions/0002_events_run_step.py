"""Index events by (curriculum, run, step): a report for a step already reported is
answered from the log (or refused) instead of being folded twice.

Revision ID: 0002_events_run_step
Revises: 0001_initial
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_events_run_step"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_curriculum_id_run_id_step", "events",
                    ["curriculum_id", "run_id", "step", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_curriculum_id_run_id_step", table_name="events")
