"""The labelled data the boundary benches train on: every file in ../shared/data minus the held-out set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def heldout_verdict(model: Any, held: list[Transcript]) -> tuple[Any, Any, str]:
    """A boundary model (no titles) on held-out v2, gated against embedding valleys as `make run` gates it:
    (report, verdict, one line: headline, work F1/Pk/B, the gate's headline reason, PROMOTE/refuse)."""
    from chaptering.boundary_chapterer import BoundaryChapterer
    from chaptering.config import GateSettings
    from chaptering.evaluate import Report, evaluate
    from chaptering.gate import gate

    report, _ = evaluate(BoundaryChapterer(model, None, "bench", CACHE), held, progress=False)
    verdict = gate(report, None, [Report.from_json(EMBEDDING.read_text())], GateSettings())
    head = next(r for r in verdict.reasons if "headline" in r).split(": ", 1)[1]
    line = (f"held-out {report.metric('headline'):.3f} | work F1/Pk/B {report.domain_metric('work', 'f1'):.3f}/"
            f"{report.domain_metric('work', 'pk'):.3f}/{report.domain_metric('work', 'boundary_similarity'):.3f} | "
            f"{head} | {'PROMOTE' if verdict.promote else 'refuse'}")
    return report, verdict, line
