"""Boundary model (issue 16): train on all labelled data in ../shared/data minus the held-out set, then
score it on held-out v2 with the full yardstick (keyword titles: this measures the boundaries) and run
the promotion gate against the embedding baseline's report from bench/quality.py.

Usage: python bench/boundary.py [JSON fit kwargs, e.g. '{"rounds": 600}']
The first run embeds ~146k lines with MiniLM (~12-18 min on 2 cores, cached in state/cache); later runs
take under a minute. Writes the model to state/boundary-bench and the report to bench/results/boundary/.
"""
import json
import sys
import time

from corpus import CACHE, EMBEDDING, ROOT, heldout_and_train

from chaptering import boundary
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate, write_report
from chaptering.gate import gate

held, train = heldout_and_train()
print(len(train), "train transcripts", flush=True)
t0 = time.time()
params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
m = boundary.fit(train, cache_dir=CACHE, **params)
card = {k: v for k, v in m.card.items() if "loss" not in k and k != "importance"}
print(f"fit {time.time() - t0:.0f} s", card, m.decoder, flush=True)
print("top features", list(m.card["importance"])[:8])
m.save(ROOT / "state" / "boundary-bench")

t0 = time.time()
report, predictions = evaluate(BoundaryChapterer(m, None, "boundary-bench", CACHE), held, data_name="heldout v2",
                               progress=False)
print(f"evaluated {len(held)} held-out transcripts in {time.time() - t0:.0f} s")
write_report(report, predictions, held, ROOT / "bench" / "results" / "boundary")
ref = Report.from_json(EMBEDDING.read_text()) if EMBEDDING.is_file() else None
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
