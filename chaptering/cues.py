"""Per-line boundary cues: what a reader uses to see that a new chapter starts at line i.

One row per line (line 0 included, it is never a decision): the pause before it, topic drift from
MiniLM embeddings at several window sizes (similarity and TextTiling-style depth, raw and z-scored
within the transcript), discourse cue phrases ("so, next", "let's move on", "welcome back"), a speaker
change, position in the transcript, and its size and pace. Untimed transcripts (meetings) leave the time
cues NaN, which the gradient-boosted trees of boundary.py treat as missing, not as zero.

Embeddings come from embeddings.py, cached on disk per transcript text: nightly runs only embed lines
they have not seen.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chaptering.embeddings import clean_line, gap_similarity, line_embeddings
from chaptering.schema import Transcript

SCALES = (1, 3, 6, 12)  # lines either side for the similarity across a gap

# Phrases that open a new part in spoken English (lower-case, matched at the start of the line after
# fillers are stripped); each family is one feature so the trees can weigh them separately.
CUE_FAMILIES: dict[str, tuple[str, ...]] = {
    "transition": ("so ", "so,", "now ", "now,", "okay", "ok ", "ok,", "alright", "all right", "right,",
                   "anyway", "moving on", "let's move", "let us move", "next", "then ", "after that"),
    "agenda": ("let's talk", "let's look", "let's see", "let's get", "let's start", "let's go", "let's dive",
               "let's take", "let's jump", "let me show", "let me talk", "i want to talk", "i'd like to",
               "we're going to", "we are going to", "i'm going to", "in this", "today we", "today i",
               "the next", "the first", "first,", "first ", "second", "third", "finally", "lastly",
               "step ", "part "),
    "greeting": ("hello", "hi ", "hi,", "hey ", "hey,", "welcome", "good morning", "good afternoon",
                 "thank", "thanks", "bye", "see you", "that's it", "that's all", "in summary",
                 "to summarize", "to sum up", "in conclusion", "so that's"),
    "question": ("what ", "why ", "how ", "who ", "where ", "when ", "which ", "can you", "could you",
                 "do you", "does ", "is there", "are there"),
}
_FILLER = re.compile(r"^(?:(?:um|uh|uhm|erm|er|hmm|mm|oh|ah|and|but)\b[\s,.]*)+", re.IGNORECASE)

FEATURES: list[str] = (
    ["pause", "pause_rel", "pause_next", "dur", "words", "words_prev", "rate", "pos_line", "pos_time",
     "t_from_start", "t_to_end", "total_time", "n_lines", "timed", "speaker_change", "speaker_change_next",
     "ends_sentence_prev", "question_prev"]
    + [f"cue_{k}" for k in CUE_FAMILIES]
    + [f"{kind}_{w}{sfx}" for w in SCALES for kind in ("sim", "depth") for sfx in ("", "_z", "_prev", "_next")]
    + ["sim_local_min_6", "sim_rank"]
)


def cue_flags(text: str) -> dict[str, float]:
    """1.0 per cue family whose phrase opens the line (after leading fillers)."""
    head = _FILLER.sub("", clean_line(text).lower())[:40] + " "
    return {f"cue_{k}": float(any(head.startswith(p) for p in ps)) for k, ps in CUE_FAMILIES.items()}


def _depth(sim: Any) -> Any:
    """TextTiling depth of each gap: climb to the highest similarity on each side while it rises."""
    import numpy as np

    n = len(sim)
    left = np.empty(n)
    right = np.empty(n)
    for i in range(n):
        v = sim[i]
        j = i
        while j > 0 and sim[j - 1] >= v:
            j -= 1
            v = sim[j]
        left[i] = v
    for i in range(n - 1, -1, -1):
        v = sim[i]
        j = i
        while j < n - 1 and sim[j + 1] >= v:
            j += 1
            v = sim[j]
        right[i] = v
    return left + right - 2 * sim


def _z(x: Any) -> Any:
    import numpy as np

    sd = float(np.std(x[1:])) if len(x) > 2 else 0.0
    return (x - float(np.mean(x[1:] if len(x) > 1 else x))) / (sd if sd > 1e-9 else 1.0)


def _shift(x: Any, k: int, fill: float) -> Any:
    """x moved k places to the right (x[i - k] at i), `fill` where nothing moves in."""
    import numpy as np

    out = np.full_like(x, fill, dtype=np.float64)
    if k > 0:
        out[k:] = x[:-k]
    elif k < 0:
        out[:k] = x[-k:]
    else:
        out[:] = x
    return out


def line_features(transcript: Transcript, emb: Any) -> Any:
    """(n_lines, len(FEATURES)) float matrix in FEATURES order (NaN = not known)."""
    import numpy as np

    segs = transcript.segments
    n = len(segs)
    nan = float("nan")
    timed = transcript.has_times
    starts = np.array([float(s.start) if timed and s.start is not None else nan for s in segs])
    ends = np.array([float(s.end) if timed and s.end is not None else nan for s in segs])
    if timed:
        ends = np.where(np.isnan(ends), np.append(starts[1:], starts[-1]), ends)
    words = np.array([len(clean_line(s.text).split()) for s in segs], dtype=np.float64)
    cols: dict[str, Any] = {}
    pause = np.full(n, nan)
    if timed and n > 1:
        pause[1:] = np.maximum(0.0, starts[1:] - ends[:-1])
    med = float(np.nanmedian(pause[1:])) if timed and n > 1 else nan
    cols["pause"] = pause
    cols["pause_rel"] = pause / (med + 0.1) if timed else np.full(n, nan)
    cols["pause_next"] = _shift(pause, -1, nan)
    dur = ends - starts if timed else np.full(n, nan)
    cols["dur"] = dur
    cols["words"] = words
    cols["words_prev"] = _shift(words, 1, 0.0)
    cols["rate"] = words / np.maximum(dur, 0.5) if timed else np.full(n, nan)
    cols["pos_line"] = np.arange(n) / max(1, n - 1)
    total = float(ends[-1] - starts[0]) if timed and n else nan
    cols["pos_time"] = (starts - starts[0]) / max(total, 1e-6) if timed else np.full(n, nan)
    cols["t_from_start"] = starts - starts[0] if timed else np.full(n, nan)
    cols["t_to_end"] = ends[-1] - starts if timed else np.full(n, nan)
    cols["total_time"] = np.full(n, total)
    cols["n_lines"] = np.full(n, float(n))
    cols["timed"] = np.full(n, float(timed))
    speakers = [s.speaker for s in segs]
    if any(sp for sp in speakers):
        change = np.array([0.0] + [float(a != b) for a, b in itertools.pairwise(speakers)])
    else:
        change = np.full(n, nan)
    cols["speaker_change"] = change
    cols["speaker_change_next"] = _shift(change, -1, nan)
    texts = [clean_line(s.text) for s in segs]
    cols["ends_sentence_prev"] = _shift(np.array([float(t.endswith((".", "!", "?"))) for t in texts]), 1, 1.0)
    cols["question_prev"] = _shift(np.array([float(t.endswith("?")) for t in texts]), 1, 0.0)
    flags = [cue_flags(t) for t in texts]
    for k in CUE_FAMILIES:
        cols[f"cue_{k}"] = np.array([f[f"cue_{k}"] for f in flags])
    for w in SCALES:
        sim = gap_similarity(emb, w)
        depth = _depth(sim)
        for kind, x in (("sim", sim), ("depth", depth)):
            cols[f"{kind}_{w}"] = x
            cols[f"{kind}_{w}_z"] = _z(x)
            cols[f"{kind}_{w}_prev"] = _shift(x, 1, nan)
            cols[f"{kind}_{w}_next"] = _shift(x, -1, nan)
    sim6 = cols["sim_6"]
    local = np.array([float(sim6[i] <= sim6[max(1, i - 6):i + 7].min()) if i else 0.0 for i in range(n)])
    cols["sim_local_min_6"] = local
    order = np.argsort(np.argsort(sim6))
    cols["sim_rank"] = order / max(1, n - 1)
    return np.column_stack([cols[f] for f in FEATURES]).astype(np.float32)


def transcript_features(transcript: Transcript, cache_dir: Path | None = None,
                        encode: Callable[[Sequence[str]], Any] | None = None) -> Any:
    """Features of every line of `transcript` (embeddings from the cache when there). `encode` replaces the
    PyTorch MiniLM (chaptering.edge passes its ONNX export): everything after the encoder is this code."""
    return line_features(transcript, line_embeddings(transcript, cache_dir, encode))


def start_labels(transcript: Transcript) -> Sequence[int]:
    """1 where a reference chapter starts (line 0 excluded: it always starts one)."""
    starts = set(transcript.boundaries) - {0}
    return [int(i in starts) for i in range(len(transcript.segments))]


def family_weights(families: Sequence[str]) -> Any:
    """Per-line weights under which every source family sums to the same total (one QMSum meeting has as
    many lines as 200 short videos): what the trees and the lexical cue both train with."""
    import numpy as np

    fam = np.asarray(families, dtype=object)
    weights = np.ones(len(fam))
    kinds = set(fam.tolist())
    for f in kinds:
        mask = fam == f
        weights[mask] = len(fam) / (len(kinds) * mask.sum())
    return weights
