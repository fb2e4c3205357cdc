"""The feedback store's tables (SQLAlchemy models): what the migrations in chaptering/migrations build.

Two tables:

- ``predictions``: every prediction served, with the transcript as served (PII scrubbed by curation's
  rules), so a later edit or rating can be turned into a training pair without the app having to send
  the transcript again;
- ``feedback_events``: one row per edit or rating. The autoincrement id is the event's sequence number:
  the nightly ingest keeps the last id it consumed as its watermark. An optional client idempotency
  key is unique, so a retried POST cannot put one user action into training twice.

A change here needs a migration (``python -m chaptering.migrations revision -m "..."``, see
docs/postgres.md); tests/postgres/test_migrations.py fails while models and migrations disagree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID_LEN = 255  # VARCHAR bound that every backend can index (MySQL included)


def now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC: the store only ever writes UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, also on SQLite (which stores no offset and hands back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else utc(value)


class InvalidJSON(str):
    """A stored JSON column that does not parse (SQLite keeps any text): kept so the row can be
    reported and quarantined instead of breaking the whole read."""


def lenient_json(text: str) -> Any:
    """The engine's JSON deserializer: bad text comes back as `InvalidJSON` instead of raising."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return InvalidJSON(text)


class Base(DeclarativeBase):
    pass


class PredictionRow(Base):
    __tablename__ = "predictions"

    prediction_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    transcript_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    model_version: Mapped[str] = mapped_column(String(ID_LEN))
    chapters: Mapped[Any] = mapped_column(JSON)
    transcript: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, index=True)


class FeedbackRow(Base):
    __tablename__ = "feedback_events"
    # AUTOINCREMENT: without it SQLite may hand a deleted maximum id out again, and a reused id at or
    # below the watermark would never be ingested.
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transcript_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    prediction_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    model_version: Mapped[str] = mapped_column(String(ID_LEN))
    predicted: Mapped[Any] = mapped_column(JSON)
    corrected: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    rating: Mapped[str | None] = mapped_column(String(16), nullable=True)
    user_id: Mapped[str] = mapped_column(String(ID_LEN))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    idempotency_key: Mapped[str | None] = mapped_column(String(ID_LEN), nullable=True, unique=True, index=True)
