"""Curation: normalise, scrub PII, filter, dedup (exact + near-duplicate), guard the eval set, split.

Everything streams (iterables in, iterators out) so a nightly run over a growing corpus keeps its memory
flat: per transcript only a content hash and a MinHash signature (~1.5 KB) are kept, never the text.
Every record that is turned away becomes a `Rejected` with a reason, so nothing disappears silently.

Reason strings read "<kind>: <detail>" (or "<kind> '<x>' ...") so the quarantine can be counted by kind.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from chaptering.io import Rejected
from chaptering.schema import Chapter, Segment, Transcript

if TYPE_CHECKING:  # datasketch is imported lazily: `chaptering --help` should not pay for it
    from datasketch import LeanMinHash, MinHash

    from chaptering.config import DataSettings

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


# ------------------------------------------------------------------------------------ near duplicates


class NearDupIndex:
    """MinHash LSH over word 5-shingles: near-duplicate lookups in about constant time per record.

    Keeps only a lean signature per indexed transcript, so memory grows by ~1.5 KB a transcript.
    """

    def __init__(self, threshold: float, num_perm: int, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sigs: dict[str, LeanMinHash] = {}

    def __len__(self) -> int:
        return len(self._sigs)

    def signature(self, t: Transcript, words: list[str] | None = None) -> MinHash:
        return minhash(shingle_hashes(content_words(t) if words is None else words), self.num_perm, self.seed)

    def match(self, t: Transcript | MinHash) -> tuple[str, float] | None:
        """(id, estimated Jaccard) of the most similar indexed transcript at or above the threshold."""
        sig = self.signature(t) if isinstance(t, Transcript) else t
        if sig.is_empty():
            return None
        best: tuple[str, float] | None = None
        for key in self._lsh.query(sig):  # LSH candidates, then checked: bands let some pairs below through
            j = sig.jaccard(self._sigs[key])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best

    def query(self, t: Transcript | MinHash) -> str | None:
        """Id of an indexed near-duplicate of `t`, or None."""
        hit = self.match(t)
        return hit[0] if hit else None

    def add(self, t: Transcript, sig: MinHash | None = None) -> None:
        from datasketch import LeanMinHash

        sig = self.signature(t) if sig is None else sig
        if t.id in self._sigs or sig.is_empty():
            return
        lean = LeanMinHash(sig)
        self._lsh.insert(t.id, lean)
        self._sigs[t.id] = lean


# ------------------------------------------------------------------------------------------------ split


def split_of(transcript_id: str, val_fraction: float) -> Literal["train", "val"]:
    """Deterministic train/val assignment from sha256 of the id (stable across runs, machines, hash seeds).

    Augmented copies ("x~noise") follow their original, so no variant of a val transcript trains.
    """
    base = transcript_id.split("~", 1)[0]
    u = int.from_bytes(hashlib.sha256(base.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


# -------------------------------------------------------------------------------------- contamination


class ContaminationGuard:
    """Keeps the held-out eval transcripts out of training: by id, by content hash, by near-duplicate.

    The Jaccard threshold is lower than dedup's on purpose: letting an edited eval transcript into
    training corrupts every number, while a false alarm costs one training example.
    """

    def __init__(self, eval_transcripts: Iterable[Transcript], threshold: float = 0.5, num_perm: int = 128,
                 seed: int = 1) -> None:
        self.ids: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.index = NearDupIndex(threshold, num_perm, seed)
        for t in eval_transcripts:
            words = content_words(t)
            self.ids.add(t.id)
            self.hashes.setdefault(content_hash(t, words), t.id)
            self.index.add(t, self.index.signature(t, words))

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, t: Transcript, words: list[str] | None = None, sig: MinHash | None = None) -> str | None:
        """None if `t` may train, else why not. `words`/`sig` let curate pass what it already computed."""
        for tid in dict.fromkeys((t.id, t.id.split("~", 1)[0])):
            if tid in self.ids:
                return f"id {tid!r} is in the eval set"
        words = content_words(t) if words is None else words
        hit = self.hashes.get(content_hash(t, words))
        if hit is not None:
            return f"content matches eval transcript {hit!r}"
        near = self.index.match(sig if sig is not None else self.index.signature(t, words))
        if near is not None:
            return f"near-duplicate of eval transcript {near[0]!r} (jaccard≈{near[1]:.2f})"
        return None


# ------------------------------------------------------------------------------------------------ curate


@dataclass
class CurateStats:
    """Counts of one curate() run: records seen and accepted, rejections per stage and per reason kind."""

    seen: int = 0
    accepted: int = 0
    known: int = 0
    by_stage: Counter = field(default_factory=Counter)
    by_reason: Counter = field(default_factory=Counter)

    def reject(self, stage: str, reason: str) -> None:
        self.by_stage[stage] += 1
        self.by_reason[reason.split(":")[0].split("(")[0].split("'")[0].strip()] += 1

    @property
    def rejected(self) -> int:
        return sum(self.by_stage.values())

    def to_dict(self) -> dict:
        return {"seen": self.seen, "accepted": self.accepted, "rejected": self.rejected, "known": self.known,
                "by_stage": dict(self.by_stage), "by_reason": dict(self.by_reason)}


class _Reject(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


@dataclass
class _Seen:
    """What curate remembers of accepted (and known) transcripts: ids, content hashes, MinHash LSH."""

    near: NearDupIndex
    ids: set[str] = field(default_factory=set)
    hashes: dict[str, str] = field(default_factory=dict)  # content hash -> first id with it

    def add(self, t: Transcript, h: str, sig: MinHash) -> None:
        self.ids.add(t.id)
        self.hashes.setdefault(h, t.id)
        self.near.add(t, sig)


def _screen(raw: Transcript, settings: DataSettings, guard: ContaminationGuard | None,
            seen: _Seen) -> tuple[Transcript, str, MinHash]:
    """One record through every stage: the curated transcript with its hash and signature, or _Reject."""
    try:
        t = scrub_transcript(normalise(raw, settings.strip_artifacts))
    except ValueError as err:
        raise _Reject("normalise", str(err)) from None
    lang = detect_language(t) or t.language
    if lang != t.language:
        t = t.model_copy(update={"language": lang})
    reason = quality_reason(
        t, min_words=settings.min_words, max_words=settings.max_words, min_chapters=settings.min_chapters,
        max_chapters=settings.max_chapters, min_chapter_segments=settings.min_chapter_segments,
        max_title_words=settings.max_title_words, languages=settings.languages,
    )
    if reason:
        raise _Reject("quality", reason)
    if t.id in seen.ids:
        raise _Reject("exact_dup", f"duplicate id: {t.id!r} was already accepted")
    words = content_words(t, clean=not settings.strip_artifacts)  # already normalised and scrubbed
    h = content_hash(t, words)
    if h in seen.hashes:
        raise _Reject("exact_dup", f"exact duplicate of {seen.hashes[h]!r}")
    sig = seen.near.signature(t, words)
    hit = seen.near.match(sig)
    if hit is not None:
        raise _Reject("near_dup", f"near-duplicate of {hit[0]!r} (jaccard≈{hit[1]:.2f})")
    if guard is not None:
        same = guard.index.num_perm == seen.near.num_perm and guard.index.seed == seen.near.seed
        reason = guard.check(t, words, sig if same else None)
        if reason:
            raise _Reject("contamination", f"eval contamination: {reason}")
    return t, h, sig


def _location(raw: Transcript) -> str:
    """Where a rejected record sits: "line 7, id X" when ingest recorded its place in the file (two
    records of one file may share an id), else "id X"."""
    where = raw.meta.get("location")
    return f"{where}, id {raw.id}" if where else f"id {raw.id}"


def curate(
    records: Iterable[Transcript],
    *,
    settings: DataSettings,
    guard: ContaminationGuard | None,
    rejected: list[Rejected],
    source_name: str = "curate",
    known: Iterable[Transcript] = (),
    stats: CurateStats | None = None,
) -> Iterator[Transcript]:
    """normalise -> scrub PII -> language -> quality -> exact dedup -> near dup -> eval guard.

    `known` are transcripts accepted in earlier runs (the cumulative corpus): they seed the dedup
    indexes and are not yielded again. Each rejection is appended to `rejected` and counted in `stats`.
    """
    stats = stats if stats is not None else CurateStats()
    seen = _Seen(NearDupIndex(settings.near_dup_threshold, settings.minhash_perm))
    for k in known:
        words = content_words(k)
        seen.add(k, content_hash(k, words), seen.near.signature(k, words))
        stats.known += 1
    for raw in records:
        stats.seen += 1
        try:
            t, h, sig = _screen(raw, settings, guard, seen)
        except _Reject as r:
            source = str(raw.meta.get("path") or source_name)
            rejected.append(Rejected(source=source, location=_location(raw), reason=r.reason))
            stats.reject(r.stage, r.reason)
            continue
        seen.add(t, h, sig)
        stats.accepted += 1
        yield t
