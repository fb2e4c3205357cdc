"""Curation: normalise, scrub PII, filter, dedup (exact + near-duplicate), guard the eval set, split.

Two halves, so the first can fan out over workers and the result stays the same as in one process:
- `screen` takes one record through the stages that look at it alone (normalise, PII, language,
  quality, content hash, MinHash signature, eval guard), in any order, on any worker;
- `resolve` walks the screened records in input order against what was accepted before them (id,
  content hash, near duplicate), on one process, with that memory on disk (`SeenIndex`).
`curate` is the two in one loop; chaptering/shards.py runs the first half per shard of a file.

Everything streams: per transcript only a content hash and a 512-byte MinHash signature are kept, on
disk. Every record that is turned away becomes a `Rejected` with a reason, so nothing disappears.
Reason strings read "<kind>: <detail>" (or "<kind> '<x>' ...") so the quarantine can be counted by kind.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from chaptering.curate_index import NearDupIndex, SeenIndex, hashvalues
from chaptering.curate_text import (
    ARTEFACT_RE,
    SHINGLE,
    content_hash,
    content_words,
    detect_language,
    minhash,
    normalise,
    quality_reason,
    remap_chapters,
    scrub_pii,
    scrub_transcript,
    shingle_hashes,
)
from chaptering.io import Rejected
from chaptering.schema import Transcript

if TYPE_CHECKING:
    from datasketch import MinHash

    from chaptering.config import DataSettings

__all__ = [  # the text functions keep their old import path
    "ARTEFACT_RE", "SHINGLE", "Candidate", "ContaminationGuard", "CurateStats", "Known", "NearDupIndex", "SeenIndex",
    "Turned", "content_hash", "content_words", "curate", "detect_language", "known_entry", "minhash", "normalise",
    "quality_reason", "remap_chapters", "resolve", "screen", "scrub_pii", "scrub_transcript", "shingle_hashes",
    "split_of",
]

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



@dataclass
class Known:
    """A transcript of the corpus accepted on an earlier night: it seeds the dedup memory."""

    id: str
    hash: str
    signature: np.ndarray


@dataclass
class Candidate:
    """A record that passed every per-record stage; `guard` is the eval guard's verdict, applied after
    dedup, in the order a single pass has always used. `resolve` reads only the transcript's id (shards
    pass the transcript through as the JSON text the worker wrote)."""

    transcript: Transcript
    hash: str
    signature: np.ndarray
    guard: str | None
    source: str
    location: str


@dataclass
class Turned:
    """A record turned away by a per-record stage."""

    stage: str
    rejected: Rejected


def _location(raw: Transcript) -> str:
    """Where a rejected record sits: "line 7, id X" when ingest recorded its place in the file (two
    records of one file may share an id), else "id X"."""
    where = raw.meta.get("location")
    return f"{where}, id {raw.id}" if where else f"id {raw.id}"


def _signature(words: list[str], settings: DataSettings) -> MinHash:
    return minhash(shingle_hashes(words), settings.minhash_perm)


def known_entry(k: Transcript, settings: DataSettings) -> Known:
    """What the dedup memory keeps of a corpus transcript (its words cleaned as a raw one's would be)."""
    words = content_words(k)
    return Known(k.id, content_hash(k, words), hashvalues(_signature(words, settings)))


def screen(raw: Transcript, settings: DataSettings, guard: ContaminationGuard | None,
           source_name: str = "curate") -> Candidate | Turned:
    """normalise -> scrub PII -> language -> quality -> hash + signature -> eval guard, for one record."""
    source, location = str(raw.meta.get("path") or source_name), _location(raw)

    def turned(stage: str, reason: str) -> Turned:
        return Turned(stage, Rejected(source=source, location=location, reason=reason))

    try:
        t = scrub_transcript(normalise(raw, settings.strip_artifacts))
    except ValueError as err:
        return turned("normalise", str(err))
    lang = detect_language(t) or t.language
    if lang != t.language:
        t = t.model_copy(update={"language": lang})
    reason = quality_reason(
        t, min_words=settings.min_words, max_words=settings.max_words, min_chapters=settings.min_chapters,
        max_chapters=settings.max_chapters, min_chapter_segments=settings.min_chapter_segments,
        max_title_words=settings.max_title_words, languages=settings.languages,
    )
    if reason:
        return turned("quality", reason)
    words = content_words(t, clean=not settings.strip_artifacts)  # already normalised and scrubbed
    sig = _signature(words, settings)
    verdict = None
    if guard is not None:
        same = guard.index.num_perm == settings.minhash_perm and guard.index.seed == 1
        verdict = guard.check(t, words, sig if same else None)
    return Candidate(t, content_hash(t, words), hashvalues(sig), verdict, source, location)


def _dedup_reason(c: Candidate, seen: SeenIndex) -> tuple[str, str] | None:
    """(stage, reason) if `c` repeats something accepted before it or is eval-contaminated, else None."""
    tid = c.transcript.id
    if seen.has_id(tid):
        return "exact_dup", f"duplicate id: {tid!r} was already accepted"
    owner = seen.hash_owner(c.hash)
    if owner is not None:
        return "exact_dup", f"exact duplicate of {owner!r}"
    hit = seen.match(c.signature)
    if hit is not None:
        return "near_dup", f"near-duplicate of {hit[0]!r} (jaccard≈{hit[1]:.2f})"
    if c.guard:
        return "contamination", f"eval contamination: {c.guard}"
    return None


def resolve(items: Iterable[Known | Candidate | Turned], *, seen: SeenIndex, rejected: list[Rejected],
            stats: CurateStats) -> Iterator[Transcript]:
    """Screened records in input order -> the accepted transcripts; `Known` ones only seed `seen`."""
    for item in items:
        if isinstance(item, Known):
            seen.add(item.id, item.hash, item.signature)
            stats.known += 1
            continue
        stats.seen += 1
        if isinstance(item, Turned):
            rejected.append(item.rejected)
            stats.reject(item.stage, item.rejected.reason)
            continue
        why = _dedup_reason(item, seen)
        if why is not None:
            rejected.append(Rejected(source=item.source, location=item.location, reason=why[1]))
            stats.reject(*why)
            continue
        seen.add(item.transcript.id, item.hash, item.signature)
        stats.accepted += 1
        yield item.transcript


def curate(
    records: Iterable[Transcript],
    *,
    settings: DataSettings,
    guard: ContaminationGuard | None,
    rejected: list[Rejected],
    source_name: str = "curate",
    known: Iterable[Transcript] = (),
    stats: CurateStats | None = None,
    workdir: Path | None = None,
) -> Iterator[Transcript]:
    """normalise -> scrub PII -> language -> quality -> exact dedup -> near dup -> eval guard.

    `known` are transcripts accepted in earlier runs (the cumulative corpus): they seed the dedup
    indexes and are not yielded again. Each rejection is appended to `rejected` and counted in `stats`.
    The dedup memory lives in a scratch SQLite file under `workdir` (default: the system's temp folder).
    """
    stats = stats if stats is not None else CurateStats()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="curate-") as scratch:
        seen = SeenIndex(Path(scratch) / "seen.sqlite", settings.near_dup_threshold, settings.minhash_perm)
        try:
            items = _chain((known_entry(k, settings) for k in known),
                           (screen(raw, settings, guard, source_name) for raw in records))
            yield from resolve(items, seen=seen, rejected=rejected, stats=stats)
        finally:
            seen.close()


def _chain(*iterables: Iterable) -> Iterator:
    for it in iterables:
        yield from it
