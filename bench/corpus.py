"""The labelled data the boundary benches train on: every file in ../shared/data minus the held-out set."""

from __future__ import annotations

from pathlib import Path

from chaptering.heldout import load_heldout
from chaptering.io import read_transcripts
from chaptering.schema import Transcript

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "state" / "cache"
SHARED = ROOT.parent / "shared" / "data"
FILES = ["qmsum/qmsum-train.jsonl", "video/rawkode.jsonl", "video/lectures.jsonl", "video/tinyrec-dev.jsonl",
         "video/vidchapters-short.jsonl"]
EMBEDDING = ROOT / "bench" / "results" / "quality" / "baseline-embedding" / "report.json"


def heldout_and_train() -> tuple[list[Transcript], list[Transcript]]:
    """(held-out v2, every shared transcript not in it): the contamination guard, for a bench."""
    held = load_heldout(ROOT / "data" / "eval" / "heldout.jsonl")
    hid = {t.id for t in held}
    return held, [t for f in FILES for t in read_transcripts(SHARED / f) if t.id not in hid]
