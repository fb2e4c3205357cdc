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


def test_who_speaks_is_a_token_the_cue_learns():
    """The host (first speaker) opens every chapter: the cue learns `s:first` from transcripts whose hosts
    have different names, so a new host's chapter openings score higher than the guest's lines."""
    def hosted(tid: str, host: str) -> Transcript:
        t = _talk(tid, opener="well", every=8)
        starts = set(t.boundaries)
        segs = [s.model_copy(update={"speaker": host if i in starts else f"guest of {host}"})
                for i, s in enumerate(t.segments)]
        return t.model_copy(update={"segments": segs})

    cue = lexical.fit([hosted(f"h{k}", f"Host {k}") for k in range(6)])
    assert cue.weights["s:first"] > 0.1
    new = hosted("new", "Someone Else")
    assert "s:someone else" in lexical.line_tokens(new)[0] and "s:first" in lexical.line_tokens(new)[8]
    scores = cue.scores(new)
    assert scores[8] > max(scores[i] for i in range(1, 8))
    assert lexical.line_tokens(_talk("plain"))[5] == [t for t in lexical.line_tokens(_talk("plain"))[5]
                                                      if not t.startswith("s:")]


def test_scores_do_not_depend_on_the_process_hash_seed():
    """A retrain on the same data must give the same model: the trees split on the cue's exact values, so
    its sum may not follow a set's order, which changes with each process's PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    script = ("from chaptering.lexical import LexicalCue\n"
              "from chaptering.schema import Segment, Transcript\n"
              "t = Transcript(id='x', source='demo/t', segments=[Segment(text='alpha beta gamma', start=0.0, end=1.0),"
              " Segment(text='alpha beta gamma', start=1.0, end=2.0)])\n"
              "cue = LexicalCue(weights={'h:alpha': 1e17, 'h:beta': 1.0, 'h:gamma': -1e17}, bias=0.0)\n"
              "print(cue.scores(t).tolist())\n")
    outs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(8)}
    assert len(outs) == 1, outs
