import pytest
from factories import make_transcript

from chaptering import constrain, prompt
from chaptering.models import load_model
from chaptering.predict import LLMChapterer


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


def _lines(text: str) -> list[tuple[int, str]]:
    return [(int(n), tag) for n, tag, _ in prompt._TAG.findall(text)]


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.01])
def test_structured_answer_tags_every_line_once(tiny, threshold):
    """Whatever a random model prefers, the answer has one tag per line, in order, line 0 opening."""
    model, tok = tiny
    ch = LLMChapterer(model, tok, "tiny", context_tokens=1024, max_new_tokens=40, decoding="tagged",
                      start_threshold=threshold)
    t = make_transcript(12, (0, 5))
    text, n = ch.generate(prompt.messages(prompt.window_lines(t, 0, 12)), n_lines=12)
    lines = _lines(text)
    assert [i for i, _ in lines] == list(range(12)) and lines[0][1] == "+"
    starts = [i for i, tag in lines if tag == "+"]
    if threshold == 0.0:
        assert starts == list(range(12))  # every line clears a zero bar
    if threshold > 1:
        assert starts == [0]  # nothing clears an impossible bar; line 0 always opens
    assert prompt.parse_answer(text, 12).chapters[0][0] == 0 and n > 12


def test_start_probability_compares_only_the_two_tags(tiny):
    import torch

    _, tok = tiny
    ids = constrain.tag_token_ids(tok)
    logits = torch.full((len(tok),), -5.0)
    logits[ids["start"]], logits[ids["same"]] = 2.0, 0.0
    logits[123] = 50.0  # any other token, however likely, does not count
    assert constrain.start_probability(logits, ids) == pytest.approx(1 / (1 + torch.exp(torch.tensor(-2.0)).item()))


def test_unstructured_generation_is_still_available(tiny, monkeypatch):
    model, tok = tiny
    called = []
    monkeypatch.setattr(constrain, "generate", lambda *a, **k: called.append(1) or [])
    t = make_transcript(12, (0, 5))
    LLMChapterer(model, tok, "tiny", context_tokens=1024, max_new_tokens=8).predict(t)
    assert called == []
    LLMChapterer(model, tok, "tiny", context_tokens=1024, max_new_tokens=8, decoding="tagged").predict(t)
    assert called == [1]


def test_forced_starts_are_exactly_the_chapters(tiny):
    model, tok = tiny
    t = make_transcript(12, (0, 5))
    enc = tok.apply_chat_template(prompt.messages(prompt.window_lines(t, 0, 12)), add_generation_prompt=True,
                                  tokenize=True, return_dict=True, return_tensors="pt")
    text = tok.decode(constrain.generate(model, tok, enc["input_ids"], 12, starts={3, 7}))
    lines = _lines(text)
    assert [i for i, _ in lines] == list(range(12))
    assert [i for i, tag in lines if tag == "+"] == [0, 3, 7]


def test_start_scores_match_a_teacher_forced_read_of_the_no_start_answer(tiny):
    """One pass over `1 =`, `2 =`, ... gives the same P(+) per line as reading that answer whole."""
    import torch

    model, tok = tiny
    t = make_transcript(10, (0, 5))
    enc = tok.apply_chat_template(prompt.messages(prompt.window_lines(t, 0, 10)), add_generation_prompt=True,
                                  tokenize=True, return_dict=True, return_tensors="pt")
    scores = constrain.start_scores(model, tok, enc["input_ids"], 10)
    answer = constrain.generate(model, tok, enc["input_ids"], 10, starts=set())
    full = torch.tensor([enc["input_ids"][0].tolist() + answer])
    with torch.inference_mode():
        logits = model(input_ids=full).logits[0]
    ids = constrain.tag_token_ids(tok)
    p0 = enc["input_ids"].shape[1]
    tags = [p for p in range(p0, full.shape[1]) if int(full[0, p]) == ids["same"]]
    expected = [constrain.start_probability(logits[p - 1], ids) for p in tags]
    assert len(scores) == 9 and scores == pytest.approx(expected, abs=1e-4)


def test_a_stopped_scoring_pass_returns_flat_scores(tiny):
    model, tok = tiny
    t = make_transcript(8, (0, 4))
    enc = tok.apply_chat_template(prompt.messages(prompt.window_lines(t, 0, 8)), add_generation_prompt=True,
                                  tokenize=True, return_dict=True, return_tensors="pt")
    assert constrain.start_scores(model, tok, enc["input_ids"], 8, stop=lambda: True) == [0.0] * 7


def test_ranked_decoding_opens_chapters_at_the_best_scored_lines_across_windows(tiny, monkeypatch):
    """Scores come per window (overlapping by one line); the picks are global, as many as the length
    suggests, never two within min_chapter_lines, and each gets a title from the forced decoder."""
    from chaptering.baselines import expected_chapters

    model, tok = tiny
    t = make_transcript(120, (0, 40, 80))
    truth = [0.01 * (i % 7) for i in range(120)]
    truth[47], truth[48], truth[90] = 0.9, 0.95, 0.8  # 47 loses to its neighbour 48 (min gap 2)
    offsets: list[int] = []
    real = constrain.start_scores

    def scripted(model, tok, input_ids, n_lines, **kw):
        assert len(real(model, tok, input_ids, n_lines, **kw)) == n_lines - 1  # the real pass runs too
        start = offsets[-1] if offsets else 0
        offsets.append(start + n_lines - 1)
        return truth[start + 1:start + n_lines]

    monkeypatch.setattr(constrain, "start_scores", scripted)
    ch = LLMChapterer(model, tok, "tiny", context_tokens=600, max_new_tokens=40, decoding="ranked")
    pred = ch.predict(t)
    assert len(offsets) > 2 and pred.meta["windows"] == len(offsets)  # several windows were scored
    assert expected_chapters(t) == 3
    assert [c.start_segment for c in pred.chapters] == [0, 48, 90]
    assert all(c.title for c in pred.chapters) and pred.meta["start_scores"][90] == 0.8
