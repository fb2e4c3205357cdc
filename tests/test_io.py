"""chaptering.io: every bad input is refused with its file, location and reason; good data round-trips."""

from __future__ import annotations

import itertools
import json
import pickle
from pathlib import Path

import pytest
import webvtt

from chaptering.captions import chapters_vtt, chapters_youtube, write_srt, write_vtt
from chaptering.io import (
    InputError,
    Rejected,
    iter_jsonl,
    iter_transcripts,
    read_transcripts,
    transcript_from_upload,
    write_jsonl,
)
from chaptering.schema import PredictedChapter, Prediction, Segment, Transcript

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")


def record(**over: object) -> dict:
    """A valid transcript record; tests break one thing at a time."""
    rec: dict = {
        "id": "t1",
        "source": "external",
        "language": "en",
        "segments": [
            {"text": "Hello there.", "speaker": "A", "start": 0.0, "end": 1.5},
            {"text": "Budget time.", "speaker": "B", "start": 1.5, "end": 3.0},
        ],
        "chapters": [{"title": "Opening", "start_segment": 0}, {"title": "Budget", "start_segment": 1}],
    }
    rec.update(over)
    return rec


def jsonl(tmp_path: Path, *lines: str | dict, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), "utf-8")
    return path


def strict_error(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        read_transcripts(path)
    return info.value


# ------------------------------------------------------------------------------------------------ JSONL


def test_malformed_json_line_names_file_line_and_json_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path, record(), '{"id": "x", ')
    err = strict_error(path)
    assert (err.path, err.location) == (str(path), "line 2")
    assert err.reason.startswith("malformed JSON: Expecting property name enclosed in double quotes")
    assert str(err).startswith(f"{path}:line 2: malformed JSON: ")


def test_missing_field_is_named(tmp_path: Path) -> None:
    rec = record()
    del rec["segments"]
    err = strict_error(jsonl(tmp_path, rec))
    assert (err.location, err.reason) == ("line 1", "missing field 'segments'")


def test_validation_error_is_short_field_path_and_message(tmp_path: Path) -> None:
    bad_type = record(segments=[{"text": "hi", "start": "soon"}])
    negative = record(segments=[{"text": "hi", "start": -1.0}], chapters=None)
    assert strict_error(jsonl(tmp_path, bad_type)).reason.startswith(
        "segments.0.start: Input should be a valid number"
    )
    assert "(got 'soon')" in strict_error(jsonl(tmp_path, bad_type)).reason
    assert strict_error(jsonl(tmp_path, negative)).reason == "segments.0: segment start -1.0 is negative"
    assert strict_error(jsonl(tmp_path, record(id=""))).reason.startswith("id: String should have at least 1")


def test_chapter_out_of_range_and_unordered(tmp_path: Path) -> None:
    out_of_range = record(chapters=[{"title": "A", "start_segment": 0}, {"title": "B", "start_segment": 5}])
    unordered = record(
        chapters=[
            {"title": "A", "start_segment": 0},
            {"title": "B", "start_segment": 1},
            {"title": "C", "start_segment": 1},
        ]
    )
    err = strict_error(jsonl(tmp_path, out_of_range))
    assert err.reason == "chapter 1 ('B') starts at segment 5, out of range for 2 segments"
    assert strict_error(jsonl(tmp_path, unordered)).reason == "chapter 2 ('C') does not start after chapter 1"


def test_not_an_object_and_nan_are_refused(tmp_path: Path) -> None:
    assert strict_error(jsonl(tmp_path, "[1, 2]")).reason == "expected a JSON object, got list"
    nan = json.dumps(record()).replace('"start": 0.0', '"start": NaN')
    assert strict_error(jsonl(tmp_path, nan)).reason == "malformed JSON: NaN is not valid JSON"


def test_empty_segment_text_follows_the_schema(tmp_path: Path) -> None:
    """schema.Segment allows empty text (QMSum has empty turns): io passes it on for curation."""
    rec = record(segments=[{"text": ""}, {"text": "hi"}], chapters=None)
    assert read_transcripts(jsonl(tmp_path, rec))[0].segments[0].text == ""


def test_wrong_encoding_gives_byte_and_file_offset(tmp_path: Path) -> None:
    first = (json.dumps(record()) + "\n").encode()
    second = json.dumps(record(id="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9") + b"\n"
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(first + second)
    err = strict_error(path)
    offset = len(first) + second.index(b"\xe9")
    assert str(err) == f"{path}:line 2: not valid UTF-8 (byte 0xe9 at offset {offset})"


def test_blank_lines_bom_and_crlf_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    body = f"{json.dumps(record())}\r\n\r\n   \n{json.dumps(record(id='t2'))}\r\n\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [t.id for t in read_transcripts(path)] == ["t1", "t2"]


def test_collect_mode_keeps_good_lines_and_quarantines_bad_ones(tmp_path: Path) -> None:
    no_segments = record(id="t3")
    del no_segments["segments"]
    path = jsonl(
        tmp_path,
        record(),
        "not json",
        "",
        no_segments,
        record(id="t4"),
        record(id="t5", chapters=[{"title": "X", "start_segment": 1}]),
    )
    rejected: list[Rejected] = []
    assert [t.id for t in read_transcripts(path, rejected)] == ["t1", "t4"]
    assert [(r.source, r.location) for r in rejected] == [(str(path), f"line {n}") for n in (2, 4, 6)]
    assert rejected[1].to_dict() == {
        "source": str(path),
        "location": "line 4",
        "reason": "missing field 'segments'",
    }
    assert rejected[2].reason == "first chapter starts at segment 1, not 0"


def test_source_argument_is_a_default_for_jsonl(tmp_path: Path) -> None:
    rec = record(id="no-source")
    del rec["source"]
    ts = read_transcripts(jsonl(tmp_path, rec, record()), source="internal")
    assert [t.source for t in ts] == ["internal", "external"]


def test_iter_jsonl_reads_other_models(tmp_path: Path) -> None:
    good = {"id": "t1", "chapters": [{"title": "A", "start_segment": 0}], "model": "baseline:equal"}
    bad = {**good, "chapters": [{"title": "A", "start_segment": 2}]}
    rejected: list[Rejected] = []
    preds = list(iter_jsonl(jsonl(tmp_path, good, bad), Prediction, rejected))
    assert [p.model for p in preds] == ["baseline:equal"]
    assert (rejected[0].location, rejected[0].reason) == (
        "line 2",
        "first predicted chapter must start at segment 0",
    )


def test_write_jsonl_round_trip_atomic_and_creates_dirs(tmp_path: Path) -> None:
    ts = [Transcript.model_validate(record()), Transcript.model_validate(record(id="t\u00e9"))]
    path = tmp_path / "deep" / "er" / "out.jsonl"
    assert write_jsonl(path, ts) == 2
    assert read_transcripts(path) == ts
    assert write_jsonl(path, [{"a": 1}, {"b": "\u00e9"}]) == 2  # replaces the file
    assert path.read_text("utf-8") == '{"a": 1}\n{"b": "\u00e9"}\n'
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temporary left behind


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert (
        str(strict_error(path))
        == f"{path}:file: unsupported file type '.txt' (expected .jsonl, .json, .vtt or .srt)"
    )
    rejected: list[Rejected] = []
    assert read_transcripts(path, rejected) == [] and rejected[0].location == "file"


def test_json_file_array_locates_items(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    path.write_text(json.dumps([record(), record(id="")]))
    rejected: list[Rejected] = []
    assert [t.id for t in read_transcripts(path, rejected)] == ["t1"]
    assert rejected[0].location == "item 2"


def test_input_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(InputError("a.jsonl", "line 3", "bad")))
    assert (err.path, err.location, err.reason, str(err)) == (
        "a.jsonl",
        "line 3",
        "bad",
        "a.jsonl:line 3: bad",
    )


# ------------------------------------------------------------------------------------------------ VTT / SRT

VTT_OK = """WEBVTT
Kind: captions

NOTE a comment

1
00:00:00.000 --> 00:00:02.000 align:start
<v Alice>Hello <b>there</b>,
world &amp; co.

2
00:00:02.000 --> 00:00:04.000
Alice: not a voice tag

3
00:00:03.995 --> 00:00:05.000
tiny overlap is fine
"""


def vtt(tmp_path: Path, text: str, name: str = "talk.vtt") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def cue_file(tmp_path: Path, ext: str, cues: list[tuple[str, str, str]]) -> Path:
    """A .vtt or .srt from (start, end, text) with '.' millis; the SRT gets ','."""
    if ext == ".vtt":
        body = "WEBVTT\n\n" + "".join(f"{i}\n{s} --> {e}\n{t}\n\n" for i, (s, e, t) in enumerate(cues, 1))
    else:
        body = "".join(
            f"{i}\n{s.replace('.', ',')} --> {e.replace('.', ',')}\n{t}\n\n"
            for i, (s, e, t) in enumerate(cues, 1)
        )
    return vtt(tmp_path, body, "cues" + ext)


def test_vtt_reads_cues_voice_and_strips_tags(tmp_path: Path) -> None:
    (t,) = read_transcripts(vtt(tmp_path, VTT_OK), source="internal")
    assert (t.id, t.source, t.chapters) == ("talk", "internal", None)
    assert t.segments[0] == Segment(text="Hello there, world & co.", speaker="Alice", start=0.0, end=2.0)
    assert t.segments[1].text == "Alice: not a voice tag" and t.segments[1].speaker is None
    assert t.segments[2].start == 3.995


@pytest.mark.parametrize("ext", [".vtt", ".srt"])
def test_empty_cue(tmp_path: Path, ext: str) -> None:
    path = cue_file(
        tmp_path, ext, [("00:00:00.000", "00:00:01.000", "a"), ("00:00:01.000", "00:00:02.000", "<i></i>")]
    )
    assert str(strict_error(path)) == f"{path}:cue 2: empty cue text"


@pytest.mark.parametrize("ext", [".vtt", ".srt"])
def test_overlapping_cues(tmp_path: Path, ext: str) -> None:
    path = cue_file(
        tmp_path,
        ext,
        [
            ("00:00:00.000", "00:00:01.000", "a"),
            ("00:00:01.000", "00:00:03.000", "b"),
            ("00:00:02.500", "00:00:04.000", "c"),
        ],
    )
    assert str(strict_error(path)) == (
        f"{path}:cue 3: overlapping cues: cue 3 starts at 00:00:02.500, before cue 2 ends (00:00:03.000)"
    )


@pytest.mark.parametrize("ext", [".vtt", ".srt"])
def test_unordered_cues(tmp_path: Path, ext: str) -> None:
    path = cue_file(
        tmp_path, ext, [("00:00:05.000", "00:00:06.000", "a"), ("00:00:01.000", "00:00:02.000", "b")]
    )
    assert str(strict_error(path)) == (
        f"{path}:cue 2: unordered cues: cue 2 starts at 00:00:01.000, before cue 1 starts (00:00:05.000)"
    )


def test_cue_ending_before_it_starts(tmp_path: Path) -> None:
    path = cue_file(tmp_path, ".srt", [("00:00:05.000", "00:00:04.000", "a")])
    assert strict_error(path).reason == "cue ends (00:00:04.000) before it starts (00:00:05.000)"


def test_collect_mode_rejects_a_broken_caption_file_whole(tmp_path: Path) -> None:
    path = cue_file(
        tmp_path,
        ".vtt",
        [
            ("00:00:00.000", "00:00:01.000", "a"),
            ("00:00:01.000", "00:00:02.000", ""),
            ("00:00:00.500", "00:00:03.000", "c"),
        ],
    )
    rejected: list[Rejected] = []
    assert read_transcripts(path, rejected) == []
    assert rejected == [Rejected(source=str(path), location="cue 2", reason="empty cue text")]


def test_vtt_bad_header_and_malformed_cue(tmp_path: Path) -> None:
    no_header = vtt(tmp_path, "1\n00:00:00.000 --> 00:00:01.000\nhi\n", "a.vtt")
    assert strict_error(no_header).reason == "not a WebVTT file (the first line must start with 'WEBVTT')"
    assert strict_error(no_header).location == "file"
    bad_time = vtt(
        tmp_path, "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na\n\n00:00:61.000 --> 00:01:02.000\nb\n", "b.vtt"
    )
    err = strict_error(bad_time)
    assert (err.location, err.reason) == ("cue 2", "malformed WebVTT cue: Invalid timestamp '00:00:61.000'")
    garbage = vtt(tmp_path, "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na\n\n2\nsoon --> later\nb\n", "c.vtt")
    assert strict_error(garbage).location == "cue 2"
    rejected: list[Rejected] = []
    assert read_transcripts(no_header, rejected) == [] and rejected[0].location == "file"


def test_malformed_srt_block(tmp_path: Path) -> None:
    path = vtt(
        tmp_path, "1\n00:00:00,000 --> 00:00:01,000\na\n\n2\n00:00:0x,000 --> 00:00:03,000\nb\n", "x.srt"
    )
    err = strict_error(path)
    assert (err.location, err.reason) == (
        "cue 2",
        "malformed SRT block: '2\\n00:00:0x,000 --> 00:00:03,000\\nb'",
    )


@pytest.mark.parametrize("ext", [".vtt", ".srt"])
def test_caption_wrong_encoding_and_bom(tmp_path: Path, ext: str) -> None:
    path = cue_file(tmp_path, ext, [("00:00:00.000", "00:00:01.000", "caf\u00e9")])
    data = path.read_bytes()
    path.write_bytes(data.replace("\u00e9".encode(), b"\xe9"))
    assert (
        str(strict_error(path))
        == f"{path}:file: not valid UTF-8 (byte 0xe9 at offset {data.index(b'caf') + 3})"
    )
    path.write_bytes(b"\xef\xbb\xbf" + data)
    assert read_transcripts(path)[0].segments[0].text == "caf\u00e9"


def test_caption_file_without_cues(tmp_path: Path) -> None:
    assert str(strict_error(vtt(tmp_path, "WEBVTT\n\n"))) == f"{tmp_path / 'talk.vtt'}:file: no cues"


def test_srt_reads_tags_lines_and_voice(tmp_path: Path) -> None:
    path = vtt(
        tmp_path,
        "1\n00:00:00,000 --> 00:00:02,500\n<v Bob><i>Hi</i> there\n{\\an8}friend\n\n"
        "2\n00:00:02,500 --> 00:00:04,000\nx < y\n",
        "clip.srt",
    )
    (t,) = read_transcripts(path)
    assert [(s.text, s.speaker, s.start, s.end) for s in t.segments] == [
        ("Hi there friend", "Bob", 0.0, 2.5),
        ("x < y", None, 2.5, 4.0),
    ]


# ------------------------------------------------------------------------------------------------ round trips


def timed() -> Transcript:
    return Transcript(
        id="rt",
        segments=[
            Segment(text="Fish & chips <cheap>", speaker="Ann", start=14.263, end=18.044),
            Segment(text="Line one\nline two", start=18.044, end=22.0456),
            Segment(text="Last --> one", start=22.5, end=25.0),
        ],
    )


@pytest.mark.parametrize("writer,ext", [(write_vtt, ".vtt"), (write_srt, ".srt")])
def test_caption_round_trip_keeps_text_speaker_and_millisecond_times(
    tmp_path: Path, writer, ext: str
) -> None:
    src = timed()
    path = tmp_path / "sub" / f"rt{ext}"
    writer(path, src)
    (back,) = read_transcripts(path)
    assert [s.text for s in back.segments] == ["Fish & chips <cheap>", "Line one line two", "Last --> one"]
    assert [s.speaker for s in back.segments] == ["Ann", None, None]
    for a, b in zip(src.segments, back.segments):
        assert abs(a.start - b.start) < 5e-4 and abs(a.end - b.end) < 5e-4


def test_writers_estimate_times_for_untimed_segments(tmp_path: Path) -> None:
    words13 = " ".join(["word"] * 13)  # 13 words / 2.6 words/s = 5 s
    t = Transcript(
        id="u", segments=[Segment(text=words13), Segment(text=""), Segment(text="a b c d e f g h i j k l m")]
    )
    write_vtt(tmp_path / "u.vtt", t)
    write_srt(tmp_path / "u.srt", t)
    assert "00:00:00.000 --> 00:00:05.000" in (tmp_path / "u.vtt").read_text()
    assert "00:00:05,000 --> 00:00:10,000" in (tmp_path / "u.srt").read_text()
    back = read_transcripts(tmp_path / "u.vtt")[0]
    assert [(s.start, s.end) for s in back.segments] == [
        (0.0, 5.0),
        (5.0, 10.0),
    ]  # the empty turn is left out


def test_upload_of_each_format() -> None:
    line = json.dumps(record()).encode()
    assert transcript_from_upload("a.jsonl", b"\n" + line + b"\n{broken\n").id == "t1"
    assert transcript_from_upload("a.json", line).id == "t1"
    vtt_t = transcript_from_upload("My Talk.vtt", VTT_OK.encode())
    assert (vtt_t.id, len(vtt_t.segments)) == ("My Talk", 3)
    assert transcript_from_upload("b.srt", b"1\n00:00:00,000 --> 00:00:01,000\nhi\n").segments[0].text == "hi"
    with pytest.raises(InputError, match=r"^empty\.jsonl:file: no transcript in upload$"):
        transcript_from_upload("empty.jsonl", b"\n\n")
    with pytest.raises(InputError, match=r"^x\.docx:file: unsupported file type '\.docx'"):
        transcript_from_upload("x.docx", b"")
    with pytest.raises(InputError, match=r"^bad\.jsonl:line 1: missing field 'segments'$"):
        transcript_from_upload("bad.jsonl", b'{"id": "x"}')


# ------------------------------------------------------------------------------------------------ chapters

CHAPTERS = [
    PredictedChapter(title="Intro", start_segment=0, start=2.4),
    PredictedChapter(title="Budget\nreview", start_segment=5, start=83.9),
    PredictedChapter(title="Q & A <live>", start_segment=9, start=3725.0),
]


def test_chapters_youtube() -> None:
    assert chapters_youtube(CHAPTERS) == "00:00 Intro\n01:23 Budget review\n1:02:05 Q & A <live>"
    assert chapters_youtube(CHAPTERS[:2]) == "00:00 Intro\n01:23 Budget review"
    with pytest.raises(ValueError, match="chapter 1 .* has no start time"):
        chapters_youtube([CHAPTERS[0], PredictedChapter(title="B", start_segment=3)])


def test_chapters_vtt_parses_back_with_webvtt() -> None:
    text = chapters_vtt(CHAPTERS, end_time=4000.25)
    cues = webvtt.from_string(text, strict=True).captions
    assert [(c.start, c.end, c.text) for c in cues] == [
        ("00:00:00.000", "00:01:23.900", "Intro"),
        ("00:01:23.900", "01:02:05.000", "Budget review"),
        ("01:02:05.000", "01:06:40.250", "Q &amp; A &lt;live&gt;"),  # escaped as WebVTT requires
    ]
    with pytest.raises(ValueError, match="before the last chapter starts"):
        chapters_vtt(CHAPTERS, end_time=10.0)


# ------------------------------------------------------------------------------------------------ real files


@needs_shared
def test_real_vtt_demo() -> None:
    (t,) = read_transcripts(SHARED / "demo" / "seed-home-tour.vtt")
    assert t.id == "seed-home-tour" and len(t.segments) > 50 and t.has_times
    assert t.segments[0].text.startswith("- This is the biggest")
    assert (t.segments[0].start, t.segments[0].end, t.segments[1].start) == (0.0, 9.615, 9.615)


@needs_shared
def test_real_vidchapters_lines_stream_and_round_trip(tmp_path: Path) -> None:
    first = list(itertools.islice(iter_transcripts(SHARED / "video" / "vidchapters-short.jsonl"), 5))
    assert len(first) == 5 and all(t.has_times and t.chapters for t in first)
    write_vtt(tmp_path / "v.vtt", first[0])
    back = read_transcripts(tmp_path / "v.vtt")[0]
    assert [s.text for s in back.segments] == [s.text for s in first[0].segments]
    assert [s.start for s in back.segments] == [round(s.start, 3) for s in first[0].segments]


# ------------------------------------------------------------------------------------- invalid text (issue 20)


def test_one_text_rule_for_files_uploads_and_names(tmp_path: Path) -> None:
    """Issue 20 #1/#2: a lone surrogate (or NUL) is refused the same way wherever it comes in, with the
    field that holds it; before, files and feedback let it through to crash the first JSON write."""
    poisoned = record()
    poisoned["chapters"][1]["title"] = "x \ud800"
    path = jsonl(tmp_path, poisoned, record(id="ok"), record(id="nul", segments=[{"text": "a\x00b"}]))
    rejected: list[Rejected] = []
    assert [t.id for t in iter_transcripts(path, rejected)] == ["ok"]
    assert [(r.location, r.reason) for r in rejected] == [
        ("line 1", "chapters.1.title: text contains a lone surrogate U+D800 at position 2: not valid Unicode text"),
        ("line 3", "segments.0.text: text contains a NUL character at position 1"),
    ]
    with pytest.raises(InputError, match=r"chapters\.1\.title: text contains a lone surrogate"):
        transcript_from_upload("a.json", json.dumps(poisoned).encode())
    with pytest.raises(InputError, match=r"file name contains a lone surrogate"):
        transcript_from_upload("bad\udcffname.vtt", b"WEBVTT\n")


def test_rejected_lines_are_always_writable() -> None:
    """A quarantine line naming a file with undecodable bytes must itself be writable as UTF-8."""
    bad = Rejected(source="in/bad\udcffname.jsonl", location="file", reason="x \ud800")
    line = json.dumps(bad.to_dict(), ensure_ascii=False)
    line.encode("utf-8")
    assert bad.to_dict() == {"source": "in/bad\\xffname.jsonl", "location": "file", "reason": "x \\ud800"}


def test_write_jsonl_hands_unwritable_records_to_on_error(tmp_path: Path) -> None:
    """Without on_error a bad record raises (as before); with it, the others are written."""
    good = Transcript.model_validate(record())
    bad = Transcript.model_validate(record(id="bad"))
    bad.meta["path"] = "x \ud800"  # set after validation: only the write can catch it
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "strict.jsonl", [good, bad])
    seen: list = []
    assert write_jsonl(tmp_path / "out.jsonl", [good, bad, {"t": "\udcff"}], lambda r, e: seen.append(r)) == 1
    assert [getattr(r, "id", r) for r in seen] == ["bad", {"t": "\udcff"}]
    assert [t.id for t in read_transcripts(tmp_path / "out.jsonl")] == ["t1"]


def test_located_transcripts_name_line_item_and_file(tmp_path: Path) -> None:
    from chaptering.io import iter_located_transcripts

    path = jsonl(tmp_path, record(id="a"), "", record(id="b"))
    assert [(loc, t.id) for loc, t in iter_located_transcripts(path)] == [("line 1", "a"), ("line 3", "b")]
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([record(id="a"), record(id="b")]))
    assert [loc for loc, _ in iter_located_transcripts(arr)] == ["item 1", "item 2"]
