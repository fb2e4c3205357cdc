"""Boundary model (issue 16, option c): train on all shared labelled data minus the held-out set, then
primary F1 per domain on the held-out set (decoder only, no titles). Usage: python bench/boundary.py [JSON fit kwargs]
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np

from chaptering import boundary
from chaptering.decode import primary_f1
from chaptering.io import read_transcripts
from chaptering.metrics import domain_of

CACHE = ROOT / "state" / "cache"
held = read_transcripts(ROOT / "data" / "eval" / "heldout.jsonl")
hid = {t.id for t in held}
train = []
for f in ["qmsum/qmsum-train.jsonl", "video/rawkode.jsonl", "video/lectures.jsonl", "video/tinyrec-dev.jsonl", "video/vidchapters-short.jsonl"]:
    train += [t for t in read_transcripts(ROOT.parent / "shared" / "data" / f) if t.id not in hid]
print(len(train), "train transcripts", flush=True)
t0 = time.time()
params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
m = boundary.fit(train, cache_dir=CACHE, **params)
print("fit", time.time() - t0, {k: v for k, v in m.card.items() if "loss" not in k}, m.decoder, flush=True)
print("loss first/last", m.card["train_loss"][0], m.card["train_loss"][-1], m.card["val_loss"][0], m.card["val_loss"][-1])
per = {}
for t in held:
    st, sc = m.starts(t, CACHE)
    per.setdefault(domain_of(t), []).append((primary_f1(t, st), len(st), len(t.chapters)))
for d, v in per.items():
    a = np.array(v)
    print(d, f"F1 {a[:, 0].mean():.3f}  n_hyp {a[:, 1].mean():.1f} n_ref {a[:, 2].mean():.1f}")
print(f"headline {np.mean([np.mean([x[0] for x in v]) for v in per.values()]):.3f}")
m.save(ROOT / "state" / "boundary-bench")
