"""Decoding start scores into chapters: threshold, non-maximum suppression, minimum length, count."""

from chaptering.decode import DecoderSettings, calibrate_threshold, decode, primary_f1
from chaptering.schema import Chapter, Segment, Transcript


def _timed(n: int, step: float = 4.0, chapters: list[int] | None = None) -> Transcript:
    segs = [Segment(text=f"line {i}", start=i * step, end=(i + 1) * step) for i in range(n)]
    chs = [Chapter(title=f"c{i}", start_segment=s) for i, s in enumerate(chapters or [0])]
    return Transcript(id="t", source="test", segments=segs, chapters=chs)


def test_threshold_decides_the_count():
    t = _timed(30)
    scores = [1.0] + [0.0] * 29
    scores[10], scores[20] = 0.9, 0.8
    assert decode(scores, t, DecoderSettings(threshold=0.5, min_chapters=1)) == [0, 10, 20]
    assert decode(scores, t, DecoderSettings(threshold=0.85, min_chapters=1)) == [0, 10]


def test_nms_keeps_the_peak_and_suppresses_neighbours_within_the_minimum_gap():
    t = _timed(30)  # 4 s a line: 10 s is 2.5 lines
    scores = [1.0] + [0.0] * 29
    scores[10], scores[11], scores[12], scores[13] = 0.9, 0.8, 0.85, 0.7
    assert decode(scores, t, DecoderSettings(threshold=0.5, min_chapters=1)) == [0, 10, 13]


def test_no_chapter_shorter_than_the_minimum_at_either_end():
    t = _timed(30)
    scores = [1.0] + [0.0] * 29
    scores[1], scores[29] = 0.99, 0.99  # 4 s after the start, 4 s before the end
    assert decode(scores, t, DecoderSettings(threshold=0.5, min_chapters=1)) == [0]


def test_long_video_gets_at_least_three_chapters_short_one_does_not():
    long = _timed(30)
    scores = [1.0] + [0.01 * i for i in range(1, 30)]
    got = decode(scores, long, DecoderSettings(threshold=0.9, min_chapters=3))
    assert len(got) == 3
    short = _timed(6, step=4.0)  # 24 s: no room for 3 chapters of 10 s
    assert decode([1.0] + [0.1] * 5, short, DecoderSettings(threshold=0.9)) == [0]


def test_untimed_gap_is_in_lines():
    segs = [Segment(text=f"turn {i}") for i in range(40)]
    t = Transcript(id="m", source="meet", segments=segs, chapters=[Chapter(title="a", start_segment=0)])
    scores = [1.0] + [0.0] * 39
    scores[10], scores[12], scores[20] = 0.9, 0.8, 0.7
    assert decode(scores, t, DecoderSettings(threshold=0.5, min_gap_lines=5, min_chapters=1)) == [0, 10, 20]


def test_calibration_picks_a_threshold_that_recovers_the_reference():
    t = _timed(40, chapters=[0, 10, 25])
    scores = [1.0] + [0.05] * 39
    scores[10], scores[25], scores[33] = 0.6, 0.55, 0.3
    th, f1 = calibrate_threshold([(scores, t)], DecoderSettings(min_chapters=1))
    assert 0.3 < th <= 0.55 and f1 == 1.0
    assert primary_f1(t, decode(scores, t, DecoderSettings(threshold=th, min_chapters=1))) == 1.0


def test_long_transcripts_use_their_own_threshold():
    t = _timed(200, step=10.0)
    scores = [1.0] + [0.0] * 199
    scores[50], scores[100], scores[150] = 0.9, 0.3, 0.25
    s = DecoderSettings(threshold=0.2, threshold_long=0.5, long_lines=150, min_chapters=1)
    assert decode(scores, t, s) == [0, 50]
    assert decode(scores, t, DecoderSettings(threshold=0.2, threshold_long=0.5, long_lines=300, min_chapters=1)) \
        == [0, 50, 100, 150]


def test_count_mode_takes_as_many_chapters_as_the_scores_expect():
    t = _timed(100, step=10.0)
    scores = [1.0] + [0.01] * 99  # sum 0.99 + peaks
    scores[20], scores[40], scores[60], scores[80] = 0.5, 0.45, 0.4, 0.3
    total = sum(scores[1:])  # ~2.6: expect 3 cuts
    got = decode(scores, t, DecoderSettings(count_scale=1.0, min_chapters=1))
    assert len(got) == 1 + round(total) and got == [0, 20, 40, 60]


def test_calibration_fits_short_and_long_transcripts_apart():
    from chaptering.decode import calibrate

    short = _timed(40, chapters=[0, 10, 25])
    s_scores = [1.0] + [0.05] * 39
    s_scores[10], s_scores[25], s_scores[33] = 0.6, 0.55, 0.3
    long = _timed(200, step=10.0, chapters=[0, 100])
    l_scores = [1.0] + [0.05] * 199
    l_scores[100], l_scores[50] = 0.2, 0.12
    long = long.model_copy(update={"source": "long"})
    tuned, f1 = calibrate([(s_scores, short), (l_scores, long)], DecoderSettings(min_chapters=1, long_lines=150))
    assert f1 == 1.0
    assert primary_f1(short, decode(s_scores, short, tuned)) == 1.0
    assert primary_f1(long, decode(l_scores, long, tuned)) == 1.0


def test_calibration_does_not_buy_f1_with_dozens_of_chapters():
    from chaptering.decode import calibrate

    t = _timed(200, step=4.0, chapters=[0, 100])
    scores = [1.0] + [0.0] * 199
    for i in range(4, 196, 6):  # noise every 24 s; the true start scores lowest of all cuts
        scores[i] = 0.3
    scores[100] = 0.1
    loose = decode(scores, t, DecoderSettings(threshold=0.1, min_chapters=1))
    assert primary_f1(t, loose) > 0 and len(loose) > 20  # what F1 alone would pick
    tuned, _ = calibrate([(scores, t)], DecoderSettings(min_chapters=1), max_count_ratio=2.0)
    assert len(decode(scores, t, tuned)) <= 4


def _untimed(n: int, chapters: list[int]) -> Transcript:
    segs = [Segment(text=f"turn {i}") for i in range(n)]
    return Transcript(id="m", source="meet", segments=segs,
                      chapters=[Chapter(title=f"c{i}", start_segment=s) for i, s in enumerate(chapters)])


def test_long_untimed_transcripts_get_a_bar_of_their_own():
    from chaptering.decode import calibrate

    talk = _timed(200, step=10.0, chapters=[0, 100]).model_copy(update={"source": "talks"})
    t_scores = [1.0] + [0.05] * 199
    t_scores[100], t_scores[50] = 0.2, 0.12  # the talk needs a bar above 0.12
    meeting = _untimed(200, chapters=[0, 60, 140])
    m_scores = [1.0] + [0.05] * 199
    m_scores[60], m_scores[140] = 0.1, 0.09  # the meeting needs one at or below 0.09
    tuned, f1 = calibrate([(t_scores, talk), (m_scores, meeting)], DecoderSettings(min_chapters=1, long_lines=150))
    assert f1 == 1.0
    assert tuned.threshold_untimed is not None and tuned.threshold_untimed <= 0.09
    assert tuned.threshold_long is not None and tuned.threshold_long > 0.12
    assert decode(m_scores, meeting, tuned) == [0, 60, 140]
    assert decode(t_scores, talk, tuned) == [0, 100]
    # Without the untimed bar the meeting falls back to the long one, as cards written before it do.
    assert decode(m_scores, meeting, DecoderSettings(threshold=0.01, threshold_long=0.15, min_chapters=1)) == [0]


def test_a_decoder_describes_each_bar_it_holds():
    assert DecoderSettings(threshold=0.03).describe() == "threshold 0.03"
    both = DecoderSettings(threshold=0.03, threshold_long=0.1, threshold_untimed=0.02)
    assert both.describe() == "threshold 0.03, 0.10 from 150 lines, 0.02 long untimed"
    assert DecoderSettings(count_scale=1.6).describe() == "count x1.6 of the summed start scores"


def test_a_decoder_lists_every_bar_it_uses_for_mlflow():
    assert DecoderSettings(threshold=0.03).bars() == {"threshold": 0.03}
    both = DecoderSettings(threshold=0.03, threshold_long=0.1, threshold_untimed=0.02)
    assert both.bars() == {"threshold": 0.03, "threshold_long": 0.1, "threshold_untimed": 0.02}
    assert DecoderSettings(count_scale=1.6).bars() == {"threshold": 0.5, "count_scale": 1.6}
