import itertools
import json

from factories import make_transcript
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chaptering import prompt


def test_render_line_numbers_time_and_cut():
    assert prompt.render_line(3, "hello  world", 221.7) == "(03:41) hello world [3]"
    assert prompt.render_line(0, "x", 3725) == "(1:02:05) x [0]"
    assert prompt.render_line(1, "no time", None) == "no time [1]"
    long = " ".join(["w"] * (prompt.LINE_WORDS + 5))
    assert prompt.render_line(0, long, None).endswith("… [0]")


def test_window_lines_are_relative_and_chapters_follow():
    t = make_transcript(30, (0, 10, 20))
    lines = prompt.window_lines(t, 10, 25)
    assert lines[0].startswith("(00:20)") and lines[0].endswith(" [0]") and len(lines) == 15
    assert prompt.window_chapters(t, 10, 25) == [(0, "Topic 1"), (10, "Topic 2")]
    # a window opening mid-chapter gets that chapter at 0
    assert prompt.window_chapters(t, 15, 30) == [(0, "Topic 1"), (5, "Topic 2")]


def test_answer_round_trip_is_clean():
    pairs = [(0, "Intro"), (7, "Budget review")]
    text = prompt.render_answer(pairs, 9)
    assert text == "0 + Intro\n1 =\n2 =\n3 =\n4 =\n5 =\n6 =\n7 + Budget review\n8 ="
    res = prompt.parse_answer(text, 20)
    assert res.chapters == pairs and res.health == "clean" and res.repairs == []


def test_tagged_answer_repairs():
    # out of range and non-increasing starts drop, a first line that "goes on" still opens chapter 0
    res = prompt.parse_answer("0 =\n1 =\n2 + Setup\n1 + Again\n3 =\n40 + Too far", 10)
    assert res.chapters == [(0, "Setup")] and "moved first chapter to 0" in res.repairs
    assert "dropped non-increasing start 1" in res.repairs and "dropped out-of-range start 40" in res.repairs
    # every line says "goes on": one chapter, not an unusable answer
    res = prompt.parse_answer("0 =\n1 =\n2 =", 3)
    assert res.chapters == [(0, "Chapter 1")] and res.health == "repaired"


def test_parser_repairs_and_reports():
    text = 'Sure! Here you go:\n```json\n[{"start": 2, "title": "  Intro "}, {"start": 9, "title": "B"},]\n```'
    res = prompt.parse_answer(text, 20)
    assert res.chapters == [(0, "Intro"), (9, "B")]
    assert res.health == "repaired"
    assert {"stripped code fence", "removed trailing comma", "moved first chapter to 0", "trimmed title"} <= set(
        res.repairs
    )


def test_parser_drops_bad_starts():
    res = prompt.parse_answer('[{"start":0,"title":"a"},{"start":5,"title":"b"},{"start":3,"title":"c"},'
                              '{"start":99,"title":"d"},{"start":"x","title":"e"}]', 10)
    assert res.chapters == [(0, "a"), (5, "b")]
    assert "dropped non-increasing start 3" in res.repairs
    assert "dropped out-of-range start 99" in res.repairs


def test_parser_closes_truncated_output():
    res = prompt.parse_answer('[{"start": 0, "title": "Intro"}, {"start": 4, "title": "Next"}, {"start": 8, "ti', 10)
    assert res.chapters == [(0, "Intro"), (4, "Next")] and "closed truncated list" in res.repairs


def test_parser_unusable_on_prose():
    res = prompt.parse_answer("I think the video is about cooking. It has parts.", 10)
    assert res.health == "unusable" and res.chapters == [(0, "Chapter 1")]


@given(st.text(max_size=300), st.integers(min_value=1, max_value=500))
@hsettings(max_examples=300, deadline=None)
def test_parser_never_crashes_and_output_is_valid(text, n):
    res = prompt.parse_answer(text, n)
    starts = [s for s, _ in res.chapters]
    assert starts[0] == 0 and all(0 <= s < n for s in starts)
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert all(t and len(t) <= prompt.MAX_TITLE_CHARS for _, t in res.chapters)
    assert res.health in ("clean", "repaired", "unusable")


@given(st.lists(st.fixed_dictionaries({"start": st.integers(-5, 60), "title": st.text(max_size=30)}), max_size=12))
@hsettings(max_examples=200, deadline=None)
def test_parser_on_json_lists(items):
    res = prompt.parse_answer(json.dumps(items), 50)
    starts = [s for s, _ in res.chapters]
    assert starts[0] == 0 and all(b > a for a, b in itertools.pairwise(starts))


def test_fit_window_and_next_start():
    counts = [10] * 100
    assert prompt.fit_window(counts, 0, 95) == 9
    assert prompt.fit_window([500, 1], 0, 95) == 1  # one over-long line still makes progress
    assert prompt.next_window_start(0, 40, 30) == (30, False)
    assert prompt.next_window_start(0, 40, 5) == (40, True)  # restarting at 5 would crawl


def test_seed_parser_fuzzy_matches_start_text():
    t = make_transcript(30, (0, 10, 20))
    answer = json.dumps([
        {"title": "A", "start_text": "sentence number 0 about topic 0"},
        {"title": "B", "start_text": "Sentence number 10 about topic 1."},
        {"title": "C", "start_text": "something the model made up entirely"},
    ])
    res = prompt.parse_seed_answer(answer, t, 0, 30)
    assert res.chapters == [(0, "A"), (10, "B")]
    assert "start_text matched no segment" in res.repairs and res.health == "repaired"


def test_render_line_caps_words_and_characters() -> None:
    from chaptering.prompt import LINE_CHARS, LINE_WORDS, render_line

    assert render_line(0, " ".join(["w"] * (LINE_WORDS + 5)), None).endswith("… [0]")
    huge = render_line(3, "x" * 100_000, 61.0)
    assert len(huge) < LINE_CHARS + 30 and huge.startswith("(01:01)") and huge.endswith("… [3]")


def test_segment_rejects_infinite_times() -> None:
    import pytest
    from pydantic import ValidationError

    from chaptering.schema import Segment

    with pytest.raises(ValidationError):
        Segment(text="a", start=float("inf"))
    with pytest.raises(ValidationError):
        Segment.model_validate_json('{"text": "a", "start": 0, "end": 1e999}')


def test_parser_merges_a_repeated_title_loop() -> None:
    from chaptering.prompt import parse_answer

    text = '[{"start": 0, "title": "Intro"}, {"start": 3, "title": "Setup"}, {"start": 4, "title": "setup"}, ' \
           '{"start": 5, "title": "Setup"}, {"start": 9, "title": "Wrap up"}]'
    result = parse_answer(text, 12)
    assert result.chapters == [(0, "Intro"), (3, "Setup"), (9, "Wrap up")]
    assert result.health == "repaired" and sum("merged repeated title" in r for r in result.repairs) == 2


def test_tagged_titles_keep_every_start_as_written():
    """Ranked decoding chose these starts: a repeated title is kept, not merged away."""
    text = "0 + Intro\n1 =\n2 + Intro\n3 =\n4 + \"Setup:\"\n5 ="
    assert prompt.tagged_titles(text) == {0: "Intro", 2: "Intro", 4: "Setup"}
