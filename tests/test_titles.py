"""Title prompts and rows: one row per labelled chapter, title DPO pairs only where a user retitled a
chapter whose start they kept, and the titler writes cleaned one-line titles under a deadline."""

from __future__ import annotations

from factories import make_transcript

from chaptering.schema import Chapter, FeedbackEvent
from chaptering.titles import LLMTitler, chapter_text, title_dpo_rows, title_messages, title_rows


def test_one_row_per_chapter_with_its_opening_text_and_title():
    t = make_transcript(n=30, chapters=(0, 10, 20))
    rows = list(title_rows([t]))
    assert [r["completion"][0]["content"] for r in rows] == ["Topic 0", "Topic 1", "Topic 2"]
    assert [r["window_start"] for r in rows] == [0, 10, 20] and all(r["n_chapters"] == 1 for r in rows)
    second = rows[1]["prompt"][-1]["content"]
    assert "sentence number 10 about topic 1" in second and "sentence number 9 " not in second
    assert "sentence number 20" not in second  # the chapter's own text only
    assert rows[1]["prompt"] == title_messages(chapter_text(t, 10, 20))[:2]


def test_opening_text_is_bounded_for_long_chapters():
    t = make_transcript(n=400, chapters=(0,))
    assert len(chapter_text(t, 0, 400, max_chars=300)) <= 300


def test_untitled_chapters_make_no_rows():
    t = make_transcript(n=20, chapters=(0, 10))
    t.chapters[1] = Chapter(title="  ", start_segment=10)
    assert [r["window_start"] for r in title_rows([t])] == [0]


def test_title_pairs_only_for_kept_starts_with_new_titles():
    t = make_transcript(n=30, chapters=(0, 10, 20))
    served = [Chapter(title="Intro", start_segment=0), Chapter(title="Middle", start_segment=12),
              Chapter(title="End", start_segment=20)]
    corrected = [Chapter(title="Welcome and agenda", start_segment=0), Chapter(title="Middle", start_segment=10),
                 Chapter(title="End", start_segment=20)]
    ev = FeedbackEvent(transcript_id=t.id, model_version="1", predicted=served, corrected=corrected)
    rows = list(title_dpo_rows([(ev, t)]))
    assert len(rows) == 1  # 10 moved (a boundary label, not a title pair); 20 unchanged
    assert rows[0]["chosen"][0]["content"] == "Welcome and agenda" and rows[0]["rejected"][0]["content"] == "Intro"
    rating = FeedbackEvent(transcript_id=t.id, model_version="1", predicted=served, rating="accept")
    assert list(title_dpo_rows([(rating, t)])) == []


def test_titler_writes_one_clean_line_per_chapter_and_stops_at_the_deadline(tiny_dir):
    from chaptering.models import load_model

    model, tok = load_model(str(tiny_dir))
    titler = LLMTitler(model, tok, max_new_tokens=6)
    t = make_transcript(n=30, chapters=(0,))
    titles, _ = titler.titles(t, [0, 10, 20])
    assert len(titles) == 3 and all("\n" not in x and len(x.split()) <= 10 for x in titles)
    titler.should_stop = lambda: True
    assert titler.titles(t, [0, 10]) == (["", ""], 0)


def test_batched_titles_match_one_at_a_time(tiny_dir):
    """Left padding must not change an answer: a batch of chapters of different lengths gives the
    titles each chapter gets alone."""
    from chaptering.models import load_model

    model, tok = load_model(str(tiny_dir))
    t = make_transcript(n=60, chapters=(0,))
    starts = [0, 3, 20, 21, 45]  # chapters of 3, 17, 1, 24 and 15 lines: prompts of different lengths
    alone, _ = LLMTitler(model, tok, max_new_tokens=5, batch_size=1).titles(t, starts)
    batched, _ = LLMTitler(model, tok, max_new_tokens=5, batch_size=4).titles(t, starts)
    assert batched == alone
