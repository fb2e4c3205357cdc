"""chaptering.augment: every augmentation is seeded, marked, leaves its input alone and keeps chapters valid."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chaptering.augment import FILLERS, asr_noise, augment_stream, concat, crop, drop_speakers, jitter_times
from chaptering.config import AugmentSettings
from chaptering.schema import Chapter, Segment, Transcript, check_chapters

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "qmsum" / "qmsum-train.jsonl").is_file(),
                                  reason="../shared/data is not here")


def make(tid: str = "t", n: int = 20, starts: tuple[int, ...] = (0, 5, 10, 15), timed: bool = True,
         labelled: bool = True) -> Transcript:
    return Transcript(
        id=tid,
        segments=[Segment(text=f"Well, this is Sentence {i} about <URL> and topic {i // 5}!", speaker="AB"[i % 2],
                          start=10.0 + 2.0 * i if timed else None, end=10.0 + 2.0 * i + 1.5 if timed else None)
                  for i in range(n)],
        chapters=[Chapter(title=f"Topic {k}", start_segment=s) for k, s in enumerate(starts)] if labelled else None,
        meta={"path": "x.jsonl"},
    )


def valid(t: Transcript) -> Transcript:
    """Round-trip through validation: what a later stage reading the JSONL would see."""
    out = Transcript.model_validate_json(t.model_dump_json())
    if out.chapters is not None:
        check_chapters(out.chapters, len(out.segments))
    return out


def unchanged(before: Transcript, after: Transcript) -> bool:
    return before.model_dump() == after.model_dump()


def test_asr_noise_looks_like_raw_asr():
    t = make()
    snapshot = t.model_copy(deep=True)
    out = valid(asr_noise(t, random.Random(0), p_drop=0.0, p_filler=0.0))
    assert out.id == "t~noise" and out.meta["augmented"] == ["asr_noise"] and out.meta["path"] == "x.jsonl"
    assert out.segments[3].text == "well this is sentence 3 about <URL> and topic 0"
    assert out.chapters == t.chapters and unchanged(snapshot, t)


def test_asr_noise_fillers_and_drops_never_empty_a_segment():
    t = make()
    fillers = asr_noise(t, random.Random(1), p_drop=0.0, p_filler=1.0)
    assert all(any(f in s.text for f in FILLERS) for s in fillers.segments)
    dropped = asr_noise(t, random.Random(1), p_drop=1.0, p_filler=0.0)
    assert all(len(s.text.split()) == 1 for s in dropped.segments)


def test_asr_noise_is_deterministic_per_seed():
    t = make()
    a, b, c = (asr_noise(t, random.Random(s), p_drop=0.2, p_filler=0.2) for s in (5, 5, 6))
    assert a == b and a != c


def test_crop_takes_whole_chapters_and_restarts_time():
    t = make()
    for seed in range(20):
        out = valid(crop(t, random.Random(seed)))
        assert out.id == "t~crop" and out.meta["augmented"] == ["crop"]
        assert 2 <= len(out.chapters) < len(t.chapters)
        first = int(out.segments[0].text.split()[4])  # "Sentence {i}" tells where the crop began
        assert first in t.boundaries
        assert [c.start_segment + first for c in out.chapters] == \
            [b for b in t.boundaries if first <= b < first + len(out.segments)]
        assert out.segments[0].start == 0.0
    assert crop(t, random.Random(1)) == crop(t, random.Random(1))


def test_crop_is_none_when_impossible():
    assert crop(make(starts=(0, 10)), random.Random(0)) is None  # a crop would keep everything
    assert crop(make(labelled=False), random.Random(0)) is None
    assert crop(make(starts=(0, 5, 10, 15)), random.Random(0), min_chapters=4) is None


def test_concat_shifts_chapters_and_times():
    a, b = make("a", n=10, starts=(0, 5)), make("b", n=8, starts=(0, 3, 6))
    out = valid(concat(a, b))
    assert out.id == "a+b" and out.meta["augmented"] == ["concat"] and out.meta["parts"] == ["a", "b"]
    assert out.boundaries == [0, 5, 10, 13, 16]
    assert out.segments[10].start == a.segments[-1].end
    starts = [s.start for s in out.segments]
    assert starts == sorted(starts)
    untimed = valid(concat(a, make("c", timed=False)))
    assert not any(s.start is not None or s.end is not None for s in untimed.segments)
    assert concat(a, make("u", labelled=False)).chapters is None


def test_drop_speakers():
    t = make()
    out = valid(drop_speakers(t))
    assert out.id == "t~nospk" and out.meta["augmented"] == ["drop_speakers"]
    assert all(s.speaker is None for s in out.segments) and t.segments[0].speaker == "A"


def test_jitter_times_stays_monotone_and_non_negative():
    t = make(n=50, starts=(0, 20))
    t = t.model_copy(update={"segments": [s.model_copy(update={"start": 0.1 * i, "end": 0.1 * i + 0.05})
                                          for i, s in enumerate(t.segments)]})
    out = valid(jitter_times(t, random.Random(3), sigma=0.5))
    assert out.id == "t~jitter" and out.meta["augmented"] == ["jitter_times"]
    starts = [s.start for s in out.segments]
    assert starts == sorted(starts) and min(starts) >= 0
    assert all(s.end >= s.start for s in out.segments)
    assert starts != [s.start for s in t.segments]
    assert jitter_times(t, random.Random(3), sigma=0.5) == out


def test_chained_augmentations_record_every_step():
    out = drop_speakers(asr_noise(make(), random.Random(0)))
    assert out.id == "t~noise~nospk" and out.meta["augmented"] == ["asr_noise", "drop_speakers"]


def test_augment_stream_is_deterministic_and_only_augments_labelled():
    records = [make(f"r{i}", labelled=i != 2) for i in range(6)]
    always = AugmentSettings(asr_noise=1, crop=1, concat=1, drop_speakers=1, jitter=1)
    out = list(augment_stream(records, always))
    assert out == list(augment_stream(records, always))
    assert [t.id for t in out if "augmented" not in t.meta] == [r.id for r in records]
    assert not any(t.id.startswith("r2~") or "r2" in t.meta.get("parts", []) for t in out)
    assert {t.id for t in out} >= {"r0~noise", "r0~crop", "r0~nospk", "r0~jitter", "r1~noise", "r0+r1", "r1+r3"}
    for t in out:
        valid(t)
    assert list(augment_stream(records, AugmentSettings(asr_noise=0, crop=0, concat=0, drop_speakers=0,
                                                        jitter=0))) == records


def test_augment_stream_copies_depend_on_seed_and_record_not_neighbours():
    records = [make(f"r{i}") for i in range(40)]
    half = AugmentSettings(asr_noise=0.5, crop=0.5, concat=0, drop_speakers=0.5, jitter=0.5)

    def copies(recs, s):
        return {t.id: t for t in augment_stream(recs, s) if "augmented" in t.meta}

    base = copies(records, half)
    assert 0 < len(base) < 4 * 40
    assert copies(records, half.model_copy(update={"seed": 99})).keys() != base.keys()
    shuffled = copies(records[::-1] + [make("new")], half)
    assert {k: v for k, v in shuffled.items() if not k.startswith("new")} == base


@needs_shared
def test_real_meetings_augment_validly():
    with (SHARED / "qmsum" / "qmsum-train.jsonl").open() as f:
        raw = [Transcript.model_validate_json(line) for line in itertools.islice(f, 2)]
    out = list(augment_stream(raw, AugmentSettings(asr_noise=1, crop=1, concat=1, drop_speakers=1, jitter=1)))
    kinds = {k for t in out for k in t.meta.get("augmented", [])}
    assert kinds == {"asr_noise", "crop", "drop_speakers", "concat"}  # QMSum has no times: no jitter
    for t in out:
        valid(t)


# ------------------------------------------------------------------------------------------- property


@st.composite
def transcripts(draw, tid: str = "h") -> Transcript:
    n = draw(st.integers(1, 25))
    texts = draw(st.lists(st.text(alphabet="abc XYZ.,!?'-é<>@1", max_size=25), min_size=n, max_size=n))
    if not any(x.strip() for x in texts):
        texts[0] = "hello"
    timed = draw(st.booleans())
    steps = draw(st.lists(st.floats(0, 5), min_size=n, max_size=n))
    durations = draw(st.lists(st.floats(0, 5), min_size=n, max_size=n))
    starts = list(itertools.accumulate(steps))
    speakers = draw(st.lists(st.sampled_from([None, "A", "B"]), min_size=n, max_size=n))
    segments = [Segment(text=x, speaker=sp, start=s if timed else None, end=s + d if timed else None)
                for x, sp, s, d in zip(texts, speakers, starts, durations)]
    chapters = None
    if draw(st.booleans()):
        bounds = sorted({0, *draw(st.sets(st.integers(0, n - 1), max_size=8))})
        # any valid text: schema.check_text refuses NUL and lone surrogates at the door
        title_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                             min_size=1, max_size=10)
        chapters = [Chapter(title=draw(title_text), start_segment=b) for b in bounds]
    return Transcript(id=tid, segments=segments, chapters=chapters)


@hsettings(max_examples=150, deadline=None)
@given(transcripts(), transcripts("g"), st.integers(0, 2**32))
def test_every_augmentation_of_a_valid_transcript_is_valid(t, other, seed):
    snapshot = t.model_copy(deep=True)
    rng = random.Random(seed)
    outs = [asr_noise(t, rng, p_drop=0.5, p_filler=0.5), crop(t, rng), concat(t, other), drop_speakers(t),
            jitter_times(t, rng, sigma=2.0)]
    for out in outs:
        if out is None:
            continue
        v = valid(out)
        assert v.meta["augmented"]
        if "concat" not in v.meta["augmented"] and "crop" not in v.meta["augmented"]:
            assert v.chapters == t.chapters and len(v.segments) == len(t.segments)
    for out in augment_stream([t, other], AugmentSettings(asr_noise=1, crop=1, concat=1, drop_speakers=1, jitter=1)):
        valid(out)
    assert unchanged(snapshot, t)
