"""chaptering.curate: every filter says why, duplicates and eval look-alikes are caught, nothing vanishes."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chaptering.config import DataSettings
from chaptering.curate import (
    ContaminationGuard,
    CurateStats,
    NearDupIndex,
    content_hash,
    curate,
    detect_language,
    normalise,
    quality_reason,
    scrub_pii,
    scrub_transcript,
    split_of,
)
from chaptering.io import Rejected
from chaptering.schema import Chapter, Segment, Transcript, check_chapters

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "qmsum" / "qmsum-train.jsonl").is_file(),
                                  reason="../shared/data is not here")

VOCAB = (  # noqa: SIM905 - a word list reads better as prose
    "the meeting budget design remote control button battery price market user research team project "
    "people think really need should could would good idea plan week month report screen colour shape "
    "product sales customer feature voice speech system model data training test result paper signal "
    "noise channel microphone recording problem question answer decision agenda minutes action item "
    "working together because maybe actually something important different interesting basically cost "
    "company designer manager marketing industrial interface prototype material plastic rubber wood"
).split()


def prose(seed: int, n_words: int) -> list[str]:
    """English-looking word salad: two different seeds share almost no 5-word shingles."""
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n_words)]


def transcript(tid: str = "a", seed: int = 0, n_segments: int = 12, words_per_segment: int = 10,
               chapters: tuple[int, ...] | None = (0, 4, 8), **kw) -> Transcript:
    words = prose(seed, n_segments * words_per_segment)
    segments = [
        Segment(text=" ".join(words[i * words_per_segment:(i + 1) * words_per_segment]).capitalize() + ".",
                speaker="AB"[i % 2], start=3.0 * i, end=3.0 * i + 2.5)
        for i in range(n_segments)
    ]
    chs = None if chapters is None else [Chapter(title=f"Part {k}", start_segment=s) for k, s in enumerate(chapters)]
    return Transcript(id=tid, segments=segments, chapters=chs, **kw)


def edited(t: Transcript, tid: str, n_changes: int = 3, drop_segment: int | None = 5) -> Transcript:
    """A light edit: a few words changed, upper-cased, punctuation removed, one segment dropped."""
    rng = random.Random(7)
    texts = [s.text for s in t.segments]
    for _ in range(n_changes):
        i = rng.randrange(len(texts))
        ws = texts[i].split()
        ws[rng.randrange(len(ws))] = "zebra"
        texts[i] = " ".join(ws)
    texts = [x.upper().replace(".", "") for x in texts]
    if drop_segment is not None:
        del texts[drop_segment]
    return Transcript(id=tid, segments=[Segment(text=x) for x in texts])


def run(records, guard=None, known=(), **over) -> tuple[list[Transcript], list[Rejected], CurateStats]:
    rejected: list[Rejected] = []
    stats = CurateStats()
    out = list(curate(records, settings=DataSettings(**over), guard=guard, rejected=rejected, known=known,
                      stats=stats))
    return out, rejected, stats


# ------------------------------------------------------------------------------------------ normalise


def test_normalise_strips_artefacts_and_whitespace():
    t = Transcript(id="n", segments=[Segment(text="Okay  , let's {vocalsound} start\t[Music] (upbeat music) ﬁne ."),
                                     Segment(text="Hello {name}, see (Mr. Bruce Stanton) x[i]")])
    n = normalise(t, strip_artifacts=True)
    assert [s.text for s in n.segments] == ["Okay, let's start fine.", "Hello {name}, see (Mr. Bruce Stanton) x[i]"]
    kept = normalise(t, strip_artifacts=False)
    assert "{vocalsound}" in kept.segments[0].text and "[Music]" in kept.segments[0].text
    assert t.segments[0].text.startswith("Okay  ,")  # input untouched


def test_normalise_remaps_chapters_when_artefact_segments_vanish():
    texts = ["{vocalsound}", "Hello there.", "[Music]", "{disfmarker} {gap}", "Budget talk.", "More budget.",
             "Wrap up.", "", "(applause)"]
    t = Transcript(id="r", segments=[Segment(text=x) for x in texts], chapters=[
        Chapter(title="Intro", start_segment=0),      # start vanished -> next survivor (new 0)
        Chapter(title="Music", start_segment=2),      # vanished -> "Budget talk." (new 1) ...
        Chapter(title="Budget", start_segment=4),     # ... which collides: the first title is kept
        Chapter(title="Wrap", start_segment=6),       # survives, re-indexed 6 -> 3
        Chapter(title="Applause", start_segment=8),   # it and everything after vanished: merged away
    ])
    n = normalise(t, strip_artifacts=True)
    assert [s.text for s in n.segments] == ["Hello there.", "Budget talk.", "More budget.", "Wrap up."]
    assert [(c.title, c.start_segment) for c in n.chapters] == [("Intro", 0), ("Music", 1), ("Wrap", 3)]
    check_chapters(n.chapters, len(n.segments))


def test_normalise_refuses_a_transcript_of_only_artefacts():
    t = Transcript(id="e", segments=[Segment(text="{vocalsound}"), Segment(text="[Applause]")])
    with pytest.raises(ValueError, match="empty after normalisation"):
        normalise(t, strip_artifacts=True)


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["", "{gap}", "[Music]", "hi", "so {disfmarker} yes", "  ok  "]), min_size=1,
                max_size=12), st.data())
def test_normalise_keeps_chapters_valid(texts, data):
    if not any(x.strip() for x in texts):
        texts[0] = "hi"
    starts = sorted({0, *data.draw(st.sets(st.integers(0, len(texts) - 1)))})
    t = Transcript(id="p", segments=[Segment(text=x) for x in texts],
                   chapters=[Chapter(title=f"c{s}", start_segment=s) for s in starts])
    try:
        n = normalise(t, strip_artifacts=True)
    except ValueError:
        return
    check_chapters(n.chapters, len(n.segments))
    assert all(s.text for s in n.segments) and len(n.chapters) <= len(starts)


# ------------------------------------------------------------------------------------------------ PII


@pytest.mark.parametrize("text,expected", [
    ("write to john.doe@example.com today", "write to <EMAIL> today"),
    ("Email: a_b+c@sub.mail.co.uk.", "Email: <EMAIL>."),
    ("call +44 20 7946 0958 now", "call <PHONE> now"),
    ("call +1 (555) 123-4567", "call <PHONE>"),
    ("+33 1 42 68 53 00", "<PHONE>"),
    ("ring 555-123-4567 or (555) 123 4567", "ring <PHONE> or <PHONE>"),
    ("1-800-555-1234", "<PHONE>"),
    ("my number is 020 7946 0958", "my number is <PHONE>"),
    ("mobile 07700 900123", "mobile <PHONE>"),
    ("see https://example.com/a?b=1.", "see <URL>."),
    ("visit www.example.org or shop.example.com/cart", "visit <URL> or <URL>"),
])
def test_scrub_pii_positives(text, expected):
    assert scrub_pii(text) == expected


@pytest.mark.parametrize("text", [
    "in 2021 we grew", "295 million users", "meet at 12:30", "between 1999 and 2004", "version 2.0.1",
    "pi is 3.14159", "IP 192.168.0.1", "1,000,000 dollars", "2019 2020 2021", "on 2021-03-04", "room 101 202",
    "ISO 9001", "e.g. this", "score 10-20-30", "it costs 1234 5678", "at 5 pm", "node.js and fast.ai",
])
def test_scrub_pii_leaves_numbers_and_times(text):
    assert scrub_pii(text) == text


def test_scrub_transcript_covers_titles_and_text():
    t = transcript(chapters=(0, 4))
    t = t.model_copy(update={"segments": [Segment(text="mail me@x.com"), *t.segments[1:]],
                             "chapters": [Chapter(title="Visit www.x.com", start_segment=0), t.chapters[1]]})
    s = scrub_transcript(t)
    assert s.segments[0].text == "mail <EMAIL>" and s.chapters[0].title == "Visit <URL>"
    assert t.segments[0].text == "mail me@x.com"


# ------------------------------------------------------------------------------------ identity, language


def test_content_hash_ignores_whitespace_case_punctuation_and_curation():
    a = transcript()
    b = a.model_copy(update={"segments": [Segment(text="  " + s.text.upper().replace(".", " !") + "  {vocalsound}")
                                          for s in a.segments]})
    assert content_hash(a) == content_hash(b) == content_hash(scrub_transcript(normalise(b, True)))
    changed = a.model_copy(update={"segments": [Segment(text="zebra"), *a.segments[1:]]})
    assert content_hash(changed) != content_hash(a)


def test_detect_language():
    assert detect_language(transcript()) == "en"
    de = Transcript(id="de", segments=[Segment(text="Guten Morgen, heute sprechen wir über das Budget und die "
                                                    "Planung für das nächste Jahr. Das ist sehr wichtig.")])
    assert detect_language(de) == "de"
    assert detect_language(Transcript(id="x", segments=[Segment(text="123 456 ...")])) is None


# ------------------------------------------------------------------------------------------- quality

Q = {"min_words": 50, "max_words": 1000, "min_chapters": 2, "max_chapters": 5, "min_chapter_segments": 2,
     "max_title_words": 4, "languages": ["en"]}


def test_quality_passes_a_good_transcript_and_skips_chapter_checks_when_unlabelled():
    assert quality_reason(transcript(), **Q) is None
    assert quality_reason(transcript(chapters=None), **{**Q, "min_chapters": 9}) is None


@pytest.mark.parametrize("t,over,reason", [
    (transcript(n_segments=2, chapters=(0, 1)), {}, "too few words: 20 < 50"),
    (transcript(), {"max_words": 100}, "too many words: 120 > 100"),
    (transcript(language="de"), {}, "language 'de' not in ['en']"),
    (transcript(language=None), {}, "language unknown: could not be detected"),
    (transcript(chapters=(0,)), {}, "too few chapters: 1 < 2"),
    (transcript(chapters=(0, 2, 4, 6, 8, 10)), {}, "too many chapters: 6 > 5"),
    (transcript(chapters=(0, 4, 5)), {}, "chapter too short: chapter 1 is 1 segments long (< 2)"),
    (transcript(chapters=(0, 4, 11)), {}, "chapter too short: chapter 2 is 1 segments long (< 2)"),
])
def test_quality_reasons(t, over, reason):
    assert quality_reason(t, **{**Q, **over}) == reason


def test_quality_titles():
    t = transcript()
    long = t.model_copy(update={"chapters": [t.chapters[0], Chapter(title="a b c d e", start_segment=4)]})
    assert quality_reason(long, **Q) == "title too long: chapter 1 has 5 words (> 4)"
    empty = t.model_copy(update={"chapters": [t.chapters[0], Chapter(title=" ", start_segment=4)]})
    assert quality_reason(empty, **Q) == "empty title: chapter 1"


def test_curate_reports_every_filter_with_its_reason():
    short = transcript("short", seed=1, n_segments=2, chapters=(0, 1))
    german = Transcript(id="de", segments=[Segment(text=("Guten Morgen, heute sprechen wir über das Budget "
                                                         "und die Planung für das nächste Jahr. ") * 5)])
    blank = Transcript(id="blank", segments=[Segment(text="{gap}"), Segment(text="[Music]")], meta={"path": "in.vtt"})
    good = transcript("good", seed=2)
    out, rejected, stats = run([short, german, blank, good])
    assert [t.id for t in out] == ["good"]
    assert {r.location: r.reason for r in rejected} == {
        "id short": "too few words: 20 < 50",
        "id de": "language 'de' not in ['en']",
        "id blank": "empty after normalisation: every segment was blank or an artefact",
    }
    assert [r.source for r in rejected] == ["curate", "curate", "in.vtt"]
    assert stats.to_dict()["by_stage"] == {"quality": 2, "normalise": 1}
    assert stats.seen == 4 and stats.accepted == 1 and stats.rejected == 3


# ----------------------------------------------------------------------------------------------- dedup


def test_exact_dedup_catches_a_reformatted_copy():
    a = transcript("a", seed=3)
    copy = a.model_copy(update={"id": "a-copy", "segments": [Segment(text=s.text.lower().replace(".", " ,"))
                                                              for s in a.segments]})
    out, rejected, stats = run([a, copy, a])
    assert [t.id for t in out] == ["a"]
    assert [r.reason for r in rejected] == ["exact duplicate of 'a'", "duplicate id: 'a' was already accepted"]
    assert stats.by_stage["exact_dup"] == 2


def test_near_dup_index_finds_light_edits_not_different_texts():
    idx = NearDupIndex(threshold=0.8, num_perm=128)
    a = transcript("a", seed=4, n_segments=40)
    idx.add(a)
    assert len(idx) == 1
    assert idx.query(edited(a, "a2", n_changes=1, drop_segment=None)) == "a"
    assert idx.query(transcript("b", seed=5, n_segments=40)) is None


def test_curate_rejects_near_duplicates_and_keeps_different_transcripts():
    a = transcript("a", seed=6, n_segments=40, chapters=None)
    near = edited(a, "a-near", n_changes=1, drop_segment=None)
    other = transcript("b", seed=7, n_segments=40, chapters=None)
    out, rejected, _ = run([a, near, other])
    assert [t.id for t in out] == ["a", "b"]
    assert len(rejected) == 1 and rejected[0].reason.startswith("near-duplicate of 'a' (jaccard≈")


def test_curate_dedups_against_known_corpus():
    a = transcript("a", seed=8)
    out, rejected, stats = run([a.model_copy(update={"id": "again"}), transcript("b", seed=9)], known=[a])
    assert [t.id for t in out] == ["b"] and stats.known == 1
    assert rejected[0].reason == "exact duplicate of 'a'"


def test_curate_streams():
    """Records are pulled one at a time: an endless input still gives its first result."""
    endless = (transcript(f"t{i}", seed=100 + i) for i in itertools.count())
    it = curate(endless, settings=DataSettings(), guard=None, rejected=[])
    assert [next(it).id for _ in range(2)] == ["t0", "t1"]


def test_seen_index_answers_as_the_in_memory_index(tmp_path, monkeypatch):
    """The on-disk index finds the same near duplicate with the same Jaccard as datasketch's, across
    several commits, and keeps the first owner of a repeated id or hash."""
    from chaptering import curate_index
    from chaptering.curate_index import SeenIndex

    monkeypatch.setattr(curate_index, "COMMIT_EVERY", 7)
    mem, disk = NearDupIndex(0.8, 128), SeenIndex(tmp_path / "seen.sqlite", 0.8, 128)
    originals = [transcript(f"o{i}", seed=200 + i, n_segments=30, chapters=None) for i in range(30)]
    stream = originals + [edited(t, f"e{i}", n_changes=1 + i % 3, drop_segment=None) for i, t in enumerate(originals)]
    stream += [edited(t, f"far{i}", n_changes=25, drop_segment=None) for i, t in enumerate(originals[:5])]
    hits = 0
    for t in stream:
        sig = mem.signature(t)
        expected, got = mem.match(sig), disk.match(sig)
        assert got == expected, t.id
        hits += got is not None
        if got is None:
            mem.add(t, sig)
            disk.add(t.id, content_hash(t), sig)
    assert 25 <= hits < len(stream) - 30 and len(disk) == len(mem)
    disk.add("o0", "another-hash", mem.signature(originals[1]))
    assert disk.has_id("o0") and disk.hash_owner(content_hash(originals[0])) == "o0"
    disk.close()


def _jsonl(path: Path, records: list[Transcript], extra: str = "") -> Path:
    path.write_text("".join(t.model_dump_json() + "\n" + ("\n" if i % 4 == 1 else "") for i, t in enumerate(records))
                    + extra, encoding="utf-8")
    return path


@pytest.mark.parametrize("n", [1, 2, 3, 5, 40])
def test_shards_cover_every_line_once_in_order(tmp_path, n):
    from chaptering.io import read_transcripts
    from chaptering.shards import plan_file, read_shard

    path = _jsonl(tmp_path / "in.jsonl", [transcript(f"t{i}", seed=i, n_segments=9 + i % 7) for i in range(17)])
    plan = plan_file(path, n, "new")
    assert 1 <= len(plan) <= n and plan[0].start == 0 and plan[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in itertools.pairwise(plan))
    assert [t.id for s in plan for t in read_shard(s)] == [t.id for t in read_transcripts(path)]


def test_a_bad_line_in_a_shard_is_named_by_file_and_line(tmp_path):
    from chaptering.io import InputError
    from chaptering.shards import plan_file, read_shard

    path = _jsonl(tmp_path / "in.jsonl", [transcript(f"t{i}", seed=i) for i in range(6)], extra='{"id": "x"\n')
    last = plan_file(path, 3, "new")[-1]
    with pytest.raises(InputError, match=r"in\.jsonl:line 9: malformed JSON"):
        list(read_shard(last))


def test_sharded_curation_in_process_matches_curate(tmp_path):
    """screen_shard + merge_curation over 4 shards == one curate() pass: near duplicates in other shards,
    the corpus, the eval guard and bad records included (test_fanout does the same on Dask)."""
    from chaptering.config import ScaleSettings, Settings
    from chaptering.curate import CurateStats
    from chaptering.io import write_jsonl
    from chaptering.shards import merge_curation, plan_curation, screen_shard

    originals = [transcript(f"o{i}", seed=300 + i, n_segments=20) for i in range(12)]
    evalset = [transcript("eval-1", seed=999, n_segments=20)]
    records = originals + [edited(t, f"copy{i}", n_changes=1, drop_segment=None) for i, t in enumerate(originals[:4])]
    records += [transcript("short", seed=1, n_segments=2, chapters=(0,)), edited(evalset[0], "leak", n_changes=1, drop_segment=None),
                originals[2].model_copy(update={"id": "o2-again"}), transcript("o3", seed=5)]
    known = [transcript("k0", seed=400, n_segments=20)]
    records.append(edited(known[0], "k0-copy", n_changes=1, drop_segment=None))
    write_jsonl(tmp_path / "eval.jsonl", evalset)
    settings = Settings(state_dir=tmp_path / "state", scale=ScaleSettings(shards=4, min_curate_shard=1))
    settings.data.eval_path = tmp_path / "eval.jsonl"
    settings.data.min_chapter_segments = 1
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "ingested.jsonl", records)
    write_jsonl(settings.state_dir / "corpus" / "curated.jsonl", known)

    guard = ContaminationGuard(evalset)
    single_rejected: list[Rejected] = []
    single = list(curate(records, settings=settings.data, guard=guard, rejected=single_rejected, known=known))
    plan = plan_curation(settings, run_dir)
    assert [s.kind for s in plan] == ["known"] + ["new"] * 4
    parts = [screen_shard(settings, s, tmp_path / "parts") for s in plan]
    rejected: list[Rejected] = []
    assert merge_curation(settings, run_dir, parts, rejected, CurateStats()) == len(single)
    assert (run_dir / "curated.jsonl").read_text() == "".join(t.model_dump_json() + "\n" for t in single)
    assert rejected == single_rejected
    reasons = {r.location.split("id ")[-1]: r.reason for r in rejected}
    assert all(reasons[f"copy{i}"].startswith(f"near-duplicate of 'o{i}'") for i in range(4))
    assert reasons["k0-copy"].startswith("near-duplicate of 'k0'") and reasons["leak"].startswith("eval contamination")
    assert reasons["o3"].startswith("duplicate id") and reasons["o2-again"] == "exact duplicate of 'o2'"


# ----------------------------------------------------------------------------------------------- split


def test_split_is_fixed_by_id():
    """Pinned values: a change here reshuffles every dataset (and would leak val into train)."""
    ids = ["qmsum-ES2004a", "qmsum-Bdb001", "lecture-7", "abc", "x" * 40]
    assert [split_of(i, 0.1) for i in ids] == ["train", "train", "val", "train", "train"]
    assert [split_of(i, 0.5) for i in ids] == ["val", "train", "val", "train", "train"]
    assert split_of("qmsum-ES2004a~noise", 0.1) == split_of("qmsum-ES2004a", 0.1)
    assert all(split_of(i, 0.0) == "train" for i in ids) and all(split_of(i, 1.0) == "val" for i in ids)


def test_split_fraction_is_about_right():
    share = sum(split_of(f"video-{i}", 0.1) == "val" for i in range(2000)) / 2000
    assert 0.08 < share < 0.12


# ------------------------------------------------------------------------------------------- eval guard


def test_guard_catches_eval_ids_content_and_light_edits():
    ev = transcript("eval-1", seed=10, n_segments=30)
    guard = ContaminationGuard([ev, transcript("eval-2", seed=11)])
    assert guard.check(ev) == "id 'eval-1' is in the eval set"
    assert guard.check(ev.model_copy(update={"id": "eval-1~noise"})) == "id 'eval-1' is in the eval set"
    same = ev.model_copy(update={"id": "renamed", "segments": [Segment(text=s.text.upper()) for s in ev.segments]})
    assert guard.check(same) == "content matches eval transcript 'eval-1'"
    planted = edited(ev, "planted", n_changes=3, drop_segment=5)
    assert guard.check(planted).startswith("near-duplicate of eval transcript 'eval-1' (jaccard≈")
    assert guard.check(transcript("fresh", seed=12, n_segments=30)) is None


def test_curate_keeps_a_planted_eval_transcript_out():
    ev = transcript("eval-1", seed=13, n_segments=30, chapters=(0, 10, 20))
    guard = ContaminationGuard([ev])
    planted = edited(ev, "planted", n_changes=3, drop_segment=5)
    out, rejected, stats = run([transcript("ok", seed=14), planted], guard=guard)
    assert [t.id for t in out] == ["ok"]
    assert rejected[0].reason.startswith("eval contamination: near-duplicate of eval transcript 'eval-1'")
    assert stats.by_reason == {"eval contamination": 1}


# ------------------------------------------------------------------------------------------- real data


@needs_shared
def test_real_qmsum_meetings_curate_cleanly_and_a_planted_one_is_caught():
    with (SHARED / "qmsum" / "qmsum-train.jsonl").open() as f:
        raw = [Transcript.model_validate_json(line) for line in itertools.islice(f, 3)]
    guard = ContaminationGuard([raw[2]])
    planted = raw[2].model_copy(update={"id": "planted", "segments": raw[2].segments[3:]})
    out, rejected, _ = run([*raw[:2], planted], guard=guard)
    assert [t.id for t in out] == [t.id for t in raw[:2]]
    assert rejected[0].reason.startswith("eval contamination: near-duplicate of eval transcript")
    for t, r in zip(out, raw):
        assert not any("{disfmarker}" in s.text or "{vocalsound}" in s.text for s in t.segments)
        assert len(t.chapters) == len(r.chapters)
        assert json.loads(t.model_dump_json())["language"] == "en"


@given(st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=80), st.integers(1, 4))
@hsettings(max_examples=60, deadline=None)
def test_eval_ranges_are_contiguous_and_balance_lines(sizes, shards):
    """Evaluation ranges tile the held-out set in order; by lines, no range holds much more than its share
    plus one transcript (the set is ordered by domain: equal counts gave one worker every long talk)."""
    from chaptering.config import ScaleSettings
    from chaptering.shards import eval_ranges

    ranges = eval_ranges(len(sizes), ScaleSettings(shards=shards, min_eval_shard=1), sizes)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert len(ranges) <= shards
    share = sum(sizes) / len(ranges)
    assert all(sum(sizes[a:b]) <= share + max(sizes) for a, b in ranges)


def test_eval_cost_counts_minilm_only_for_lines_not_yet_embedded_and_titles_per_chapter(tmp_path):
    """A range of long talk lines costs more than a range of as many short meeting turns, until the talk
    is in the embedding cache (a warm nightly): then only its chapters' titles are left to pay for."""
    import numpy as np

    from chaptering.embeddings import is_embedded, line_embeddings
    from chaptering.shards import ENCODE_S_PER_CHAR, TITLE_S_PER_CHAPTER, eval_cost

    def transcript(tid: str, line: str, n: int, chapters: int) -> Transcript:
        return Transcript(id=tid, segments=[Segment(text=f"{line} {i}.") for i in range(n)],
                          chapters=[Chapter(title=f"part {k}", start_segment=k * (n // chapters))
                                    for k in range(chapters)])

    talk = transcript("talk", "and here the controller reconciles the desired state with the cluster", 400, 2)
    meeting = transcript("meeting", "yeah", 400, 2)
    assert eval_cost(talk, tmp_path) > 2 * eval_cost(meeting, tmp_path)
    chars = sum(len(s.text) for s in talk.segments)
    assert eval_cost(talk, tmp_path) == pytest.approx(ENCODE_S_PER_CHAR * chars + 2 * TITLE_S_PER_CHAPTER)
    assert eval_cost(talk, None) == eval_cost(talk, tmp_path)  # no cache: every line is encoded

    assert not is_embedded(talk, tmp_path)
    line_embeddings(talk, tmp_path, encode=lambda texts: np.ones((len(texts), 384), dtype=np.float32))
    assert is_embedded(talk, tmp_path) and not is_embedded(meeting, tmp_path)
    assert eval_cost(talk, tmp_path) == pytest.approx(2 * TITLE_S_PER_CHAPTER)
