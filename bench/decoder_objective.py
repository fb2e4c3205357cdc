"""What the decoder calibration optimises (issue 16, tried 2026-12-06, not kept): primary F1 alone (the
default), or F1 with Boundary Similarity and/or 1 - Pk, which the gate also checks per domain. One fit of the
trees per seed; each objective picks its own thresholds on the same validation split; held-out v2 reported.

Usage: python bench/decoder_objective.py 0,1 [f1,f1+b,f1-pk,mean3]   (~1.5 min a seed warm)
"""

from __future__ import annotations

import statistics
import sys

from corpus import CACHE, EMBEDDING, heldout_and_train

from chaptering import boundary, decode
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate
from chaptering.gate import gate
from chaptering.metrics import boundary_similarity, pk

OBJECTIVE = {"name": "f1"}
PRIMARY_F1 = decode.primary_f1


def per_transcript(t, starts) -> float:
    """Stands in for decode.primary_f1 inside decode._macro: the calibration's per-transcript score."""
    f1 = PRIMARY_F1(t, starts)
    name, ref, n = OBJECTIVE["name"], list(t.boundaries), len(t.segments)
    if name == "f1":
        return f1
    b = boundary_similarity(ref, list(starts), n)
    one_minus_pk = 1 - pk(ref, list(starts), n)
    return {"f1+b": (f1 + b) / 2, "f1-pk": (f1 + one_minus_pk) / 2, "mean3": (f1 + b + one_minus_pk) / 3}[name]


def main() -> None:
    seeds = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0]
    objectives = sys.argv[2].split(",") if len(sys.argv) > 2 else ["f1", "f1+b", "f1-pk", "mean3"]
    decode.primary_f1 = per_transcript  # decode._macro (same count guard) now averages the objective
    original = decode.calibrate
    decoders = {}

    def calibrate_each(scored, settings, max_count_ratio=2.0):
        for name in objectives:
            OBJECTIVE["name"] = name
            decoders[name] = original(scored, settings, max_count_ratio)[0]
        OBJECTIVE["name"] = "f1"
        return decoders["f1"] if "f1" in decoders else decoders[objectives[0]], 0.0

    boundary.calibrate = calibrate_each
    held, train = heldout_and_train()
    ref = Report.from_json(EMBEDDING.read_text())
    headlines: dict[str, list[float]] = {name: [] for name in objectives}
    for seed in seeds:
        model = boundary.fit(train, cache_dir=CACHE, params={"seed": seed}, progress=False)
        for name in objectives:
            model.decoder = decoders[name]
            report, _ = evaluate(BoundaryChapterer(model, None, "bench", CACHE), held, progress=False)
            headlines[name].append(report.metric("headline"))
            fails = [r for r in gate(report, None, [ref], GateSettings()).reasons if r.startswith("FAIL")]
            domains = " ".join(
                f"{d} {report.domain_metric(d, 'f1'):.3f}/{report.domain_metric(d, 'pk'):.2f}/"
                f"{report.domain_metric(d, 'boundary_similarity'):.2f}/{report.domain_metric(d, 'abs_count_error'):.1f}"
                for d in DOMAIN_ORDER if report.domain_metric(d, "f1") is not None)
            print(f"seed {seed} {name:6s} {decoders[name].describe()} | held-out {report.metric('headline'):.3f} | "
                  f"F1/Pk/B/|dn|: {domains} | {len(fails)} gate failures", flush=True)
    for name in objectives:
        print(f"{name}: mean headline {statistics.mean(headlines[name]):.3f} over seeds {seeds}")


if __name__ == "__main__":
    main()
