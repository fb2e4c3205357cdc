"""The default chapterer: the boundary model places chapters, the fine-tuned LLM names them.

A bundle folder holds both parts as one thing (what a registered version carries):
  boundary/   boundary.lgb.txt + boundary.json (boundary.py: trees, features, calibrated decoder)
  adapter/    the title LoRA adapter (safetensors), optional: without it titles are keyword titles
Scoring a transcript is one MiniLM pass over its lines plus a few hundred trees; the LLM then writes
one short title per chosen chapter, so latency grows with the chapter count, not the line count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaptering.boundary import BoundaryModel, is_boundary_model
from chaptering.schema import PredictedChapter, Prediction, Transcript
from chaptering.titles import LLMTitler

BOUNDARY_DIR = "boundary"
ADAPTER_DIR = "adapter"


def is_bundle(folder: Path) -> bool:
    return is_boundary_model(Path(folder) / BOUNDARY_DIR)


class BoundaryChapterer:
    """Boundaries from `boundary`, titles from `titler` (keyword titles where it has none)."""

    def __init__(self, boundary: BoundaryModel, titler: LLMTitler | None, name: str,
                 cache_dir: Path | None = None) -> None:
        self.boundary, self.titler, self.name, self.cache_dir = boundary, titler, name, cache_dir
        self._stop: Callable[[], bool] | None = None

    @property
    def model(self) -> Any:
        """The titling LM (serving bounds its `generate` by the request deadline); None without one."""
        return self.titler.model if self.titler is not None else None

    @property
    def should_stop(self) -> Callable[[], bool] | None:
        return self._stop

    @should_stop.setter
    def should_stop(self, check: Callable[[], bool] | None) -> None:
        """Serving's deadline check reaches the titler: chapters past the deadline keep keyword titles."""
        self._stop = check
        if self.titler is not None:
            self.titler.should_stop = check

    def predict(self, t: Transcript) -> Prediction:
        from chaptering.baselines import titles_for

        t0 = time.perf_counter()
        starts, scores = self.boundary.starts(t, self.cache_dir)
        written, n_written = (self.titler.titles(t, starts) if self.titler is not None
                              else ([""] * len(starts), 0))
        fallback = titles_for(t, starts)
        titles = [w or f for w, f in zip(written, fallback)]
        missing = [s for s, w in zip(starts, written) if not w]
        health = "clean" if self.titler is None or not missing else "repaired"
        return Prediction(
            id=t.id,
            model=self.name,
            chapters=[PredictedChapter(title=ti, start_segment=s, start=t.segments[s].start)
                      for s, ti in zip(starts, titles)],
            meta={
                "health": health,
                "repairs": [f"keyword title at {s}" for s in missing] if self.titler is not None else [],
                "titles_written": n_written,
                "start_scores": [round(p, 4) for p in scores],
                "latency_s": round(time.perf_counter() - t0, 3),
            },
        )


def load_bundle(folder: Path, name: str, base: str, cache_dir: Path, dtype: str = "float32",
                device: str = "cpu", embedding_cache: bool = True) -> BoundaryChapterer:
    """A bundle folder (or a bare boundary-model folder: keyword titles) as a chapterer; line embeddings
    are cached under `cache_dir` unless `embedding_cache` is off (the service: see factory)."""
    folder = Path(folder)
    lines_cache = cache_dir if embedding_cache else None
    if is_boundary_model(folder):
        return BoundaryChapterer(BoundaryModel.load(folder), None, name, lines_cache)
    boundary = BoundaryModel.load(folder / BOUNDARY_DIR)
    titler = None
    adapter = folder / ADAPTER_DIR
    if (adapter / "adapter_config.json").is_file():
        titler = load_titler(adapter, base, cache_dir, dtype, device)
    return BoundaryChapterer(boundary, titler, name, lines_cache)


def load_titler(adapter: Path, base: str, cache_dir: Path, dtype: str = "float32", device: str = "cpu") -> LLMTitler:
    from chaptering.models import load_adapted

    return LLMTitler(*load_adapted(base, adapter, cache_dir, dtype, device))


def write_bundle(out: Path, boundary: BoundaryModel, adapter: Path | None) -> Path:
    """Assemble a bundle folder from a fitted boundary model and a trained title adapter."""
    import shutil

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    boundary.save(out / BOUNDARY_DIR)
    if adapter is not None:
        shutil.copytree(adapter, out / ADAPTER_DIR,
                        ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.bin", "rng_state*"))
    return out
