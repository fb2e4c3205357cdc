"""Curation's per-transcript text work: normalise, scrub PII, content identity (hash, shingles, MinHash),
language and quality filters.

Every function here looks at one transcript alone, so it can run on any worker in any order: the
order-dependent part of curation (dedup against what was accepted before) lives in curate.py.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from chaptering.schema import Chapter, Segment, Transcript

if TYPE_CHECKING:  # datasketch is imported lazily: `chaptering --help` should not pay for it
    from datasketch import MinHash

SHINGLE = 5  # words per shingle for near-duplicate detection

# ------------------------------------------------------------------------------------------ normalise

# ASR / caption artefacts that carry no content: QMSum/ICSI tags ({vocalsound}, {disfmarker}, {gap}),
# caption sound descriptions ([Music], [Laughter.], [ __ ]), parenthesised sound cues ((upbeat music)),
# music notes. Braces only for known tags (a lecture's "Hello {name}" is content); square brackets only
# when they hold at most three words of letters, so "[specifically his sister Ariana]" or `x[i]` survive.
_SOUND = r"(?:music\w*|musik|applause|laugh\w*|chuckl\w*|giggl\w*|inaudible|crosstalk|silence|cheer\w*|cough\w*|" \
         r"sigh\w*|clap\w*|noise|beep\w*|static|indistinct\w*|whoosh\w*|gasp\w*|sniff\w*)"
ARTEFACT_RE = re.compile(
    r"\{(?:disfmarker|vocalsound|nonvocalsound|gap|pause|comment|" + _SOUND + r")\}"
    r"|(?<![\w\[])\[\s*(?:_+|[^\W\d_]+(?:[ '-][^\W\d_]+){0,2}\.?)\s*\](?!\w)"
    r"|\(\s*(?:[^\W\d_]+ ){0,2}" + _SOUND + r"(?: [^\W\d_]+){0,2}\.?\s*\)"
    r"|[♪♫♬]+",
    re.IGNORECASE,
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$)")


def _clean_text(text: str, strip_artifacts: bool) -> str:
    """NFKC, artefacts out, one space between words, no space before closing punctuation."""
    text = unicodedata.normalize("NFKC", text)
    if strip_artifacts:
        text = ARTEFACT_RE.sub(" ", text)
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def remap_chapters(chapters: list[Chapter], kept: list[int]) -> list[Chapter]:
    """Chapters after keeping only the segments `kept` (old indices, ascending).

    A chapter whose start segment vanished moves to the next surviving segment; chapters that land on
    the same segment (or past the end) merge into the earlier one, keeping its title, so the result is
    valid whenever at least one segment survives.
    """
    new_index: dict[int, int] = {old: new for new, old in enumerate(kept)}
    out: list[Chapter] = []
    pos = 0
    for ch in chapters:
        while pos < len(kept) and kept[pos] < ch.start_segment:
            pos += 1
        if pos == len(kept):
            break  # the chapter and everything after it vanished: it merges into the previous one
        start = new_index[kept[pos]]
        if out and start <= out[-1].start_segment:
            continue  # collision: first title kept
        out.append(Chapter(title=ch.title, start_segment=start))
    if out:
        out[0] = Chapter(title=out[0].title, start_segment=0)
    return out


def normalise(t: Transcript, strip_artifacts: bool) -> Transcript:
    """Unicode NFKC, collapsed whitespace, optionally ASR artefacts out; empty segments are dropped.

    Chapters are re-mapped onto the surviving segments (see `remap_chapters`). Raises ValueError if no
    segment has text left, since such a record cannot be a Transcript.
    """
    kept: list[int] = []
    segments: list[Segment] = []
    for i, s in enumerate(t.segments):
        text = _clean_text(s.text, strip_artifacts)
        if not text:
            continue
        speaker = " ".join(unicodedata.normalize("NFKC", s.speaker or "").split()) or None
        kept.append(i)
        segments.append(Segment(text=text, speaker=speaker, start=s.start, end=s.end))
    if not segments:
        raise ValueError("empty after normalisation: every segment was blank or an artefact")
    chapters = None
    if t.chapters is not None:
        titled = [Chapter(title=_clean_text(c.title, False), start_segment=c.start_segment) for c in t.chapters]
        chapters = remap_chapters(titled, kept)
    return Transcript(id=t.id, source=t.source, language=t.language, segments=segments, chapters=chapters,
                      meta=dict(t.meta))


# -------------------------------------------------------------------------------------------------- PII

_URL_SCHEME = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]", re.IGNORECASE)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL_BARE = re.compile(
    r"\b(?:[a-z0-9][a-z0-9-]*\.)+(?:com|org|net|edu|gov|io|info|biz|co\.uk|org\.uk|ac\.uk)\b(?:/[^\s<>\"']*[^\s<>\"'.,;:!?)\]])?",
    re.IGNORECASE,
)
# Phones: candidates by shape, then checked by digit count so that years, "295 million", times
# ("12:30"), decimals and version numbers are left alone.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\w])")
_PHONE_US = re.compile(r"(?<![\w+.])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w]|\.\d)")
_PHONE_UK = re.compile(r"(?<![\w+.])0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}(?![\w]|\.\d)")


_MAYBE_PII = re.compile(r"[@\d]|\w\.\w")


def _phone(lo: int, hi: int):
    def sub(m: re.Match) -> str:
        digits = sum(c.isdigit() for c in m.group())
        return "<PHONE>" if lo <= digits <= hi else m.group()

    return sub


def scrub_pii(text: str) -> str:
    """Replace e-mail addresses, URLs and phone numbers with <EMAIL>, <URL>, <PHONE>.

    Order matters: scheme URLs first (they may contain '@'), then e-mails (they contain a domain),
    then bare domains, then phones (URLs and e-mails may hold digit runs).
    """
    if not _MAYBE_PII.search(text):
        return text  # fast path: most segments hold no digit, '@' or dotted name
    text = _URL_SCHEME.sub("<URL>", text)
    text = _EMAIL.sub("<EMAIL>", text)
    text = _URL_BARE.sub("<URL>", text)
    text = _PHONE_INTL.sub(_phone(8, 15), text)
    text = _PHONE_US.sub(_phone(10, 11), text)
    return _PHONE_UK.sub(_phone(10, 11), text)


def scrub_transcript(t: Transcript) -> Transcript:
    """PII scrubbed from segment text and chapter titles (speaker labels are left: they are roles here)."""
    segments = [s.model_copy(update={"text": scrub_pii(s.text)}) for s in t.segments]
    chapters = None if t.chapters is None else [c.model_copy(update={"title": scrub_pii(c.title)}) for c in t.chapters]
    return t.model_copy(update={"segments": segments, "chapters": chapters})


# ------------------------------------------------------------------------------------- content identity

_WORD = re.compile(r"[^\W_]+")


def content_words(t: Transcript, clean: bool = True) -> list[str]:
    """Lower-case alphanumeric words of all segments, after NFKC, artefact and PII removal.

    Cleaning here too makes the identity of a text independent of whether curation ran on it: a raw
    eval transcript and its curated copy have the same words, hash and shingles. `clean=False` skips
    that for text that was just normalised and scrubbed (curate's hot path).
    """
    words: list[str] = []
    for s in t.segments:
        text = scrub_pii(_clean_text(s.text, True)) if clean else s.text
        words.extend(_WORD.findall(text.lower()))
    return words


def content_hash(t: Transcript, words: list[str] | None = None) -> str:
    """sha256 of the normalised words: stable across whitespace, punctuation, case and segmentation edits."""
    return hashlib.sha256(" ".join(content_words(t) if words is None else words).encode()).hexdigest()


def shingle_hashes(words: list[str], k: int = SHINGLE) -> np.ndarray:
    """32-bit hashes of the distinct word k-shingles (the whole text if shorter than k words)."""
    if not words:
        return np.empty(0, dtype=np.uint32)
    k = min(k, len(words))
    wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = len(words) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # polynomial rolling combination, wrapping mod 2^64
        h = h * np.uint64(1_000_003) + wh[j:j + n]
    return np.unique((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed).permutations


def minhash(shingles: np.ndarray, num_perm: int, seed: int = 1) -> MinHash:
    """A MinHash over precomputed shingle hashes (datasketch pre-mixes them, so crc32 inputs are fine)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, permutations=_permutations(num_perm, seed),
                scheme="affine32")
    if len(shingles):
        m.update_batch(shingles)
    return m


# ------------------------------------------------------------------------------------------- filters


def detect_language(t: Transcript, sample_chars: int = 1000) -> str | None:
    """ISO code langdetect gives the first ~1000 characters (seeded: the same text, the same answer)."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    parts, n = [], 0
    for s in t.segments:
        parts.append(s.text)
        n += len(s.text) + 1
        if n >= sample_chars:
            break
    sample = " ".join(parts)[:sample_chars]
    try:
        return detect(sample)
    except LangDetectException:  # no letters to go on
        return None


def quality_reason(
    t: Transcript,
    *,
    min_words: int,
    max_words: int,
    min_chapters: int,
    max_chapters: int,
    min_chapter_segments: int,
    max_title_words: int,
    languages: list[str],
) -> str | None:
    """None if `t` is fit for training, else why not. Unlabelled transcripts skip the chapter checks.

    The language checked is `t.language` (curate sets it from detection first); an empty `languages`
    accepts any.
    """
    n_words = sum(len(s.text.split()) for s in t.segments)
    if n_words < min_words:
        return f"too few words: {n_words} < {min_words}"
    if n_words > max_words:
        return f"too many words: {n_words} > {max_words}"
    if languages:
        if t.language is None:
            return "language unknown: could not be detected"
        if t.language not in languages:
            return f"language {t.language!r} not in {languages}"
    if t.chapters is None:
        return None
    n = len(t.chapters)
    if n < min_chapters:
        return f"too few chapters: {n} < {min_chapters}"
    if n > max_chapters:
        return f"too many chapters: {n} > {max_chapters}"
    ends = [c.start_segment for c in t.chapters[1:]] + [len(t.segments)]
    for i, (c, end) in enumerate(zip(t.chapters, ends)):
        length = end - c.start_segment
        if length < min_chapter_segments:
            return f"chapter too short: chapter {i} is {length} segments long (< {min_chapter_segments})"
        title_words = len(c.title.split())
        if title_words == 0:
            return f"empty title: chapter {i}"
        if title_words > max_title_words:
            return f"title too long: chapter {i} has {title_words} words (> {max_title_words})"
    return None
