"""How exactly must chapter starts sit for Pk to beat a single chapter? `python bench/precision.py PRED.jsonl`

F1@5 forgives a start up to 5 lines off; Pk (k = half the mean reference chapter length, a few lines on
short videos) does not. This scores, on the held-out set: the reference starts moved by exactly j lines,
the stored predictions as they are, and the same predictions with every start that F1@5 matched moved onto
its reference start (same count, same F1, exact places), or with every start moved to the longest pause
(gap between timed lines) within 2 lines, plus how far each predicted start lies from the nearest reference
start. No model is run.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from pathlib import Path

from chaptering.config import get_settings
from chaptering.io import read_transcripts
from chaptering.metrics import line_f1_and_pk, match
from chaptering.schema import Prediction, Transcript

Picker = Callable[[Transcript, list[int], int], list[int]]


def mean_scores(heldout: list[Transcript], pick: Picker) -> tuple[float, float]:
    scores = [line_f1_and_pk(pick(t, [c.start_segment for c in t.chapters or []], len(t.segments)), t)
              for t in heldout]
    return statistics.mean(f for f, _ in scores), statistics.mean(p for _, p in scores)


def shifted(j: int, seed: int) -> Picker:
    rng = random.Random(seed)
    return lambda t, ref, n: [0, *sorted({min(n - 1, max(1, b + rng.choice((-j, j)))) for b in ref if b})]


def snapped(preds: dict[str, list[int]]) -> Picker:
    def pick(t: Transcript, ref: list[int], n: int) -> list[int]:
        rs, hs = sorted(b for b in ref if b), sorted(b for b in preds[t.id] if b)
        onto = {hs[j]: rs[i] for i, j in match(rs, hs, 5)}
        return [0, *sorted({onto.get(b, b) for b in hs})]
    return pick


def paused(preds: dict[str, list[int]], radius: int = 2) -> Picker:
    def pick(t: Transcript, ref: list[int], n: int) -> list[int]:
        segs = t.segments
        pause = {g: (segs[g].start - segs[g - 1].end) if segs[g].start is not None and segs[g - 1].end is not None
                 else 0.0 for g in range(1, n)}
        out: set[int] = set()
        for b in sorted(b for b in preds[t.id] if b):
            near = [g for g in range(max(1, b - radius), min(n - 1, b + radius) + 1) if g not in out]
            out.add(max(near, key=lambda g: (pause[g], -abs(g - b))) if near else b)
        return [0, *sorted(out)]
    return pick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("predictions", type=Path, help="a stored predictions.jsonl over the held-out set")
    args = ap.parse_args()
    heldout = read_transcripts(get_settings().data.eval_path)
    lines = args.predictions.read_text().splitlines()
    preds = {p.id: [c.start_segment for c in p.chapters]
             for p in (Prediction.model_validate_json(line) for line in lines if line.strip())}
    heldout = [t for t in heldout if t.id in preds]
    rows = [("single chapter", mean_scores(heldout, lambda t, ref, n: [0])),
            ("reference starts", mean_scores(heldout, lambda t, ref, n: ref))]
    for j in (1, 2, 3):
        runs = [mean_scores(heldout, shifted(j, seed)) for seed in range(5)]
        rows.append((f"reference starts, each moved {j} line(s) (5 seeds)",
                     (statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs))))
    rows.append((f"{args.predictions}", mean_scores(heldout, lambda t, ref, n: preds[t.id])))
    rows.append(("  the same, F1-matched starts moved onto their reference start", mean_scores(heldout, snapped(preds))))
    rows.append(("  the same, every start moved to the longest pause within 2 lines", mean_scores(heldout, paused(preds))))
    print(f"{len(heldout)} held-out transcripts")
    for name, (f1, p) in rows:
        print(f"{name:70s} F1@5 {f1:.3f}  Pk {p:.3f}")
    dist = [min(abs(b - r) for r in ref) for t in heldout
            if (ref := [c.start_segment for c in t.chapters or [] if c.start_segment])
            for b in preds[t.id] if b]
    print("predicted starts within 0 / 1 / 2 / 5 lines of a reference start: "
          + " / ".join(f"{sum(d <= k for d in dist) / len(dist):.0%}" for k in (0, 1, 2, 5)) + f" of {len(dist)}")


if __name__ == "__main__":
    main()
