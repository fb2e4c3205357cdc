"""The feedback store: what the service predicted, and what users did with it (`FeedbackStore`).

SQLAlchemy 2.0 over any SQL URL: a SQLite file by default (shared by the service and the nightly flow,
hence WAL), PostgreSQL at scale (docs/postgres.md). The tables are in `chaptering.feedback_tables`, their
schema comes from the Alembic migrations in `chaptering.migrations` (run when a store is first used),
and the row checks are in `chaptering.feedback_rows`; the names other modules import from here stay here.

The nightly ingest reads events by id after its watermark, so an id must never become visible after a
larger one: on SQLite the single writer lock gives that; on PostgreSQL ids come from a sequence at insert
time and transactions can commit out of order, so writers take a table lock that lets readers through
(`_serialize_writers`) and ids commit in order.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from chaptering.feedback_rows import (
    UNREADABLE,
    IdempotencyConflict,
    InvalidFeedback,
    UnknownPrediction,
    check_event_chapters,
    check_len,
    dump,
    parse_row,
    prediction_dict,
    same_event,
    transcript_of,
)
from chaptering.feedback_tables import Base, FeedbackRow, InvalidJSON, PredictionRow, lenient_json, now, utc
from chaptering.schema import Chapter, FeedbackEvent, Transcript

__all__ = [
    "UNREADABLE",
    "Base",
    "FeedbackRow",
    "FeedbackStore",
    "IdempotencyConflict",
    "InvalidFeedback",
    "InvalidJSON",
    "PredictionRow",
    "UnknownPrediction",
    "check_event_chapters",
    "parse_row",
]

_STREAM_BATCH = 500


class FeedbackStore:
    """The store behind /v1/feedback and the nightly ingest. One engine per store; the schema is
    migrated to the newest revision on first use, so constructing a store (e.g. at service start-up)
    touches no database."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"future": True}
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._postgres = parsed.get_backend_name() == "postgresql"
        if self._sqlite:
            db = parsed.database or ""
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}  # wait on the other writer
            if db in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared connection, or each would see an empty DB
            elif not db.startswith("file:"):
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True  # a server restart or an idle timeout must not fail a request
        self.engine: Engine = create_engine(url, json_deserializer=lenient_json, **kwargs)
        if self._sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._ready = False
        self._lock = threading.Lock()

    def _init(self) -> None:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    from chaptering.migrations import upgrade

                    upgrade(self.engine)
                    self._ready = True

    def _serialize_writers(self, s: Session) -> None:
        """On PostgreSQL, make ids commit in id order (see the module docstring): SHARE ROW EXCLUSIVE
        conflicts with itself and with plain INSERTs, not with SELECTs, and goes at commit."""
        if self._postgres:
            s.execute(text(f"LOCK TABLE {FeedbackRow.__tablename__} IN SHARE ROW EXCLUSIVE MODE"))

    def close(self) -> None:
        """Release pooled connections (tests, and processes that outlive their use of the store)."""
        self.engine.dispose()

    # ------------------------------------------------------------------------------------ predictions

    def record_prediction(
        self, transcript: Transcript, chapters: Sequence[Chapter | BaseModel], model_version: str
    ) -> str:
        """Remember a served prediction (with its transcript, PII scrubbed by the same rules as
        curation); returns the id feedback should cite."""
        from chaptering.curate import scrub_transcript  # numpy and friends: only when serving

        self._init()
        check_len("transcript id", transcript.id)
        check_len("model version", model_version)
        pid = uuid.uuid4().hex
        with self._session.begin() as s:
            s.add(
                PredictionRow(
                    prediction_id=pid,
                    transcript_id=transcript.id,
                    model_version=model_version,
                    chapters=dump(chapters),
                    transcript=scrub_transcript(transcript).model_dump(mode="json"),
                    created_at=now(),
                )
            )
        return pid

    def purge_transcripts(self, older_than: datetime) -> int:
        """Forget the stored transcripts of predictions made before `older_than` (the retention period);
        the prediction rows stay, so late feedback is refused with a reason instead of a guess."""
        self._init()
        with self._session.begin() as s:
            result = s.execute(
                update(PredictionRow)
                .where(PredictionRow.created_at < utc(older_than), PredictionRow.transcript.is_not(None))
                .values(transcript=None)
            )
            return int(result.rowcount or 0)

    def get_prediction(self, prediction_id: str) -> dict[str, Any] | None:
        self._init()
        with self._session() as s:
            row = s.get(PredictionRow, prediction_id)
            return None if row is None else prediction_dict(row)

    def _latest_prediction_id(self, transcript_id: str, model_version: str) -> str | None:
        with self._session() as s:
            return s.scalars(
                select(PredictionRow.prediction_id)
                .where(
                    PredictionRow.transcript_id == transcript_id, PredictionRow.model_version == model_version
                )
                .order_by(PredictionRow.created_at.desc())
                .limit(1)
            ).first()

    # ----------------------------------------------------------------------------------------- events

    def add(self, event: FeedbackEvent, idempotency_key: str | None = None) -> int:
        """Store one event; returns its sequence number (see `add_once`)."""
        return self.add_once(event, idempotency_key)[0]

    def add_once(self, event: FeedbackEvent, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Store one event; (sequence number, whether it was already stored under `idempotency_key`).

        The event must cite a prediction this store served (`UnknownPrediction` otherwise): by its
        prediction id, or, for the bare DESIGN contract without one, the latest prediction of the same
        transcript and model version. It must be for that prediction's transcript, with chapters inside
        it (`InvalidFeedback`). Refusing here tells the client now, instead of the nightly run
        quarantining it later. A key seen before returns the first event's number without a second
        row, unless the event differs (`IdempotencyConflict`).
        """
        self._init()
        for name in ("transcript_id", "model_version", "user_id"):
            check_len(name, getattr(event, name))
        check_len("idempotency key", idempotency_key)
        if idempotency_key is not None:
            seen = self._replay(idempotency_key, event)
            if seen is not None:
                return seen, True
        pid = self._check_prediction(event)
        try:
            with self._session.begin() as s:
                self._serialize_writers(s)
                row = FeedbackRow(
                    transcript_id=event.transcript_id,
                    prediction_id=pid,
                    model_version=event.model_version,
                    predicted=dump(event.predicted),
                    corrected=None if event.corrected is None else dump(event.corrected),
                    rating=event.rating,
                    user_id=event.user_id,
                    created_at=utc(event.timestamp),
                    idempotency_key=idempotency_key,
                )
                s.add(row)
                s.flush()
                return row.id, False
        except IntegrityError:
            # A concurrent retry with the same key won the insert: answer as that one did.
            seen = self._replay(idempotency_key, event) if idempotency_key is not None else None
            if seen is None:
                raise
            return seen, True

    def _check_prediction(self, event: FeedbackEvent) -> str:
        """The id of the served prediction `event` is about, after checking the event fits it."""
        pid = event.prediction_id
        if pid is not None:
            pred = self.get_prediction(pid)
            if pred is None:
                raise UnknownPrediction(f"unknown prediction id {pid!r}: feedback must cite a prediction "
                                        "this service made")
        else:
            pid = self._latest_prediction_id(event.transcript_id, event.model_version)
            pred = self.get_prediction(pid) if pid else None
            if pred is None or pid is None:
                raise UnknownPrediction(
                    f"no prediction of transcript {event.transcript_id!r} by model version "
                    f"{event.model_version!r} was served: feedback must cite a prediction this service made"
                )
        if pred["transcript_id"] != event.transcript_id:
            raise InvalidFeedback(
                f"prediction {pid} is for transcript {pred['transcript_id']!r}, not {event.transcript_id!r}"
            )
        if pred["transcript"] is None:
            raise InvalidFeedback(f"prediction {pid} is past the retention period: its transcript is no "
                                  "longer kept, so the feedback cannot be used")
        # A prediction stored with an unusable transcript is not the client's fault: keep the event
        # (ingest quarantines it with the reason).
        transcript, _ = transcript_of(pred, event)
        if transcript is not None:
            try:
                check_event_chapters(event, transcript)
            except ValueError as exc:
                raise InvalidFeedback(str(exc)) from None
        return pid

    def _replay(self, key: str, event: FeedbackEvent) -> int | None:
        """The sequence number stored under `key`, if any; `IdempotencyConflict` if its event differs."""
        with self._session() as s:
            row = s.scalars(select(FeedbackRow).where(FeedbackRow.idempotency_key == key)).first()
            if row is None:
                return None
            same = same_event(row, event)
            if not same:
                raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different event")
            return row.id

    def events_after(
        self, watermark: int, limit: int | None = None
    ) -> Iterator[tuple[int, FeedbackEvent | None, dict[str, Any]]]:
        """(row id, event or None if the row no longer validates, raw row) for ids > watermark, in id
        order, in batches so a backlog of any size fits in memory. A row the database cannot even hand
        back (say, a timestamp another writer stored as junk) comes as ``{"id", UNREADABLE: why}``
        instead of ending the read: one bad row must not hide every row after it."""
        self._init()
        last, left = watermark, limit
        while left is None or left > 0:
            n = _STREAM_BATCH if left is None else min(_STREAM_BATCH, left)
            with self.engine.connect() as conn:
                ids = list(conn.execute(
                    select(FeedbackRow.id).where(FeedbackRow.id > last).order_by(FeedbackRow.id).limit(n)
                ).scalars())
            if not ids:
                return
            for raw in self._fetch(ids):
                event, _ = parse_row(raw)
                yield raw["id"], event, raw
            last = ids[-1]
            left = None if left is None else left - len(ids)

    def _fetch(self, ids: list[int]) -> list[dict[str, Any]]:
        """Raw rows for `ids` in one query; row by row when the batch fails, naming the bad ones."""
        table = FeedbackRow.__table__
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.id)).mappings()
                return [dict(r) for r in rows]
        except (SQLAlchemyError, ValueError, TypeError, OverflowError):
            pass
        out = []
        for row_id in ids:
            try:
                with self.engine.connect() as conn:
                    row = conn.execute(select(table).where(table.c.id == row_id)).mappings().first()
                if row is not None:
                    out.append(dict(row))
            except (SQLAlchemyError, ValueError, TypeError, OverflowError) as exc:
                out.append({"id": row_id, UNREADABLE: f"{type(exc).__name__}: {exc}"[:300]})
        return out

    def resolve(self, event: FeedbackEvent) -> tuple[Transcript | None, str | None]:
        """(the transcript the event is about, None), or (None, why it cannot be found)."""
        self._init()
        if event.prediction_id is None:
            return None, "no linked prediction"
        pred = self.get_prediction(event.prediction_id)
        if pred is None:
            return None, f"prediction {event.prediction_id} not found"
        return transcript_of(pred, event)

    def transcript_for(self, event: FeedbackEvent) -> Transcript | None:
        """The transcript as it was served with the event's prediction, or None if unknown."""
        return self.resolve(event)[0]

    def count(self) -> int:
        self._init()
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(FeedbackRow)) or 0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the service write while the nightly flow reads the same file."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint, not per commit
    finally:
        cur.close()
