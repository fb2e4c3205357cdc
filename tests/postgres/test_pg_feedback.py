"""The feedback store on a real PostgreSQL: round trip, the nightly watermark, many writers at once."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from factories import make_transcript
from sqlalchemy import create_engine, event, text

from chaptering import migrations
from chaptering.config import Settings
from chaptering.feedback import FeedbackStore, IdempotencyConflict, InvalidFeedback, UnknownPrediction
from chaptering.ingest import FEEDBACK_KEY, Watermarks, ingest_feedback
from chaptering.schema import Chapter, FeedbackEvent

pytestmark = pytest.mark.postgres


def chapters(*starts: int) -> list[Chapter]:
    return [Chapter(title=f"Part {i}", start_segment=s) for i, s in enumerate(starts)]


def edit(pid: str | None, tid: str = "t1", user: str = "u1") -> FeedbackEvent:
    return FeedbackEvent(transcript_id=tid, model_version="3", predicted=chapters(0, 10),
                         corrected=chapters(0, 12, 20), prediction_id=pid, user_id=user)


@pytest.fixture
def store(pg_url: str, tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state", feedback_url=pg_url)
    s = FeedbackStore(settings.feedback_db)
    yield s
    s.close()


def test_round_trip_and_refusals(store: FeedbackStore) -> None:
    t = make_transcript()
    pid = store.record_prediction(t, chapters(0, 10), "3")
    pred = store.get_prediction(pid)
    assert pred["transcript_id"] == "t1" and pred["created_at"].tzinfo is not None
    first = store.add(edit(pid))
    [(row_id, back, raw)] = list(store.events_after(0))
    assert row_id == first and back == edit(pid).model_copy(update={"timestamp": back.timestamp})
    assert raw["created_at"].tzinfo is not None and store.transcript_for(back) == t
    with pytest.raises(UnknownPrediction):
        store.add(edit("0" * 32))
    with pytest.raises(InvalidFeedback, match="is for transcript"):
        store.add(edit(pid, tid="other"))
    assert store.add_once(edit(pid), "k") == (first + 1, False)
    assert store.add_once(edit(pid), "k") == (first + 1, True)
    with pytest.raises(IdempotencyConflict):
        store.add_once(edit(pid, user="someone-else"), "k")
    assert store.count() == 2
    with store.engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        assert migrations.current(conn) == migrations.head()


def test_nightly_watermark_reads_only_what_is_new(store: FeedbackStore, tmp_path: Path) -> None:
    """The nightly ingest (chaptering.ingest) on Postgres: a night reads what came since the last
    committed night; an uncommitted night (a failed run) changes nothing."""
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    ids = [store.add(edit(pid)) for _ in range(3)]
    marks_path = tmp_path / "watermarks.json"

    def night() -> tuple[list[int], Watermarks]:
        marks, rejected = Watermarks(marks_path), []
        rows = [t.meta["feedback_row"] for _, t in ingest_feedback(store, marks, rejected)]
        assert rejected == []
        return rows, marks

    rows, marks = night()
    assert rows == ids
    marks.commit()
    assert Watermarks(marks_path).get(FEEDBACK_KEY)["last_id"] == ids[-1]
    more = [store.add(edit(pid)) for _ in range(2)]
    rows, _failed_night = night()  # not committed
    assert rows == more
    rows, marks = night()
    assert rows == more
    marks.commit()
    assert night()[0] == []


def test_an_id_never_becomes_visible_before_a_smaller_one(store: FeedbackStore) -> None:
    """On Postgres a sequence hands out ids at insert time and transactions may commit out of order: a
    reader that saw id n+1 committed before id n would move its watermark past n and never ingest it.
    Writer A is held between its INSERT and its COMMIT; writer B must wait instead of committing a
    larger id in the meantime, and the watermark reader then misses nothing."""
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    inserted, release = threading.Event(), threading.Event()

    def hold_slow_writer(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "slow" and statement.startswith("INSERT INTO feedback_events"):
            inserted.set()
            release.wait(30)

    event.listen(store.engine, "after_cursor_execute", hold_slow_writer)
    got: dict[str, int] = {}

    def write(name: str) -> None:
        got[name] = store.add(edit(pid, user=name))

    slow = threading.Thread(target=write, args=("slow",), name="slow")
    fast = threading.Thread(target=write, args=("fast",), name="fast")
    slow.start()
    assert inserted.wait(30), "the slow writer never reached its INSERT"
    fast.start()
    fast.join(timeout=3)
    fast_waited = fast.is_alive()
    seen_first = [i for i, _, _ in store.events_after(0)]  # a nightly run in the middle of it
    watermark = max(seen_first, default=0)
    release.set()
    slow.join(timeout=30)
    fast.join(timeout=30)
    seen_later = [i for i, _, _ in store.events_after(watermark)]
    assert sorted(seen_first + seen_later) == sorted(got.values()), (seen_first, seen_later, got)
    assert got["slow"] < got["fast"] and fast_waited


# --- many clients at once ------------------------------------------------------------------------

PROCESSES, THREADS, EVENTS, SHARED_EVERY = 4, 2, 50, 5


def _shared(j: int) -> FeedbackEvent:
    """The same user action sent by every writer (a retry storm): no prediction id, so it links to
    the latest prediction of transcript "shared" whichever writer stores it."""
    return edit(None, tid="shared", user=f"shared-{j}")


def _writer_process(url: str, proc: int, start: Any, out: Any) -> None:
    """One client process: opens the (fresh) store itself, then runs THREADS writer threads."""
    try:
        start.wait(60)
        store = FeedbackStore(url)
        store.record_prediction(make_transcript(tid="shared"), chapters(0, 10), "3")
        results: list[tuple[str, int, bool]] = []
        errors: list[str] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            try:
                write(w)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                errors.append(f"writer {w}: {type(exc).__name__}: {exc}")

        def write(w: int) -> None:
            pid = store.record_prediction(make_transcript(tid=f"t{w}"), chapters(0, 10), "3")
            mine = []
            for i in range(EVENTS):
                key, ev = f"w{w}-e{i}", edit(pid, tid=f"t{w}", user=f"w{w}")
                first = store.add_once(ev, key)
                again = store.add_once(ev, key)  # the client retried after a lost acknowledgement
                assert again == (first[0], True) and not first[1], (key, first, again)
                mine.append((key, *first))
                if i % SHARED_EVERY == 0:
                    j = i // SHARED_EVERY
                    mine.append((f"shared-{j}", *store.add_once(_shared(j), f"shared-{j}")))
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=writer, args=(proc * THREADS + k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.close()
        out.put((proc, results, "; ".join(errors) or None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put((proc, [], f"{type(exc).__name__}: {exc}"))


def test_many_writers_at_once_lose_nothing(pg_url: str) -> None:
    """4 processes x 2 threads = 8 writers x 50 events (each sent twice under its idempotency key) plus
    10 actions every writer sends, on a store none of them has opened yet (they race its migration).
    Meanwhile a nightly reader follows the watermark. Nothing lost, no id twice, keys honoured."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(pg_url, p, start, out)) for p in range(PROCESSES)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    reader, plain = FeedbackStore(pg_url), create_engine(pg_url)
    seen: list[int] = []

    def migrated() -> bool:  # the reader must not open the store first: the writers race its migration
        with plain.connect() as conn:
            return migrations.current(conn) == migrations.head()

    results: list[tuple[str, int, bool]] = []
    errors = []
    done = 0
    while done < PROCESSES:
        watermark = max(seen, default=0)
        if time.monotonic() - t0 > 300:
            pytest.fail("writers did not finish in 300 s")
        if seen or migrated():
            seen += [i for i, _, _ in reader.events_after(watermark)]
        while not out.empty():
            _proc, rows, err = out.get()
            results += rows
            errors += [err] if err else []
            done += 1
        time.sleep(0.05)
    for p in procs:
        p.join(timeout=60)
    assert errors == [] and all(p.exitcode == 0 for p in procs)
    seen += [i for i, _, _ in reader.events_after(max(seen, default=0))]
    writers, shared = PROCESSES * THREADS, EVENTS // SHARED_EVERY

    own = [(k, i) for k, i, _ in results if not k.startswith("shared-")]
    assert len(own) == writers * EVENTS and len({i for _, i in own}) == writers * EVENTS
    by_key: dict[str, set[int]] = {}
    for k, i, _ in results:
        by_key.setdefault(k, set()).add(i)
    assert all(len(ids) == 1 for ids in by_key.values()), "one key, two events"
    stored_first = Counter(k for k, _, replayed in results if k.startswith("shared-") and not replayed)
    assert stored_first == Counter({f"shared-{j}": 1 for j in range(shared)})
    expected = {next(iter(ids)) for ids in by_key.values()}
    assert reader.count() == writers * EVENTS + shared == len(expected)
    assert sorted(seen) == sorted(expected), "the watermark reader missed or repeated events"
    with plain.connect() as conn:
        dup = conn.execute(text("SELECT idempotency_key FROM feedback_events GROUP BY idempotency_key "
                                "HAVING count(*) > 1")).fetchall()
        versions = conn.execute(text(f"SELECT count(*) FROM {migrations.VERSION_TABLE}")).scalar()
    plain.dispose()
    reader.close()
    assert dup == [] and versions == 1
