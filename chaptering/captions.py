"""Caption files: WebVTT and SRT in (one caption file = one transcript), WebVTT and SRT out, and the
chapter formats people paste elsewhere (a WebVTT chapters track, YouTube description chapters).

Readers here are strict: the first problem raises `InputError` located by cue ("cue N") or "file";
`chaptering.io` dispatches to them by file type and turns an error into a rejection in collect mode.
An empty caption cue is refused (empty segment text in JSON(L) passes, as the schema allows it).
"""

from __future__ import annotations

import ast
import html
import io
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import srt
import webvtt
from pydantic import ValidationError
from webvtt.errors import MalformedCaptionError, MalformedFileError

from chaptering.iobase import InputError, _atomic_write, _decode, _validation_reason
from chaptering.schema import PredictedChapter, Segment, Transcript

WORDS_PER_SECOND = 2.6  # speaking rate used to estimate times for untimed segments
OVERLAP_TOLERANCE_MS = 10  # cues may overlap by less than 0.01 s (rounding in caption tools)
_MS = timedelta(milliseconds=1)
# SRT formatting tags (<i>, <font ...>, a WebVTT-style <v Name>) and ASS overrides ({\an8});
# a bare "<" in text ("x < y") is not a tag and stays.
_SRT_TAG = re.compile(r"</?(?:b|i|u|s|c|v|font|lang|ruby|rt)(?:[\s.][^<>]*)?>|\{\\[^{}]*\}", re.IGNORECASE)
_VOICE = re.compile(r"^\s*<v(?:\.[\w-]+)*\s+([^>\s][^>]*)>", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class _Cue:
    start_ms: int
    end_ms: int
    text: str
    speaker: str | None


def _join_lines(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _locate_vtt_error(text: str, message: str) -> str:
    """webvtt-py names the bad block or timestamp but not its position: find the cue it belongs to
    (counting cue timing lines), falling back to "file"."""
    target: str | None = None
    if message.startswith("Invalid cue block "):
        try:
            block = ast.literal_eval(message[len("Invalid cue block ") :])
            arrows = [line for line in block if "-->" in line]
            target = arrows[-1] if arrows else None  # the last timing line is the cue that went wrong
        except (ValueError, SyntaxError):
            target = None
    elif message.startswith("Invalid timestamp "):
        stamp = message[len("Invalid timestamp ") :].strip("'\"")
        target = next((line for line in text.splitlines() if "-->" in line and stamp in line), None)
    if target is None:
        return "file"
    cue = 0
    for line in text.splitlines():
        if "-->" in line:
            cue += 1
            if line == target:
                return f"cue {cue}"
    return "file"


def _vtt_cues(text: str, name: str) -> list[_Cue]:
    """Cues via webvtt-py in strict mode: lenient mode silently drops malformed cue blocks."""
    try:
        doc = webvtt.from_buffer(io.StringIO(text), strict=True)
    except MalformedFileError:
        raise InputError(
            name, "file", "not a WebVTT file (the first line must start with 'WEBVTT')"
        ) from None
    except MalformedCaptionError as e:
        raise InputError(name, _locate_vtt_error(text, str(e)), f"malformed WebVTT cue: {e}") from None
    return [
        _Cue(
            start_ms=c.start_time.in_milliseconds(),
            end_ms=c.end_time.in_milliseconds(),
            text=html.unescape(_join_lines(c.text)),  # tags stripped by webvtt-py, then &amp; etc.
            speaker=(c.voice or "").strip() or None,
        )
        for c in doc.captions
    ]


def _srt_cues(text: str, name: str) -> list[_Cue]:
    """Cues via the `srt` package; its parse errors are located at the cue after the last good one."""
    cues: list[_Cue] = []
    try:
        for sub in srt.parse(text):
            voice = _VOICE.match(sub.content)
            cues.append(
                _Cue(
                    start_ms=sub.start // _MS,
                    end_ms=sub.end // _MS,
                    text=_join_lines(_SRT_TAG.sub("", sub.content)),
                    speaker=voice.group(1).strip() if voice else None,
                )
            )
    except srt.SRTParseError as e:
        bad = e.unmatched_content.strip()
        shown = bad if len(bad) <= 60 else bad[:57] + "..."
        raise InputError(name, f"cue {len(cues) + 1}", f"malformed SRT block: {shown!r}") from None
    except (srt.TimestampParseError, ValueError) as e:
        raise InputError(name, f"cue {len(cues) + 1}", f"malformed SRT block: {e}") from None
    return cues


def _transcript_from_cues(cues: list[_Cue], name: str, tid: str, source: str) -> Transcript:
    """Check the timeline and build the transcript; the first problem raises, located by cue."""
    if not cues:
        raise InputError(name, "file", "no cues")
    segments: list[Segment] = []
    for i, cue in enumerate(cues, 1):
        loc = f"cue {i}"
        if not cue.text:
            raise InputError(name, loc, "empty cue text")
        if cue.end_ms < cue.start_ms:
            raise InputError(
                name, loc, f"cue ends ({_ts(cue.end_ms)}) before it starts ({_ts(cue.start_ms)})"
            )
        if i > 1:
            prev = cues[i - 2]
            if cue.start_ms < prev.start_ms:
                raise InputError(
                    name,
                    loc,
                    f"unordered cues: cue {i} starts at {_ts(cue.start_ms)}, "
                    f"before cue {i - 1} starts ({_ts(prev.start_ms)})",
                )
            if prev.end_ms - cue.start_ms >= OVERLAP_TOLERANCE_MS:
                raise InputError(
                    name,
                    loc,
                    f"overlapping cues: cue {i} starts at {_ts(cue.start_ms)}, "
                    f"before cue {i - 1} ends ({_ts(prev.end_ms)})",
                )
        segments.append(
            Segment(text=cue.text, speaker=cue.speaker, start=cue.start_ms / 1000, end=cue.end_ms / 1000)
        )
    try:
        return Transcript(id=tid, source=source, segments=segments, chapters=None)
    except ValidationError as e:
        raise InputError(name, "file", _validation_reason(e)) from None


def _caption_transcript(data: bytes, ext: str, name: str, tid: str, source: str) -> Transcript:
    """A whole .vtt/.srt file -> one transcript (or InputError)."""
    text = _decode(data, name)
    cues = _vtt_cues(text, name) if ext == ".vtt" else _srt_cues(text, name)
    return _transcript_from_cues(cues, name, tid, source)


# ---------------------------------------------------------------------------------------------- writers


def _ts(ms: int, sep: str = ".") -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _timeline_ms(transcript: Transcript) -> list[tuple[int, int]]:
    """Start/end of each segment in ms: real times where known, else estimated at 2.6 words/s
    after the previous segment (and never running past a known next start)."""
    segs = transcript.segments
    out: list[tuple[int, int]] = []
    cursor = 0.0
    for i, seg in enumerate(segs):
        start = seg.start if seg.start is not None else cursor
        if seg.end is not None:
            end = seg.end
        else:
            end = start + len(seg.text.split()) / WORDS_PER_SECOND
            nxt = segs[i + 1].start if i + 1 < len(segs) else None
            if nxt is not None and start <= nxt < end:
                end = nxt
        end = max(end, start)
        cursor = end
        out.append((round(start * 1000), round(end * 1000)))
    return out


def _one_line(text: str) -> str:
    """Cue text on one line: a newline (or a blank line) inside would break the cue block."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _timed_segments(transcript: Transcript) -> list[tuple[Segment, int, int]]:
    """Segments with their (possibly estimated) times, empty ones left out: the schema allows empty
    turns (QMSum has them), but an empty cue is junk in a caption file and our reader refuses it."""
    return [
        (seg, start, end)
        for seg, (start, end) in zip(transcript.segments, _timeline_ms(transcript))
        if _one_line(seg.text)
    ]


def write_vtt(path: Path | str, transcript: Transcript) -> None:
    """The transcript as WebVTT (speakers as <v Name> voice spans), atomically."""
    captions = []
    for i, (seg, start, end) in enumerate(_timed_segments(transcript), 1):
        text = _vtt_escape(_one_line(seg.text))
        if seg.speaker:
            text = f"<v {re.sub(r'[<>&]', '', seg.speaker).strip()}>{text}"
        captions.append(webvtt.Caption(start=_ts(start), end=_ts(end), text=text, identifier=str(i)))
    _atomic_write(path, [webvtt.WebVTT(captions=captions).content])


def write_srt(path: Path | str, transcript: Transcript) -> None:
    """The transcript as SRT (speakers as <v Name>, which our reader maps back), atomically."""
    subs = []
    for i, (seg, start, end) in enumerate(_timed_segments(transcript), 1):
        text = _one_line(seg.text)
        if seg.speaker:
            text = f"<v {re.sub(r'[<>]', '', seg.speaker).strip()}>{text}"
        subs.append(srt.Subtitle(index=i, start=start * _MS, end=end * _MS, content=text))
    # reindex=False: srt's re-indexing also drops zero-length subtitles, which would lose text
    _atomic_write(path, [srt.compose(subs, reindex=False)])


# ---------------------------------------------------------------------------------------------- chapters


def _chapter_starts(chapters: list[PredictedChapter]) -> list[float]:
    """Chapter start times; the first chapter covers the video from 0 (YouTube requires 00:00)."""
    if not chapters:
        raise ValueError("no chapters")
    starts = [0.0]
    for i, ch in enumerate(chapters[1:], 1):
        if ch.start is None:
            raise ValueError(f"chapter {i} ({ch.title!r}) has no start time")
        if ch.start <= starts[-1]:
            raise ValueError(f"chapter {i} ({ch.title!r}) does not start after chapter {i - 1}")
        starts.append(ch.start)
    return starts


def chapters_vtt(chapters: list[PredictedChapter], end_time: float) -> str:
    """A WebVTT chapters track (kind="chapters"): one cue per chapter, the title as its text."""
    starts = _chapter_starts(chapters)
    if end_time < starts[-1]:
        raise ValueError(f"end time {end_time} is before the last chapter starts ({starts[-1]})")
    ends = starts[1:] + [end_time]
    captions = [
        webvtt.Caption(
            start=_ts(round(s * 1000)),
            end=_ts(round(e * 1000)),
            text=_vtt_escape(_one_line(ch.title)) or f"Chapter {i}",
            identifier=f"chapter-{i}",
        )
        for i, (ch, s, e) in enumerate(zip(chapters, starts, ends), 1)
    ]
    return webvtt.WebVTT(captions=captions).content


def _youtube_ts(seconds: float) -> str:
    total = int(seconds)  # floor: the mark must not come after the chapter's first words
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def chapters_youtube(chapters: list[PredictedChapter]) -> str:
    """YouTube description chapters: "00:00 Intro\\n01:23 Budget" (h:mm:ss from one hour on)."""
    starts = _chapter_starts(chapters)
    return "\n".join(f"{_youtube_ts(s)} {_one_line(ch.title)}" for ch, s in zip(chapters, starts))
