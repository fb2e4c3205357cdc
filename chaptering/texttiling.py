"""TextTiling (Hearst 1997, nltk's implementation) adapted to ASR segments: a classic baseline."""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from typing import Any

from chaptering.embeddings import ASR_TAG
from chaptering.keywords import STOPWORDS
from chaptering.keywords import prediction_from_starts as _prediction
from chaptering.schema import Prediction, Transcript

_NON_LETTERS = re.compile(r"[^a-z]+")


def _tiling_text(text: str) -> str:
    """Lower-case letters and single spaces only.

    nltk counts words twice: `\\w+` on a punctuation-stripped copy to build pseudosentences, then
    whitespace-separated tokens of the raw text to map gaps back to paragraph breaks. On ASR text with
    spaced punctuation ("OK , we 're on .") the two counts drift apart and every boundary lands earlier
    than it should, more so the longer the transcript. With letters and spaces only they agree exactly.
    """
    return " ".join(_NON_LETTERS.split(ASR_TAG.sub(" ", text).lower())).strip()


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
