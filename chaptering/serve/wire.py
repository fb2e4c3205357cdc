"""The wire: request and response models, strict body parsing, and error shapes without echoed input."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaptering.schema import FeedbackEvent, PredictedChapter, TextModel, Transcript, text_problem

# Field bounds no real transcript comes near, but that keep one request from costing unbounded compute:
# a 5 MB single "word" would otherwise become a million-token prompt line.
MAX_SEGMENT_CHARS = 20_000
MAX_SECONDS = 7 * 24 * 3600.0
MAX_ID_CHARS = 255  # what the feedback store can index


# --------------------------------------------------------------------------------------- wire models


class SegmentIn(TextModel):
    """A segment as clients may send it: finite, bounded times and text."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(max_length=MAX_SEGMENT_CHARS)
    speaker: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    start: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    end: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class TranscriptIn(TextModel):
    """Request body of POST /v1/chapters (the transcript contract of schema.py; `chapters`, if sent, are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    source: str = Field(default="external", max_length=MAX_ID_CHARS)
    language: str | None = Field(default="en", max_length=32)
    segments: list[SegmentIn] = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_transcript(self) -> Transcript:
        return Transcript.model_validate({**self.model_dump(), "chapters": None})


class ChaptersOut(BaseModel):
    prediction_id: str = Field(description="Cite this in POST /v1/feedback")
    transcript_id: str
    model_version: str = Field(description="Registered version number, or `base` before any promotion")
    model: str
    chapters: list[PredictedChapter]
    youtube: str | None = Field(description="YouTube description chapters; null without timestamps")
    webvtt: str | None = Field(description="WebVTT chapters track; null without timestamps")
    health: str | None = None
    latency_s: float = Field(description="Seconds in the service: waiting for a model slot + generating")
    generation_s: float | None = Field(default=None, description="Seconds the model itself took")
    warnings: list[str] = Field(default_factory=list)


class FeedbackIn(FeedbackEvent):
    """Request body of POST /v1/feedback: the DESIGN feedback event, plus an optional idempotency key
    (or send it as the `Idempotency-Key` header)."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)

    def event(self) -> FeedbackEvent:
        return FeedbackEvent.model_validate(self.model_dump(exclude={"idempotency_key"}))


class FeedbackOut(BaseModel):
    id: int = Field(description="Sequence number of the stored event")
    prediction_id: str | None
    kind: str
    replayed: bool = Field(default=False, description="True when the idempotency key was seen before: "
                                                      "this is the first request's event, stored once")


class ModelOut(BaseModel):
    version: str
    model: str
    source: str = Field(description="registry | base (no champion yet: serve.fallback, embedding valleys unless configured) | fixed (--model given)")
    loaded_at: str
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    registry_champion: str | None = None
    last_check: str | None = None
    last_error: str | None = None


class HealthOut(BaseModel):
    status: str
    model_version: str | None = None


class ErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why}
    for code, why in (
        (401, "missing or wrong bearer token"),
        (408, "the request body did not arrive in time"),
        (409, "idempotency key reused for a different event"),
        (413, "request body or transcript too large"),
        (415, "unsupported content type"),
        (422, "invalid transcript or feedback"),
        (503, "no model loaded, or the queue did not free up in time"),
        (504, "generation did not finish in time"),
    )
}


def _error_list(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """pydantic errors without `input`/`ctx`: they may echo megabytes back or hold non-JSON objects."""
    return [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def _summary(errors: list[dict[str, Any]], limit: int = 3) -> str:
    parts = []
    for e in errors[:limit]:
        loc = ".".join(x for x in e["loc"] if x != "body")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return "; ".join(parts) + more if parts else "invalid request"


def _invalid(exc: ValidationError) -> HTTPException:
    errors = _error_list(exc)
    return HTTPException(422, detail={"detail": _summary(errors), "errors": errors})


W = TypeVar("W", bound=BaseModel)


def parse_body(model: type[W], raw: bytes) -> W:
    """A JSON body -> `model`, strictly (`true` is not 1.0, "3" is not 3), the same way on every
    endpoint: malformed JSON, bad UTF-8 and invalid fields are all 422 with the field and the problem."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        bad_text = _bad_text(raw) if any(e["type"] == "json_invalid" for e in exc.errors()) else None
        if bad_text is not None:  # the schema's text rule in the schema's words, not the parser's
            raise HTTPException(422, detail={"detail": bad_text, "errors": [
                {"loc": bad_text.split(": ", 1)[0].split("."), "msg": bad_text, "type": "value_error"}]}) from None
        raise _invalid(exc) from None


def _bad_text(raw: bytes) -> str | None:
    """"loc: problem" when `raw` is JSON that only the text rule refuses (pydantic's parser rejects a
    lone surrogate escape as malformed JSON; Python's accepts it), else None."""
    import json

    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None

    def walk(value: Any, loc: str) -> str | None:
        if isinstance(value, str):
            problem = text_problem(value)
            return f"{loc or 'body'}: text {problem}" if problem else None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found = walk(key, loc) if isinstance(key, str) else None
            found = found or walk(item, f"{loc}.{key}" if loc else str(key))
            if found:
                return found
        return None

    return walk(obj, "")


def _json_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, detail=f"unsupported content type {ctype!r}: send application/json")


def public_name(name: str) -> str:
    """A model label without local paths: `base:/srv/models/x` -> `base:x`, `/tmp/run/adapter` ->
    `local:adapter`; registry URIs, hub ids and baseline names pass unchanged."""
    if name.startswith("models:/"):
        return name
    prefix, sep, rest = name.partition(":")
    if not sep:
        prefix, rest = "local", name
    path = Path(rest)
    local = path.is_absolute() or rest.startswith((".", "~")) or ("/" in rest and path.exists())
    if not local:
        return name
    return f"{prefix}:{path.name or 'model'}"
