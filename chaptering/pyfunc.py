"""The logged model itself: what a registered version holds and how it loads back as an MLflow pyfunc.

Staging copies a bundle (boundary model + title adapter) or a bare LoRA adapter into the folder that is
logged as the version's artifact, keeping only text and safetensors; `_check_safetensors_only` and
`_check_bundle` refuse anything that could run code when loaded, both when a version is logged and when
one is fetched (`chaptering.registry`) or loaded (`ChapteringModel.load_context`). `ChapteringModel`
is the `PythonModel` that the models-from-code file (`_MODEL_CODE`) hands MLflow, so the registry holds
no pickled Python.

mlflow, pandas and the model code are imported inside functions, so that importing this module (which
`chaptering.registry` does) stays as light as importing the registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# Only these travel with an adapter: weights as safetensors, configs, tokenizer, chat template, notes.
_ADAPTER_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".jinja", ".md"}

# Versions registered before this module existed import `from chaptering.registry import ChapteringModel`
# in their code file; `chaptering.registry` keeps that name resolving so that they still load.
_MODEL_CODE = """\
# The chaptering pyfunc entry point ("models from code"): the registry holds no pickled Python.
import mlflow
from chaptering.pyfunc import ChapteringModel

mlflow.models.set_model(ChapteringModel())
"""


# --- what a version holds ------------------------------------------------------------------------


def _check_safetensors_only(adapter: Path) -> None:
    """Refuse pickled weights: a registry artifact must not be able to run code when loaded."""
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ValueError(f"{adapter}: no adapter_model.safetensors (only safetensors adapters are accepted)")
    pickles = [p.name for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if pickles:
        raise ValueError(f"{adapter}: pickled weight files are not accepted: {pickles}")


def _stage_adapter(adapter_dir: Path, base_model: str, cache_dir: Path, into: Path) -> Path:
    """Copy the adapter's own files (no checkpoints, no pickles) and make sure the tokenizer and chat
    template travel with it, so serving renders prompts exactly as training did."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    out = into / "adapter"
    out.mkdir(parents=True)
    for f in adapter_dir.iterdir():
        if f.is_file() and f.suffix in _ADAPTER_SUFFIXES:
            shutil.copy2(f, out / f.name)
    _check_safetensors_only(out)
    if not (out / "tokenizer_config.json").is_file():
        from chaptering.models import load_tokenizer, resolve_base

        load_tokenizer(resolve_base(base_model, cache_dir)).save_pretrained(str(out))
    return out


def _check_bundle(bundle: Path) -> None:
    """A bundle holds trees as text and, optionally, a safetensors adapter: nothing that runs code."""
    from chaptering.boundary_chapterer import ADAPTER_DIR, is_bundle

    if not is_bundle(bundle):
        raise ValueError(f"{bundle}: not a chapterer bundle (no boundary/boundary.json)")
    if (bundle / ADAPTER_DIR).is_dir():
        _check_safetensors_only(bundle / ADAPTER_DIR)


def _stage_model(model_dir: Path, base_model: str, cache_dir: Path, into: Path) -> tuple[Path, str]:
    """Stage a bundle or a bare adapter for logging -> (folder, artifact name)."""
    from chaptering.boundary_chapterer import ADAPTER_DIR, BOUNDARY_DIR, is_bundle

    model_dir = Path(model_dir)
    if not is_bundle(model_dir):
        return _stage_adapter(model_dir, base_model, cache_dir, into), "adapter"
    out = into / "bundle"
    (out / BOUNDARY_DIR).mkdir(parents=True)
    for f in (model_dir / BOUNDARY_DIR).iterdir():
        if f.is_file() and f.suffix in (".txt", ".json"):
            shutil.copy2(f, out / BOUNDARY_DIR / f.name)
    if (model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        _stage_adapter(model_dir / ADAPTER_DIR, base_model, cache_dir, out)
    _check_bundle(out)
    return out, "bundle"


def _pip_requirements() -> list[str]:
    """Pinned to what logged the model (local build tags like +cpu dropped); saves MLflow's slow
    requirement inference, which would load the model in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "torch", "transformers", "peft", "safetensors", "pandas", "pydantic", "lightgbm"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


# --- the pyfunc model ----------------------------------------------------------------------------


def _rows_from_input(model_input: Any) -> list[dict[str, Any]]:
    """Accept what callers naturally have: a DataFrame with a `transcript` JSON column, a list of
    transcript dicts (or JSON strings, or {"transcript": ...} rows), or one transcript dict."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
        if "transcript" in model_input.columns:
            values = list(model_input["transcript"])
        else:  # a DataFrame of transcript fields, one transcript per row
            values = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        values = [model_input.get("transcript", model_input)]
    else:
        values = list(model_input)
    rows = []
    for v in values:
        if isinstance(v, dict) and set(v) == {"transcript"}:
            v = v["transcript"]
        rows.append(json.loads(v) if isinstance(v, (str, bytes)) else dict(v))
    return rows


def _define_model_class() -> type:
    """Build the pyfunc class on first use, so importing this module does not import mlflow."""
    import mlflow.pyfunc

    cls = _chaptering_model_class(mlflow.pyfunc.PythonModel)
    # Resolved by module + name when the models-from-code file imports it.
    cls.__module__, cls.__qualname__ = __name__, "ChapteringModel"
    return cls


def _chaptering_model_class(python_model: type) -> type:
    import pandas as pd

    class ChapteringModel(python_model):  # type: ignore[misc, valid-type]
        """A chapterer as one pyfunc model: `load_model("models:/NAME@champion")`. Either a bundle (boundary
        model + title adapter, the default kind) or a LoRA adapter for the LLM-only chapterer.

        Only the adapter (safetensors), tokenizer and boundary trees (text) are stored; the base is resolved at load time from
        `model_config["base_model"]` ("embedded", a local folder or a hub id), so a version is megabytes,
        not the base model's gigabytes.
        """

        def load_context(self, context: Any) -> None:
            from chaptering.config import get_settings
            from chaptering.models import load_adapted
            from chaptering.predict import LLMChapterer, llm_options

            cfg = dict(context.model_config or {})
            cache_dir = Path(cfg["cache_dir"]) if cfg.get("cache_dir") else get_settings().cache_dir
            name = str(cfg.get("model_name", "chaptering"))
            if "bundle" in context.artifacts:  # boundary model + title adapter (boundary_chapterer.py)
                from chaptering.boundary_chapterer import load_bundle

                bundle = Path(context.artifacts["bundle"])
                _check_bundle(bundle)
                self.chapterer = load_bundle(bundle, name, cfg.get("base_model", "embedded"), cache_dir,
                                             cfg.get("dtype", "float32"), cfg.get("device", "auto"))
                return
            adapter = Path(context.artifacts["adapter"])
            _check_safetensors_only(adapter)
            model, tok = load_adapted(cfg.get("base_model", "embedded"), adapter, cache_dir,
                                      cfg.get("dtype", "float32"), cfg.get("device", "auto"))
            self.chapterer = LLMChapterer(model, tok, name, **llm_options(cfg, adapter))

        def predict(self, context, model_input, params=None):
            """One row per transcript: id, chapters (JSON list of {title, start_segment, start}), model,
            health. Called directly, it also takes a list of transcript dicts (what a service has)."""
            from chaptering.schema import Transcript

            out = []
            for row in _rows_from_input(model_input):
                p = self.chapterer.predict(Transcript.model_validate(row))
                out.append({
                    "id": p.id,
                    "chapters": json.dumps([c.model_dump() for c in p.chapters], ensure_ascii=False),
                    "model": p.model,
                    "health": str(p.meta.get("health", "")),
                })
            return pd.DataFrame(out, columns=["id", "chapters", "model", "health"])

        # A real (not string) DataFrame hint: MLflow then skips type-hint validation and its warning, and
        # enforces the explicit signature instead (pyfunc always hands predict a DataFrame).
        predict.__annotations__ = {"model_input": pd.DataFrame, "return": pd.DataFrame}  # noqa: RUF012

    return ChapteringModel


def _model_class() -> type:
    if "ChapteringModel" not in globals():
        globals()["ChapteringModel"] = _define_model_class()
    return globals()["ChapteringModel"]


def __getattr__(name: str) -> Any:
    if name == "ChapteringModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def signature() -> Any:
    """Input: a `transcript` column of transcript JSON; output: chapters JSON per transcript."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "transcript")]),
        outputs=Schema([ColSpec("string", c) for c in ("id", "chapters", "model", "health")]),
    )
