"""The learned lexical cue finds the words that open chapters, scores without scikit-learn, round-trips
through JSON, and gives training lines scores from a model that never read their transcript."""

import pytest

from chaptering import lexical
from chaptering.schema import Chapter, Segment, Transcript


def _talk(tid: str, opener: str = "moving along", n: int = 40, every: int = 10, extra: str = "") -> Transcript:
    """Lines of filler; each chapter (every `every` lines) opens with `opener`, and the line before it ends
    with 'that wraps it'."""
    segs = []
    for i in range(n):
        text = f"we keep talking about item {i % 7} here {extra}"
        if i % every == 0 and i:
            text = f"{opener} we look at part {i // every}"
        if (i + 1) % every == 0:
            text = "and that wraps it"
        segs.append(Segment(text=text, start=3.0 * i, end=3.0 * i + 2.5))
    chapters = [Chapter(title=f"Part {k}", start_segment=s) for k, s in enumerate(range(0, n, every))]
    return Transcript(id=tid, source="demo/talks", segments=segs, chapters=chapters)


def test_the_words_that_open_chapters_score_highest():
    cue = lexical.fit([_talk(f"t{k}") for k in range(6)])
    assert cue.weights["h0:moving"] > 0.1 and cue.weights["p:wraps"] > 0.1 and cue.weights["h:keep"] < 0
    scores = cue.scores(_talk("new"))
    starts = [10, 20, 30]
    assert min(scores[i] for i in starts) > max(s for i, s in enumerate(scores) if i not in starts and i)


def test_round_trips_through_json(tmp_path):
    cue = lexical.fit([_talk(f"t{k}") for k in range(4)])
    again = lexical.LexicalCue.load(tmp_path) if cue.save(tmp_path) else None
    assert (tmp_path / lexical.LEXICAL_FILE).read_text().startswith("{")
    assert list(again.scores(_talk("x"))) == pytest.approx(list(cue.scores(_talk("x"))), abs=1e-5)


def test_out_of_fold_scores_come_from_models_that_did_not_read_the_transcript():
    # One transcript's chapters open with a word no other transcript has: its own out-of-fold model has
    # never seen that word, so its starts score like any other line; the model fitted on all of it has.
    talks = [_talk(f"t{k}") for k in range(8)] + [_talk("odd", opener="zebra")]
    oof = lexical.out_of_fold(talks, folds=3)
    assert set(oof) == {t.id for t in talks}
    full = lexical.fit(talks)
    odd = talks[-1]
    assert full.weights["h0:zebra"] > 0.1
    assert oof["odd"][10] < full.scores(odd)[10] - 0.1


def test_an_unlabelled_set_gives_a_neutral_cue():
    t = _talk("u")
    cue = lexical.fit([t.model_copy(update={"chapters": []})])
    assert cue.weights == {} and list(cue.scores(t)) == [0.0] * len(t.segments)
