"""Research bench (issue 16, lever b over every line): a MiniLM cross-encoder fine-tuned on a GPU scores
every line; its two logits become tree features, out-of-fold on the labelled lines as the lexical cue's.

  python bench/xenc.py prep              # here: pack .gpu-xenc/ (corpus as lines, MiniLM as int8 rows; ~25 MB)
  python3 bench/xenc_gpu.py              # on a GPU (device tool, carry .gpu-xenc): writes xenc-<config>.npz
  python bench/xenc.py eval FILE.npz [--seeds 0 1 2 3 4] [--columns 0 1]
                                         # here: trees with the cross-encoder's logits vs without, held-out v2

Same labelled data and held-out set as bench/boundary.py (all of ../shared/data minus held-out v2). The
cross-encoder reads the last N words before line i and the first N from line i on (speaker names kept:
who speaks is evidence in meetings); folds are by hashed transcript id, and held-out transcripts are
scored by a model trained on every labelled transcript.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import statistics
import time
from pathlib import Path

from corpus import CACHE, EMBEDDING, ROOT, heldout_and_train

from chaptering import boundary
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.config import GateSettings
from chaptering.embeddings import clean_line, encoder_dir
from chaptering.evaluate import DOMAIN_ORDER, Report, evaluate
from chaptering.gate import gate
from chaptering.schema import Transcript

PACK = ROOT / ".gpu-xenc"
FOLDS = 3
NEAR_SECONDS = 5.0
NEAR_TURNS = 2


def fold_of(tid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"xenc-fold:{tid}".encode()).digest()[:4], "big") % FOLDS


def near_lines(t: Transcript) -> list[int]:
    """Lines within the primary tolerance of a reference start (line 0's chapter excluded)."""
    refs = sorted(set(t.boundaries) - {0})
    if t.has_times:
        at = [float(s.start or 0.0) for s in t.segments]
        return [i for i in range(1, len(at)) if any(abs(at[r] - at[i]) <= NEAR_SECONDS for r in refs)]
    return [i for i in range(1, len(t.segments)) if any(abs(r - i) <= NEAR_TURNS for r in refs)]


def line_text(seg) -> str:
    text = clean_line(seg.text)
    return f"{seg.speaker}: {text}" if seg.speaker else text


def prep() -> None:
    import numpy as np
    from safetensors.numpy import load_file

    held, train = heldout_and_train()
    labelled = [t for t in train if t.chapters and len(t.segments) >= 2]
    rows = []
    for t, fold in [(t, fold_of(t.id)) for t in labelled] + [(t, -1) for t in held]:
        rows.append({"id": t.id, "family": t.source.split("/")[0], "fold": fold,
                     "lines": [line_text(s) for s in t.segments],
                     "starts": sorted(set(t.boundaries) - {0}), "near": near_lines(t)})
    shutil.rmtree(PACK, ignore_errors=True)
    (PACK / "minilm").mkdir(parents=True)
    with lzma.open(PACK / "corpus.json.xz", "wt", preset=9) as f:
        json.dump(rows, f)
    folder = Path(encoder_dir())
    weights = load_file(str(folder / "model.safetensors"))
    packed = {}
    for key, w in weights.items():
        if w.ndim == 2 and w.dtype == np.float32:
            scale = np.abs(w).max(axis=1) / 127.0 + 1e-12
            packed[key] = np.round(w / scale[:, None]).astype(np.int8)
            packed[f"{key}.__scale"] = scale.astype(np.float32)
        else:
            packed[key] = w.astype(np.float16) if w.dtype == np.float32 else w
    np.savez(PACK / "minilm" / "weights.npz", **packed)
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        if (folder / name).is_file():
            shutil.copy(folder / name, PACK / "minilm" / name)
    size = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    print(f"{len(rows)} transcripts ({len(labelled)} labelled, {len(held)} held-out), "
          f"{sum(len(r['lines']) for r in rows)} lines; .gpu-xenc {size / 1e6:.1f} MB")


def evaluate_with(npz: Path, seeds: list[int], columns: list[int]) -> None:
    import numpy as np

    held, train = heldout_and_train()
    xenc = np.load(npz) if npz is not None else None
    names = [f"xenc{c}" for c in columns]
    base_features, base_names = boundary._features, boundary.feature_names

    def features(transcripts, cache_dir, progress, lexical):
        out = base_features(transcripts, cache_dir, progress, lexical)
        return {tid: np.column_stack([x, xenc[tid][:, columns]]).astype(np.float32) for tid, x in out.items()}

    class WithXenc(boundary.BoundaryModel):
        def features(self, transcript, cache_dir=None, encode=None):
            x = super().features(transcript, cache_dir, encode)
            return np.column_stack([x, xenc[transcript.id][:, columns]]).astype(np.float32)

    if xenc is not None and columns:
        missing = [t.id for t in train + held if t.id not in xenc.files and t.chapters and len(t.segments) >= 2]
        if missing:
            raise SystemExit(f"{npz}: no scores for {len(missing)} transcripts, e.g. {missing[:3]}")
        boundary._features = features
        boundary.feature_names = lambda lexical: base_names(lexical) + names
    ref = Report.from_json(EMBEDDING.read_text())
    heads = []
    for seed in seeds:
        t0 = time.time()
        m = boundary.fit(train, cache_dir=CACHE, params={"seed": seed}, progress=False)
        if xenc is not None and columns:
            m.__class__ = WithXenc
        report, _ = evaluate(BoundaryChapterer(m, None, "xenc-bench", CACHE), held, data_name="heldout v2",
                             progress=False)
        heads.append(report.metric("headline"))
        top = list(m.card["importance"])[:6]
        print(f"seed {seed}: {time.time() - t0:.0f} s, rounds {m.card['rounds']}, val F1 {m.card['val_primary_f1']}, "
              f"bars {m.decoder.threshold}/{m.decoder.threshold_long}/{m.decoder.threshold_untimed}, top {top}")
        print(f"  headline {report.metric('headline'):.3f} (embedding {ref.metric('headline'):.3f})")
        for d in DOMAIN_ORDER:
            if report.domain_metric(d, "f1") is None:
                continue
            print(f"  {d:9s} F1 {report.domain_metric(d, 'f1'):.3f}  Pk {report.domain_metric(d, 'pk'):.3f}  "
                  f"B {report.domain_metric(d, 'boundary_similarity'):.3f}  |dn| "
                  f"{report.domain_metric(d, 'abs_count_error'):.1f}   | embedding F1 {ref.domain_metric(d, 'f1'):.3f}"
                  f"  Pk {ref.domain_metric(d, 'pk'):.3f}  B {ref.domain_metric(d, 'boundary_similarity'):.3f}")
        verdict = gate(report, None, [ref], GateSettings())
        print("  gate vs embedding:", "PROMOTE" if verdict.promote else "refuse")
        for r in verdict.reasons:
            print("   ", r)
    print(f"headline over seeds {seeds}: " + " ".join(f"{h:.3f}" for h in heads) + f"  mean {statistics.mean(heads):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["prep", "eval"])
    ap.add_argument("npz", nargs="?", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--columns", type=int, nargs="*", default=[0, 1], help="which logits: 0 exact, 1 near")
    args = ap.parse_args()
    if args.step == "prep":
        prep()
    else:
        evaluate_with(args.npz, args.seeds, args.columns)


if __name__ == "__main__":
    main()
