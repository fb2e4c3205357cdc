"""The feedback store: what the service predicted, and what users did with it.

SQLAlchemy 2.0 over any SQL URL: a SQLite file by default (shared by the service and the nightly flow,
hence WAL), PostgreSQL at scale. Two tables:

- ``predictions``: every prediction served, with the transcript as served (PII scrubbed by curation's
  rules), so a later edit or rating can be turned into a training pair without the app having to send
  the transcript again; `purge_transcripts` drops stored transcripts past the retention period;
- ``feedback_events``: one row per edit or rating. The autoincrement id is the event's sequence number:
  the nightly ingest keeps the last id it consumed as its watermark. An optional client idempotency
  key is unique, so a retried POST cannot put one user action into training twice.

Rows are read back defensively (`events_after` yields None for a row that no longer validates, or
that cannot even be fetched) because other writers and old schema versions can leave rows behind that
today's models refuse; the ingest quarantines those instead of crashing the nightly run.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import JSON, DateTime, Integer, String, create_engine, event, func, inspect, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from chaptering.schema import Chapter, FeedbackEvent, Transcript, check_chapters

_ID_LEN = 255  # VARCHAR bound that every backend can index (MySQL included)
_STREAM_BATCH = 500
UNREADABLE = "_unreadable"  # key of a raw row that could not be fetched (why), see `events_after`


class UnknownPrediction(LookupError):
    """Feedback names a prediction id the store never served (a stale or forged client)."""


class InvalidFeedback(ValueError):
    """Feedback that contradicts the prediction it names (other transcript, chapters out of range)."""


class IdempotencyConflict(ValueError):
    """An idempotency key sent again with a different event: the client reused a key by mistake."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC: the store only ever writes UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, also on SQLite (which stores no offset and hands back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc(value)


class InvalidJSON(str):
    """A stored JSON column that does not parse (SQLite keeps any text): kept so the row can be
    reported and quarantined instead of breaking the whole read."""


def _lenient_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return InvalidJSON(text)


class Base(DeclarativeBase):
    pass


class PredictionRow(Base):
    __tablename__ = "predictions"

    prediction_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    transcript_id: Mapped[str] = mapped_column(String(_ID_LEN), index=True)
    model_version: Mapped[str] = mapped_column(String(_ID_LEN))
    chapters: Mapped[Any] = mapped_column(JSON)
    transcript: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now, index=True)


class FeedbackRow(Base):
    __tablename__ = "feedback_events"
    # AUTOINCREMENT: without it SQLite may hand a deleted maximum id out again, and a reused id at or
    # below the watermark would never be ingested.
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transcript_id: Mapped[str] = mapped_column(String(_ID_LEN), index=True)
    prediction_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    model_version: Mapped[str] = mapped_column(String(_ID_LEN))
    predicted: Mapped[Any] = mapped_column(JSON)
    corrected: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    rating: Mapped[str | None] = mapped_column(String(16), nullable=True)
    user_id: Mapped[str] = mapped_column(String(_ID_LEN))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    idempotency_key: Mapped[str | None] = mapped_column(String(_ID_LEN), nullable=True, unique=True, index=True)


_EVENT_COLUMNS = (
    "transcript_id",
    "prediction_id",
    "model_version",
    "predicted",
    "corrected",
    "rating",
    "user_id",
)


def _reason(exc: Exception, limit: int = 3) -> str:
    """A validation error as one short line ("predicted: chapters are not strictly increasing")."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts[:limit] + ([f"and {len(parts) - limit} more"] if len(parts) > limit else []))


def parse_row(raw: dict[str, Any]) -> tuple[FeedbackEvent | None, str | None]:
    """A stored feedback row -> (event, None), or (None, why it no longer validates)."""
    if UNREADABLE in raw:
        return None, f"stored row cannot be read: {raw[UNREADABLE]}"
    for col in ("predicted", "corrected"):
        if isinstance(raw.get(col), InvalidJSON):
            return None, f"{col}: stored value is not valid JSON"
    try:
        event = FeedbackEvent.model_validate(
            {**{k: raw.get(k) for k in _EVENT_COLUMNS}, "timestamp": raw.get("created_at")}
        )
    except ValidationError as exc:
        return None, _reason(exc)
    return event, None


def _check_len(name: str, value: str | None) -> None:
    if value is not None and len(value) > _ID_LEN:
        raise InvalidFeedback(f"{name} is longer than {_ID_LEN} characters")


def _dump(chapters: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in chapters]


class FeedbackStore:
    """The store behind /v1/feedback and the nightly ingest. One engine per store; tables are created
    on first use, so constructing a store (e.g. at service start-up) touches no database."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"future": True}
        self._sqlite = parsed.get_backend_name() == "sqlite"
        if self._sqlite:
            db = parsed.database or ""
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}  # wait on the other writer
            if db in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared connection, or each would see an empty DB
            elif not db.startswith("file:"):
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, json_deserializer=_lenient_json, **kwargs)
        if self._sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._ready = False
        self._lock = threading.Lock()

    def _init(self) -> None:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    Base.metadata.create_all(self.engine)
                    self._add_missing_columns()
                    self._ready = True

    def _add_missing_columns(self) -> None:
        """Additive migration of stores created before a column existed (create_all adds no columns)."""
        have = {c["name"] for c in inspect(self.engine).get_columns(FeedbackRow.__tablename__)}
        if "idempotency_key" in have:
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE feedback_events ADD COLUMN idempotency_key VARCHAR({_ID_LEN})")
            conn.exec_driver_sql(
                "CREATE UNIQUE INDEX IF NOT EXISTS ix_feedback_events_idempotency_key "
                "ON feedback_events (idempotency_key)"
            )

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
        _check_len("transcript id", transcript.id)
        _check_len("model version", model_version)
        pid = uuid.uuid4().hex
        with self._session.begin() as s:
            s.add(
                PredictionRow(
                    prediction_id=pid,
                    transcript_id=transcript.id,
                    model_version=model_version,
                    chapters=_dump(chapters),
                    transcript=scrub_transcript(transcript).model_dump(mode="json"),
                    created_at=_now(),
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
                .where(PredictionRow.created_at < _utc(older_than), PredictionRow.transcript.is_not(None))
                .values(transcript=None)
            )
            return int(result.rowcount or 0)

    def get_prediction(self, prediction_id: str) -> dict[str, Any] | None:
        self._init()
        with self._session() as s:
            row = s.get(PredictionRow, prediction_id)
            return None if row is None else _prediction_dict(row)

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
            _check_len(name, getattr(event, name))
        _check_len("idempotency key", idempotency_key)
        if idempotency_key is not None:
            seen = self._replay(idempotency_key, event)
            if seen is not None:
                return seen, True
        pid = self._check_prediction(event)
        try:
            with self._session.begin() as s:
                row = FeedbackRow(
                    transcript_id=event.transcript_id,
                    prediction_id=pid,
                    model_version=event.model_version,
                    predicted=_dump(event.predicted),
                    corrected=None if event.corrected is None else _dump(event.corrected),
                    rating=event.rating,
                    user_id=event.user_id,
                    created_at=_utc(event.timestamp),
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
        transcript, _ = _transcript_of(pred, event)
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
            same = (
                row.transcript_id == event.transcript_id
                and row.model_version == event.model_version
                and (event.prediction_id is None or row.prediction_id == event.prediction_id)
                and row.predicted == _dump(event.predicted)
                and row.corrected == (None if event.corrected is None else _dump(event.corrected))
                and row.rating == event.rating
                and row.user_id == event.user_id
            )
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
        return _transcript_of(pred, event)

    def transcript_for(self, event: FeedbackEvent) -> Transcript | None:
        """The transcript as it was served with the event's prediction, or None if unknown."""
        return self.resolve(event)[0]

    def count(self) -> int:
        self._init()
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(FeedbackRow)) or 0


def check_event_chapters(event: FeedbackEvent, transcript: Transcript) -> None:
    """Both chapter lists must fit the transcript (ValueError otherwise): a boundary past the end
    would become a training target the model can never produce."""
    n = len(transcript.segments)
    for name, chapters in (("predicted", event.predicted), ("corrected", event.corrected)):
        if chapters is not None:
            try:
                check_chapters(chapters, n)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def _transcript_of(pred: dict[str, Any], event: FeedbackEvent) -> tuple[Transcript | None, str | None]:
    pid = pred["prediction_id"]
    if pred["transcript"] is None:
        return None, f"prediction {pid} has no stored transcript"
    if pred["transcript_id"] != event.transcript_id:
        return (
            None,
            f"prediction {pid} is for transcript {pred['transcript_id']!r}, not {event.transcript_id!r}",
        )
    if isinstance(pred["transcript"], InvalidJSON):
        return None, f"prediction {pid}: stored transcript is not valid JSON"
    try:
        return Transcript.model_validate(pred["transcript"]), None
    except ValidationError as exc:
        return None, f"prediction {pid}: stored transcript is invalid ({_reason(exc)})"


def _prediction_dict(row: PredictionRow) -> dict[str, Any]:
    return {
        "prediction_id": row.prediction_id,
        "transcript_id": row.transcript_id,
        "model_version": row.model_version,
        "chapters": row.chapters,
        "transcript": row.transcript,
        "created_at": row.created_at,
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the service write while the nightly flow reads the same file."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint, not per commit
    finally:
        cur.close()
