"""Research bench (issue 19): does an int8 MiniLM move the boundary model's chapters?

Exports the encoder as ONNX (chaptering.export.encoder), quantises its MatMul weights to int8 per channel
(onnxruntime's quantize_dynamic), and decodes every held-out v2 transcript with the same boundary model
(state/boundary-bench, from bench/boundary.py) on both encoders. Prints the share of transcripts with
identical starts, the headline and per-domain F1 of each, encoding seconds and file sizes.

Usage: python bench/encoder_int8.py   (needs the edge extra: onnxruntime, tokenizers)
"""
import shutil
import tempfile
import time
from pathlib import Path

from corpus import ROOT, heldout_and_train

from chaptering.boundary import BoundaryModel
from chaptering.cues import transcript_features
from chaptering.decode import decode
from chaptering.edge.encoder import OnnxEncoder
from chaptering.evaluate import DOMAIN_ORDER, evaluate
from chaptering.export.encoder import ONNX_FILE, export_encoder
from chaptering.keywords import titles_for
from chaptering.schema import PredictedChapter, Prediction, Transcript


class Trees:
    """The boundary model with line vectors from one ONNX encoder; keyword titles (boundaries only)."""

    def __init__(self, model: BoundaryModel, encoder: OnnxEncoder, name: str) -> None:
        self.model, self.encoder, self.name, self.seconds = model, encoder, name, 0.0
        self.starts: dict[str, list[int]] = {}

    def predict(self, t: Transcript) -> Prediction:
        t0 = time.perf_counter()
        x = transcript_features(t, None, self.encoder)
        self.seconds += time.perf_counter() - t0
        scores = [float(v) for v in self.model.booster.predict(x)] if len(t.segments) > 1 else [1.0]
        scores[0] = 1.0
        starts = decode(scores, t, self.model.decoder)
        self.starts[t.id] = starts
        return Prediction(id=t.id, model=self.name, chapters=[
            PredictedChapter(title=ti, start_segment=s, start=t.segments[s].start)
            for s, ti in zip(starts, titles_for(t, starts))], meta={"health": "clean"})


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    held, _ = heldout_and_train()
    model = BoundaryModel.load(ROOT / "state" / "boundary-bench")
    work = Path(tempfile.mkdtemp())
    fp32 = export_encoder(work / "fp32")
    int8 = work / "int8"
    shutil.copytree(fp32, int8)
    quantize_dynamic(str(fp32 / ONNX_FILE), str(int8 / ONNX_FILE), op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8)
    runs = {}
    for name, folder in (("fp32", fp32), ("int8", int8)):
        ch = Trees(model, OnnxEncoder(folder), name)
        report, _ = evaluate(ch, held, data_name="heldout v2", progress=False)
        runs[name] = (ch, report)
        size = (folder / ONNX_FILE).stat().st_size / 2**20
        print(f"{name}: {size:.0f} MB, encoding + cues {ch.seconds:.0f} s, headline {report.metric('headline'):.3f}  "
              + "  ".join(f"{d} {report.domain_metric(d, 'f1'):.3f}" for d in DOMAIN_ORDER), flush=True)
    a, b = runs["fp32"][0].starts, runs["int8"][0].starts
    same = [i for i in a if a[i] == b[i]]
    print(f"identical starts on {len(same)} of {len(a)} held-out transcripts")
    for d in DOMAIN_ORDER:
        ids = [t.id for t in held if t.meta.get("domain") == d]
        print(f"  {d:9s} identical {sum(a[i] == b[i] for i in ids)}/{len(ids)}  F1 delta "
              f"{runs['int8'][1].domain_metric(d, 'f1') - runs['fp32'][1].domain_metric(d, 'f1'):+.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
