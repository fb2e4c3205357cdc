"""Averaged boosters (boundary.fit(bag=k), chaptering/tree_average.py) against single fits (issue 16: the
seed lottery of the default run).

Fits N boosters once on seeds 0..N-1 (the default features: lexical cue, windows), then scores on the
held-out v2 set every single fit and every consecutive group of k (seeds 0..k-1, k..2k-1, ...), each
calibrated on the validation split as boundary.fit calibrates; prints per model the validation F1, the
held-out headline, work F1/Pk/B, the gate's headline line against embedding valleys and its verdict, then
mean and spread for singles and for bags.

Usage: python bench/boundary_bag.py [N=15] [K=5] [BOUNDARY_JSONL]   (K = N: the whole bag only)
~5 s a booster and ~8 s a held-out evaluation here once the MiniLM cache is warm (the first run embeds the
corpus, ~15 min); BOUNDARY_JSONL trains on a `make run`'s state/datasets/<fingerprint>/boundary.jsonl.
"""

from __future__ import annotations

import statistics
import sys

from corpus import CACHE, heldout_and_train, heldout_verdict

from chaptering import boundary
from chaptering.decode import DecoderSettings, calibrate
from chaptering.lexical import out_of_fold
from chaptering.tree_average import average


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    held, train = heldout_and_train()
    if len(sys.argv) > 3:
        from chaptering.io import read_transcripts

        train = read_transcripts(sys.argv[3])
    fitted: list = []

    def keep(boosters):
        fitted.extend(boosters)
        return average(boosters)

    boundary.average = keep  # see every booster of the bag, not only their mean
    model = boundary.fit(train, cache_dir=CACHE, progress=False, bag=n)
    print(f"{n} boosters fitted in {model.card['fit_seconds']} s, rounds {model.card['bag_rounds']}", flush=True)
    labelled = [t for t in train if t.chapters and len(t.segments) >= 2]
    val = [t for t in labelled if boundary.is_validation(t.id, 0.2)]
    val_x = boundary._features(val, CACHE, False, out_of_fold(labelled))
    rows: dict[str, list[float]] = {"single": [], f"bag of {k}": []}
    groups = [("single", f"seed {i}", [b]) for i, b in enumerate(fitted)]
    if k == n:  # only the whole bag
        groups = []
    groups += [(f"bag of {k}", f"seeds {i}-{i + k - 1}", fitted[i:i + k]) for i in range(0, n - k + 1, k)]
    for kind, name, members in groups:
        booster = average(members)
        scored = [([1.0] + [float(v) for v in booster.predict(val_x[t.id])[1:]], t) for t in val]
        decoder, val_f1 = calibrate(scored, DecoderSettings())
        m = boundary.BoundaryModel(booster=booster, decoder=decoder, lexical=model.lexical, card=model.card)
        report, verdict, line = heldout_verdict(m, held)
        print(f"{name:12s} val F1 {val_f1:.3f} | {line}", flush=True)
        for reason in verdict.reasons:
            if reason.startswith("FAIL") and "headline" not in reason:
                print(f"    {reason}", flush=True)
        rows[kind].append(report.metric("headline"))
    for kind, values in rows.items():
        if values:
            print(f"{kind}: held-out mean {statistics.mean(values):.3f}, range {min(values):.3f}-{max(values):.3f}, "
                  f"sd {statistics.pstdev(values):.3f} over {len(values)}")


if __name__ == "__main__":
    main()
