"""The data contracts (transcript, chapter, prediction, feedback) as pydantic models every stage speaks."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Bounds on one feedback event: a real edit has tens of chapters with short titles; a 4 MB row is abuse.
MAX_FEEDBACK_CHAPTERS = 500
MAX_FEEDBACK_TITLE_CHARS = 500
MAX_FEEDBACK_ID_CHARS = 255


def text_problem(value: str) -> str | None:
    """Why `value` is not text every stage can store and write back (None when it is).

    Lone surrogates (JSON allows the escape "\\ud800") cannot be encoded as UTF-8: the first JSON or
    file write of such a record crashes, far from where it came in. NUL is refused by PostgreSQL text
    and JSON columns. Everything else Unicode allows is text.
    """
    if value.isascii():
        if "\x00" in value:
            return f"contains a NUL character at position {value.index(chr(0))}"
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate U+{ord(value[exc.start]):04X} at position {exc.start}: not valid Unicode text"
    if "\x00" in value:
        return f"contains a NUL character at position {value.index(chr(0))}"
    return None


def check_text(value: str, what: str = "text") -> str:
    """`value` unchanged, or ValueError naming `what` and the problem (the one text rule of every way in)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return value


def printable(value: str) -> str:
    """A string that can always be written as UTF-8, for error messages and quarantine lines: bytes a
    file name smuggled in through surrogateescape come back as `\\xff`, other lone surrogates as `\\ud800`."""
    if text_problem(value) is None:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _check_nested(value: Any) -> Any:
    """Every string inside `value` (dict keys included) passes `check_text`."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_nested(k)
            _check_nested(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_nested(v)
    return value


class TextModel(BaseModel):
    """Base of every contract model: all string content, nested in `meta` too, is valid text."""

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        if value is None or isinstance(value, (int, float)) or (type(value) is str and value.isascii()
                                                               and "\x00" not in value):
            return value  # the common cases first: this runs for every field of every record
        return _check_nested(value)


class Segment(TextModel):
    """One timed ASR segment (a caption cue or a speaker turn)."""

    model_config = ConfigDict(extra="ignore")

    text: str
    speaker: str | None = None
    start: float | None = Field(default=None, allow_inf_nan=False)
    end: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _times(self) -> Segment:
        if self.start is not None and self.start < 0:
            raise ValueError(f"segment start {self.start} is negative")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"segment ends ({self.end}) before it starts ({self.start})")
        return self


class Chapter(TextModel):
    """A chapter starts at a segment index; it runs until the next chapter starts."""

    model_config = ConfigDict(extra="ignore")

    title: str
    start_segment: int = Field(ge=0)


def check_chapters(chapters: list[Chapter], n_segments: int) -> None:
    """Chapters must be ordered, start at 0 and stay inside the transcript."""
    if not chapters:
        raise ValueError("chapters list is empty")
    if chapters[0].start_segment != 0:
        raise ValueError(f"first chapter starts at segment {chapters[0].start_segment}, not 0")
    for i, ch in enumerate(chapters):
        if ch.start_segment >= n_segments:
            raise ValueError(
                f"chapter {i} ({ch.title!r}) starts at segment {ch.start_segment}, "
                f"out of range for {n_segments} segments"
            )
        if i and ch.start_segment <= chapters[i - 1].start_segment:
            raise ValueError(f"chapter {i} ({ch.title!r}) does not start after chapter {i - 1}")


class Transcript(TextModel):
    """A transcript with optional reference chapters (the unit of every dataset)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    source: str = "external"
    language: str | None = "en"
    segments: list[Segment] = Field(min_length=1)
    chapters: list[Chapter] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _chapters_valid(self) -> Transcript:
        # Single empty turns are kept (chapter indices point at them; QMSum has some): curation drops
        # them with a re-index. A transcript with no text at all is an error.
        if not any(s.text.strip() for s in self.segments):
            raise ValueError("transcript has no text: every segment is empty")
        if self.chapters is not None:
            check_chapters(self.chapters, len(self.segments))
        return self

    @property
    def boundaries(self) -> list[int]:
        """Segment indices where a chapter starts (0 included)."""
        return [c.start_segment for c in self.chapters or []]

    @property
    def has_times(self) -> bool:
        return all(s.start is not None for s in self.segments)


class PredictedChapter(TextModel):
    title: str
    start_segment: int = Field(ge=0)
    start: float | None = None


Health = Literal["clean", "repaired", "unusable"]


class Prediction(TextModel):
    """Output of `predict`: the contract is id/chapters/model; `meta` carries diagnostics."""

    id: str
    chapters: list[PredictedChapter]
    model: str
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _chapters_valid(self) -> Prediction:
        if self.chapters and self.chapters[0].start_segment != 0:
            raise ValueError("first predicted chapter must start at segment 0")
        starts = [c.start_segment for c in self.chapters]
        if any(b <= a for a, b in pairwise(starts)):
            raise ValueError("predicted chapters are not strictly increasing")
        return self

    @property
    def boundaries(self) -> list[int]:
        return [c.start_segment for c in self.chapters]


Rating = Literal["accept", "reject"]


class FeedbackEvent(TextModel):
    """What a user did with a prediction: an edit (-> DPO pair) or a bare rating (-> KTO row)."""

    transcript_id: str = Field(min_length=1, max_length=MAX_FEEDBACK_ID_CHARS)
    model_version: str = Field(max_length=MAX_FEEDBACK_ID_CHARS)
    predicted: list[Chapter] = Field(min_length=1, max_length=MAX_FEEDBACK_CHAPTERS)
    corrected: list[Chapter] | None = Field(default=None, max_length=MAX_FEEDBACK_CHAPTERS)
    rating: Rating | None = None
    user_id: str = Field(default="anonymous", max_length=MAX_FEEDBACK_ID_CHARS)
    prediction_id: str | None = Field(default=None, max_length=MAX_FEEDBACK_ID_CHARS)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _edit_or_rating(self) -> FeedbackEvent:
        for name, chs in (("predicted", self.predicted), ("corrected", self.corrected or [])):
            for i, c in enumerate(chs):
                if len(c.title) > MAX_FEEDBACK_TITLE_CHARS:
                    raise ValueError(f"{name} chapter {i}: title longer than {MAX_FEEDBACK_TITLE_CHARS} characters")
        if (self.corrected is None) == (self.rating is None):
            raise ValueError("a feedback event carries either corrected chapters or a rating, not both/neither")
        for name, chs in (("predicted", self.predicted), ("corrected", self.corrected)):
            if chs is None:
                continue
            starts = [c.start_segment for c in chs]
            if starts[0] != 0 if starts else True:
                raise ValueError(f"{name} chapters must be non-empty and start at segment 0")
            if any(b <= a for a, b in pairwise(starts)):
                raise ValueError(f"{name} chapters are not strictly increasing")
        return self

    @property
    def kind(self) -> Literal["edit", "rating"]:
        return "edit" if self.corrected is not None else "rating"


@runtime_checkable
class Chapterer(Protocol):
    """Anything with a name that turns a transcript into a prediction (LLMs, baselines, bundles alike)."""

    name: str

    def predict(self, transcript: Transcript) -> Prediction: ...
