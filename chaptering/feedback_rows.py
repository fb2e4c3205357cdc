"""Feedback rows in and out: the store's errors, and the checks that turn stored rows back into events.

Rows are read back defensively (`parse_row` answers "why not" for a row that no longer validates, or
that could not even be fetched) because other writers and old schema versions can leave rows behind
that today's models refuse; the ingest quarantines those instead of crashing the nightly run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from chaptering.feedback_tables import ID_LEN, InvalidJSON, PredictionRow
from chaptering.schema import FeedbackEvent, Transcript, check_chapters

UNREADABLE = "_unreadable"  # key of a raw row that could not be fetched (why), see `events_after`

_EVENT_COLUMNS = (
    "transcript_id",
    "prediction_id",
    "model_version",
    "predicted",
    "corrected",
    "rating",
    "user_id",
)


class UnknownPrediction(LookupError):
    """Feedback names a prediction id the store never served (a stale or forged client)."""


class InvalidFeedback(ValueError):
    """Feedback that contradicts the prediction it names (other transcript, chapters out of range)."""


class IdempotencyConflict(ValueError):
    """An idempotency key sent again with a different event: the client reused a key by mistake."""


def reason(exc: Exception, limit: int = 3) -> str:
    """A validation error as one short line ("predicted: chapters are not strictly increasing")."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts[:limit] + ([f"and {len(parts) - limit} more"] if len(parts) > limit else []))


def parse_row(raw: dict[str, Any]) -> tuple[FeedbackEvent | None, str | None]:
    """A stored feedback row -> (event, None), or (None, why it no longer validates)."""
    if UNREADABLE in raw:
        return None, f"stored row cannot be read: {raw[UNREADABLE]}"
    for col in ("predicted", "corrected"):
        if isinstance(raw.get(col), InvalidJSON):
            return None, f"{col}: stored value is not valid JSON"
    try:
        event = FeedbackEvent.model_validate(
            {**{k: raw.get(k) for k in _EVENT_COLUMNS}, "timestamp": raw.get("created_at")}
        )
    except ValidationError as exc:
        return None, reason(exc)
    return event, None


def check_len(name: str, value: str | None) -> None:
    """Refuse an id the columns cannot hold, with a reason, before the database truncates or errors."""
    if value is not None and len(value) > ID_LEN:
        raise InvalidFeedback(f"{name} is longer than {ID_LEN} characters")


def dump(chapters: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in chapters]


def check_event_chapters(event: FeedbackEvent, transcript: Transcript) -> None:
    """Both chapter lists must fit the transcript (ValueError otherwise): a boundary past the end
    would become a training target the model can never produce."""
    n = len(transcript.segments)
    for name, chapters in (("predicted", event.predicted), ("corrected", event.corrected)):
        if chapters is not None:
            try:
                check_chapters(chapters, n)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def transcript_of(pred: dict[str, Any], event: FeedbackEvent) -> tuple[Transcript | None, str | None]:
    """(the transcript stored with prediction `pred`, None), or (None, why it cannot serve `event`)."""
    pid = pred["prediction_id"]
    if pred["transcript"] is None:
        return None, f"prediction {pid} has no stored transcript"
    if pred["transcript_id"] != event.transcript_id:
        return (
            None,
            f"prediction {pid} is for transcript {pred['transcript_id']!r}, not {event.transcript_id!r}",
        )
    if isinstance(pred["transcript"], InvalidJSON):
        return None, f"prediction {pid}: stored transcript is not valid JSON"
    try:
        return Transcript.model_validate(pred["transcript"]), None
    except ValidationError as exc:
        return None, f"prediction {pid}: stored transcript is invalid ({reason(exc)})"


def prediction_dict(row: PredictionRow) -> dict[str, Any]:
    return {
        "prediction_id": row.prediction_id,
        "transcript_id": row.transcript_id,
        "model_version": row.model_version,
        "chapters": row.chapters,
        "transcript": row.transcript,
        "created_at": row.created_at,
    }


def same_event(row: Any, event: FeedbackEvent) -> bool:
    """Whether a stored feedback row records `event` (an idempotent retry) rather than another one."""
    return (
        row.transcript_id == event.transcript_id
        and row.model_version == event.model_version
        and (event.prediction_id is None or row.prediction_id == event.prediction_id)
        and row.predicted == dump(event.predicted)
        and row.corrected == (None if event.corrected is None else dump(event.corrected))
        and row.rating == event.rating
        and row.user_id == event.user_id
    )
