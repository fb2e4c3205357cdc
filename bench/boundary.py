"""Boundary model (issue 16): train on all labelled data in ../shared/data minus the held-out set, then
score it on held-out v2 with the full yardstick (keyword titles: this measures the boundaries) and run
the promotion gate against the embedding baseline's report from bench/quality.py.

Usage: python bench/boundary.py ['{"rounds": 600}'] [--seeds 0 1 2 3 4]
The optional JSON holds boundary.fit kwargs. With several --seeds, one fit per LightGBM seed (bagging and
feature sampling differ) and one summary line each: a lever has to beat the spread between fits, not
one fit. The first run embeds ~146k lines with MiniLM (~12-18 min on 2 cores, cached in state/cache);
later runs take under a minute a seed. Writes the first seed's model to state/boundary-bench and its report
to bench/results/boundary/.
"""
import argparse
import json
import statistics
import time

from corpus import CACHE, EMBEDDING, ROOT, heldout_and_train

from chaptering import boundary
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate, write_report
from chaptering.gate import gate

ap = argparse.ArgumentParser()
ap.add_argument("fit_kwargs", nargs="?", default="{}", help="JSON kwargs for boundary.fit")
ap.add_argument("--seeds", type=int, nargs="+", default=[0])
args = ap.parse_args()
held, train = heldout_and_train()
print(len(train), "train transcripts", flush=True)
kwargs = json.loads(args.fit_kwargs)
ref = Report.from_json(EMBEDDING.read_text()) if EMBEDDING.is_file() else None
headlines = []
for n, seed in enumerate(args.seeds):
    t0 = time.time()
    m = boundary.fit(train, cache_dir=CACHE, **{**kwargs, "params": {**kwargs.get("params", {}), "seed": seed}},
                     progress=len(args.seeds) == 1)
    card = {k: v for k, v in m.card.items() if "loss" not in k and k != "importance"}
    print(f"seed {seed}: fit {time.time() - t0:.0f} s", card, m.decoder, flush=True)
    report, predictions = evaluate(BoundaryChapterer(m, None, "boundary-bench", CACHE), held,
                                   data_name="heldout v2", progress=False)
    headlines.append(report.metric("headline"))
    if n == 0:
        print("top features", list(m.card["importance"])[:8])
        m.save(ROOT / "state" / "boundary-bench")
        write_report(report, predictions, held, ROOT / "bench" / "results" / "boundary")
    print(f"headline {report.metric('headline'):.3f}" + (f"  (embedding baseline {ref.metric('headline'):.3f})" if ref else ""))
    for d in DOMAIN_ORDER:
        if report.domain_metric(d, "f1") is None:
            continue
        line = (f"  {d:9s} F1 {report.domain_metric(d, 'f1'):.3f}  Pk {report.domain_metric(d, 'pk'):.3f}  "
                f"B {report.domain_metric(d, 'boundary_similarity'):.3f}  |dn| {report.domain_metric(d, 'abs_count_error'):.1f}")
        if ref is not None:
            line += (f"   | embedding F1 {ref.domain_metric(d, 'f1'):.3f}  Pk {ref.domain_metric(d, 'pk'):.3f}  "
                     f"B {ref.domain_metric(d, 'boundary_similarity'):.3f}")
        print(line)
    if ref is not None:
        verdict = gate(report, None, [ref], GateSettings())
        print("gate vs embedding:", "PROMOTE" if verdict.promote else "refuse")
        for r in verdict.reasons:
            if r.startswith("FAIL") or "headline" in r:
                print("  ", r)
if len(headlines) > 1:
    print(f"headline over {len(headlines)} seeds: mean {statistics.mean(headlines):.3f}, "
          f"min {min(headlines):.3f}, max {max(headlines):.3f}")
