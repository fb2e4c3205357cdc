"""Baselines: valid predictions everywhere, reproducible floors, and topic shifts that are found."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from chaptering.baselines import (
    BASELINES,
    Chapterer,
    EmbeddingChapterer,
    EqualChapterer,
    RandomChapterer,
    SingleChapterer,
    TextTilingChapterer,
    make_baseline,
    mean_chapters,
    titles_for,
)
from chaptering.schema import Prediction, Segment, Transcript
from tests.factories import make_transcript

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

PASTA = [
    "Bring a large pot of water to a rolling boil before the pasta goes in.",
    "Salt the boiling water generously, it should taste almost like sea water.",
    "Drop the spaghetti into the pot and stir so the noodles do not stick together.",
    "While the pasta cooks, warm olive oil in a wide pan over medium heat.",
    "Slice four cloves of garlic thinly and let them sizzle in the oil until golden.",
    "Crush a can of ripe tomatoes by hand and pour them into the garlic oil.",
    "Season the tomato sauce with salt, black pepper and a pinch of chili flakes.",
    "Let the sauce simmer gently for ten minutes so the tomatoes break down.",
    "Taste a strand of spaghetti, it should be tender but still firm to the bite.",
    "Save a cup of the starchy pasta water before you drain the noodles.",
    "Toss the drained spaghetti straight into the pan with the tomato sauce.",
    "Splash in some pasta water so the sauce turns glossy and coats every noodle.",
    "Tear fresh basil leaves over the pasta and stir them through the sauce.",
    "Grate plenty of parmesan cheese on top right before serving the pasta.",
    "Serve the spaghetti hot in warm bowls with a drizzle of olive oil.",
]
BICYCLE = [
    "Flip the bicycle upside down so it rests on the saddle and handlebars.",
    "Open the brake caliper so the wheel can slide out of the frame.",
    "Loosen the quick release lever and pull the rear wheel away from the chain.",
    "Use two tire levers to pry the edge of the tire off the rim.",
    "Pull the punctured inner tube out and pump a little air into it.",
    "Listen for the hissing leak and mark the hole in the tube with chalk.",
    "Run your fingers inside the tire to find the thorn or glass that caused the flat.",
    "Fit a new inner tube, starting with the valve through the hole in the rim.",
    "Push the tire bead back onto the rim with your thumbs, never with a screwdriver.",
    "Inflate the tube to the pressure printed on the sidewall of the tire.",
    "Lift the chain onto the smallest cog and seat the wheel back into the dropouts.",
    "Close the quick release lever firmly and reconnect the brake caliper.",
    "Spin the wheel to check that the rim runs true and the brake pads do not rub.",
    "Wipe the dirty chain with a rag and add a drop of lube to every link.",
    "Shift through all the gears while pedaling to make sure the derailleur works.",
]
SWITCH = len(PASTA)


def two_topics(tid: str = "two-topics", timed: bool = True) -> Transcript:
    texts = PASTA + BICYCLE
    return Transcript(
        id=tid,
        segments=[Segment(text=t, start=4.0 * i if timed else None, end=4.0 * i + 3.9 if timed else None)
                  for i, t in enumerate(texts)],
    )


def assert_valid(pred: Prediction, t: Transcript, name: str) -> None:
    n = len(t.segments)
    starts = pred.boundaries
    assert pred.id == t.id and pred.model == name and pred.meta["health"] == "clean"
    assert starts[0] == 0 and all(b > a for a, b in pairwise(starts)) and starts[-1] < n
    for c in pred.chapters:
        assert c.title.strip()
        assert c.start == t.segments[c.start_segment].start


def real_transcript(rel: str) -> Transcript:
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"shared data missing: {path}")
    with path.open() as f:
        return Transcript(**json.loads(f.readline()))


CHEAP = [SingleChapterer(), EqualChapterer(4.4), RandomChapterer(4.4, seed=1), TextTilingChapterer(),
         TextTilingChapterer(n_chapters=4.4)]
CHEAP_IDS = ["single", "equal", "random", "texttiling", "texttiling-capped"]


@pytest.mark.parametrize("chapterer", CHEAP, ids=CHEAP_IDS)
@pytest.mark.parametrize("timed", [True, False])
def test_cheap_baselines_valid_on_synthetic(chapterer: Chapterer, timed: bool) -> None:
    t = make_transcript(n=30, timed=timed)
    assert isinstance(chapterer, Chapterer)
    assert_valid(chapterer.predict(t), t, chapterer.name)


@pytest.mark.parametrize("rel", ["video/vidchapters-short.jsonl", "qmsum/qmsum-val.jsonl"])
@pytest.mark.parametrize("chapterer", CHEAP, ids=CHEAP_IDS)
def test_cheap_baselines_valid_on_real(chapterer: Chapterer, rel: str) -> None:
    t = real_transcript(rel)
    pred = chapterer.predict(t)
    assert_valid(pred, t, chapterer.name)
    assert "fallback" not in pred.meta  # real transcripts are long enough for TextTiling


def test_single() -> None:
    assert SingleChapterer().predict(make_transcript()).boundaries == [0]


def test_equal_splits_evenly() -> None:
    assert EqualChapterer(3).predict(make_transcript(n=30)).boundaries == [0, 10, 20]
    assert EqualChapterer(4.4).predict(make_transcript(n=10, chapters=(0,))).boundaries == [0, 2, 5, 7]
    assert EqualChapterer(50).predict(make_transcript(n=5, chapters=(0,))).boundaries == [0, 1, 2, 3, 4]  # capped by n


def test_random_is_reproducible_per_seed_and_transcript() -> None:
    t = make_transcript(n=200)
    a = RandomChapterer(6, seed=0).predict(t).boundaries
    assert a == RandomChapterer(6, seed=0).predict(t).boundaries
    assert len(a) == 6
    assert a != RandomChapterer(6, seed=1).predict(t).boundaries
    other = make_transcript(n=200, tid="t2")
    assert a != RandomChapterer(6, seed=0).predict(other).boundaries
    assert RandomChapterer(9, seed=0).predict(make_transcript(n=3, chapters=(0,))).boundaries == [0, 1, 2]


def test_titles_are_keywords() -> None:
    t = two_topics()
    titles = titles_for(t, [0, SWITCH])
    assert "Pasta" in titles[0].split() or "Spaghetti" in titles[0].split()
    assert {"Tire", "Wheel", "Brake", "Chain", "Tube", "Rim"} & set(titles[1].split())
    assert all(len(x.split()) <= 3 for x in titles)
    empty = Transcript(id="e", segments=[Segment(text="uh, the and of"), Segment(text="Yeah.")])
    assert titles_for(empty, [0, 1]) == ["Part 1", "Part 2"]


def test_texttiling_finds_topic_switch() -> None:
    t = two_topics()
    pred = TextTilingChapterer().predict(t)
    assert_valid(pred, t, "baseline:texttiling")
    assert "fallback" not in pred.meta
    assert any(abs(b - SWITCH) <= 3 for b in pred.boundaries[1:]), pred.boundaries
    capped = TextTilingChapterer(n_chapters=2).predict(t).boundaries
    assert len(capped) == 2 and abs(capped[1] - SWITCH) <= 3, capped


@pytest.mark.parametrize("texts", [["Hello there."], ["Short one.", "Another short one."],
                                   ["", "Only this segment says anything.", " "], ["a b c"] * 4])
def test_texttiling_too_short_falls_back(texts: list[str]) -> None:
    t = Transcript(id="short", segments=[Segment(text=x) for x in texts])
    pred = TextTilingChapterer().predict(t)
    assert_valid(pred, t, "baseline:texttiling")
    assert pred.boundaries == [0]


def test_texttiling_skips_asr_tags_and_empty_turns() -> None:
    t = two_topics()
    segs = list(t.segments)
    segs.insert(SWITCH, Segment(text="{vocalsound}", start=segs[SWITCH].start, end=segs[SWITCH].start))
    t2 = Transcript(id="tags", segments=segs)
    starts = TextTilingChapterer(n_chapters=2).predict(t2).boundaries
    assert len(starts) == 2 and abs(starts[1] - SWITCH) <= 3 and starts[1] != SWITCH  # never on the empty turn


def test_make_baseline() -> None:
    for name in BASELINES:
        c = make_baseline(name, train_mean_chapters=4.0, seed=3)
        assert c.name == f"baseline:{name}"
        assert make_baseline(f"baseline:{name}").name == c.name
    assert make_baseline("random", seed=3).seed == 3  # type: ignore[attr-defined]
    assert make_baseline("embedding", 4.0).n_chapters == 4.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="random, equal, single, texttiling, embedding"):
        make_baseline("seed")


def test_mean_chapters() -> None:
    ts = [make_transcript(chapters=(0, 10)), make_transcript(chapters=(0, 5, 10, 20)),
          Transcript(id="x", segments=[Segment(text="hi")])]
    assert mean_chapters(ts) == 3.0
    assert mean_chapters([]) == 5.0


def test_embedding_short_transcript_needs_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import chaptering.embeddings as e

    monkeypatch.setattr(e, "embed", lambda *a, **k: pytest.fail("model loaded for a 3-segment transcript"))
    t = Transcript(id="s", segments=[Segment(text=x) for x in ("One.", "Two.", "Three.")])
    pred = EmbeddingChapterer(n_chapters=5).predict(t)
    assert_valid(pred, t, "baseline:embedding")
    assert pred.boundaries == [0]


def test_embedding_valleys_with_fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut selection alone: one-hot topic vectors put the deepest valley exactly at the switch."""
    import numpy as np

    import chaptering.embeddings as e

    def fake_embed(texts: list[str], **_: object) -> np.ndarray:
        return np.array([[1.0, 0.0] if i < SWITCH else [0.0, 1.0] for i in range(len(texts))], dtype=np.float32)

    monkeypatch.setattr(e, "embed", fake_embed)
    t = two_topics()
    assert EmbeddingChapterer(n_chapters=2).predict(t).boundaries == [0, SWITCH]
    starts = EmbeddingChapterer(n_chapters=6, min_len=3).predict(t).boundaries
    assert len(starts) == 6 and SWITCH in starts
    assert min(b - a for a, b in zip(starts, [*starts[1:], len(t.segments)])) >= 3


# --- the real MiniLM encoder (~5 s in all on CPU: loaded once per process) ---------------------------


@pytest.mark.embedding
def test_embedding_finds_topic_switch() -> None:
    t = two_topics(timed=False)
    pred = EmbeddingChapterer(n_chapters=2).predict(t)
    assert_valid(pred, t, "baseline:embedding")
    assert abs(pred.boundaries[1] - SWITCH) <= 3, pred.boundaries
    auto = EmbeddingChapterer().predict(t).boundaries  # count estimated from length: 3 here
    assert len(auto) == 3 and any(abs(b - SWITCH) <= 3 for b in auto[1:]), auto


@pytest.mark.embedding
def test_embedding_matches_sentence_transformers_semantics() -> None:
    """Unit-norm vectors, paraphrases closer than unrelated sentences: mean pooling is wired right."""
    from chaptering.embeddings import embed

    v = embed(["How do I fix a flat bicycle tire?", "Repairing a punctured bike tyre.",
               "Boil the spaghetti in salted water.", ""])
    assert v.shape == (4, 384)
    assert abs(float((v[:3] ** 2).sum(1).min()) - 1.0) < 1e-4
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


@pytest.mark.embedding
@pytest.mark.parametrize("rel", ["video/vidchapters-short.jsonl", "qmsum/qmsum-val.jsonl"])
def test_embedding_valid_on_real(rel: str) -> None:
    t = real_transcript(rel)
    pred = make_baseline("embedding", train_mean_chapters=4.4).predict(t)
    assert_valid(pred, t, "baseline:embedding")
    assert len(pred.chapters) == min(4, len(t.segments) // 2)
