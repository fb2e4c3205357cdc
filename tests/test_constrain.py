import pytest

from chaptering import constrain, prompt
from chaptering.models import load_model
from chaptering.predict import LLMChapterer
from factories import make_transcript


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


def _lines(text: str) -> list[tuple[int, str]]:
    return [(int(n), tag) for n, tag, _ in prompt._TAG.findall(text)]


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.01])
def test_structured_answer_tags_every_line_once(tiny, threshold):
    """Whatever a random model prefers, the answer has one tag per line, in order, line 0 opening."""
    model, tok = tiny
    ch = LLMChapterer(model, tok, "tiny", context_tokens=1024, max_new_tokens=40, structured=True,
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
    ids = constrain._token_ids(tok)
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
    LLMChapterer(model, tok, "tiny", context_tokens=1024, max_new_tokens=8, structured=True).predict(t)
    assert called == [1]
