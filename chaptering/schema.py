"""The data contracts of DESIGN.md as pydantic models: every stage speaks these types."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Segment(BaseModel):
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


class Chapter(BaseModel):
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


class Transcript(BaseModel):
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


class PredictedChapter(BaseModel):
    title: str
    start_segment: int = Field(ge=0)
    start: float | None = None


Health = Literal["clean", "repaired", "unusable"]


class Prediction(BaseModel):
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
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError("predicted chapters are not strictly increasing")
        return self

    @property
    def boundaries(self) -> list[int]:
        return [c.start_segment for c in self.chapters]


Rating = Literal["accept", "reject"]


class FeedbackEvent(BaseModel):
    """What a user did with a prediction: an edit (-> DPO pair) or a bare rating (-> KTO row)."""

    transcript_id: str = Field(min_length=1)
    model_version: str
    predicted: list[Chapter] = Field(min_length=1)
    corrected: list[Chapter] | None = None
    rating: Rating | None = None
    user_id: str = "anonymous"
    prediction_id: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @model_validator(mode="after")
    def _edit_or_rating(self) -> FeedbackEvent:
        if (self.corrected is None) == (self.rating is None):
            raise ValueError("a feedback event carries either corrected chapters or a rating, not both/neither")
        for name, chs in (("predicted", self.predicted), ("corrected", self.corrected)):
            if chs is None:
                continue
            starts = [c.start_segment for c in chs]
            if starts[0] != 0 if starts else True:
                raise ValueError(f"{name} chapters must be non-empty and start at segment 0")
            if any(b <= a for a, b in zip(starts, starts[1:])):
                raise ValueError(f"{name} chapters are not strictly increasing")
        return self

    @property
    def kind(self) -> Literal["edit", "rating"]:
        return "edit" if self.corrected is not None else "rating"
