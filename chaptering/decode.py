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
    # Long transcripts (hour-long talks, meetings) start a chapter far less often per line than short
    # videos, so one bar over-cuts them: from `long_lines` lines on, `threshold_long` applies instead.
    long_lines: int = 150
    threshold_long: float | None = None
    # Long untimed transcripts (meeting turns) are judged within 5 turns, not 5 s: a tolerance of another
    # width, so their best bar differs from timed talks'. None: threshold_long applies to them too.
    threshold_untimed: float | None = None
    # Count mode: as many chapters as count_scale x the summed start probabilities (what the scores
    # expect), best first; the thresholds are then unused. None: threshold mode.
    count_scale: float | None = None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def bars(self) -> dict[str, float]:
        """The calibrated values that decide the count (None ones left out): what MLflow logs per run, so
        runs compare on every bar, not on the short-video threshold alone."""
        values = {"threshold": self.threshold, "threshold_long": self.threshold_long,
                  "threshold_untimed": self.threshold_untimed, "count_scale": self.count_scale}
        return {k: float(v) for k, v in values.items() if v is not None}

    def describe(self) -> str:
        """One line for run summaries: how this decoder decides the count."""
        if self.count_scale is not None:
            return f"count x{self.count_scale:g} of the summed start scores"
        bars = [f"threshold {self.threshold:.2f}"]
        if self.threshold_long is not None:
            bars.append(f"{self.threshold_long:.2f} from {self.long_lines} lines")
        if self.threshold_untimed is not None:
            bars.append(f"{self.threshold_untimed:.2f} long untimed")
        return ", ".join(bars)


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
    threshold = _threshold(settings, n, transcript.has_times)
    wanted = None if settings.count_scale is None else 1 + round(settings.count_scale * sum(scores[1:]))
    for i in order:
        if len(taken) >= settings.max_chapters:
            break
        if wanted is not None:
            enough = len(taken) >= wanted
        else:
            enough = scores[i] < threshold
        if enough and not (room and len(taken) < settings.min_chapters):
            break
        if fits(i):
            taken.append(i)
    return sorted(taken)


def _threshold(settings: DecoderSettings, n_lines: int, timed: bool) -> float:
    """The bar for a transcript of this length and kind: short, long timed, or long untimed."""
    if n_lines < settings.long_lines or settings.threshold_long is None:
        return settings.threshold
    if not timed and settings.threshold_untimed is not None:
        return settings.threshold_untimed
    return settings.threshold_long


def _macro(scored: Sequence[tuple[Sequence[float], Transcript]], settings: DecoderSettings,
           max_count_ratio: float | None = None) -> float:
    """Macro mean over source families of primary F1; -1 when a family's mean chapter count exceeds
    `max_count_ratio` times its reference count (F1 within 5 s rewards cutting an hour-long talk into
    fifty chapters when the cuts are near chance; no user wants that)."""
    per_source: dict[str, list[tuple[float, int, int]]] = {}
    for scores, t in scored:
        starts = decode(scores, t, settings)
        per_source.setdefault(source_family(t), []).append((primary_f1(t, starts), len(starts), len(t.chapters)))
    if max_count_ratio is not None:
        for rows in per_source.values():
            if sum(r[1] for r in rows) > max_count_ratio * sum(r[2] for r in rows):
                return -1.0
    return sum(sum(r[0] for r in v) / len(v) for v in per_source.values()) / max(1, len(per_source))


def calibrate(scored: Sequence[tuple[Sequence[float], Transcript]],
              settings: DecoderSettings, max_count_ratio: float = 2.0) -> tuple[DecoderSettings, float]:
    """The decoder with the best macro primary F1 on `scored` (a validation split) among those that
    keep every family's chapter count within `max_count_ratio` of the reference: one threshold each for
    short, long timed and long untimed transcripts, or a count scale, whichever scores higher."""
    from dataclasses import replace

    short = [(sc, t) for sc, t in scored if len(t.segments) < settings.long_lines]
    long = [(sc, t) for sc, t in scored if len(t.segments) >= settings.long_lines]
    long_timed = [(sc, t) for sc, t in long if t.has_times]
    long_untimed = [(sc, t) for sc, t in long if not t.has_times]
    th, _ = calibrate_threshold(short or scored, settings, max_count_ratio=max_count_ratio)
    th_long, th_untimed = th, None
    if long_timed and long_untimed:  # both kinds present: each gets its own bar
        th_long, _ = calibrate_threshold(long_timed, settings, max_count_ratio=max_count_ratio)
        th_untimed, _ = calibrate_threshold(long_untimed, settings, max_count_ratio=max_count_ratio)
    elif long:
        th_long, _ = calibrate_threshold(long, settings, max_count_ratio=max_count_ratio)
    by_threshold = replace(settings, threshold=th, threshold_long=th_long, threshold_untimed=th_untimed,
                           count_scale=None)
    best = (by_threshold, _macro(scored, by_threshold, max_count_ratio))
    for scale in [round(0.1 * k, 1) for k in range(3, 21)]:
        candidate = replace(by_threshold, count_scale=scale)
        f1 = _macro(scored, candidate, max_count_ratio)
        if f1 > best[1]:
            best = (candidate, f1)
    return best[0], _macro(scored, best[0])


def calibrate_threshold(
    scored: Sequence[tuple[Sequence[float], Transcript]],
    settings: DecoderSettings,
    grid: Sequence[float] | None = None,
    max_count_ratio: float | None = None,
) -> tuple[float, float]:
    """The threshold with the best macro mean (over sources) of primary F1 on `scored`, and that F1.

    Source families stand in for domains on the validation split: each counts once, as in the headline.
    """
    from dataclasses import replace

    grid = list(grid) if grid is not None else [round(0.01 * k, 2) for k in range(1, 10)] + \
        [round(0.02 * k, 2) for k in range(5, 50)]
    best = (settings.threshold, -1.0)
    for th in grid:
        macro = _macro(scored, replace(settings, threshold=th, threshold_long=None, count_scale=None),
                       max_count_ratio)
        if macro > best[1]:
            best = (th, macro)
    return best


def source_family(t: Transcript) -> str:
    """`qmsum/product` -> `qmsum`: the corpus a transcript came from, which stands in for its domain
    where no held-out `meta.domain` is set (training and validation transcripts)."""
    return t.source.split("/")[0]


def primary_f1(transcript: Transcript, starts: Sequence[int]) -> float:
    """The yardstick's primary F1 of `starts` against the transcript's chapters (5 s, or 5 turns)."""
    from chaptering.metrics import boundary_prf, boundary_prf_time

    ref = transcript.boundaries
    if transcript.has_times:
        t = [float(s.start or 0.0) for s in transcript.segments]
        return boundary_prf_time([t[b] for b in ref], [t[b] for b in starts], 5.0)[2]
    return boundary_prf(ref, list(starts), 5)[2]
