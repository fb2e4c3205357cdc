"""Windows of long timed training transcripts as extra training transcripts (issue 16, mid-length videos;
chaptering/crops.py). Kept 2026-12-07 as a family of their own (`own`, the default of boundary.fit).

For each variant (none; windows in their transcript's family; windows as a family of their own) and seed:
validation macro F1 on the split's full transcripts (what calibration maximises), validation F1 and Pk on
windows of the split's long timed transcripts (the mid-length regime the split otherwise lacks; scored with
the decoder as calibrated, never used to calibrate), and held-out v2 headline with work-session Pk/B.

Usage: python bench/train_windows.py 0,1,2,3,4 [none,family,own] [BOUNDARY_JSONL]   (~45 s a fit warm)
BOUNDARY_JSONL trains on another set than all labelled data, e.g. a `make run`'s
state/datasets/<fingerprint>/boundary.jsonl (bench/results/train-windows-make-run-data-2026-12-07.txt).
"""

from __future__ import annotations

import statistics
import sys

from corpus import CACHE, heldout_and_train, heldout_verdict

from chaptering import boundary, crops
from chaptering.decode import _macro, decode
from chaptering.lexical import out_of_fold
from chaptering.metrics import pk


def main() -> None:
    seeds = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0]
    variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["none", "family", "own"]
    held, train = heldout_and_train()
    if len(sys.argv) > 3:
        from chaptering.io import read_transcripts

        train = read_transcripts(sys.argv[3])
    labelled = [t for t in train if t.chapters and len(t.segments) >= 2]
    val = [t for t in labelled if boundary.is_validation(t.id, 0.2)]
    oof = out_of_fold(labelled)
    rows: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in variants}
    own_family = crops.crop

    def crop_in_family(t, a, b):
        return own_family(t, a, b).model_copy(update={"source": t.source})

    for seed in seeds:
        for v in variants:
            crops.crop = crop_in_family if v == "family" else own_family
            m = boundary.fit(train, cache_dir=CACHE, params={"seed": seed}, progress=False, windows=v != "none")
            crops.crop = own_family
            windows = [([1.0] + [float(p) for p in m.booster.predict(x)[1:]], w)
                       for w, x in boundary.window_transcripts(val, m.decoder.long_lines, CACHE, oof)]
            w_f1 = _macro(windows, m.decoder)
            w_pk = statistics.mean(pk(list(t.boundaries), decode(sc, t, m.decoder), len(t.segments))
                                   for sc, t in windows)
            w_n = statistics.mean(len(decode(sc, t, m.decoder)) / len(t.boundaries) for sc, t in windows)
            report, _, line = heldout_verdict(m, held)
            print(f"seed {seed} {v:6s} val F1 {m.card['val_primary_f1']:.3f} | val windows ({len(windows)}) F1 "
                  f"{w_f1:.3f} Pk {w_pk:.3f} count/ref {w_n:.2f} | {line}", flush=True)
            rows[v].append((m.card["val_primary_f1"], w_f1, w_pk, report.metric("headline")))
    for v in variants:
        cols = list(zip(*rows[v]))
        print(f"{v:6s} mean: val F1 {statistics.mean(cols[0]):.3f}, val windows F1 {statistics.mean(cols[1]):.3f} "
              f"Pk {statistics.mean(cols[2]):.3f}, held-out headline {statistics.mean(cols[3]):.3f}")


if __name__ == "__main__":
    main()
