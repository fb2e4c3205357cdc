"""The MiniLM sentence encoder on onnxruntime + `tokenizers`: the same vectors as embeddings.embed
without PyTorch. Batching (length-sorted) and pooling are embeddings.py's own functions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class OnnxEncoder:
    """texts -> (n, dim) unit vectors; callable, so it plugs into cues.transcript_features(encode=...)."""

    # 8 lines a batch: onnxruntime's arena grows with the largest batch (+114 MB at 64 lines, +23 MB at 8 on
    # a 422-line talk) and the vectors are the same; on 2 cores it is no slower (docs/edge.md).
    def __init__(self, folder: Path, threads: int | None = None, batch_size: int = 8) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "encoder.json").read_text())
        self.dim, self.batch_size, self.inputs = int(cfg["dim"]), batch_size, list(cfg["inputs"])
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(int(cfg["max_length"]))
        self.tok.enable_padding(pad_id=int(cfg["pad_id"]), pad_token=str(cfg["pad_token"]))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # Idle pool threads would otherwise spin for a while after each batch, on the cores llama.cpp
        # is about to decode the titles on.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str]) -> Any:
        """One padded batch -> unit vectors (embeddings.mean_pool over the ONNX token states)."""
        import numpy as np

        from chaptering.embeddings import mean_pool

        encs = self.tok.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        hidden = self.session.run(None, {k: feeds[k] for k in self.inputs})[0]
        return mean_pool(hidden, feeds["attention_mask"])

    def __call__(self, texts: Sequence[str]) -> Any:
        from chaptering.embeddings import embed_batches

        return embed_batches(texts, self.encode, self.dim, self.batch_size)
