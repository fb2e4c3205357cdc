"""Reading and writing transcripts: JSONL/JSON in and out, and the readers that take any supported file
(.jsonl, .json, .vtt, .srt) and hand WebVTT/SRT to `chaptering.captions`.

With `chaptering.captions`, this is the one place that parses files from outside. Two modes everywhere:
- strict (``rejected is None``): the first bad record raises `InputError` ("path:location: reason");
- collect (``rejected`` is a list): each bad record becomes a `Rejected` and reading goes on, so one
  broken line does not sink a nightly ingest; the rejects end up in ``quarantine.jsonl``.

A missing file is not bad data but a caller's mistake: `FileNotFoundError` propagates in both modes.
Empty segment text in JSON(L) passes, as the schema allows it (QMSum has empty turns; curation decides);
an empty caption cue is refused.

`InputError` and `Rejected` are defined in `chaptering.iobase` (shared with `chaptering.captions`) and are
imported from here. `chapters_vtt` and `chapters_youtube` (defined in `chaptering.captions`) are
re-exported for the code that imported them from here before captions had a module of its own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from chaptering.captions import _caption_transcript, chapters_vtt, chapters_youtube
from chaptering.iobase import (
    _BOM,
    InputError,
    Rejected,
    _atomic_write,
    _decode,
    _reject,
    _utf8_reason,
    _validation_reason,
)
from chaptering.schema import Transcript, text_problem

__all__ = [
    "InputError",
    "Rejected",
    "chapters_vtt",
    "chapters_youtube",
    "check_file_name",
    "iter_jsonl",
    "iter_located_transcripts",
    "iter_transcripts",
    "read_transcripts",
    "transcript_from_upload",
    "write_jsonl",
]

M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------------------------------------- JSON(L)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
