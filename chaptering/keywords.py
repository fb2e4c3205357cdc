"""Keyword titles and the stopword lists behind them: the honest floor for the title metric.

Baselines have no language model, but the evaluation scores titles too (ROUGE-L); the boundary
chapterer falls back to these titles when it ships without a title adapter.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from chaptering.embeddings import clean_line
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


def prediction_from_starts(transcript: Transcript, starts: Sequence[int], model: str, **meta: Any) -> Prediction:
    """Validated Prediction from chapter starts (sorted, deduplicated, 0 forced in, range-checked)."""
    n = len(transcript.segments)
    clean = sorted({0, *(int(s) for s in starts if 0 <= int(s) < n)})
    titles = titles_for(transcript, clean)
    chapters = [
        PredictedChapter(title=t, start_segment=s, start=transcript.segments[s].start)
        for t, s in zip(titles, clean)
    ]
    return Prediction(id=transcript.id, chapters=chapters, model=model, meta={"health": "clean", **meta})
