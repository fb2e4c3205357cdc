"""Reading and writing outside files: transcript JSONL/JSON, WebVTT, SRT, chapter tracks.

This is the one place that parses files from outside. Two modes everywhere:
- strict (``rejected is None``): the first bad record raises `InputError` ("path:location: reason");
- collect (``rejected`` is a list): each bad record becomes a `Rejected` and reading goes on, so one
  broken line does not sink a nightly ingest; the rejects end up in ``quarantine.jsonl``.

A missing file is not bad data but a caller's mistake: `FileNotFoundError` propagates in both modes.
Empty segment text in JSON(L) passes, as the schema allows it (QMSum has empty turns; curation decides);
an empty caption cue is refused.
"""

from __future__ import annotations

import ast
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import srt
import webvtt
from pydantic import BaseModel, ValidationError
from webvtt.errors import MalformedCaptionError, MalformedFileError

from chaptering.schema import PredictedChapter, Segment, Transcript, printable, text_problem

M = TypeVar("M", bound=BaseModel)

WORDS_PER_SECOND = 2.6  # speaking rate used to estimate times for untimed segments
OVERLAP_TOLERANCE_MS = 10  # cues may overlap by less than 0.01 s (rounding in caption tools)
_BOM = b"\xef\xbb\xbf"
_MS = timedelta(milliseconds=1)
# SRT formatting tags (<i>, <font ...>, a WebVTT-style <v Name>) and ASS overrides ({\an8});
# a bare "<" in text ("x < y") is not a tag and stays.
_SRT_TAG = re.compile(r"</?(?:b|i|u|s|c|v|font|lang|ruby|rt)(?:[\s.][^<>]*)?>|\{\\[^{}]*\}", re.IGNORECASE)
_VOICE = re.compile(r"^\s*<v(?:\.[\w-]+)*\s+([^>\s][^>]*)>", re.IGNORECASE)


class InputError(ValueError):
    """A bad outside record, located precisely so a person can find and fix it."""

    def __init__(self, path: str | Path, location: str, reason: str) -> None:
        self.path = printable(str(path))  # a file name with undecodable bytes must still print
        self.location = printable(location)
        self.reason = printable(reason)
        super().__init__(f"{self.path}:{location}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (Prefect task results)
        return (type(self), (self.path, self.location, self.reason))


@dataclass(frozen=True)
class Rejected:
    """A quarantined record: one line of ``quarantine.jsonl``."""

    source: str
    location: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The quarantine line; always writable as UTF-8, whatever the bad input smuggled in."""
        return {k: printable(v) for k, v in asdict(self).items()}


def _reject(err: InputError, rejected: list[Rejected] | None) -> None:
    """Raise in strict mode, record and carry on in collect mode."""
    if rejected is None:
        raise err
    rejected.append(Rejected(source=err.path, location=err.location, reason=err.reason))


# ---------------------------------------------------------------------------------------------- reasons


def _validation_reason(exc: ValidationError, limit: int = 3) -> str:
    """pydantic's error list as one short line: field path + message, e.g. "segments.2.text: ..."."""
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] != "value_error" and (value is None or isinstance(value, (str, int, float, bool))):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            msg = f"{msg} (got {shown})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(parts) > limit:
        parts = parts[:limit] + [f"and {len(parts) - limit} more errors"]
    return "; ".join(parts)


def _utf8_reason(exc: UnicodeDecodeError, data: bytes, offset: int) -> str:
    return f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {offset + exc.start})"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# ---------------------------------------------------------------------------------------------- JSON(L)


def _parse_record(text: str, model: type[M], name: str, location: str, defaults: dict[str, Any] | None) -> M:
    """One JSON object -> one validated model, or an InputError saying exactly what is wrong."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InputError(name, location, f"malformed JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:  # NaN / Infinity
        raise InputError(name, location, f"malformed JSON: {e}") from None
    return _validate(obj, model, name, location, defaults)


def _validate(obj: Any, model: type[M], name: str, location: str, defaults: dict[str, Any] | None) -> M:
    if not isinstance(obj, dict):
        raise InputError(name, location, f"expected a JSON object, got {type(obj).__name__}")
    if defaults:
        obj = {**defaults, **obj}
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise InputError(name, location, _validation_reason(e)) from None


def _iter_json_lines(
    lines: Iterable[bytes],
    model: type[M],
    name: str,
    rejected: list[Rejected] | None,
    defaults: dict[str, Any] | None = None,
) -> Iterator[M]:
    """`_located_json_lines` without the locations."""
    return (record for _, record in _located_json_lines(lines, model, name, rejected, defaults))


def _located_json_lines(
    lines: Iterable[bytes],
    model: type[M],
    name: str,
    rejected: list[Rejected] | None,
    defaults: dict[str, Any] | None = None,
) -> Iterator[tuple[str, M]]:
    """Stream ("line N", record) from raw JSONL byte lines: decoding per line keeps the good lines of a
    file with one bad byte, and byte lines let the UTF-8 error give a file offset."""
    offset = 0
    for lineno, raw in enumerate(lines, 1):
        start, offset = offset, offset + len(raw)
        if lineno == 1 and raw.startswith(_BOM):
            raw, start = raw[len(_BOM) :], start + len(_BOM)
        location = f"line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _reject(InputError(name, location, _utf8_reason(e, raw, start)), rejected)
            continue
        if not text.strip():
            continue  # blank lines are formatting, not records
        try:
            record = _parse_record(text, model, name, location, defaults)
        except InputError as err:
            _reject(err, rejected)
            continue
        yield location, record


def iter_jsonl(path: Path | str, model: type[M], rejected: list[Rejected] | None = None) -> Iterator[M]:
    """Validated records of any model from a JSONL file, streamed line by line."""
    return _iter_jsonl_file(path, model, rejected, None)


def _iter_jsonl_file(
    path: Path | str, model: type[M], rejected: list[Rejected] | None, defaults: dict[str, Any] | None
) -> Iterator[M]:
    return (record for _, record in _located_jsonl_file(path, model, rejected, defaults))


def _located_jsonl_file(
    path: Path | str, model: type[M], rejected: list[Rejected] | None, defaults: dict[str, Any] | None
) -> Iterator[tuple[str, M]]:
    with open(path, "rb") as f:
        yield from _located_json_lines(f, model, str(path), rejected, defaults)


def _json_transcripts(
    data: bytes, name: str, rejected: list[Rejected] | None, defaults: dict[str, Any] | None
) -> Iterator[Transcript]:
    """`_located_json_transcripts` without the locations."""
    return (t for _, t in _located_json_transcripts(data, name, rejected, defaults))


def _located_json_transcripts(
    data: bytes, name: str, rejected: list[Rejected] | None, defaults: dict[str, Any] | None
) -> Iterator[tuple[str, Transcript]]:
    """A .json file: one transcript object ("file"), or an array of them ("item N", 1-based)."""
    try:
        text = _decode(data, name)
        obj = json.loads(text, parse_constant=_reject_constant)
    except InputError as err:
        _reject(err, rejected)
        return
    except json.JSONDecodeError as e:
        _reject(
            InputError(name, "file", f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}"), rejected
        )
        return
    except ValueError as e:
        _reject(InputError(name, "file", f"malformed JSON: {e}"), rejected)
        return
    items = obj if isinstance(obj, list) else [obj]
    for i, item in enumerate(items, 1):
        location = f"item {i}" if isinstance(obj, list) else "file"
        try:
            transcript = _validate(item, Transcript, name, location, defaults)
        except InputError as err:
            _reject(err, rejected)
            continue
        yield location, transcript


# ---------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class _Cue:
    start_ms: int
    end_ms: int
    text: str
    speaker: str | None


def _decode(data: bytes, name: str) -> str:
    """Whole-file UTF-8 decoding; a BOM is accepted, anything else non-UTF-8 is refused."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(name, "file", _utf8_reason(e, data[skip:], skip)) from None


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


# ---------------------------------------------------------------------------------------------- readers


def iter_transcripts(
    path: Path | str, rejected: list[Rejected] | None = None, source: str | None = None
) -> Iterator[Transcript]:
    """Transcripts from a .jsonl (one per line), .json (object or array), .vtt or .srt file.

    A caption file is one transcript: id = file stem, source = `source` or "external". For JSON(L),
    `source` is only a default for records that carry none.
    """
    return (t for _, t in iter_located_transcripts(path, rejected, source))


def iter_located_transcripts(
    path: Path | str, rejected: list[Rejected] | None = None, source: str | None = None
) -> Iterator[tuple[str, Transcript]]:
    """`iter_transcripts` with where each record sits in its file ("line N", "item N" or "file"), so a
    later rejection can point at one of two records that share an id."""
    p = Path(path)
    name, ext = str(p), p.suffix.lower()
    defaults = {"source": source} if source else None
    if ext == ".jsonl":
        yield from _located_jsonl_file(p, Transcript, rejected, defaults)
    elif ext == ".json":
        yield from _located_json_transcripts(p.read_bytes(), name, rejected, defaults)
    elif ext in (".vtt", ".srt"):
        # A caption file is ONE transcript: in collect mode a bad cue (empty, overlapping, unordered,
        # malformed) rejects the whole file, with the first problem's location and reason, since a
        # transcript with a broken timeline cannot be trusted and dropping a cue would shift it.
        try:
            transcript = _caption_transcript(p.read_bytes(), ext, name, p.stem, source or "external")
        except InputError as err:
            _reject(err, rejected)
            return
        yield "file", transcript
    else:
        _reject(
            InputError(
                name,
                "file",
                f"unsupported file type {ext or '(none)'!r} (expected .jsonl, .json, .vtt or .srt)",
            ),
            rejected,
        )


def read_transcripts(
    path: Path | str, rejected: list[Rejected] | None = None, source: str | None = None
) -> list[Transcript]:
    """`iter_transcripts` as a list (for small files and tests)."""
    return list(iter_transcripts(path, rejected, source))


def check_file_name(name: str) -> None:
    """The schema's text rule for a file name (InputError otherwise): a name with bytes that are not
    UTF-8 would become a transcript id or a quarantine source that no JSON writer can encode."""
    problem = text_problem(name)
    if problem is not None:
        raise InputError(name, "file", f"file name {problem}; rename the file")


def transcript_from_upload(name: str, data: bytes) -> Transcript:
    """A web upload (.vtt/.srt/.json/.jsonl bytes) -> one transcript, strictly; JSONL gives its first."""
    check_file_name(name)
    ext = Path(name).suffix.lower()
    if ext in (".vtt", ".srt"):
        return _caption_transcript(data, ext, name, Path(name).stem, "external")
    if ext in (".json", ".jsonl"):
        records = (
            _json_transcripts(data, name, None, None)
            if ext == ".json"
            else _iter_json_lines(io.BytesIO(data), Transcript, name, None)
        )
        first = next(records, None)
        if first is None:
            raise InputError(name, "file", "no transcript in upload")
        return first
    raise InputError(
        name, "file", f"unsupported file type {ext or '(none)'!r} (expected .vtt, .srt, .json or .jsonl)"
    )


# ---------------------------------------------------------------------------------------------- writers


def _atomic_write(path: Path | str, chunks: Iterable[str]) -> None:
    """Write to a temporary file beside the target, then rename: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(
    path: Path | str,
    records: Iterable[BaseModel | dict[str, Any]],
    on_error: Callable[[Any, Exception], None] | None = None,
) -> int:
    """Write records one per line (atomically); returns how many were written.

    Without `on_error` a record that cannot be written as UTF-8 JSON (say, a lone surrogate set on a
    model after validation) raises; with it, that record goes to `on_error(record, exc)` and the rest
    are written.
    """
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for rec in records:
            try:
                line = _json_line(rec)
                if on_error is not None:
                    line.encode("utf-8")  # json.dumps(ensure_ascii=False) passes surrogates through
            except ValueError as exc:  # PydanticSerializationError and UnicodeEncodeError are ValueErrors
                if on_error is None:
                    raise
                on_error(rec, exc)
                continue
            yield line
            count += 1

    _atomic_write(path, lines())
    return count


def _json_line(rec: BaseModel | dict[str, Any]) -> str:
    if isinstance(rec, BaseModel):
        return rec.model_dump_json() + "\n"
    return json.dumps(rec, ensure_ascii=False, default=str) + "\n"


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
