"""The `--model` factory: a spec (champion, models:/NAME/VER, base, baseline:NAME, a folder) -> a chapterer.

It sits above the chapterers and the registry, so neither needs the other: the CLI, the service, the
pipeline and the benchmarks all build chapterers here, from one Settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaptering.predict import LLMChapterer, llm_options


def load_chapterer(spec: str, settings: Any, embedding_cache: bool = True) -> Any:
    """`--model` values: base | champion | models:/NAME/VER | PATH | baseline:NAME | export:DIR[@QUANT],
    where PATH is a chapterer bundle (boundary/ + adapter/), a boundary model, a PEFT adapter or a model
    folder, and export:DIR a folder written by `chaptering export` (run without PyTorch).

    `embedding_cache=False` keeps no line embeddings on disk: the service reads users' transcripts, and a
    cache keyed by their text would grow with every request and outlive serve.transcript_retention_days."""
    if spec.startswith("export:"):
        return load_exported(spec)
    from chaptering.models import load_model, read_adapter_base, resolve_base

    cache = settings.cache_dir
    lines_cache = cache if embedding_cache else None
    model_cfg = settings.model.model_dump()

    def lines_kwargs(adapter: Path | None = None) -> dict[str, Any]:
        return llm_options(model_cfg, adapter)

    if spec.startswith("baseline:"):
        name = spec.split(":", 1)[1]
        if name == "seed":
            model, tok = load_model(resolve_base(settings.model.base, cache), dtype=settings.model.dtype,
                                 device=settings.model.device)
            seed_kwargs = {k: v for k, v in lines_kwargs().items() if k not in ("decoding", "start_threshold")}
            return LLMChapterer(model, tok, spec, style="seed", **seed_kwargs)
        from chaptering.baselines import make_baseline

        return make_baseline(name, train_mean_chapters=train_mean_chapters(settings), seed=settings.seed,
                             cache_dir=lines_cache)
    if spec == "base":
        model, tok = load_model(resolve_base(settings.model.base, cache), dtype=settings.model.dtype,
                                 device=settings.model.device)
        return LLMChapterer(model, tok, f"base:{settings.model.base}", **lines_kwargs())
    if spec == "champion" or spec.startswith("models:/"):
        from chaptering.boundary_chapterer import is_bundle, load_bundle
        from chaptering.registry import fetch_model

        adapter, base, name = fetch_model(spec, settings)
        if is_bundle(adapter):
            return load_bundle(adapter, name, base, cache, settings.model.dtype, settings.model.device,
                               embedding_cache)
        model, tok = load_model(resolve_base(base, cache), adapter=adapter, dtype=settings.model.dtype,
                                 device=settings.model.device)
        return LLMChapterer(model, tok, name, **lines_kwargs(Path(adapter)))
    path = Path(spec)
    from chaptering.boundary import is_boundary_model
    from chaptering.boundary_chapterer import is_bundle, load_bundle

    if is_bundle(path) or is_boundary_model(path):
        return load_bundle(path, str(path), settings.model.base, cache, settings.model.dtype,
                           settings.model.device, embedding_cache)
    if (path / "adapter_config.json").is_file():
        base = read_adapter_base(path) or settings.model.base
        if not Path(base).exists():
            base = settings.model.base  # trained elsewhere: fall back to the configured base
        model, tok = load_model(resolve_base(base, cache), adapter=path, dtype=settings.model.dtype,
                                 device=settings.model.device)
        return LLMChapterer(model, tok, str(path), **lines_kwargs(path))
    if (path / "config.json").is_file():
        model, tok = load_model(str(path), dtype=settings.model.dtype,
                                 device=settings.model.device)
        return LLMChapterer(model, tok, str(path), **lines_kwargs())
    raise ValueError(
        f"--model {spec!r}: expected base, champion, models:/NAME/VERSION, baseline:NAME, "
        "or a folder holding a bundle (boundary/), a boundary model (boundary.json), a model (config.json) "
        "or a PEFT adapter (adapter_config.json)"
    )


def load_exported(spec: str) -> Any:
    """`export:DIR[@QUANT]` -> chaptering.edge's chapterer (ONNX encoder and trees; titles on llama.cpp or
    onnxruntime). Loaded in full before it returns: the service swaps a champion in only once every part
    of it has loaded (a broken title LM fails the reload, not the first request after it)."""
    try:
        from chaptering.edge import load_export, parse_spec
    except ImportError as err:  # pragma: no cover - the edge extra is absent
        raise ValueError(f"--model {spec!r} needs the on-device extra: pip install '.[edge]' ({err})") from err
    folder, quant = parse_spec(spec)
    try:
        return load_export(folder, quant, background=False)
    except ImportError as err:
        raise ValueError(f"--model {spec!r} needs the on-device extra: pip install '.[edge]' ({err})") from err
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err


def train_mean_chapters(settings: Any) -> float:
    """Mean chapter count of the training inputs: what the equal/random floors aim for."""
    from chaptering.io import iter_transcripts

    counts = [
        len(t.chapters)
        for root in settings.data.inputs
        for f in sorted(Path(root).glob("*.jsonl")) if Path(root).is_dir()
        for t in iter_transcripts(f, rejected=[])
        if t.chapters
    ]
    return sum(counts) / len(counts) if counts else 5.0
