"""Windows of long timed transcripts: the mid-length videos the labelled data hardly holds.

A 10-minute screen recording or a short talk sits between the two kinds of video the trees learn from:
2-minute clips and hour-long talks. Labelled videos of that length are rare (5 of the 363 in
../shared/data), so the trees never saw one: `n_lines`, `total_time` and `t_from_start` are among their
strongest features, and on a 10-minute video they read as neither regime (the held-out work sessions got
21 and 24 chapters for 8 and 9). Windows of 6, 9 and 12 minutes cut from the long timed training
transcripts, each featurised as a video of its own, teach them what such a video looks like with the
chapter rate of real content. They train as a source family of their own (`windows`), so each real
family keeps its weight.
"""

from __future__ import annotations

from collections.abc import Sequence

from chaptering.schema import Chapter, Transcript

WINDOW_MINUTES: tuple[float, ...] = (6.0, 9.0, 12.0)
MIN_SECONDS = 300.0  # shorter windows (a transcript's last) are short videos, which the data has plenty of
FAMILY = "windows"


def windows(transcript: Transcript, long_lines: int, minutes: Sequence[float] = WINDOW_MINUTES) -> list[tuple[int, int]]:
    """Consecutive [a, b) line ranges of a timed transcript of `long_lines` lines or more, cycling through
    `minutes` long; kept where a range has fewer than `long_lines` lines (else it is a long transcript
    itself) and lasts `MIN_SECONDS` or more."""
    segs = transcript.segments
    if not transcript.has_times or len(segs) < long_lines:
        return []
    out, a, k = [], 0, 0
    while a < len(segs) - 1:
        start = float(segs[a].start or 0.0)
        b = a
        while b < len(segs) and float(segs[b].start or 0.0) < start + 60.0 * minutes[k % len(minutes)]:
            b += 1
        last = segs[b - 1]
        seconds = float(last.end if last.end is not None else last.start or 0.0) - start
        if 2 <= b - a < long_lines and seconds >= MIN_SECONDS:
            out.append((a, b))
        a, k = max(b, a + 1), k + 1
    return out


def crop(transcript: Transcript, a: int, b: int) -> Transcript:
    """Lines [a, b) as a transcript of the `windows` family: the chapter running at line a opens it, the
    chapters that start inside the window follow."""
    chapters = transcript.chapters or [Chapter(title="", start_segment=0)]
    running = max((c for c in chapters if c.start_segment <= a), key=lambda c: c.start_segment)
    inside = [Chapter(title=c.title, start_segment=c.start_segment - a) for c in chapters if a < c.start_segment < b]
    return transcript.model_copy(update={
        "id": f"{transcript.id}@{a}-{b}", "source": FAMILY, "segments": transcript.segments[a:b],
        "chapters": [Chapter(title=running.title, start_segment=0), *inside]})
