"""The feedback store on a SQLite file: round trips, validation, watermark reads, migrations."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, inspect, text

from chaptering import migrations
from chaptering.feedback import (
    Base,
    FeedbackRow,
    FeedbackStore,
    IdempotencyConflict,
    InvalidFeedback,
    PredictionRow,
    UnknownPrediction,
    parse_row,
)
from chaptering.schema import Chapter, FeedbackEvent
from tests.factories import make_transcript


def chapters(*starts: int) -> list[Chapter]:
    return [Chapter(title=f"Part {i}", start_segment=s) for i, s in enumerate(starts)]


def edit(pid: str | None, tid: str = "t1", **kw) -> FeedbackEvent:
    return FeedbackEvent(
        transcript_id=tid,
        model_version="3",
        predicted=chapters(0, 10),
        corrected=chapters(0, 12, 20),
        prediction_id=pid,
        user_id="u1",
        **kw,
    )


@pytest.fixture
def store(tmp_path: Path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'nested' / 'feedback.db'}")
    yield s
    s.close()


def test_round_trip(store: FeedbackStore, tmp_path: Path) -> None:
    t = make_transcript()
    pid = store.record_prediction(t, chapters(0, 10), "3")
    pred = store.get_prediction(pid)
    assert pred["transcript_id"] == "t1" and pred["model_version"] == "3"
    assert pred["chapters"] == [
        {"title": "Part 0", "start_segment": 0},
        {"title": "Part 1", "start_segment": 10},
    ]
    assert pred["created_at"].tzinfo is not None
    assert store.get_prediction("nope") is None

    when = datetime(2026, 11, 2, 3, 4, 5, 678000, tzinfo=UTC)
    ev = edit(pid, timestamp=when)
    assert store.add(ev) == 1
    assert store.count() == 1
    [(row_id, back, raw)] = list(store.events_after(0))
    assert row_id == 1 and back == ev
    assert raw["created_at"] == when and raw["created_at"].tzinfo is not None
    assert store.transcript_for(back) == t
    assert (tmp_path / "nested" / "feedback.db").exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_rating_and_reopen_keep_sequence(store: FeedbackStore) -> None:
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    rating = FeedbackEvent(
        transcript_id="t1", model_version="3", predicted=chapters(0, 10), rating="reject", prediction_id=pid
    )
    assert store.add(rating) == 1
    again = FeedbackStore(store.url)
    try:
        assert again.add(rating) == 2
        [(_, back, _)] = list(again.events_after(1))
        assert back.rating == "reject" and back.corrected is None
    finally:
        again.close()


def test_unknown_prediction_raises(store: FeedbackStore) -> None:
    with pytest.raises(UnknownPrediction):
        store.add(edit("0" * 32))
    assert store.count() == 0


def test_feedback_must_fit_its_prediction(store: FeedbackStore) -> None:
    pid = store.record_prediction(make_transcript(n=15, chapters=(0, 10)), chapters(0, 10), "3")
    with pytest.raises(InvalidFeedback, match="out of range"):
        store.add(edit(pid))  # corrected chapter at segment 20 of 15
    with pytest.raises(InvalidFeedback, match="is for transcript"):
        store.add(edit(pid, tid="other"))
    assert store.count() == 0


def test_event_without_prediction_id_is_linked(store: FeedbackStore) -> None:
    """The DESIGN contract carries no prediction id: link by transcript id + model version."""
    t = make_transcript()
    store.record_prediction(make_transcript(tid="t1", n=12, chapters=(0,)), chapters(0), "2")  # other version
    pid = store.record_prediction(t, chapters(0, 10), "3")
    store.add(edit(None))
    [(_, linked, _)] = list(store.events_after(0))
    assert linked.prediction_id == pid and store.transcript_for(linked) == t


def test_feedback_citing_no_served_prediction_is_refused(store: FeedbackStore) -> None:
    """Issue 20 #5: feedback on nothing the service made is not stored (it was, unlinked, before)."""
    store.record_prediction(make_transcript(), chapters(0, 10), "3")
    with pytest.raises(UnknownPrediction, match="must cite a prediction"):
        store.add(edit(None, tid="never-served"))
    with pytest.raises(UnknownPrediction, match="must cite a prediction"):
        store.add(edit(None).model_copy(update={"model_version": "9"}))
    assert store.count() == 0


def test_idempotency_key_stores_an_event_once(store: FeedbackStore) -> None:
    """Issue 20 #6: a retry after a lost acknowledgement returns the first event, no second row."""
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    assert store.add_once(edit(pid), "key-1") == (1, False)
    assert store.add_once(edit(pid), "key-1") == (1, True)
    assert store.add(edit(pid), "key-2") == 2
    with pytest.raises(IdempotencyConflict, match="key-1"):
        store.add_once(edit(pid).model_copy(update={"user_id": "someone-else"}), "key-1")
    assert store.count() == 2
    with store.engine.connect() as conn:  # the database itself refuses a duplicate key
        indexes = conn.exec_driver_sql("PRAGMA index_list('feedback_events')").fetchall()
    assert any(row[2] for row in indexes), indexes  # a unique index exists


def _legacy_store(url: str, with_key: bool) -> None:
    """A store as the code before migrations left it: create_all, no version table; before the
    idempotency key existed, without that column either. One prediction and one event in it."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        if not with_key:
            conn.exec_driver_sql("DROP INDEX ix_feedback_events_idempotency_key")
            conn.exec_driver_sql("ALTER TABLE feedback_events DROP COLUMN idempotency_key")
        conn.execute(text(
            "INSERT INTO predictions (prediction_id, transcript_id, model_version, chapters, transcript, created_at) "
            "VALUES ('p1', 't1', '3', '[]', :t, '2026-11-01 00:00:00')"), {"t": make_transcript().model_dump_json()})
        conn.execute(text(
            "INSERT INTO feedback_events (transcript_id, prediction_id, model_version, predicted, corrected, rating, "
            "user_id, created_at) VALUES ('t1', 'p1', '3', :p, NULL, 'accept', 'u', '2026-11-01 00:00:00')"),
            {"p": json.dumps([c.model_dump() for c in chapters(0, 10)])})
    engine.dispose()


@pytest.mark.parametrize("with_key", [False, True], ids=["before-idempotency-key", "with-idempotency-key"])
def test_a_store_from_before_migrations_is_adopted(tmp_path: Path, with_key: bool) -> None:
    """A store made by create_all (no version table) is stamped with the revision its columns match and
    upgraded: rows kept, ids continue, the idempotency column exists, schema equals the models'."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _legacy_store(url, with_key)
    new = FeedbackStore(url)
    try:
        [(row_id, old_event, _)] = list(new.events_after(0))
        assert row_id == 1 and old_event is not None and old_event.prediction_id == "p1"
        assert new.get_prediction("p1")["transcript_id"] == "t1"
        pid = new.record_prediction(make_transcript(), chapters(0, 10), "3")
        assert new.add_once(edit(pid), "k") == (2, False) and new.add_once(edit(pid), "k") == (2, True)
        with new.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
        assert migrations.diff(new.engine) == []
    finally:
        new.close()


def test_a_half_store_is_not_adopted(tmp_path: Path) -> None:
    """Tables of ours without their partner and without a version table: refuse, naming the database."""
    url = f"sqlite:///{tmp_path / 'half.db'}"
    engine = create_engine(url)
    PredictionRow.__table__.create(engine)
    engine.dispose()
    store = FeedbackStore(url)
    try:
        with pytest.raises(migrations.MigrationError, match=r"half\.db.*feedback_events.*refusing"):
            store.count()
    finally:
        store.close()


def test_models_and_migrations_agree(store: FeedbackStore) -> None:
    """`alembic check` on SQLite: a model change without its migration fails here."""
    store.count()
    assert migrations.diff(store.engine) == []
    with store.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert tables == {"predictions", "feedback_events", migrations.VERSION_TABLE}


def test_stores_opened_at_once_migrate_once(tmp_path: Path) -> None:
    """The service and the nightly flow opening one fresh store together: one creates the tables, the
    other waits on the migration lock and finds them (no "table already exists")."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    stores = [FeedbackStore(url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def open_store(s: FeedbackStore) -> None:
        start.wait()
        try:
            s.count()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert errors == []
    with create_engine(url).connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {migrations.VERSION_TABLE}").scalar() == 1


def test_stored_transcripts_are_scrubbed_and_expire(store: FeedbackStore) -> None:
    """Issue 20 #5: what /v1/chapters stores goes through curation's PII rules and a retention period."""
    t = make_transcript()
    t.segments[3] = t.segments[3].model_copy(update={"text": "mail me at jane.doe@example.com or 555-123-4567"})
    pid = store.record_prediction(t, chapters(0, 10), "3")
    stored = store.get_prediction(pid)["transcript"]["segments"][3]["text"]
    assert "jane.doe" not in stored and "<EMAIL>" in stored and "<PHONE>" in stored
    assert store.purge_transcripts(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert store.purge_transcripts(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert store.get_prediction(pid)["transcript"] is None
    with pytest.raises(InvalidFeedback, match="retention"):
        store.add(edit(pid))


def test_lone_surrogate_row_is_yielded_as_invalid(store: FeedbackStore) -> None:
    """Issue 20 #1: a row another writer stored with a lone surrogate parses as invalid, not as an event
    whose first JSON write would crash the nightly."""
    store.count()
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback_events (transcript_id, model_version, predicted, corrected, rating, user_id, "
                "created_at) VALUES ('t1', '3', :p, NULL, 'accept', 'u', '2026-11-01 00:00:00')"
            ),
            {"p": '[{"title": "x \\ud800", "start_segment": 0}]'},
        )
    [(_, event, raw)] = list(store.events_after(0))
    assert event is None
    assert "lone surrogate" in parse_row(raw)[1]


def test_unreadable_row_does_not_hide_the_rows_after_it(store: FeedbackStore) -> None:
    """A timestamp another writer stored as junk makes the row unfetchable: it comes back as unreadable
    and the rows after it still come."""
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    store.add(edit(pid))
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback_events (transcript_id, model_version, predicted, corrected, rating, user_id, "
                "created_at) VALUES ('t1', '3', '[]', NULL, 'accept', 'u', 'not a time')"
            )
        )
    store.add(edit(pid))
    rows = list(store.events_after(0))
    assert [i for i, _, _ in rows] == [1, 2, 3]
    assert rows[0][1] is not None and rows[2][1] is not None and rows[1][1] is None
    assert parse_row(rows[1][2])[1].startswith("stored row cannot be read")


def test_feedback_size_bounds() -> None:
    """Issue 20 #5: a 4 MB feedback row was accepted; titles and chapter lists are bounded now."""
    with pytest.raises(ValueError, match="title longer than"):
        FeedbackEvent(transcript_id="t1", model_version="3", predicted=[Chapter(title="x" * 10_000, start_segment=0)],
                      rating="accept")
    with pytest.raises(ValueError, match="at most"):
        FeedbackEvent(transcript_id="t1", model_version="3", rating="accept",
                      predicted=[Chapter(title="x", start_segment=i) for i in range(501)])


def test_events_after_respects_watermark_and_limit(store: FeedbackStore) -> None:
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    for _ in range(4):
        store.add(edit(pid))
    assert [i for i, _, _ in store.events_after(0)] == [1, 2, 3, 4]
    assert [i for i, _, _ in store.events_after(2)] == [3, 4]
    assert [i for i, _, _ in store.events_after(1, limit=2)] == [2, 3]
    assert list(store.events_after(4)) == []


def test_deleted_last_id_is_not_reused(store: FeedbackStore) -> None:
    """A reused id at or below a committed watermark would never be ingested."""
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    store.add(edit(pid))
    store.add(edit(pid))
    with store.engine.begin() as conn:
        conn.execute(delete(FeedbackRow).where(FeedbackRow.id == 2))
    assert store.add(edit(pid)) == 3


def test_unparseable_row_is_yielded_as_none(store: FeedbackStore) -> None:
    store.count()  # creates the tables
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback_events (transcript_id, model_version, predicted, corrected, rating, user_id, "
                "created_at) VALUES ('t1', '3', 'not json', NULL, 'accept', 'u', '2026-11-01 00:00:00')"
            )
        )
    [(row_id, event, raw)] = list(store.events_after(0))
    assert row_id == 1 and event is None and raw["predicted"] == "not json"
