"""The held-out chapter-boundary set: versioned by content hash, and a guard for training data.

Each transcript carries its domain in `meta.domain` (short, talks, lectures, meetings, work): the
domains are part of the pinned fingerprint, since moving a transcript between domains moves the headline.

`data/eval/MANIFEST.json` pins the set: a changed eval file fails loudly instead of silently moving
every number. Training data is checked against it by id and by normalised content hash (near
duplicates are caught by curate.ContaminationGuard, built from the same transcripts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from chaptering.schema import Transcript


def manifest_path(eval_path: Path) -> Path:
    return eval_path.parent / "MANIFEST.json"


def build_manifest(transcripts: list[Transcript]) -> dict:
    from collections import Counter

    from chaptering.curate import content_hash
    from chaptering.evaluate import fingerprint
    from chaptering.metrics import domain_of

    return {
        "fingerprint": fingerprint(transcripts),
        "count": len(transcripts),
        "domains": dict(Counter(domain_of(t) for t in transcripts)),
        "ids": [t.id for t in transcripts],
        "content_hashes": [content_hash(t) for t in transcripts],
    }


def write_manifest(eval_path: Path) -> dict:
    from chaptering.io import read_transcripts

    manifest = build_manifest(read_transcripts(eval_path))
    manifest_path(eval_path).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_heldout(eval_path: Path) -> list[Transcript]:
    """Read the eval set and check it is the version the manifest pins."""
    from chaptering.evaluate import fingerprint
    from chaptering.io import read_transcripts

    transcripts = read_transcripts(eval_path)
    mpath = manifest_path(eval_path)
    if mpath.is_file():
        pinned = json.loads(mpath.read_text())["fingerprint"]
        if fingerprint(transcripts) != pinned:
            raise ValueError(
                f"{eval_path}: content fingerprint {fingerprint(transcripts)} differs from {pinned} in {mpath}; "
                "if the change is deliberate, run `python -m chaptering.heldout` to re-pin it"
            )
    return transcripts


def contaminated(train: Iterable[Transcript], eval_path: Path) -> list[tuple[str, str]]:
    """(training id, reason) for every training transcript that shares an id or content with the set."""
    from chaptering.curate import content_hash

    manifest = json.loads(manifest_path(eval_path).read_text())
    ids, hashes = set(manifest["ids"]), dict(zip(manifest["content_hashes"], manifest["ids"]))
    hits = []
    for t in train:
        base_id = t.id.split("~")[0]
        if t.id in ids or base_id in ids:
            hits.append((t.id, f"id {base_id!r} is in the held-out set"))
        elif content_hash(t) in hashes:
            hits.append((t.id, f"content matches held-out transcript {hashes[content_hash(t)]!r}"))
    return hits


if __name__ == "__main__":  # re-pin after a deliberate change of the eval set
    from chaptering.config import get_settings

    m = write_manifest(get_settings().data.eval_path)
    print(f"pinned {m['count']} transcripts, fingerprint {m['fingerprint']}")
