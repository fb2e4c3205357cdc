"""A learned lexical cue: which words open a chapter's first line, which close the line before it, and who
speaks it.

cues.py's hand-written cue phrases ("so, next", "welcome back") are few and English-general; each corpus
has its own openers and closers (a meeting's "the industrial designer's presentation", a talk's "let's
get started", a tutorial's "step two"; a meeting's chair or a talk's host opens most parts). This is a
logistic regression over the first words (and word pairs) of line i, the last words of line i-1 and
line i's speaker, trained on the labelled starts; its logit becomes one more feature of the boundary
trees (boundary.py).

The trees must see on training lines what they will see on new ones, a score from a model that never
read that transcript, so training lines get out-of-fold scores (`out_of_fold`) and new transcripts the
score of the model fitted on every transcript. Saved as JSON (weights by token): no pickle, and scoring
needs numpy only (the edge runtime has no scikit-learn).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaptering.embeddings import clean_line
from chaptering.schema import Transcript

LEXICAL_FILE = "lexical.json"
HEAD_WORDS = 5  # words of the line itself
TAIL_WORDS = 4  # words that close the line before it
_WORD = re.compile(r"[a-z']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(clean_line(text).lower())


def _speaker_tokens(transcript: Transcript) -> list[list[str]]:
    """Who speaks each line: the speaker's name or role (a meeting's "Project Manager" opens most topics),
    and whether it is the transcript's first or most frequent speaker (the host or chair, whatever the
    diarizer called them). Empty lists for transcripts without speakers."""
    from collections import Counter

    speakers = [s.speaker for s in transcript.segments]
    named = [s for s in speakers if s]
    if not named:
        return [[] for _ in speakers]
    first, top = named[0], Counter(named).most_common(1)[0][0]
    return [[f"s:{s.lower()}"] + (["s:first"] if s == first else []) + (["s:top"] if s == top else [])
            if s else [] for s in speakers]


def line_tokens(transcript: Transcript) -> list[list[str]]:
    """The tokens each line is scored on: its first words (the first two also by position) and word
    pairs, the closing words and pairs of the line before, and who speaks it."""
    words = [_words(s.text) for s in transcript.segments]
    speakers = _speaker_tokens(transcript)
    out = []
    for i, w in enumerate(words):
        head = w[:HEAD_WORDS]
        tail = words[i - 1][-TAIL_WORDS:] if i else []
        toks = [f"h:{x}" for x in head] + [f"h{j}:{x}" for j, x in enumerate(head[:2])]
        toks += [f"hb:{a}_{b}" for a, b in itertools.pairwise(head)]
        toks += [f"p:{x}" for x in tail] + [f"pb:{a}_{b}" for a, b in itertools.pairwise(tail)]
        out.append(toks + speakers[i])
    return out


@dataclass
class LexicalCue:
    """Token weights and a bias: the logit of P(start) from the words around a line."""

    weights: dict[str, float]
    bias: float

    def scores(self, transcript: Transcript) -> Any:
        """One logit per line (float32 numpy array). Summed in sorted token order: a set's order changes
        with each process's hash seed, and so would the last bits of the sum and the trees' splits on it."""
        import numpy as np

        w = self.weights
        return np.array([self.bias + sum(w.get(t, 0.0) for t in sorted(set(toks))) for toks in line_tokens(transcript)],
                        dtype=np.float32)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / LEXICAL_FILE
        path.write_text(json.dumps({"bias": self.bias, "weights": self.weights}, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> LexicalCue:
        data = json.loads((Path(folder) / LEXICAL_FILE).read_text())
        return cls(weights={str(k): float(v) for k, v in data["weights"].items()}, bias=float(data["bias"]))


def fit(transcripts: Sequence[Transcript], c: float = 1.0, min_count: int = 2) -> LexicalCue:
    """Weighted logistic regression (each source family weighs the same in total, as for the trees) on
    every line but the first; tokens seen on fewer than `min_count` lines are left out.

    C = 1 and 2 lines were chosen by out-of-fold AUC per family on the shared corpus (0.61 mean; C 0.1: 0.59,
    5 lines: 0.60), and the speaker tokens by the same measure (0.620 -> 0.629); see docs/boundary-model.md.
    """
    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    from chaptering.cues import family_weights, start_labels
    from chaptering.decode import source_family

    rows, labels, families = [], [], []
    for t in transcripts:
        if not t.chapters or len(t.segments) < 2:
            continue
        toks = line_tokens(t)
        rows += [dict.fromkeys(tk, 1.0) for tk in toks[1:]]
        labels += list(start_labels(t))[1:]
        families += [source_family(t)] * (len(toks) - 1)
    if not rows or len(set(labels)) < 2:
        return LexicalCue(weights={}, bias=0.0)
    vec = DictVectorizer()
    x = vec.fit_transform(rows)
    keep = np.flatnonzero(np.asarray((x > 0).sum(axis=0)).ravel() >= min_count)
    x = x[:, keep]
    names = vec.get_feature_names_out()[keep]
    model = LogisticRegression(C=c, max_iter=500)
    model.fit(x, np.array(labels), sample_weight=family_weights(families))
    coef = model.coef_[0]
    return LexicalCue(weights={str(n): round(float(v), 5) for n, v in zip(names, coef) if abs(v) > 1e-5},
                      bias=float(model.intercept_[0]))


def fold_of(transcript_id: str, folds: int) -> int:
    h = hashlib.sha256(f"boundary-lexical:{transcript_id}".encode()).digest()[:4]
    return int.from_bytes(h, "big") % folds


def out_of_fold(transcripts: Sequence[Transcript], folds: int = 3, **fit_kwargs: Any) -> dict[str, Any]:
    """Per transcript id, the scores of a model fitted on the other folds (stable folds by hashed id)."""
    scores: dict[str, Any] = {}
    for k in range(folds):
        model = fit([t for t in transcripts if fold_of(t.id, folds) != k], **fit_kwargs)
        for t in transcripts:
            if fold_of(t.id, folds) == k:
                scores[t.id] = model.scores(t)
    return scores
