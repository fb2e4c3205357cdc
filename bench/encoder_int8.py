"""Research bench (issue 19): does an int8 MiniLM move the boundary model's chapters?

Exports the encoder as ONNX (chaptering.export.encoder), quantises its MatMul weights to int8 per channel
(onnxruntime's quantize_dynamic), and decodes every held-out v2 transcript with the same boundary model
(state/boundary-bench, from bench/boundary.py) on both encoders, through the edge runtime's
EdgeBoundary and the BoundaryChapterer (keyword titles: this measures the boundaries). Prints the share of transcripts with
identical starts, the headline and per-domain F1 of each, encoding seconds and file sizes.

Usage: python bench/encoder_int8.py   (needs the edge extra: onnxruntime, tokenizers)
"""
import shutil
import tempfile
import time
from pathlib import Path

from corpus import ROOT, heldout_and_train

from chaptering.boundary import BoundaryModel
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.edge.encoder import OnnxEncoder
from chaptering.edge.runtime import EdgeBoundary
from chaptering.evaluate import DOMAIN_ORDER, evaluate
from chaptering.export.encoder import ONNX_FILE, export_encoder


def main() -> None:
    held, _ = heldout_and_train()
    model = BoundaryModel.load(ROOT / "state" / "boundary-bench")
    work = Path(tempfile.mkdtemp())
    fp32 = export_encoder(work / "fp32")
    int8 = export_encoder(work / "int8", precision="int8")  # what `chaptering export --encoder int8` writes
    runs = {}
    for name, folder in (("fp32", fp32), ("int8", int8)):
        trees = EdgeBoundary(booster=model.booster, decoder=model.decoder, card=model.card, lexical=model.lexical,
                             encode=OnnxEncoder(folder))
        t0 = time.perf_counter()
        report, preds = evaluate(BoundaryChapterer(trees, None, name), held, data_name="heldout v2", progress=False)
        seconds = time.perf_counter() - t0
        runs[name] = ({p.id: [c.start_segment for c in p.chapters] for p in preds}, report)
        size = (folder / ONNX_FILE).stat().st_size / 2**20
        print(f"{name}: {size:.0f} MB, encoding + cues + trees {seconds:.0f} s, headline "
              f"{report.metric('headline'):.3f}  "
              + "  ".join(f"{d} {report.domain_metric(d, 'f1'):.3f}" for d in DOMAIN_ORDER), flush=True)
    a, b = runs["fp32"][0], runs["int8"][0]
    print(f"identical starts on {sum(a[i] == b[i] for i in a)} of {len(a)} held-out transcripts")
    for d in DOMAIN_ORDER:
        ids = [t.id for t in held if t.meta.get("domain") == d]
        print(f"  {d:9s} identical {sum(a[i] == b[i] for i in ids)}/{len(ids)}  F1 delta "
              f"{runs['int8'][1].domain_metric(d, 'f1') - runs['fp32'][1].domain_metric(d, 'f1'):+.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
