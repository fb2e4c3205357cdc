"""Incremental ingest: files and feedback since the committed watermark, bad records quarantined."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import delete, text

from chaptering.config import DataSettings, Settings
from chaptering.feedback import FeedbackStore, PredictionRow
from chaptering.ingest import IngestReport, Watermarks, ingest, ingest_feedback, ingest_files
from chaptering.io import Rejected
from chaptering.schema import Chapter, FeedbackEvent
from tests.factories import make_transcript

VTT = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHello and welcome.\n\n00:00:02.000 --> 00:00:04.000\nToday: budgets.\n"
SRT = "1\n00:00:00,000 --> 00:00:02,000\nFirst cue.\n\n2\n00:00:02,000 --> 00:00:04,500\nSecond cue.\n"


def line(tid: str) -> str:
    return make_transcript(n=12, chapters=(0, 6), tid=tid).model_dump_json(exclude={"source"}) + "\n"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text(line("j1") + '{"id": "broken", "segments": [\n' + line("j2"))
    (root / "sub" / "talk.vtt").write_text(VTT)
    (root / "sub" / "movie.srt").write_text(SRT)
    (root / "README.md").write_text("not a transcript")
    (root / ".a.jsonl.tmp.jsonl").write_text("half-written")
    return root


def run(
    inputs: Path, marks: Watermarks, source: str = "external"
) -> tuple[list, list[Rejected], IngestReport]:
    rejected: list[Rejected] = []
    report = IngestReport()
    return list(ingest_files([inputs], marks, rejected, source, report)), rejected, report


def test_reads_folder_and_quarantines_bad_line(inputs: Path, tmp_path: Path) -> None:
    got, rejected, report = run(inputs, Watermarks(tmp_path / "wm.json"), "internal")
    assert [t.id for t in got] == ["j1", "j2", "movie", "talk"]  # sorted walk: a.jsonl, sub/movie, sub/talk
    assert [len(t.segments) for t in got] == [12, 12, 2, 2]
    assert got[0].meta == {"path": str(inputs / "a.jsonl"), "location": "line 1", "ingest_source": "internal"}
    assert got[1].meta["location"] == "line 3"
    assert got[2].meta["path"] == str(inputs / "sub" / "movie.srt") and got[2].meta["location"] == "file"
    assert {t.source for t in got} == {"internal"}
    skipped = {Path(r.source).name: r.reason for r in rejected if r.reason.startswith("skipped")}
    assert set(skipped) == {"README.md", ".a.jsonl.tmp.jsonl"}  # reported, not silently passed over
    [bad] = [r for r in rejected if not r.reason.startswith("skipped")]
    assert (bad.source, bad.location) == (str(inputs / "a.jsonl"), "line 2")
    assert bad.reason.startswith("malformed JSON")
    assert (report.files_seen, report.files_new, report.transcripts, report.files_skipped) == (3, 3, 4, 2)
    assert report.rejected == {"malformed JSON": 1, "skipped": 2}


def test_committed_watermark_skips_unchanged(inputs: Path, tmp_path: Path) -> None:
    wm = tmp_path / "state" / "wm.json"
    marks = Watermarks(wm)
    run(inputs, marks)
    assert not wm.exists()  # reading moves nothing on disk
    marks.commit()
    saved = json.loads(wm.read_text())
    entry = saved["external"]["files"][str((inputs / "a.jsonl").resolve())]
    assert entry["size"] == (inputs / "a.jsonl").stat().st_size and len(entry["sha256"]) == 64

    got, rejected, report = run(inputs, Watermarks(wm))
    assert got == [] and all(r.reason.startswith("skipped") for r in rejected)
    assert (report.files_seen, report.files_new, report.files_skipped_unchanged) == (3, 0, 3)


def test_without_commit_it_rereads(inputs: Path, tmp_path: Path) -> None:
    """A run that failed downstream never committed: the next run must see the same input."""
    wm = tmp_path / "wm.json"
    first, _, _ = run(inputs, Watermarks(wm))
    again, rejected, _ = run(inputs, Watermarks(wm))
    assert [t.id for t in again] == [t.id for t in first] and len(rejected) == 3  # bad line + 2 skipped


def test_changed_file_is_reread(inputs: Path, tmp_path: Path) -> None:
    wm = tmp_path / "wm.json"
    marks = Watermarks(wm)
    run(inputs, marks)
    marks.commit()
    (inputs / "a.jsonl").write_text(line("j1") + line("j3"))
    got, rejected, report = run(inputs, Watermarks(wm))
    assert [t.id for t in got] == ["j1", "j3"] and len(rejected) == 2  # the two skipped files
    assert (report.files_new, report.files_skipped_unchanged) == (1, 2)


def test_full_reset_and_pending_across_processes(inputs: Path, tmp_path: Path) -> None:
    wm = tmp_path / "wm.json"
    marks = Watermarks(wm)
    run(inputs, marks)
    marks.save_pending(tmp_path / "run" / "pending.json")
    assert not wm.exists()
    assert Watermarks(wm).commit_pending(tmp_path / "run" / "pending.json")
    assert run(inputs, Watermarks(wm))[0] == []
    full = Watermarks(wm)
    full.reset()
    assert len(run(inputs, full)[0]) == 4
    assert not Watermarks(wm).commit_pending(tmp_path / "run" / "missing.json")


def test_missing_input_and_corrupt_watermarks_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ingest_files([tmp_path / "nope"], Watermarks(tmp_path / "wm.json"), [], "external")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Watermarks(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------- feedback


def chapters(*starts: int) -> list[Chapter]:
    return [Chapter(title=f"Part {i}", start_segment=s) for i, s in enumerate(starts)]


def insert_raw(store: FeedbackStore, pid: str | None, predicted: str, corrected: str | None = None) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback_events (transcript_id, prediction_id, model_version, predicted, corrected, "
                "rating, user_id, created_at) VALUES ('t1', :pid, '3', :p, :c, :r, 'u', '2026-11-01 00:00:00')"
            ),
            {"pid": pid, "p": predicted, "c": corrected, "r": None if corrected else "accept"},
        )


def test_feedback_quarantine(tmp_path: Path) -> None:
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    t = make_transcript()  # 30 segments
    pid = store.record_prediction(t, chapters(0, 10), "3")
    gone = store.record_prediction(t, chapters(0, 10), "3")
    ok = FeedbackEvent(
        transcript_id="t1",
        model_version="3",
        predicted=chapters(0, 10),
        corrected=chapters(0, 12),
        prediction_id=pid,
    )
    assert store.add(ok) == 1
    # 2: chapters out of order, written by some other tool
    insert_raw(
        store,
        pid,
        json.dumps(
            [
                {"title": "a", "start_segment": 0},
                {"title": "b", "start_segment": 9},
                {"title": "c", "start_segment": 4},
            ]
        ),
    )
    # 3: its prediction was deleted later (retention)
    store.add(
        FeedbackEvent(
            transcript_id="t1",
            model_version="3",
            predicted=chapters(0, 10),
            rating="accept",
            prediction_id=gone,
        )
    )
    with store.engine.begin() as conn:
        conn.execute(delete(PredictionRow).where(PredictionRow.prediction_id == gone))
    # 4: a boundary past the end of the transcript
    insert_raw(
        store,
        pid,
        json.dumps([c.model_dump() for c in chapters(0, 10)]),
        json.dumps([c.model_dump() for c in chapters(0, 31)]),
    )
    # 5: no prediction at all
    insert_raw(store, None, json.dumps([c.model_dump() for c in chapters(0, 10)]))

    wm = tmp_path / "wm.json"
    marks = Watermarks(wm)
    rejected: list[Rejected] = []
    report = IngestReport()
    got = list(ingest_feedback(store, marks, rejected, report))
    assert [(e, tr.model_copy(update={"meta": {}})) for e, tr in got] == [(ok, t)]
    assert got[0][1].meta == {"ingest_source": "feedback", "feedback_row": 1}
    assert {r.source for r in rejected} == {"feedback_events"}
    by_row = {r.location: r.reason for r in rejected}
    assert set(by_row) == {"row 2", "row 3", "row 4", "row 5"}
    assert by_row["row 2"].startswith("invalid row:") and "not strictly increasing" in by_row["row 2"]
    assert by_row["row 3"] == f"unknown transcript: prediction {gone} not found"
    assert by_row["row 4"].startswith("chapters out of range: corrected:")
    assert by_row["row 5"] == "unknown transcript: no linked prediction"
    assert report.feedback_events == 1
    assert report.rejected == {"invalid row": 1, "unknown transcript": 2, "chapters out of range": 1}
    assert marks.state["feedback"] == {"last_id": 5}

    assert len(list(ingest_feedback(store, Watermarks(wm), []))) == 1  # not committed: read again
    marks.commit()
    store.add(ok)
    later = list(ingest_feedback(store, Watermarks(wm), rejected := []))
    assert [e for e, _ in later] == [ok] and rejected == []
    store.close()


def test_top_level_ingest(inputs: Path, tmp_path: Path) -> None:
    internal = tmp_path / "internal"
    internal.mkdir()
    (internal / "export.jsonl").write_text(line("app-1"))
    settings = Settings(
        state_dir=tmp_path / "state", data=DataSettings(inputs=[inputs], internal_dir=internal)
    )
    store = FeedbackStore(settings.feedback_db)
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    store.add(
        FeedbackEvent(
            transcript_id="t1",
            model_version="3",
            predicted=chapters(0, 10),
            rating="accept",
            prediction_id=pid,
        )
    )
    store.close()

    rejected: list[Rejected] = []
    transcripts, feedback, report, marks = ingest(settings, rejected)
    got = list(transcripts)
    assert [(t.id, t.meta["ingest_source"]) for t in got][-1] == ("app-1", "internal")
    assert len(got) == 5 and len(feedback) == 1 and len(rejected) == 3  # bad line, README.md, hidden file
    assert (report.files_seen, report.transcripts, report.feedback_events) == (4, 5, 1)
    marks.commit()
    assert (settings.state_dir / "watermarks.json").exists()

    transcripts, feedback, report, _ = ingest(settings, [])
    assert list(transcripts) == [] and feedback == [] and report.files_skipped_unchanged == 4
    transcripts, feedback, _, _ = ingest(settings, [], full=True)
    assert len(list(transcripts)) == 5 and len(feedback) == 1


# ------------------------------------------------------------------------------------ poison pills (issue 20)


def test_every_skipped_file_is_reported_and_json_is_read(tmp_path: Path) -> None:
    """Issue 20 #8: .json was skipped silently (though uploads read it); .txt, .gz, hidden files were
    passed over with no quarantine line."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "one.json").write_text(make_transcript(n=12, chapters=(0, 6), tid="from-json").model_dump_json())
    (root / "notes.txt").write_text("hello")
    (root / "dump.jsonl.gz").write_bytes(b"\x1f\x8b")
    (root / ".hidden.jsonl").write_text(line("h1"))
    (root / ".git").mkdir()
    (root / ".git" / "x.jsonl").write_text(line("g1"))
    got, rejected, report = run(root, Watermarks(tmp_path / "wm.json"))
    assert [t.id for t in got] == ["from-json"]
    reasons = {Path(r.source).name: r.reason for r in rejected}
    assert set(reasons) == {"notes.txt", "dump.jsonl.gz", ".hidden.jsonl", ".git"}
    assert all(r.location == "file" and r.reason.startswith("skipped: ") for r in rejected)
    assert "unsupported file type '.txt'" in reasons["notes.txt"]
    assert "compressed" in reasons["dump.jsonl.gz"] and "hidden" in reasons[".git"]
    assert report.files_skipped == 4


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    """Issue 20 #8: a symlink to a system file was read; now only links inside the folder are."""
    root = tmp_path / "in"
    root.mkdir()
    outside = tmp_path / "secret.jsonl"
    outside.write_text(line("secret"))
    (root / "real.jsonl").write_text(line("real"))
    (root / "leak.jsonl").symlink_to(outside)
    (root / "passwd.jsonl").symlink_to("/etc/passwd")
    (root / "alias.jsonl").symlink_to(root / "real.jsonl")  # inside: the same file, read once
    (root / "gone.jsonl").symlink_to(tmp_path / "missing.jsonl")
    (root / "loop").symlink_to(root)  # a folder link back to the root: walked once, no endless walk
    got, rejected, _ = run(root, Watermarks(tmp_path / "wm.json"))
    assert [t.id for t in got] == ["real"]
    reasons = {Path(r.source).name: r.reason for r in rejected}
    assert "outside the input folder" in reasons["leak.jsonl"] and "outside" in reasons["passwd.jsonl"]
    assert reasons["gone.jsonl"] == "skipped: broken symlink"
    (root / "passwd.jsonl").unlink()
    rejected = []
    got = list(ingest_files([root], Watermarks(tmp_path / "wm2.json"), rejected, "external", follow_symlinks=True))
    assert sorted(t.id for t in got) == ["real", "secret"]  # told to follow: it does


def test_fifo_is_refused_not_read(tmp_path: Path) -> None:
    """A FIFO in a drop folder would block the nightly's read for ever."""
    root = tmp_path / "in"
    root.mkdir()
    os.mkfifo(root / "pipe.jsonl")
    got, rejected, _ = run(root, Watermarks(tmp_path / "wm.json"))
    assert got == [] and "not a regular file" in rejected[0].reason


def test_non_utf8_file_name_is_quarantined(tmp_path: Path) -> None:
    """Issue 20 #2: `open(b'in/bad\\xffname.jsonl')` stopped `chaptering data build` (exit 1)."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.jsonl").write_text(line("good"))
    with open(os.fsencode(root) + b"/bad\xffname.jsonl", "w") as f:
        f.write(line("bad-name"))
    got, rejected, _ = run(root, Watermarks(tmp_path / "wm.json"))
    assert [t.id for t in got] == ["good"]
    [bad] = rejected
    assert bad.to_dict()["source"].endswith("bad\\xffname.jsonl")  # printable, names the file
    assert "file name contains a lone surrogate" in bad.reason
    json.dumps(bad.to_dict(), ensure_ascii=False).encode("utf-8")  # the quarantine line can be written


def test_lone_surrogate_in_a_jsonl_title_is_quarantined(tmp_path: Path) -> None:
    """Issue 20 #2: a title `"x \\ud800"` in a transcript file crashed the first JSON write."""
    root = tmp_path / "in"
    root.mkdir()
    poisoned = json.loads(line("poisoned"))
    poisoned["chapters"][1]["title"] = "x \ud800"
    (root / "a.jsonl").write_text(line("ok-1") + json.dumps(poisoned) + "\n" + line("ok-2"))
    got, rejected, _ = run(root, Watermarks(tmp_path / "wm.json"))
    assert [t.id for t in got] == ["ok-1", "ok-2"]
    [bad] = rejected
    assert bad.location == "line 2" and "chapters.1.title" in bad.reason and "lone surrogate" in bad.reason


def test_feedback_row_with_lone_surrogate_is_quarantined_and_passed(tmp_path: Path) -> None:
    """Issue 20 #1: a surrogate title stored by /v1/feedback made every later nightly crash at ingest."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    pid = store.record_prediction(make_transcript(), chapters(0, 10), "3")
    insert_raw(store, pid, json.dumps([{"title": "x \ud800", "start_segment": 0}]))
    good = FeedbackEvent(transcript_id="t1", model_version="3", predicted=chapters(0, 10), rating="accept",
                         prediction_id=pid)
    store.add(good)
    marks = Watermarks(tmp_path / "wm.json")
    rejected: list[Rejected] = []
    got = list(ingest_feedback(store, marks, rejected))
    assert [e for e, _ in got] == [good]
    [bad] = rejected
    assert (bad.location, bad.reason.split(":")[0]) == ("row 1", "invalid row") and "lone surrogate" in bad.reason
    assert marks.state["feedback"] == {"last_id": 2}  # past the poisoned row
    store.close()


def test_curate_location_tells_two_records_with_one_id_apart(tmp_path: Path) -> None:
    """Issue 20 #8: curation named only "id X", ambiguous when one file holds two records with that id."""
    from chaptering.config import DataSettings
    from chaptering.curate import curate

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_text(line("twin") + line("twin"))
    got, _, _ = run(root, Watermarks(tmp_path / "wm.json"))
    rejected: list[Rejected] = []
    list(curate(got, settings=DataSettings(min_words=1, languages=[]), guard=None, rejected=rejected))
    [dup] = rejected
    assert dup.location == "line 2, id twin" and dup.source == str(root / "a.jsonl")
