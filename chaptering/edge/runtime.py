"""An exported folder as a chapterer: the bundle's chapterer (boundary_chapterer.BoundaryChapterer) with
the MiniLM on onnxruntime and the title LM on llama.cpp (GGUF) or onnxruntime (int8 ONNX) underneath; no
PyTorch is imported.

Boundaries come from the same trees (LightGBM's, as an ONNX TreeEnsemble on onnxruntime) and the same cue
code (cues.py) fed by the ONNX encoder, decoded with the calibration in the manifest; titles from the
exported title LM, prompted as titles.py does.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaptering.boundary import BoundaryModel
from chaptering.boundary_chapterer import BoundaryChapterer
from chaptering.decode import DecoderSettings
from chaptering.edge.manifest import read_manifest, verify
from chaptering.schema import Transcript


@dataclass
class EdgeBoundary(BoundaryModel):
    """The boundary model with its features from an injected encoder (the ONNX MiniLM) and no cache."""

    encode: Any = None

    def features(self, transcript: Transcript, cache_dir: Path | None = None, encode: Any = None) -> Any:
        return super().features(transcript, None, self.encode)


class PendingTitler:
    """A title LM still loading on a background thread, standing in for it: the first use (the first
    answer's titles, after its boundaries) waits for the load, and raises what the load raised.

    The LM's session is most of an export's load; the encoder and the trees load, and the first
    transcript's boundaries are scored, while it loads (both engines prepare weights outside the GIL).
    """

    def __init__(self, future: Future) -> None:
        object.__setattr__(self, "_future", future)

    def result(self) -> Any:
        return self._future.result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future.result(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._future.result(), name, value)


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """`export:DIR` or `export:DIR@QUANT` -> (folder, quantisation or None for the manifest's default)."""
    rest = spec.removeprefix("export:")
    folder, _, quant = rest.partition("@")
    if not folder:
        raise ValueError(f"--model {spec!r}: expected export:DIR or export:DIR@QUANT")
    return Path(folder), quant or None


def _onnx_trees(folder: Path, manifest: dict[str, Any], threads: int | None) -> Any:
    """The ONNX trees' scorer, or None for an export made before them (scored by lightgbm, if installed)."""
    from chaptering.edge.trees import TreeScorer

    trees = (manifest.get("boundary") or {}).get("trees")
    if trees:
        return TreeScorer.load(folder / trees, threads)
    try:
        import lightgbm  # noqa: F401
    except ModuleNotFoundError:
        raise RuntimeError(f"{folder}: exported before the boundary trees were written as ONNX; export it again "
                           "(or pip install lightgbm to run it as it is)") from None
    return None


def load_export(folder: Path, quant: str | None = None, threads: int | None = None,
                checksums: bool = False, name: str | None = None, background: bool = True) -> BoundaryChapterer:
    """An exported folder -> chapterer. `quant` picks one of the title LMs it holds (default: the first
    exported); `checksums` hashes every file against the manifest (sizes are always checked);
    `background` loads the title LM on a thread while the rest loads and the first boundaries are scored
    (PendingTitler); False loads everything before returning."""
    from chaptering.edge.encoder import OnnxEncoder
    from chaptering.titles import TITLE_PROMPT_VERSION

    folder = Path(folder)
    manifest = read_manifest(folder)
    verify(folder, manifest, checksums)
    if manifest.get("prompt_version") != TITLE_PROMPT_VERSION:
        raise ValueError(f"{folder}: exported with title prompt {manifest.get('prompt_version')!r}, this "
                         f"chaptering renders {TITLE_PROMPT_VERSION!r}: export the model again")
    titler: Any = None
    llm = manifest.get("llm")
    if llm:
        quant = quant or llm["default"]
        if quant not in llm["files"]:
            raise ValueError(f"{folder}: no {quant!r} title LM; this export holds {', '.join(llm['files'])}")
        from chaptering.edge.titler import GGUFTitler, OnnxTitler

        engine = OnnxTitler if llm["files"][quant].endswith(".onnx") else GGUFTitler
        args = (folder / llm["files"][quant], folder / llm["tokenizer"], llm, threads)
        kwargs = {"max_new_tokens": int(llm.get("max_new_tokens", 16))}
        if background:
            pool = ThreadPoolExecutor(1, thread_name_prefix="title-lm")
            titler = PendingTitler(pool.submit(engine, *args, **kwargs))
            pool.shutdown(wait=False)  # the load goes on; the thread ends with it
        else:
            titler = engine(*args, **kwargs)
    trees = BoundaryModel.load(folder / "boundary", _onnx_trees(folder, manifest, threads))
    decoder = DecoderSettings(**manifest["calibration"])
    boundary = EdgeBoundary(booster=trees.booster, decoder=decoder, card=trees.card, lexical=trees.lexical,
                            encode=OnnxEncoder(folder / "encoder", threads))
    label = f"edge:{quant}" if titler is not None else "edge"
    return BoundaryChapterer(boundary, titler, name or f"{manifest['source']['model']} ({label})")
