"""Client idempotency keys on feedback events: unique, so a retried POST is stored once.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback_events", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.create_index("ix_feedback_events_idempotency_key", "feedback_events", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_feedback_events_idempotency_key", table_name="feedback_events")
    op.drop_column("feedback_events", "idempotency_key")
