"""The feedback store as first created (predictions, feedback_events), before idempotency keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", sa.String(length=32), nullable=False),
        sa.Column("transcript_id", sa.String(length=255), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("chapters", sa.JSON(), nullable=False),
        sa.Column("transcript", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id"),
    )
    op.create_index("ix_predictions_transcript_id", "predictions", ["transcript_id"])
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("transcript_id", sa.String(length=255), nullable=False),
        sa.Column("prediction_id", sa.String(length=32), nullable=True),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("predicted", sa.JSON(), nullable=False),
        sa.Column("corrected", sa.JSON(), nullable=True),
        sa.Column("rating", sa.String(length=16), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # a deleted maximum id must never come back: it would sit at or below the ingest watermark
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_events_transcript_id", "feedback_events", ["transcript_id"])
    op.create_index("ix_feedback_events_prediction_id", "feedback_events", ["prediction_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_events_prediction_id", table_name="feedback_events")
    op.drop_index("ix_feedback_events_transcript_id", table_name="feedback_events")
    op.drop_table("feedback_events")
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_index("ix_predictions_transcript_id", table_name="predictions")
    op.drop_table("predictions")
