"""Incremental ingest: only what is new since the last successful night.

Each source keeps a watermark in ``state/watermarks.json``: per file its sha256 and size, for the
feedback store the last event id consumed. Reading moves only the *pending* watermark; it is committed
(`Watermarks.commit`, or `save_pending` + `commit_pending` across processes) after the downstream stages
have succeeded, so a run that fails half-way re-reads the same input next time instead of losing it.

Bad records never stop an ingest: they are appended to ``rejected`` (-> ``quarantine.jsonl``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaptering.feedback import FeedbackStore, check_event_chapters, parse_row
from chaptering.io import InputError, Rejected, check_file_name, iter_located_transcripts
from chaptering.schema import FeedbackEvent, Transcript
from chaptering.walk import SKIPPED, SUFFIXES, _files, file_digest
from chaptering.watermarks import Watermarks

if TYPE_CHECKING:
    from chaptering.config import Settings

FEEDBACK_KEY = "feedback"
FEEDBACK_SOURCE = "feedback_events"  # the `source` of a quarantined feedback row

__all__ = ["SKIPPED", "SUFFIXES", "IngestReport", "Watermarks", "file_digest", "ingest", "ingest_feedback",
           "ingest_files"]


def reason_kind(reason: str) -> str:
    """The reason's prefix ("malformed JSON", "unknown transcript"): what the report counts by."""
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:60] or "unspecified"


@dataclass
class IngestReport:
    """What one ingest saw. Filled while the readers are consumed: final once they are exhausted."""

    files_seen: int = 0
    files_new: int = 0  # new or changed since the committed watermark
    files_skipped_unchanged: int = 0
    files_skipped: int = 0  # in a folder but not read (type, hidden, symlink out, bad name): quarantined
    transcripts: int = 0
    feedback_events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason prefix -> count

    def count_rejected(self, items: Iterable[Rejected]) -> None:
        for r in items:
            kind = reason_kind(r.reason)
            self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest_files(
    paths: Iterable[Path | str],
    marks: Watermarks,
    rejected: list[Rejected],
    source: str,
    report: IngestReport | None = None,
    follow_symlinks: bool = False,
) -> Iterator[Transcript]:
    """Transcripts from new or changed files under `paths`, tagged with where they came from.

    `source` is "external" (public/outside data) or "internal" (the app-export drop folder): it is the
    watermark key, the default `Transcript.source` and ``meta["ingest_source"]``. A file is marked as
    read only once all its records have been consumed. Paths are checked now (FileNotFoundError) and
    folder entries that will not be read are quarantined now; the files are read lazily.
    """
    report = report if report is not None else IngestReport()
    before = len(rejected)
    files = _files(paths, rejected, follow_symlinks)
    report.files_skipped += len(rejected) - before
    report.count_rejected(rejected[before:])
    return _read_files(files, marks, rejected, source, report)


def _read_files(
    files: list[Path], marks: Watermarks, rejected: list[Rejected], source: str, report: IngestReport
) -> Iterator[Transcript]:
    committed = marks.get(source).get("files", {})
    pending = marks.pending(source).setdefault("files", {})
    for file in files:
        report.files_seen += 1
        key = str(file.resolve())
        before = len(rejected)
        try:
            check_file_name(key)  # a named file (not walked) with undecodable bytes in its path
            digest, size = file_digest(file)
            if committed.get(key, {}).get("sha256") == digest:
                report.files_skipped_unchanged += 1
                continue
            report.files_new += 1
            for location, t in iter_located_transcripts(file, rejected, source=source):
                t.meta.update({"path": str(file), "location": location, "ingest_source": source})
                report.transcripts += 1
                yield t
        except InputError as err:
            rejected.append(Rejected(source=err.path, location=err.location, reason=err.reason))
            continue
        except OSError as exc:  # vanished or unreadable: not marked, so retried next run
            rejected.append(
                Rejected(source=str(file), location="file", reason=f"unreadable: {exc.strerror or exc}")
            )
        else:
            pending[key] = {"sha256": digest, "size": size}
        finally:
            report.count_rejected(rejected[before:])
    # Forget files that are gone, so the watermark file does not grow forever.
    for key in [k for k in pending if not Path(k).exists()]:
        del pending[key]


# --------------------------------------------------------------------------------------------- feedback


def ingest_feedback(
    store: FeedbackStore,
    marks: Watermarks,
    rejected: list[Rejected],
    report: IngestReport | None = None,
) -> Iterator[tuple[FeedbackEvent, Transcript]]:
    """(event, transcript it is about) for each feedback event after the watermark.

    A row that no longer validates (invalid text included), whose transcript cannot be found, or whose
    chapters do not fit that transcript is quarantined as ``Rejected("feedback_events", "row N", reason)``;
    the watermark moves past it either way (the reason is on record; re-reading it would only repeat
    the rejection, and a row that fails every night would stop every night).
    """
    report = report if report is not None else IngestReport()
    last = int(marks.get(FEEDBACK_KEY).get("last_id", 0))
    pending = marks.pending(FEEDBACK_KEY)
    pending.setdefault("last_id", last)
    for row_id, event, raw in store.events_after(last):
        try:
            transcript, problem = _feedback_transcript(store, event, raw)
        except Exception as exc:  # noqa: BLE001 - any row-level failure is this row's, not the night's
            transcript, problem = None, f"unprocessable row: {type(exc).__name__}: {exc}"[:500]
        if problem is not None:
            bad = Rejected(source=FEEDBACK_SOURCE, location=f"row {row_id}", reason=problem)
            rejected.append(bad)
            report.count_rejected([bad])
        else:
            assert event is not None and transcript is not None
            transcript.meta.update({"ingest_source": "feedback", "feedback_row": row_id})
            report.feedback_events += 1
            yield event, transcript
        pending["last_id"] = max(int(pending["last_id"]), row_id)


def _feedback_transcript(
    store: FeedbackStore, event: FeedbackEvent | None, raw: dict[str, Any]
) -> tuple[Transcript | None, str | None]:
    """(the transcript a stored event is about, None), or (None, why the row cannot be used)."""
    if event is None:
        return None, f"invalid row: {parse_row(raw)[1]}"
    transcript, why = store.resolve(event)
    if transcript is None:
        return None, f"unknown transcript: {why}"
    try:
        check_event_chapters(event, transcript)
    except ValueError as exc:
        return None, f"chapters out of range: {exc}"
    return transcript, None


def feedback_records(
    pairs: Iterable[tuple[FeedbackEvent, Transcript]], rejected: list[Rejected]
) -> Iterator[dict[str, Any]]:
    """The run's feedback.jsonl records; a pair that cannot be written as JSON is quarantined (its
    watermark has moved already) instead of failing the write of every other one."""
    for event, transcript in pairs:
        try:
            record = {"event": json.loads(event.model_dump_json()),
                      "transcript": json.loads(transcript.model_dump_json())}
        except ValueError as exc:  # PydanticSerializationError (e.g. invalid text set after validation)
            row = transcript.meta.get("feedback_row", "?")
            rejected.append(Rejected(FEEDBACK_SOURCE, f"row {row}", f"unwritable row: {exc}"[:500]))
            continue
        yield record


def quarantine_unwritable(rejected: list[Rejected], default_source: str) -> Callable[[Any, Exception], None]:
    """`io.write_jsonl`'s on_error for transcripts: the record is quarantined where it came from."""

    def on_error(record: Any, exc: Exception) -> None:
        meta = getattr(record, "meta", None) or {}
        rejected.append(Rejected(source=str(meta.get("path") or default_source),
                                 location=str(meta.get("location") or f"id {getattr(record, 'id', '?')}"),
                                 reason=f"unwritable record: {exc}"[:500]))

    return on_error


# ------------------------------------------------------------------------------------------- everything


def ingest(
    settings: Settings, rejected: list[Rejected], full: bool = False
) -> tuple[Iterator[Transcript], list[tuple[FeedbackEvent, Transcript]], IngestReport, Watermarks]:
    """Everything new: external inputs, the internal drop folder (if present) and the feedback store.

    Transcripts stream (consume them before reading the report's file counts); feedback is read
    eagerly. Nothing is committed: call ``marks.commit()`` once the data has been used successfully.
    `full` ignores the watermarks and re-reads everything (rebuilding the dataset from scratch).
    """
    marks = Watermarks(settings.state_dir / "watermarks.json")
    if full:
        marks.reset()
    report = IngestReport()
    internal = [settings.data.internal_dir] if settings.data.internal_dir.exists() else []
    transcripts = chain(
        ingest_files(settings.data.inputs, marks, rejected, "external", report),
        ingest_files(internal, marks, rejected, "internal", report),
    )
    store = FeedbackStore(settings.feedback_db)
    try:
        feedback = list(ingest_feedback(store, marks, rejected, report))
    finally:
        store.close()
    return transcripts, feedback, report, marks
