"""Scores -> chapter starts: a calibrated threshold, non-maximum suppression and a minimum length.

The count comes from the content: every line whose start score clears the threshold opens a chapter,
best first, unless it lies within `min_gap_s` seconds (untimed: `min_gap_lines` turns) of a start
already taken or of the end. YouTube's rules are applied where the video is long enough: chapters of at
least 10 s and at least 3 of them, so a long video whose scores stay low still gets its best 2 cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from chaptering.schema import Transcript


@dataclass(frozen=True)
class DecoderSettings:
    """How scores become starts; `threshold` is fitted on the validation split (calibrate_threshold)."""

    threshold: float = 0.5
    min_gap_s: float = 10.0
    min_gap_lines: int = 5
    min_chapters: int = 3
    max_chapters: int = 60

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _positions(transcript: Transcript) -> tuple[list[float], float]:
    """Where each line sits on the axis the minimum gap is measured on (seconds when timed, else line
    numbers), and where that axis ends."""
    n = len(transcript.segments)
    if transcript.has_times:
        pos = [float(s.start or 0.0) for s in transcript.segments]
        last = transcript.segments[-1]
        return pos, float(last.end if last.end is not None else last.start or 0.0)
    return [float(i) for i in range(n)], float(n)


def decode(scores: Sequence[float], transcript: Transcript, settings: DecoderSettings) -> list[int]:
    """Chapter starts [0, ...] from per-line start scores (scores[0] is ignored)."""
    n = len(transcript.segments)
    if n < 2:
        return [0]
    pos, end = _positions(transcript)
    gap = settings.min_gap_s if transcript.has_times else float(settings.min_gap_lines)
    taken = [0]

    def fits(i: int) -> bool:
        return pos[i] - pos[0] >= gap and end - pos[i] >= gap and all(abs(pos[i] - pos[j]) >= gap for j in taken)

    order = sorted(range(1, n), key=lambda i: -scores[i])
    room = (end - pos[0]) >= settings.min_chapters * gap
    for i in order:
        if len(taken) >= settings.max_chapters:
            break
        if scores[i] < settings.threshold and not (room and len(taken) < settings.min_chapters):
            break
        if fits(i):
            taken.append(i)
    return sorted(taken)


def calibrate_threshold(
    scored: Sequence[tuple[Sequence[float], Transcript]],
    settings: DecoderSettings,
    grid: Sequence[float] | None = None,
) -> tuple[float, float]:
    """The threshold with the best macro mean (over sources) of primary F1 on `scored`, and that F1.

    Sources stand in for domains on the validation split: each counts once, as in the headline.
    """
    from dataclasses import replace

    grid = list(grid) if grid is not None else [round(0.02 * k, 2) for k in range(1, 50)]
    best = (settings.threshold, -1.0)
    for th in grid:
        s = replace(settings, threshold=th)
        per_source: dict[str, list[float]] = {}
        for scores, t in scored:
            per_source.setdefault(t.source, []).append(primary_f1(t, decode(scores, t, s)))
        macro = sum(sum(v) / len(v) for v in per_source.values()) / max(1, len(per_source))
        if macro > best[1]:
            best = (th, macro)
    return best


def primary_f1(transcript: Transcript, starts: Sequence[int]) -> float:
    """The yardstick's primary F1 of `starts` against the transcript's chapters (5 s, or 5 turns)."""
    from chaptering.metrics import boundary_prf, boundary_prf_time

    ref = transcript.boundaries
    if transcript.has_times:
        t = [float(s.start or 0.0) for s in transcript.segments]
        return boundary_prf_time([t[b] for b in ref], [t[b] for b in starts], 5.0)[2]
    return boundary_prf(ref, list(starts), 5)[2]
