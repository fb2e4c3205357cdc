"""Windows of long timed transcripts as mid-length training videos (crops.py, boundary.window_transcripts)."""

import numpy as np

from chaptering import boundary, crops, cues
from chaptering.schema import Chapter, Segment, Transcript


def _talk(n: int = 240, step: float = 15.0, starts: tuple[int, ...] = (0, 30, 70, 130, 200)) -> Transcript:
    segs = [Segment(text=f"line {i} about topic {i // 40}", start=i * step, end=(i + 1) * step) for i in range(n)]
    return Transcript(id="talk", source="rawkode-academy", segments=segs,
                      chapters=[Chapter(title=f"part {k}", start_segment=s) for k, s in enumerate(starts) if s < n])


def test_windows_cycle_through_their_lengths_and_stay_mid_length():
    talk = _talk(n=230)  # 230 lines of 15 s: 57.5 minutes
    ranges = crops.windows(talk, long_lines=150)
    assert ranges[:3] == [(0, 24), (24, 60), (60, 108)]  # 6, 9 and 12 minutes
    assert all(b - a < 150 for a, b in ranges)
    assert all(talk.segments[b - 1].end - talk.segments[a].start >= crops.MIN_SECONDS for a, b in ranges)
    # Windows of 6, 9, 12, 6, 9, 12 minutes end at line 216; the last 3.5 minutes are a short video: left out.
    assert ranges[-1] == (168, 216)


def test_only_long_timed_transcripts_give_windows():
    assert crops.windows(_talk(n=100), long_lines=150) == []  # a mid-length video itself
    untimed = Transcript(id="m", source="qmsum", segments=[Segment(text=f"turn {i}") for i in range(300)],
                         chapters=[Chapter(title="a", start_segment=0)])
    assert crops.windows(untimed, long_lines=150) == []


def test_a_window_opens_with_the_chapter_running_at_its_first_line():
    window = crops.crop(_talk(), 24, 60)
    assert window.source == crops.FAMILY and len(window.segments) == 36
    assert [(c.title, c.start_segment) for c in window.chapters] == [("part 0", 0), ("part 1", 6)]
    assert window.segments[0].start == 24 * 15.0


def test_windows_are_featurised_as_videos_of_their_own(monkeypatch):
    rng = np.random.default_rng(0)

    def fake_embed(texts, *args, **kwargs):
        v = rng.normal(size=(len(texts), 8))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr("chaptering.embeddings.embed", fake_embed)
    talk = _talk()
    got = boundary.window_transcripts([talk, _talk(n=100)], 150, None, {"talk": np.zeros(240)})
    assert [len(w.segments) for w, _ in got] == [b - a for a, b in crops.windows(talk, 150)]
    first = got[0][1]
    n_lines = cues.FEATURES.index("n_lines")
    assert first.shape == (24, len(cues.FEATURES) + 1)  # + the lexical cue's column
    assert first[0, n_lines] == 24 and first[0, cues.FEATURES.index("t_from_start")] == 0.0
