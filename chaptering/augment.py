"""Augmentations: pure, seeded functions Transcript -> Transcript(s) that keep chapters valid.

Each output is a new Transcript (the input is never mutated) with `meta["augmented"]` listing what was
done and an id suffixed with it ("x~noise", "x~crop", "a+b"), so datasets can weigh or exclude copies
and `curate.split_of` keeps a copy on its original's side of the train/val split.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from chaptering.config import AugmentSettings
from chaptering.schema import Chapter, Segment, Transcript

FILLERS = ("um", "uh", "you know", "like")
_PLACEHOLDER = re.compile(r"<[A-Z]+>")  # <EMAIL>, <URL>, <PHONE> from PII scrubbing stay as they are
_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def _derived(t: Transcript, name: str, suffix: str | None = None, **update) -> Transcript:
    """A validated copy of `t` with `update` applied, the augmentation recorded in meta and the id."""
    meta = {**t.meta, "augmented": [*t.meta.get("augmented", []), name]}
    data = {"id": f"{t.id}~{suffix or name}", "source": t.source, "language": t.language,
            "segments": t.segments, "chapters": t.chapters, "meta": meta, **update}
    return Transcript(**data)


def _asr_words(text: str) -> list[str]:
    """Lower-case words without punctuation, as a plain ASR engine writes them."""
    out: list[str] = []
    for tok in text.split():
        if _PLACEHOLDER.fullmatch(tok):
            out.append(tok)
            continue
        out.extend(_PUNCT.sub(" ", tok.lower()).split())
    return out


def asr_noise(t: Transcript, rng: random.Random, *, p_drop: float = 0.03, p_filler: float = 0.05) -> Transcript:
    """Make clean text look like raw ASR: lower case, no punctuation, fillers in, some words out.

    Models meet both clean captions and raw ASR in production; training on both keeps boundaries from
    depending on punctuation. A segment keeps at least one word.
    """
    segments = []
    for s in t.segments:
        words = _asr_words(s.text)
        if not words:  # punctuation only (or empty): leave it, lower-cased
            segments.append(s.model_copy(update={"text": s.text.lower()}))
            continue
        out: list[str] = []
        for w in words:
            if rng.random() < p_filler:
                out.append(rng.choice(FILLERS))
            if rng.random() >= p_drop:
                out.append(w)
        if not any(w in words for w in out):  # everything dropped: keep one real word
            out.append(rng.choice(words))
        segments.append(s.model_copy(update={"text": " ".join(out)}))
    return _derived(t, "asr_noise", "noise", segments=segments)


def _shift(segments: list[Segment], offset: float) -> list[Segment]:
    """Times moved by -offset, clamped at 0 (both ends shift equally, so end >= start holds)."""
    def mv(x: float | None) -> float | None:
        return None if x is None else max(0.0, round(x - offset, 3))

    return [s.model_copy(update={"start": mv(s.start), "end": mv(s.end)}) for s in segments]


def crop(t: Transcript, rng: random.Random, min_chapters: int = 2) -> Transcript | None:
    """A contiguous run of whole chapters (at least `min_chapters`, fewer than all), re-indexed from 0.

    Teaches the model that a transcript need not start at an introduction or end at an outro. None if
    no proper crop exists (too few chapters, or the chosen run has no text).
    """
    chs = t.chapters
    if not chs or len(chs) - 1 < min_chapters:
        return None
    k = rng.randint(min_chapters, len(chs) - 1)
    i = rng.randint(0, len(chs) - k)
    lo = chs[i].start_segment
    hi = chs[i + k].start_segment if i + k < len(chs) else len(t.segments)
    segments = t.segments[lo:hi]
    if not any(s.text.strip() for s in segments):
        return None
    first = segments[0].start
    if first is not None:
        segments = _shift(segments, first)
    chapters = [Chapter(title=c.title, start_segment=c.start_segment - lo) for c in chs[i:i + k]]
    return _derived(t, "crop", segments=list(segments), chapters=chapters)


def _end_time(t: Transcript) -> float:
    return max(max(s.end if s.end is not None else s.start or 0.0, s.start or 0.0) for s in t.segments)


def concat(a: Transcript, b: Transcript) -> Transcript:
    """`b` appended to `a`: more chapters per window and a boundary at a genuine topic change.

    b's chapters shift by len(a.segments) and its times start at a's end. If either side lacks
    times, the result has none (half a timeline would mislead the prompt). Chapters are kept only
    when both sides have them.
    """
    n = len(a.segments)
    timed = a.has_times and b.has_times
    if timed:
        offset = _end_time(a) - min(s.start for s in b.segments)  # type: ignore[type-var]
        b_segs = [s.model_copy(update={"start": round(s.start + offset, 3),
                                       "end": None if s.end is None else round(s.end + offset, 3)})
                  for s in b.segments]
        segments = [*a.segments, *b_segs]
    else:
        segments = [s.model_copy(update={"start": None, "end": None}) for s in (*a.segments, *b.segments)]
    chapters = None
    if a.chapters is not None and b.chapters is not None:
        chapters = [*a.chapters, *(Chapter(title=c.title, start_segment=c.start_segment + n) for c in b.chapters)]
    meta = {**a.meta, "augmented": [*a.meta.get("augmented", []), "concat"], "parts": [a.id, b.id]}
    return Transcript(
        id=f"{a.id}+{b.id}",
        source=a.source if a.source == b.source else f"{a.source}+{b.source}",
        language=a.language if a.language == b.language else None,
        segments=segments, chapters=chapters, meta=meta,
    )


def drop_speakers(t: Transcript) -> Transcript:
    """Speaker labels removed: many production transcripts have none, and a speaker change must not be
    the model's only boundary cue."""
    return _derived(t, "drop_speakers", "nospk",
                    segments=[s.model_copy(update={"speaker": None}) for s in t.segments])


def jitter_times(t: Transcript, rng: random.Random, sigma: float = 0.3) -> Transcript:
    """Gaussian noise on segment times (ASR timing is imprecise), kept non-negative, monotone, end >= start."""
    segments = []
    prev = 0.0
    for s in t.segments:
        if s.start is None:
            segments.append(s.model_copy())
            continue
        start = round(max(prev, s.start + rng.gauss(0.0, sigma)), 3)
        end = None if s.end is None else round(max(start, s.end + rng.gauss(0.0, sigma)), 3)
        segments.append(s.model_copy(update={"start": start, "end": end}))
        prev = start
    return _derived(t, "jitter_times", "jitter", segments=segments)


def augment_stream(records: Iterable[Transcript], settings: AugmentSettings) -> Iterator[Transcript]:
    """Each record, then its augmented copies (labelled records only), with the settings' probabilities.

    Randomness comes from a generator seeded by (settings.seed, record id), so a record's copies do not
    change when other records are added or reordered, and re-running gives the same stream. Concat pairs
    each labelled record with the previous labelled one. Only one previous record is held in memory.
    """
    prev: Transcript | None = None
    for t in records:
        yield t
        if t.chapters is None:
            continue
        rng = random.Random(f"{settings.seed}:{t.id}")
        draws = {name: rng.random() for name in ("asr_noise", "crop", "drop_speakers", "jitter", "concat")}
        if draws["asr_noise"] < settings.asr_noise:
            yield asr_noise(t, rng)
        if draws["crop"] < settings.crop:
            cropped = crop(t, rng)
            if cropped is not None:
                yield cropped
        if draws["drop_speakers"] < settings.drop_speakers and any(s.speaker for s in t.segments):
            yield drop_speakers(t)
        if draws["jitter"] < settings.jitter and t.has_times:
            yield jitter_times(t, rng)
        if draws["concat"] < settings.concat and prev is not None:
            yield concat(prev, t)
        prev = t
