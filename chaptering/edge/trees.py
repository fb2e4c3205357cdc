"""The boundary trees on onnxruntime (export/trees.py writes them): P(start) per row without LightGBM, whose
import alone costs a device 0.55 s of its cold start and 27 MB (it pulls in scipy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TREES_FILE = "boundary.onnx"
OUTPUT = "probabilities"
ZERO = 1e-35  # LightGBM reads |x| <= kZeroThreshold as 0 (its splits around zero sit at -/+1e-35)


class TreeScorer:
    """P(start) per row from the ONNX trees: the one method of a LightGBM booster the boundary model calls."""

    def __init__(self, session: Any, output: str = OUTPUT) -> None:
        self.session, self.output = session, output
        self.input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path, threads: int | None = None) -> TreeScorer:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1
        return cls(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))

    @classmethod
    def from_bytes(cls, model: bytes, output: str = OUTPUT) -> TreeScorer:
        import onnxruntime as ort

        return cls(ort.InferenceSession(model, providers=["CPUExecutionProvider"]), output)

    def predict(self, x: Any) -> Any:
        import numpy as np

        x = np.asarray(x, dtype=np.float32)
        x = np.where(np.abs(x) <= ZERO, np.float32(0.0), x)
        probs = self.session.run([self.output], {self.input: x})[0]
        return probs[:, 1].astype(np.float64)
